"""Notebook panels over the generation API: GeneratorPanel (make, hear, inspect, compare and save takes)
and CompareGrid (one seed under several settings, side by side).

The only module that imports ipywidgets; it works with ipywidgets 7.7 (what Colab ships) and 8.x.

Results are rendered into widgets themselves -- the player is an HTML widget holding an <audio>
element with a WAV data URI, the figures are PNG Image widgets -- rather than displayed into an
Output widget. What a panel shows then lives in widget state: the same in a live kernel, under
nbval and in pytest; the latest take's full view replaces the previous one, and the history below it
keeps a bounded number of rows.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import soundfile as sf
import torch
from IPython.display import display
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from .analysis import code_histograms, js_divergence, level_statistics
from .audio import save_audio
from .checks import check_int
from .generation import MODES, STITCHES, GenerationResult, GenerationSettings, generate
from .loudness import NORMALISATIONS
from .model_file import LoadedVQModel, load_default_model
from .plots import plot_code_histograms, plot_spectrogram
from .progress import Progress
from .stitching import CURVES

# The seed box's range: generation accepts seeds up to 2**63, but a widget's number crosses
# JavaScript, whose integers are exact only up to 2**53; 2**31 seeds are plenty to explore.
MAX_SEED = 2**31 - 1
# Each history row holds its take and two WAV data URIs, in the kernel and in the browser: keep the recent ones.
HISTORY_LENGTH = 20

_WIDE_LABEL = {"description_width": "initial"}  # show whole descriptions instead of truncating them
_TOGGLE_STYLE = {**_WIDE_LABEL, "button_width": "auto"}  # and buttons as wide as their labels
_SLIDER_WIDTH = "420px"  # a whole label takes its room from the track: leave the track a usable length
_INDEPENDENT_ONLY = ("stitch", "overlap_samples", "crossfade_curve")  # unused in continuation mode
_HISTORY_ROW_CLASS = "distill-nb-history-row"  # lets the browser test (and user CSS) find the rows
_ERROR_COLOR = "#c62828"
_PNG_DPI = 100


class TakeStopped(Exception):
    """Raised from the panel's progress callback after Stop: it ends the take between windows or chunks."""


@dataclasses.dataclass
class HistoryRow:
    """One take in GeneratorPanel.history: the take, its number in the session and its row's widgets."""

    take: GenerationResult
    number: int
    widget: widgets.HBox
    save_button: widgets.Button
    download: widgets.HTML
    saved: widgets.HTML
    filename: str  # what Save and Download call the file: the filename box's stem, the seed, a settings digest


