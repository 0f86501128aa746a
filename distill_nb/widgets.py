"""Notebook panels over the generation API: GeneratorPanel (make, hear, inspect and save one take)
and CompareGrid (one seed under several settings, side by side).

The only module that imports ipywidgets; it works with ipywidgets 7.7 (what Colab ships) and 8.x.

Results are rendered into widgets themselves -- the player is an HTML widget holding an <audio>
element with a WAV data URI, the figures are PNG Image widgets -- rather than displayed into an
Output widget. What a panel shows then lives in widget state: the same in a live kernel, under
nbval and in pytest, and a new take replaces the previous one instead of piling up below it.
"""

from __future__ import annotations

import dataclasses
import html
import io
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import ipywidgets as widgets
import numpy as np
import torch
from IPython.display import Audio, display
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from .analysis import code_histograms, js_divergence, level_statistics
from .audio import save_audio
from .generation import MODES, GenerationResult, GenerationSettings, generate
from .loudness import NORMALISATIONS
from .model_file import LoadedVQModel, load_default_model
from .plots import plot_code_histograms, plot_spectrogram
from .progress import Progress

# The seed box's range: generation accepts seeds up to 2**63, but a widget's number crosses
# JavaScript, whose integers are exact only up to 2**53; 2**31 seeds are plenty to explore.
MAX_SEED = 2**31 - 1

_WIDE_LABEL = {"description_width": "initial"}  # show whole descriptions instead of truncating them
_ERROR_COLOR = "#c62828"
_PNG_DPI = 100