class GeneratorPanel:
    """Generate takes from a model with sliders, listen to them, look at them, compare and save them.

    Display it as a cell's value (or ``display(panel)``); ``panel.widget`` is its root VBox.

    Controls: temperature (0.1-2.0; or one per level, with "Temperature per level"), top-k (0-512,
    0 = off), top-p (0-1, 1 = off), min-p (0-1, 0 = off), duration (1-30 s), mode; in "independent" mode
    only: crossfade (0-200 ms), stitching and crossfade curve; level normalisation (peak by default),
    Griffin-Lim iterations (1-512), seed (with a button that draws a fresh one from the OS). Their ranges
    make an invalid call impossible.

    Generate runs the take in a worker thread, so that Stop (which ends it at the next window or chunk)
    can be clicked meanwhile; one take runs at a time. It shows the take's player, its spectrogram
    (seams dashed), its code histogram per level (against the training codes when the model carries
    them) and per-level statistics; the take is kept in ``panel.last_result``. Save writes it as WAV
    plus a JSON sidecar. Each take also gets a row in the history (``panel.history``, newest first, the
    last HISTORY_LENGTH takes): seed, the settings that differ from the panel's initial ones, player,
    spectrogram thumbnail, Save (into the filename box's folder) and Download (a link holding the WAV).
    Errors are shown in the panel in red, never raised from a button.

    Args:
        loaded: the model; None loads the bundled default model.
        seed: the initial value of the seed box, in [0, MAX_SEED].
        griffin_lim_iters: the initial Griffin-Lim iterations per take, in [1, 512] (fewer is faster and
            rougher).
    """

    def __init__(self, loaded: LoadedVQModel | None = None, *, seed: int = 0,
                 griffin_lim_iters: int = GenerationSettings.griffin_lim_iters) -> None:
        self.loaded = load_default_model() if loaded is None else loaded
        self.last_result: GenerationResult | None = None
        self.history: list[HistoryRow] = []
        self._generating = threading.Lock()
        self._stop = threading.Event()
        self._history_lock = threading.Lock()  # the worker adds rows while Clear may run on the main thread
        self._takes_made = 0
        self._worker: threading.Thread | None = None

        self._build_controls(seed, check_int("griffin_lim_iters", griffin_lim_iters, 1, 512))
        self._build_outputs()
        self.generate_button.on_click(self._on_generate_click)
        self.stop_button.on_click(lambda _button: self.stop())
        self.randomize_button.on_click(lambda _button: self.randomize_seed())
        self.save_button.on_click(lambda _button: self.save())
        self.clear_history_button.on_click(lambda _button: self.clear_history())
        self.mode.observe(lambda _change: self._update_enabled(), names="value")
        self.temperature_per_level.observe(self._on_per_level_change, names="value")
        self._update_enabled()
        self._initial_settings = self.settings()
        self.widget = self._layout()

    def _build_controls(self, seed: int, griffin_lim_iters: int) -> None:
        """The controls, in the order the panel shows them."""
        def slider(kind: type, value: float, low: float, high: float, step: float, description: str) -> widgets.Widget:
            return kind(value=value, min=low, max=high, step=step, description=description, style=_WIDE_LABEL,
                        layout=widgets.Layout(width=_SLIDER_WIDTH))

        self.temperature = slider(widgets.FloatSlider, 1.0, 0.1, 2.0, 0.05, "Temperature")
        self.temperature_per_level = widgets.Checkbox(value=False, description="Temperature per level",
                                                      indent=False, style=_WIDE_LABEL)
        self.level_temperatures = [
            slider(widgets.FloatSlider, 1.0, 0.1, 2.0, 0.05, f"Level {q}{' (coarsest)' if q == 0 else ''} temperature")
            for q in range(self.loaded.vqvae_config.levels)]
        self.top_k = slider(widgets.IntSlider, 0, 0, 512, 1, "Top-k (0 = off)")
        self.top_p = slider(widgets.FloatSlider, 1.0, 0.0, 1.0, 0.01, "Top-p (1 = off)")
        self.min_p = slider(widgets.FloatSlider, 0.0, 0.0, 1.0, 0.01, "Min-p (0 = off)")
        self.duration = slider(widgets.FloatSlider, 10.0, 1.0, 30.0, 0.5, "Duration (s)")
        self.mode = widgets.ToggleButtons(options=list(MODES), value=GenerationSettings.mode, description="Mode",
                                          style=_TOGGLE_STYLE)
        self.crossfade = slider(widgets.IntSlider, 50, 0, 200, 5, "Crossfade (ms)")
        self.stitch = widgets.ToggleButtons(options=list(STITCHES), value=GenerationSettings.stitch,
                                            description="Stitching", style=_TOGGLE_STYLE,
                                            tooltips=["Griffin-Lim per chunk, then a waveform crossfade",
                                                      "chunk mels overlap-added, then one Griffin-Lim pass"])
        self.crossfade_curve = widgets.Dropdown(options=list(CURVES), value=GenerationSettings.crossfade_curve,
                                                description="Crossfade curve", style=_WIDE_LABEL)
        self.normalise = widgets.ToggleButtons(options=list(NORMALISATIONS), value=GenerationSettings.normalise,
                                               description="Level", style=_TOGGLE_STYLE,
                                               tooltips=["loudest sample at -1 dBFS", "RMS at -20 dBFS", "as made"])
        self.griffin_lim = slider(widgets.IntSlider, griffin_lim_iters, 1, 512, 1, "Griffin-Lim iterations")
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=MAX_SEED, description="Seed", style=_WIDE_LABEL)
        self.randomize_button = widgets.Button(description="Random seed", icon="random",
                                               tooltip="Draw a fresh seed from the operating system")
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
        self.stop_button = widgets.Button(description="Stop", icon="stop", disabled=True,
                                          tooltip="End the take at its next window or chunk")

    def _build_outputs(self) -> None:
        """Progress, the latest take's full view and the history."""
        self.progress = widgets.FloatProgress(value=0.0, min=0.0, max=1.0)
        self.status = widgets.Label("")
        self.error = widgets.HTML("")
        self.summary = widgets.HTML("")
        self.audio_html = widgets.HTML("")
        self.spectrogram_image = widgets.Image(format="png", layout=_image_layout())
        self.histogram_image = widgets.Image(format="png", layout=_image_layout())
        self.stats_html = widgets.HTML("")
        self.filename = widgets.Text(value="take.wav", description="File", style=_WIDE_LABEL)
        self.save_button = widgets.Button(description="Save", icon="save", disabled=True,
                                          tooltip="Write the take as WAV with a JSON sidecar")
        self.saved = widgets.HTML("")  # HTML, not Label: a Label cuts a long path short instead of wrapping
        self.history_box = widgets.VBox([])
        self.clear_history_button = widgets.Button(description="Clear history", icon="trash",
                                                   tooltip="Remove every row below (the files saved stay)")

    def _layout(self) -> widgets.VBox:
        # Hidden until the first take, so an empty player and empty images never show.
        self.take_box = widgets.VBox(
            [self.summary, self.audio_html, self.spectrogram_image, self.histogram_image, self.stats_html,
             widgets.HBox([self.filename, self.save_button, self.saved])],
            layout=widgets.Layout(display="none"),
        )
        self.history_section = widgets.VBox([
            widgets.HBox([widgets.HTML(f"<b>History</b> (newest first, the last {HISTORY_LENGTH} takes)"),
                          self.clear_history_button]),
            self.history_box,
        ], layout=widgets.Layout(display="none"))
        self.level_box = widgets.VBox(self.level_temperatures, layout=widgets.Layout(display="none"))
        controls = widgets.HBox([
            widgets.VBox([self.temperature, self.temperature_per_level, self.level_box, self.top_k, self.top_p,
                          self.min_p, self.griffin_lim]),
            widgets.VBox([self.duration, self.mode, self.crossfade, self.stitch, self.crossfade_curve,
                          self.normalise, widgets.HBox([self.seed, self.randomize_button])]),
        ])
        return widgets.VBox([
            widgets.HTML(f"<b>distill_nb generator</b> &middot; {html.escape(_model_description(self.loaded))}"),
            controls,
            widgets.HBox([self.generate_button, self.stop_button, self.progress, self.status]),
            self.error,
            self.take_box,
            self.history_section,
        ])

    def _ipython_display_(self) -> None:
        display_with_fallback(self.widget, "distill_nb generator panel", self.static_html())

    def static_html(self) -> str:
        """The panel without a kernel: a note, and the latest take's player, spectrogram and statistics."""
        note = ("<p><b>distill_nb generator</b>: an interactive panel; it appears when the notebook runs with "
                "a live kernel.</p>")
        if self.last_result is None:
            return note
        return (note + f"<p>{self.summary.value}</p>" + self.audio_html.value
                + _img_html(self.spectrogram_image.value) + self.stats_html.value)

    @property
    def griffin_lim_iters(self) -> int:
        """Griffin-Lim iterations per take: the Griffin-Lim slider's value."""
        return self.griffin_lim.value

    @griffin_lim_iters.setter
    def griffin_lim_iters(self, value: int) -> None:
        self.griffin_lim.value = check_int("griffin_lim_iters", value, 1, 512)

    def settings(self) -> GenerationSettings:
        """The GenerationSettings the controls describe."""
        per_level = self.temperature_per_level.value
        return GenerationSettings(
            temperature=tuple(s.value for s in self.level_temperatures) if per_level else self.temperature.value,
            top_k=self.top_k.value,
            top_p=self.top_p.value,
            min_p=self.min_p.value,
            duration_s=self.duration.value,
            overlap_samples=round(self.crossfade.value * self.loaded.sample_rate / 1000),
            mode=self.mode.value,
            stitch=self.stitch.value,
            crossfade_curve=self.crossfade_curve.value,
            griffin_lim_iters=self.griffin_lim.value,
            normalise=self.normalise.value,
        )

    def generate(self) -> GenerationResult | None:
        """Generate one take with the current controls and seed, in the calling thread.

        The Generate button runs this in a worker thread (see ``wait``). Errors are shown in the panel,
        not raised; a take ended by Stop shows "Stopped". Returns the take (also kept in ``last_result``
        and added to the history), or None when generating failed or was stopped.
        """
        # One take at a time: a second click (or thread) while one runs would re-enable the button early
        # and could show the older take last.
        if not self._generating.acquire(blocking=False):
            self.status.value = "A take is already being generated"
            return None
        self._stop.clear()
        self._set_running(True)
        self._show_error(None)
        self.progress.bar_style = ""
        self._report(0.0, "Starting...")
        try:
            result = generate(self.loaded, self.settings(), seed=self.seed.value, progress=self._report)
            spectrogram_png = self._show_take(result)
            self._add_to_history(result, spectrogram_png)
            self.last_result = result
            self.progress.bar_style = "success"
            if self._stop.is_set():  # Stop came after the last window: the take was complete anyway
                self.status.value = "Done: the take was finished before Stop"
        except TakeStopped:
            self.progress.bar_style = "warning"
            self.status.value = "Stopped"
            return None
        except Exception as exc:  # a button callback has nowhere but the panel to report to
            self.progress.bar_style = "danger"
            self.status.value = "Failed"
            self._show_error(exc)
            return None
        finally:
            self._set_running(False)
            self._generating.release()
        return result

    def stop(self) -> bool:
        """Ask the running take to end at its next window or chunk (what the Stop button does).

        Returns False when no take is running.
        """
        if not self._generating.locked():
            return False
        self._stop.set()
        self.status.value = "Stopping..."
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the take the Generate button started; True once none runs (False after ``timeout`` s)."""
        worker = self._worker
        if worker is not None:
            worker.join(timeout)
        return worker is None or not worker.is_alive()

    def randomize_seed(self) -> int:
        """Put a new seed, drawn from the OS (no global RNG), into the seed box and return it."""
        seed = self.seed.value
        while seed == self.seed.value:
            seed = secrets.randbelow(MAX_SEED + 1)
        self.seed.value = seed
        return seed

    def save(self, path: str | os.PathLike | None = None) -> Path | None:
        """Save the last take with its JSON sidecar (what the Save button does).

        Args:
            path: a .wav (or .flac) file; None uses the filename box. A relative path is relative to
                the kernel's working directory.

        Errors are shown in the panel, not raised. Returns the path written, or None on failure.
        """
        if path is not None:
            self.filename.value = os.fspath(path)
        try:
            if self.last_result is None:
                raise ValueError("there is no take to save yet: click Generate first")
            written = _save_take(self.last_result, Path(self.filename.value).expanduser())
        except Exception as exc:  # as in generate: shown in the panel
            self.saved.value = ""
            self._show_error(exc)
            return None
        self._show_error(None)
        self.saved.value = html.escape(f"Saved {written} and {written.with_suffix('.json').name}")
        return written

    def save_history_row(self, row: HistoryRow) -> Path | None:
        """Save a history row's take with its sidecar into the filename box's folder (what the row's Save
        button does), as ``row.filename`` (named after the box's stem when the take was made, like the
        row's Download) with the box's extension.

        Errors are shown in the panel, not raised. Returns the path written, or None on failure.
        """
        template = Path(self.filename.value).expanduser()
        try:
            name = Path(row.filename).with_suffix(template.suffix or ".wav").name
            written = _save_take(row.take, template.parent / name)
        except Exception as exc:  # as in generate: shown in the panel
            row.saved.value = ""
            self._show_error(exc)
            return None
        self._show_error(None)
        row.saved.value = f"<small>Saved {html.escape(written.name)}</small>"
        return written

    def clear_history(self) -> None:
        """Remove every history row (the latest take's full view and ``last_result`` stay)."""
        with self._history_lock:
            rows, self.history = self.history, []
            self.history_box.children = ()
            self.history_section.layout.display = "none"
        for row in rows:
            _close_tree(row.widget)

    def _on_generate_click(self, _button: widgets.Button) -> None:
        # ipykernel handles comm messages, the Stop click among them, on its main thread: the take runs off it.
        if self._worker is not None and self._worker.is_alive():
            self.status.value = "A take is already being generated"
            return
        self._worker = threading.Thread(target=self.generate, name="distill_nb take", daemon=True)
        self._worker.start()

    def _set_running(self, running: bool) -> None:
        self.generate_button.disabled = running
        self.stop_button.disabled = not running
        self.save_button.disabled = running or self.last_result is None

    def _report(self, fraction: float, message: str) -> None:
        """generate()'s progress callback: fraction in [0, 1] and a message; raises TakeStopped after Stop."""
        # Generation calls back between windows and chunks: the places where a take can end cleanly.
        if self._stop.is_set() and fraction < 1.0:
            raise TakeStopped("the take was stopped")
        self.progress.value = fraction
        self.status.value = message

    def _show_take(self, take: GenerationResult) -> bytes:
        """Render the take's full view; returns its spectrogram PNG (the history's thumbnail)."""
        histograms = code_histograms(take.codes, self.loaded.vqvae_config.codebook_size)
        spectrogram = plot_spectrogram(take.audio, spectrogram=self.loaded.spectrogram,
                                       seam_samples=take.seam_samples,
                                       title="Spectrogram of the take (dashed lines: seams)")
        histogram = plot_code_histograms(histograms, reference=self.loaded.train_code_counts,
                                         title="Code usage per level")
        spectrogram_png = figure_png(spectrogram)
        self.summary.value = (f"<b>Take</b>: seed {take.seed}, {take.duration_s:.2f} s, "
                              f"generated in {take.timings['total_s']:.1f} s")
        self.audio_html.value = audio_player_html(take.audio, take.sample_rate)
        self.spectrogram_image.value = spectrogram_png
        self.histogram_image.value = figure_png(histogram)
        self.stats_html.value = code_stats_html(histograms, self.loaded.train_code_counts)
        self.saved.value = ""
        self.take_box.layout.display = None
        return spectrogram_png

    def _add_to_history(self, take: GenerationResult, spectrogram_png: bytes) -> None:
        with self._history_lock:
            self._takes_made += 1
            row = self._history_row(take, self._takes_made, spectrogram_png)
            self.history.insert(0, row)
            dropped = self.history[HISTORY_LENGTH:]
            del self.history[HISTORY_LENGTH:]
            self.history_box.children = tuple(r.widget for r in self.history)
            self.history_section.layout.display = None
        for old in dropped:  # closed, so neither the kernel nor the browser keeps their widgets
            _close_tree(old.widget)

    def _history_row(self, take: GenerationResult, number: int, spectrogram_png: bytes) -> HistoryRow:
        filename = take_filename(take, Path(self.filename.value).stem or "take")
        changed = settings_summary(take.settings, self._initial_settings)
        label = widgets.HTML(f"<b>#{number}</b> &middot; seed {take.seed} &middot; {take.duration_s:.2f} s"
                             f"<br><small>{html.escape(changed)}</small>",
                             layout=widgets.Layout(width="260px"))
        player = widgets.HTML(audio_player_html(take.audio, take.sample_rate))
        thumbnail = widgets.Image(value=spectrogram_png, format="png",
                                  layout=widgets.Layout(width="240px", height="auto"))
        save_button = widgets.Button(description="Save", icon="save",
                                     tooltip="Write this take and its JSON sidecar into the filename box's folder")
        download = widgets.HTML(download_link_html(take.audio, take.sample_rate, filename))
        saved = widgets.HTML("")
        actions = widgets.VBox([save_button, download, saved], layout=widgets.Layout(align_items="flex-start"))
        box = widgets.HBox([label, player, thumbnail, actions], layout=widgets.Layout(align_items="center"))
        box.add_class(_HISTORY_ROW_CLASS)
        row = HistoryRow(take, number, box, save_button, download, saved, filename)
        save_button.on_click(lambda _button: self.save_history_row(row))
        return row

    def _show_error(self, exc: Exception | None) -> None:
        self.error.value = "" if exc is None else error_html(exc)

    def _update_enabled(self) -> None:
        # Continuation chunks overlap by their shared code columns: no crossfade, stitching or curve applies.
        continuation = self.mode.value == "continuation"
        for control in (self.crossfade, self.stitch, self.crossfade_curve):
            control.disabled = continuation

    def _on_per_level_change(self, change: dict) -> None:
        per_level = change["new"]
        if per_level:  # start every level from the single temperature in use until now
            for level_slider in self.level_temperatures:
                level_slider.value = self.temperature.value
        self.temperature.disabled = per_level
        self.level_box.layout.display = None if per_level else "none"


class CompareGrid:
    """The same seed under several settings, side by side.

    One column per setting: its label, the player, the code histogram per level (against the
    training codes when the model carries them) and a table of entropy, unique codes and JS
    divergence to the training codes. Every take is generated on construction; errors are raised.
    Display it as a cell's value; ``grid.widget`` is its GridBox, ``grid.results`` the takes.

    Args:
        loaded: the model; None loads the bundled default model.
        settings_list: one GenerationSettings, or a dict of fields replacing those of ``base``, per column.
        seed: the seed every column uses, in [0, 2**63).
        labels: one column title per setting; by default the fields in which the settings differ.
        base: the settings the dicts modify (default GenerationSettings()).
        progress: called with (fraction in [0, 1], message) over all columns.
    """

    def __init__(self, loaded: LoadedVQModel | None = None,
                 settings_list: Sequence[GenerationSettings | Mapping] | None = None, *, seed: int = 0,
                 labels: Sequence[str] | None = None, base: GenerationSettings | None = None,
                 progress: Progress | None = None) -> None:
        if not settings_list:
            raise ValueError("settings_list must hold at least one GenerationSettings or dict of fields")
        base = GenerationSettings() if base is None else base
        self.settings = [_as_settings(item, base, f"settings_list[{i}]") for i, item in enumerate(settings_list)]
        if labels is None:
            labels = _difference_labels(self.settings)
        elif len(labels) != len(self.settings):
            raise ValueError(f"labels must hold one label per setting ({len(self.settings)}), got {len(labels)}")
        self.labels = [str(label) for label in labels]
        self.loaded = load_default_model() if loaded is None else loaded
        self.seed = seed

        self.results: list[GenerationResult] = []
        self.columns: list[widgets.VBox] = []
        codebook_size = self.loaded.vqvae_config.codebook_size
        train_counts = self.loaded.train_code_counts
        for i, (label, settings) in enumerate(zip(self.labels, self.settings)):
            column_progress = None if progress is None else _column_progress(progress, i, len(self.settings))
            take = generate(self.loaded, settings, seed=seed, progress=column_progress)
            histograms = code_histograms(take.codes, codebook_size)
            figure = plot_code_histograms(histograms, reference=train_counts, title=label)
            self.results.append(take)
            self.columns.append(widgets.VBox([
                widgets.HTML(f"<b>{html.escape(label)}</b><br>seed {take.seed}, {take.duration_s:.2f} s"),
                widgets.HTML(audio_player_html(take.audio, take.sample_rate)),
                widgets.Image(value=figure_png(figure), format="png", layout=_image_layout()),
                widgets.HTML(code_stats_html(histograms, train_counts)),
            ]))
        self.widget = widgets.GridBox(self.columns, layout=widgets.Layout(
            grid_template_columns=f"repeat({len(self.columns)}, minmax(0, 1fr))", grid_gap="12px"))

    def _ipython_display_(self) -> None:
        display_with_fallback(self.widget, f"distill_nb compare grid: {', '.join(self.labels)}", self.static_html())

    def static_html(self) -> str:
        """The grid without a kernel: one table column per setting, with its player, histogram and statistics."""
        cells = "".join("<td style='vertical-align: top'>" + "".join(_static_html(child) for child in column.children)
                        + "</td>" for column in self.columns)
        return f"<table><tr>{cells}</tr></table>"


# --------------------------------------------------------------------------- rendering helpers


class Player:
    """An inline audio player for a notebook: make it a cell's value, or ``display()`` it.

    Unlike ``IPython.display.Audio``, it plays in a notebook the front end does not trust (any freshly cloned
    one): JupyterLab's sanitizer strips a data URI from a <source> element, not from the <audio> element itself.

    Args:
        audio: float (n,) samples in [-1, 1] (numpy or torch); played as they are, not normalised.
        sample_rate: Hz.
    """

    def __init__(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> None:
        samples = audio.detach().cpu().numpy() if isinstance(audio, torch.Tensor) else np.asarray(audio)
        if samples.ndim != 1 or samples.size == 0:
            raise ValueError(f"audio must be a non-empty mono array of shape (n,), got shape {samples.shape}")
        self.audio, self.sample_rate = samples, check_int("sample_rate", sample_rate, 1)

    def _repr_html_(self) -> str:
        return audio_player_html(self.audio, self.sample_rate)

    def __repr__(self) -> str:
        return f"Player({len(self.audio) / self.sample_rate:.2f} s at {self.sample_rate} Hz)"


def audio_player_html(audio: np.ndarray, sample_rate: int) -> str:
    """An <audio controls> element playing ``audio`` (float [n] in [-1, 1]) from a 16-bit WAV data URI on the
    element itself (see `Player`).

    Not normalised, so the player is as loud as the saved file; samples beyond full scale are
    clipped, as ``save_audio`` clips them.
    """
    uri = "data:audio/wav;base64," + base64.b64encode(wav_bytes(audio, sample_rate, "PCM_16")).decode("ascii")
    return f'<audio controls="controls" src="{uri}"></audio>'


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed so a notebook does not also show it."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PNG_DPI)
    plt.close(figure)
    return buffer.getvalue()


def code_stats_html(histograms: torch.Tensor, train_code_counts: torch.Tensor | None = None) -> str:
    """An HTML table, one row per level: entropy (bits), unique codes and, when training counts
    [Q, K] are given, the Jensen-Shannon divergence (bits) between the two code distributions.

    Args:
        histograms: long [Q, K] code counts of the take (``analysis.code_histograms``).
    """
    codebook_size = histograms.shape[1]
    header = ["level", "entropy (bits)", "unique codes"]
    rows = [[str(stats.level), f"{stats.entropy_bits:.2f}", f"{stats.unique_codes} / {codebook_size}"]
            for stats in level_statistics(histograms)]
    if train_code_counts is not None:
        header.append("JSD to training (bits)")
        for row, divergence in zip(rows, js_divergence(histograms, train_code_counts).tolist()):
            row.append(f"{divergence:.3f}")
    head = "".join(f"<th style='padding: 0 8px'>{name}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td style='padding: 0 8px; text-align: right'>{cell}</td>" for cell in row)
                   + "</tr>" for row in rows)
    return f"<table style='font-size: small'><tr>{head}</tr>{body}</table>"


def error_html(exc: BaseException) -> str:
    """The exception's type and message, in red."""
    return (f"<span style='color: {_ERROR_COLOR}'><b>{type(exc).__name__}</b>: "
            f"{html.escape(str(exc))}</span>")


def take_filename(take: GenerationResult, stem: str = "take") -> str:
    """'<stem>_seed<seed>_<digest>.wav': the digest covers the model name and settings, so one name is only
    ever given to one take (the same seed and settings of a model always give the same audio)."""
    described = json.dumps({"model": take.model_name, "settings": take.settings.to_dict()}, sort_keys=True)
    return f"{stem}_seed{take.seed}_{hashlib.sha256(described.encode()).hexdigest()[:6]}.wav"


def settings_summary(settings: GenerationSettings, base: GenerationSettings) -> str:
    """'temperature=0.8, top_k=5': the fields of ``settings`` that differ from ``base``, leaving out the
    stitching fields in continuation mode, where they do not apply; 'initial settings' when none differ."""
    ours, theirs = settings.to_dict(), base.to_dict()
    skipped = _INDEPENDENT_ONLY if settings.mode == "continuation" else ()
    changed = [f"{name}={_compact(value)}" for name, value in ours.items()
               if value != theirs[name] and name not in skipped]
    return ", ".join(changed) or "initial settings"


def _compact(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_compact(item) for item in value) + ")"
    return str(value)


def wav_bytes(audio: np.ndarray, sample_rate: int, subtype: str = "PCM_24") -> bytes:
    """``audio`` as a WAV file, 24-bit by default as ``save_audio`` writes it (samples beyond full scale clipped)."""
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0), sample_rate, subtype=subtype,
             format="WAV")
    return buffer.getvalue()