class GeneratorPanel:
    """Generate takes from a model with sliders, listen to them, look at them and save them.

    Display it as a cell's value (or ``display(panel)``); ``panel.widget`` is its root VBox.

    Controls: temperature (0.1-2.0), top-k (0-512, 0 = off), top-p (0-1, 1 = off), min-p (0-1,
    0 = off), duration (1-30 s), crossfade (0-200 ms, "independent" mode only), mode, level normalisation
    (peak by default), seed (with a button that draws a fresh one from the OS). Their ranges make an invalid
    call impossible.

    Generate shows the take's player, its spectrogram (seams dashed), its code histogram per level
    (against the training codes when the model carries them) and per-level statistics; the take is
    kept in ``panel.last_result``. Save writes it as WAV plus a JSON sidecar. Errors are shown in
    the panel in red, never raised from a button.

    Args:
        loaded: the model; None loads the bundled default model.
        seed: the initial value of the seed box, in [0, MAX_SEED].
        griffin_lim_iters: Griffin-Lim iterations per take (fewer is faster and rougher).
    """

    def __init__(self, loaded: LoadedVQModel | None = None, *, seed: int = 0,
                 griffin_lim_iters: int = GenerationSettings.griffin_lim_iters) -> None:
        # Long: every control and output declared here, in the order the panel shows them.
        self.loaded = load_default_model() if loaded is None else loaded
        self.griffin_lim_iters = griffin_lim_iters
        self.last_result: GenerationResult | None = None
        self._generating = threading.Lock()

        self.temperature = widgets.FloatSlider(value=1.0, min=0.1, max=2.0, step=0.05,
                                               description="Temperature", style=_WIDE_LABEL)
        self.top_k = widgets.IntSlider(value=0, min=0, max=512, description="Top-k (0 = off)", style=_WIDE_LABEL)
        self.top_p = widgets.FloatSlider(value=1.0, min=0.0, max=1.0, step=0.01,
                                         description="Top-p (1 = off)", style=_WIDE_LABEL)
        self.min_p = widgets.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.01,
                                         description="Min-p (0 = off)", style=_WIDE_LABEL)
        self.duration = widgets.FloatSlider(value=10.0, min=1.0, max=30.0, step=0.5,
                                            description="Duration (s)", style=_WIDE_LABEL)
        self.crossfade = widgets.IntSlider(value=50, min=0, max=200, step=5,
                                           description="Crossfade (ms)", style=_WIDE_LABEL)
        self.mode = widgets.ToggleButtons(options=list(MODES), value=GenerationSettings.mode, description="Mode",
                                          style=_WIDE_LABEL)
        self.normalise = widgets.ToggleButtons(options=list(NORMALISATIONS), value=GenerationSettings.normalise,
                                               description="Level", style=_WIDE_LABEL,
                                               tooltips=["loudest sample at -1 dBFS", "RMS at -20 dBFS", "as made"])
        self.seed = widgets.BoundedIntText(value=seed, min=0, max=MAX_SEED, description="Seed",
                                           style=_WIDE_LABEL)
        self.randomize_button = widgets.Button(description="Random seed", icon="random",
                                               tooltip="Draw a fresh seed from the operating system")
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play")
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
        self.saved = widgets.Label("")

        self.generate_button.on_click(lambda _button: self.generate())
        self.randomize_button.on_click(lambda _button: self.randomize_seed())
        self.save_button.on_click(lambda _button: self.save())
        self.mode.observe(self._on_mode_change, names="value")
        self.crossfade.disabled = self.mode.value == "continuation"

        # Hidden until the first take, so an empty player and empty images never show.
        self.take_box = widgets.VBox(
            [self.summary, self.audio_html, self.spectrogram_image, self.histogram_image, self.stats_html,
             widgets.HBox([self.filename, self.save_button, self.saved])],
            layout=widgets.Layout(display="none"),
        )
        controls = widgets.HBox([
            widgets.VBox([self.temperature, self.top_k, self.top_p, self.min_p]),
            widgets.VBox([self.duration, self.crossfade, self.mode, self.normalise,
                          widgets.HBox([self.seed, self.randomize_button])]),
        ])
        self.widget = widgets.VBox([
            widgets.HTML(f"<b>distill_nb generator</b> &middot; {html.escape(_model_description(self.loaded))}"),
            controls,
            widgets.HBox([self.generate_button, self.progress, self.status]),
            self.error,
            self.take_box,
        ])

    def _ipython_display_(self) -> None:
        display(self.widget)

    def settings(self) -> GenerationSettings:
        """The GenerationSettings the controls describe."""
        return GenerationSettings(
            temperature=self.temperature.value,
            top_k=self.top_k.value,
            top_p=self.top_p.value,
            min_p=self.min_p.value,
            duration_s=self.duration.value,
            overlap_samples=round(self.crossfade.value * self.loaded.sample_rate / 1000),
            mode=self.mode.value,
            griffin_lim_iters=self.griffin_lim_iters,
            normalise=self.normalise.value,
        )

    def generate(self) -> GenerationResult | None:
        """Generate one take with the current controls and seed (what the Generate button does).

        Errors are shown in the panel, not raised. Returns the take (also kept in ``last_result``),
        or None when generating failed.
        """
        # One take at a time: a second click (or thread) while one runs would re-enable the button early
        # and could show the older take last.
        if not self._generating.acquire(blocking=False):
            self.status.value = "A take is already being generated"
            return None
        self.generate_button.disabled = True
        self.save_button.disabled = True
        self._show_error(None)
        self.progress.bar_style = ""
        self._report(0.0, "Starting...")
        try:
            result = generate(self.loaded, self.settings(), seed=self.seed.value, progress=self._report)
            self._show_take(result)
            self.last_result = result
            self.progress.bar_style = "success"
        except Exception as exc:  # a button callback has nowhere but the panel to report to
            self.progress.bar_style = "danger"
            self.status.value = "Failed"
            self._show_error(exc)
            return None
        finally:
            self.generate_button.disabled = False
            self.save_button.disabled = self.last_result is None
            self._generating.release()
        return result

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
            take = self.last_result
            written = save_audio(Path(self.filename.value).expanduser(), take.audio, take.sample_rate,
                                 metadata=take.to_metadata())
        except Exception as exc:  # as in generate: shown in the panel
            self.saved.value = ""
            self._show_error(exc)
            return None
        self._show_error(None)
        self.saved.value = f"Saved {written} and {written.with_suffix('.json').name}"
        return written

    def _report(self, fraction: float, message: str) -> None:
        """generate()'s progress callback: fraction in [0, 1] and a message."""
        self.progress.value = fraction
        self.status.value = message

    def _show_take(self, take: GenerationResult) -> None:
        histograms = code_histograms(take.codes, self.loaded.vqvae_config.codebook_size)
        spectrogram = plot_spectrogram(take.audio, spectrogram=self.loaded.spectrogram,
                                       seam_samples=take.seam_samples,
                                       title="Spectrogram of the take (dashed lines: seams)")
        histogram = plot_code_histograms(histograms, reference=self.loaded.train_code_counts,
                                         title="Code usage per level")
        self.summary.value = (f"<b>Take</b>: seed {take.seed}, {take.duration_s:.2f} s, "
                              f"generated in {take.timings['total_s']:.1f} s")
        self.audio_html.value = audio_player_html(take.audio, take.sample_rate)
        self.spectrogram_image.value = figure_png(spectrogram)
        self.histogram_image.value = figure_png(histogram)
        self.stats_html.value = code_stats_html(histograms, self.loaded.train_code_counts)
        self.saved.value = ""
        self.take_box.layout.display = None

    def _show_error(self, exc: Exception | None) -> None:
        self.error.value = "" if exc is None else error_html(exc)

    def _on_mode_change(self, change: dict) -> None:
        # Continuation chunks overlap by their shared code columns; the crossfade length is unused.
        self.crossfade.disabled = change["new"] == "continuation"


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
        display(self.widget)


# --------------------------------------------------------------------------- rendering helpers


def audio_player_html(audio: np.ndarray, sample_rate: int) -> str:
    """An <audio controls> element playing ``audio`` (float [n] in [-1, 1]) from a 16-bit WAV data URI.

    Not normalised, so the player is as loud as the saved file; samples beyond full scale are
    clipped, as ``save_audio`` clips them.
    """
    return Audio(np.clip(audio, -1.0, 1.0), rate=sample_rate, normalize=False)._repr_html_()


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