def download_link_html(audio: np.ndarray, sample_rate: int, filename: str) -> str:
    """A link that downloads ``audio`` as a 24-bit WAV named ``filename``, held in the link itself as a data
    URI: the browser saves it without asking the kernel."""
    uri = "data:audio/wav;base64," + base64.b64encode(wav_bytes(audio, sample_rate)).decode("ascii")
    return (f"<a href='{uri}' download='{html.escape(filename, quote=True)}' "
            f"title='Download {html.escape(filename, quote=True)}'>Download</a>")


def _save_take(take: GenerationResult, path: Path) -> Path:
    return save_audio(path, take.audio, take.sample_rate, metadata=take.to_metadata())


def _close_tree(widget: widgets.Widget) -> None:
    """Close a widget and everything inside it, its layout and style widgets included: ipywidgets keeps every
    open widget alive in a registry."""
    for child in getattr(widget, "children", ()):
        _close_tree(child)
    for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
        if isinstance(part, widgets.Widget):
            part.close()
    widget.close()


def display_with_fallback(widget: widgets.Widget, text: str, fallback_html: str) -> None:
    """Display ``widget`` with static alternatives: where no widget can be drawn (GitHub, nbconvert, a notebook
    opened without its widget state) a front end shows ``fallback_html``, or ``text``, not the widget's repr."""
    view = {"version_major": 2, "version_minor": 0, "model_id": widget.model_id}
    display({"application/vnd.jupyter.widget-view+json": view, "text/html": fallback_html, "text/plain": text},
            raw=True)


def _static_html(widget: widgets.Widget) -> str:
    if isinstance(widget, widgets.Image):
        return _img_html(widget.value)
    return widget.value if isinstance(widget, widgets.HTML) else ""


def _img_html(png: bytes) -> str:
    return f"<img style='max-width: 100%' src='data:image/png;base64,{base64.b64encode(png).decode()}'/>"


def _image_layout() -> widgets.Layout:
    # Scale figures down to the available width, keeping their aspect ratio.
    return widgets.Layout(width="100%", max_width="900px", height="auto")


def _model_description(loaded: LoadedVQModel) -> str:
    name = loaded.metadata.get("name") or "unnamed model"
    prior = "" if loaded.prior is not None else " (no prior: it cannot generate)"
    return f"{name}, {loaded.sample_rate} Hz{prior}"


def _as_settings(item: GenerationSettings | Mapping, base: GenerationSettings, name: str) -> GenerationSettings:
    if isinstance(item, GenerationSettings):
        return item
    if not isinstance(item, Mapping):
        raise TypeError(f"{name} must be a GenerationSettings or a dict of its fields, got {type(item).__name__}")
    known = {field.name for field in dataclasses.fields(GenerationSettings)}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ValueError(f"{name} has unknown fields {unknown}; GenerationSettings fields are {sorted(known)}")
    return dataclasses.replace(base, **item)


def _difference_labels(settings: list[GenerationSettings]) -> list[str]:
    """'temperature=0.5, top_k=50' per setting: the fields that are not the same in all settings."""
    dicts = [s.to_dict() for s in settings]
    varying = [name for name in dicts[0] if any(d[name] != dicts[0][name] for d in dicts)]
    if not varying:
        return [f"settings {i + 1}" for i in range(len(settings))]
    return [", ".join(f"{name}={d[name]}" for name in varying) for d in dicts]


def _column_progress(progress: Progress, index: int, count: int) -> Progress:
    """Map one column's progress into its share [index / count, (index + 1) / count] of the whole."""
    def report(fraction: float, message: str) -> None:
        progress((index + fraction) / count, f"setting {index + 1}/{count}: {message}")
    return report
