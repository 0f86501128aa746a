"""GeneratorPanel and CompareGrid driven from pytest, without a browser.

Runs under ipywidgets 8 (the venv) and 7.7 (Colab's; `make test-widgets7` puts it first on
PYTHONPATH). Generation is kept tiny: an 8 kHz random-init model and 2 Griffin-Lim iterations.
"""

import base64
import dataclasses
import io
import json
import os
import random
import re
import threading
import time
import wave

import ipywidgets
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_H, TINY_K, TINY_Q, TINY_SR, tiny_model
from traitlets import TraitError

import distill_nb.widgets as widgets_module
from distill_nb.audio import read_sidecar
from distill_nb.generation import GenerationResult, GenerationSettings, generate
from distill_nb.widgets import HISTORY_LENGTH, MAX_SEED, CompareGrid, GeneratorPanel

# 8 kHz chunks, hop 64 -> 126 frames, 32 mels -> a 2 x 8 grid of 2 levels: 32 tokens per chunk.
SR = TINY_SR
H, Q, K = TINY_H, TINY_Q, TINY_K
FAST_GL = 2
WAV_URI = re.compile(r'src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"')
DOWNLOAD_URI = re.compile(r"href='data:audio/wav;base64,([A-Za-z0-9+/=]+)' download='([^']+)'")
PCM_24_STEP = 2.0**-23  # a 24-bit WAV holds full scale in 2**23 steps; read back, a sample is within one step
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def loaded():
    return tiny_model(with_counts=True)


@pytest.fixture
def panel(loaded):
    panel = GeneratorPanel(loaded, seed=7, griffin_lim_iters=FAST_GL)
    panel.duration.value = 1.0
    return panel


def click_generate(panel):
    """Click Generate and wait for the take, which the button runs in a worker thread."""
    panel.generate_button.click()
    assert panel.wait(60), "the take did not finish within 60 s"
    return panel.last_result


def decoded_wav(player_html: str) -> tuple[int, int]:
    """(sample rate, frames) of the WAV inside an <audio> element's data URI."""
    match = WAV_URI.search(player_html)
    assert match, f"no WAV data URI in {player_html[:200]!r}"
    with wave.open(io.BytesIO(base64.b64decode(match.group(1)))) as wav:
        return wav.getframerate(), wav.getnframes()


def descendants(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from descendants(child)


def ancestors(root, target):
    """The containers from root down to target's parent, or None when target is not below root."""
    if root is target:
        return []
    for child in getattr(root, "children", ()):
        path = ancestors(child, target)
        if path is not None:
            return [root, *path]
    return None


def test_runs_under_the_expected_ipywidgets_major_version(record_property):
    # The 7.7 runs say so in EXPECTED_IPYWIDGETS_MAJOR (make test-widgets7, make test-colab); otherwise 8.x.
    major = int(ipywidgets.__version__.split(".")[0])
    expected = int(os.environ.get("EXPECTED_IPYWIDGETS_MAJOR", "8"))
    record_property("ipywidgets_version", ipywidgets.__version__)
    print(f"ipywidgets {ipywidgets.__version__}")
    assert major == expected, f"ipywidgets {ipywidgets.__version__} imported from {ipywidgets.__file__}"


def test_controls_have_the_documented_ranges_and_defaults(panel):
    expected = {  # widget: (min, max, default)
        panel.temperature: (0.1, 2.0, 1.0), panel.top_k: (0, 512, 0), panel.top_p: (0.0, 1.0, 1.0),
        panel.min_p: (0.0, 1.0, 0.0), panel.crossfade: (0, 200, 50), panel.seed: (0, 2**31 - 1, 7),
        panel.griffin_lim: (1, 512, FAST_GL),
        **{level: (0.1, 2.0, 1.0) for level in panel.level_temperatures},
    }
    for control, (low, high, default) in expected.items():
        assert (control.min, control.max, control.value) == (low, high, default), control.description
    assert (panel.duration.min, panel.duration.max) == (1.0, 30.0)
    assert GeneratorPanel(panel.loaded).duration.value == 10.0
    # The panel starts on the library's default mode, in which the crossfade slider does not apply.
    assert panel.mode.options == ("continuation", "independent") and panel.mode.value == "continuation"
    # Takes are level-normalised by default, as the library and the CLI do.
    assert panel.normalise.options == ("peak", "rms", "off") and panel.normalise.value == "peak"
    panel.normalise.value = "off"
    assert panel.settings().normalise == "off"
    panel.normalise.value = "peak"
    assert panel.crossfade.disabled
    assert panel.stitch.options == ("crossfade", "overlap_add") and panel.stitch.value == "crossfade"
    assert panel.crossfade_curve.options == ("equal_power", "linear", "hann")
    assert panel.crossfade_curve.value == "equal_power"
    # One temperature slider per level of the model, used only once "Temperature per level" is ticked.
    assert len(panel.level_temperatures) == panel.loaded.vqvae_config.levels == Q
    assert not panel.temperature_per_level.value and panel.level_box.layout.display == "none"
    assert GeneratorPanel(panel.loaded).griffin_lim.value == GenerationSettings.griffin_lim_iters
    assert panel.history == [] and panel.history_section.layout.display == "none"


def test_clicking_generate_makes_a_take_with_the_controls_settings(panel):
    panel.temperature.value = 0.8
    panel.top_k.value = 5
    panel.top_p.value = 0.5
    panel.min_p.value = 0.05
    panel.duration.value = 1.5
    panel.mode.value = "independent"
    panel.crossfade.value = 100
    assert not panel.crossfade.disabled
    button_states, stop_states = [], []
    panel.generate_button.observe(lambda change: button_states.append(change["new"]), names="disabled")
    panel.stop_button.observe(lambda change: stop_states.append(change["new"]), names="disabled")

    take = click_generate(panel)

    assert isinstance(take, GenerationResult), panel.error.value
    assert take.seed == panel.seed.value == 7
    assert take.settings == GenerationSettings(temperature=0.8, top_k=5, top_p=0.5, min_p=0.05, duration_s=1.5,
                                               overlap_samples=round(100 * SR / 1000), mode="independent",
                                               griffin_lim_iters=FAST_GL)
    assert take.duration_s == 1.5 and len(take.audio) == round(1.5 * SR)
    # What the panel rendered: a player with exactly the take's samples, and both figures.
    assert decoded_wav(panel.audio_html.value) == (SR, len(take.audio))
    assert "<audio" in panel.audio_html.value
    assert bytes(panel.spectrogram_image.value).startswith(PNG_MAGIC)
    assert bytes(panel.histogram_image.value).startswith(PNG_MAGIC)
    assert "JSD to training" in panel.stats_html.value and panel.stats_html.value.count("<tr>") == 1 + Q
    assert "seed 7" in panel.summary.value and panel.take_box.layout.display is None
    # Disabled while generating, enabled again after; progress complete; no error.
    assert button_states == [True, False] and not panel.generate_button.disabled
    assert stop_states == [False, True] and panel.stop_button.disabled
    assert panel.progress.value == 1.0 and panel.progress.bar_style == "success"
    assert panel.status.value.startswith("Done") and panel.error.value == ""
    assert not panel.save_button.disabled


def test_the_take_is_the_one_the_library_makes_for_that_seed(panel):
    take = panel.generate()
    again = generate(panel.loaded, panel.settings(), seed=panel.seed.value)
    assert torch.equal(take.codes, again.codes) and np.array_equal(take.audio, again.audio)


def test_continuation_mode_disables_the_crossfade_and_generates(panel):
    panel.mode.value = "continuation"
    assert panel.crossfade.disabled
    panel.duration.value = 2.0
    take = panel.generate()
    assert take is not None, panel.error.value
    assert take.settings.mode == "continuation" and len(take.audio) == 2 * SR
    panel.mode.value = "independent"
    assert not panel.crossfade.disabled


def test_an_error_is_shown_in_the_panel_not_raised(loaded):
    panel = GeneratorPanel(dataclasses.replace(loaded, prior=None), griffin_lim_iters=FAST_GL)
    panel.duration.value = 1.0
    assert click_generate(panel) is None
    assert panel.generate() is None  # called directly: no exception either
    assert panel.last_result is None
    assert "ValueError" in panel.error.value and "prior" in panel.error.value
    assert "color" in panel.error.value
    assert not panel.generate_button.disabled and panel.save_button.disabled
    assert panel.progress.bar_style == "danger" and panel.status.value == "Failed"
    assert panel.take_box.layout.display == "none" and panel.history == []


def test_a_failure_keeps_the_previous_take_and_the_next_success_clears_the_error(panel, loaded):
    first = panel.generate()
    panel.loaded = dataclasses.replace(loaded, prior=None)
    assert panel.generate() is None
    assert panel.last_result is first and not panel.save_button.disabled
    panel.loaded = loaded
    assert panel.generate() is not None and panel.error.value == ""


def test_a_second_generate_while_a_take_runs_is_refused_and_keeps_the_button_disabled(panel, monkeypatch):
    started, release = threading.Event(), threading.Event()
    real_generate = widgets_module.generate

    def slow_generate(*args, **kwargs):
        started.set()
        assert release.wait(30)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(widgets_module, "generate", slow_generate)
    results = []
    first = threading.Thread(target=lambda: results.append(panel.generate()))
    first.start()
    assert started.wait(30)
    assert panel.generate() is None  # the second click, while the first take runs
    assert panel.generate_button.disabled and "already" in panel.status.value
    release.set()
    first.join(30)
    assert results[0] is not None and panel.last_result is results[0]
    assert not panel.generate_button.disabled
    assert panel.generate() is not None  # free again once the take is done


@pytest.mark.parametrize("name", ["temperature", "top_k", "top_p", "min_p", "duration", "crossfade", "seed",
                                  "griffin_lim"])
def test_out_of_range_values_cannot_get_through_a_control(panel, name):
    control = getattr(panel, name)
    for value in (control.max + 1000, control.min - 1000):
        try:  # ipywidgets clamps to [min, max]; a version that rejects instead is fine too
            control.value = value
        except TraitError:
            pass
        assert control.min <= control.value <= control.max


def test_every_corner_of_the_control_ranges_is_a_valid_call(panel):
    sliders = [panel.temperature, panel.top_k, panel.top_p, panel.min_p, panel.duration, panel.crossfade,
               panel.griffin_lim, *panel.level_temperatures]
    for end in ("min", "max"):
        for slider in sliders:
            slider.value = getattr(slider, end)
        for mode in panel.mode.options:
            for stitch in panel.stitch.options:
                for per_level in (False, True):
                    panel.mode.value, panel.stitch.value, panel.temperature_per_level.value = mode, stitch, per_level
                    settings = panel.settings()  # GenerationSettings validates every field
                    assert 0 <= settings.overlap_samples < panel.loaded.chunk_samples


def test_randomize_draws_a_new_seed_without_touching_global_rngs(panel):
    states = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
    seen = {panel.seed.value}
    for _ in range(3):
        panel.randomize_button.click()
        assert panel.seed.value not in seen and 0 <= panel.seed.value <= MAX_SEED
        seen.add(panel.seed.value)
    assert torch.equal(torch.random.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]


def test_generate_uses_the_randomized_seed(panel):
    seed = panel.randomize_seed()
    assert panel.generate().seed == seed


def test_save_writes_the_take_and_its_sidecar(panel, tmp_path):
    take = panel.generate()
    target = tmp_path / "my take.wav"
    panel.filename.value = str(target)
    panel.save_button.click()  # saving runs in the kernel's thread: done when click() returns
    audio, rate = sf.read(target, dtype="float32")
    assert rate == SR and len(audio) == len(take.audio)
    assert np.allclose(audio, np.clip(take.audio, -1, 1), atol=1e-6)
    sidecar = json.loads(target.with_suffix(".json").read_text())
    assert sidecar["seed"] == 7 and sidecar["settings"] == take.settings.to_dict()
    assert str(target) in panel.saved.value and panel.error.value == ""
    assert panel.save(tmp_path / "again.wav") == tmp_path / "again.wav"
    assert panel.filename.value == str(tmp_path / "again.wav")


def test_save_errors_are_shown_in_the_panel(panel, tmp_path):
    assert panel.save(tmp_path / "early.wav") is None
    assert "click Generate first" in panel.error.value and not (tmp_path / "early.wav").exists()
    panel.generate()
    assert panel.save(tmp_path / "take.mp3") is None
    assert "ValueError" in panel.error.value and ".wav" in panel.error.value
    assert panel.saved.value == ""


def test_the_panel_displays_its_root_widget_with_a_static_fallback(panel, monkeypatch):
    shown = []
    monkeypatch.setattr(widgets_module, "display", lambda bundle, raw: shown.append((bundle, raw)))
    panel._ipython_display_()
    (bundle, raw), = shown
    assert raw and isinstance(panel.widget, ipywidgets.VBox) and "tiny" in panel.widget.children[0].value
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.widget.model_id
    # Where no widget can be drawn: a note before the first take, and the take itself after it.
    assert "interactive panel" in bundle["text/html"] and "<audio" not in bundle["text/html"]
    assert bundle["text/plain"] == "distill_nb generator panel"
    take = panel.generate()
    html = panel.static_html()
    assert f"seed {take.seed}" in html and decoded_wav(html) == (SR, len(take.audio))
    assert "data:image/png;base64," in html and "entropy" in html


def test_the_smallest_box_around_generate_and_duration_holds_the_player(panel):
    # The browser test finds the panel as the innermost widget holding the Generate button and the
    # duration slider, then waits for an <audio> inside it.
    assert panel.generate_button.description == "Generate" and "Duration" in panel.duration.description
    to_button = ancestors(panel.widget, panel.generate_button)
    to_duration = ancestors(panel.widget, panel.duration)
    common = [a for a, b in zip(to_button, to_duration) if a is b][-1]
    assert any(w is panel.audio_html for w in descendants(common))


def test_without_a_model_the_panel_loads_the_default_one(loaded, monkeypatch):
    monkeypatch.setattr(widgets_module, "load_default_model", lambda: loaded)
    assert GeneratorPanel().loaded is loaded


def row_seeds(panel):
    return [row.take.seed for row in panel.history]


def row_parts(row):
    """Every widget of a history row, layouts and styles included."""
    return [part for widget in descendants(row.widget)
            for part in (widget, widget.layout, getattr(widget, "style", None)) if part is not None]


def test_each_take_adds_a_history_row_newest_first(panel):
    takes = []
    for seed in (7, 8, 9):
        panel.seed.value = seed
        takes.append(click_generate(panel))
    assert row_seeds(panel) == [9, 8, 7] and [row.number for row in panel.history] == [3, 2, 1]
    assert [row.take for row in panel.history] == takes[::-1]
    assert list(panel.history_box.children) == [row.widget for row in panel.history]
    assert panel.history_section.layout.display is None
    for row, take in zip(panel.history, takes[::-1]):
        label, player, thumbnail = row.widget.children[:3]
        assert f"#{row.number}" in label.value and f"seed {take.seed}" in label.value
        assert decoded_wav(player.value) == (SR, len(take.audio))
        assert bytes(thumbnail.value).startswith(PNG_MAGIC)
        assert {id(row.save_button), id(row.download)} <= {id(w) for w in descendants(row.widget)}
        assert f"seed{take.seed}" in row.filename
    # The full view still shows the latest take.
    assert "seed 9" in panel.summary.value and panel.last_result is takes[-1]


def test_a_history_row_names_only_the_settings_that_changed(panel):
    first = panel.generate()
    panel.top_k.value = 5
    panel.mode.value = "independent"
    panel.stitch.value = "overlap_add"
    second = panel.generate()
    old, new = (row.widget.children[0].value for row in panel.history[::-1])
    # duration_s was changed by the fixture; the panel's initial settings are the reference.
    assert "top_k" not in old and "duration_s=1" in old
    assert "top_k=5" in new and "mode=independent" in new and "stitch=overlap_add" in new
    assert first.seed == second.seed and panel.history[0].filename != panel.history[1].filename


def test_the_history_is_bounded_and_dropped_rows_are_closed(panel, monkeypatch):
    assert HISTORY_LENGTH == 20
    monkeypatch.setattr(widgets_module, "HISTORY_LENGTH", 2)
    for seed in (1, 2):
        panel.seed.value = seed
        panel.generate()
    oldest = panel.history[-1]
    panel.seed.value = 3
    panel.generate()
    assert row_seeds(panel) == [3, 2] and len(panel.history_box.children) == 2
    # ipywidgets keeps every open widget alive, so a row that only left the list would still hold memory.
    assert all(part.comm is None for part in row_parts(oldest))
    assert all(part.comm is not None for row in panel.history for part in row_parts(row))


def test_clear_history_removes_the_rows_and_keeps_the_latest_take(panel):
    panel.generate()
    take = panel.generate()
    rows = list(panel.history)
    panel.clear_history_button.click()
    assert panel.history == [] and panel.history_box.children == ()
    assert panel.history_section.layout.display == "none"
    assert all(part.comm is None for row in rows for part in row_parts(row))
    assert panel.last_result is take and panel.take_box.layout.display is None
    panel.generate()
    assert [row.number for row in panel.history] == [3]  # numbering goes on: #3 is still the third take


def test_a_row_saves_its_take_with_the_sidecar_into_the_filename_folder(panel, tmp_path):
    panel.filename.value = "mine.wav"  # a take's file is named after the box's stem when it was made
    panel.seed.value = 11
    older = panel.generate()
    panel.seed.value = 12
    panel.generate()
    (tmp_path / "out").mkdir()
    panel.filename.value = str(tmp_path / "out" / "other.wav")  # and saved into the box's folder of now
    row = panel.history[1]  # the older take, not the latest
    row.save_button.click()
    written = tmp_path / "out" / row.filename
    assert written.exists(), sorted(p.name for p in tmp_path.rglob("*"))
    assert re.fullmatch(r"mine_seed11_[0-9a-f]{6}\.wav", written.name) and written.name in row.saved.value
    audio, rate = sf.read(written, dtype="float64")
    assert rate == SR and len(audio) == len(older.audio)
    assert np.allclose(audio, np.clip(older.audio, -1, 1), rtol=0, atol=PCM_24_STEP)
    sidecar = read_sidecar(written)  # checks that the sidecar's hash is the file's
    assert sidecar["seed"] == 11 and sidecar["settings"] == older.settings.to_dict()
    assert panel.error.value == "" and panel.history[0].saved.value == ""


def test_a_row_save_error_is_shown_in_the_panel(panel, tmp_path):
    panel.generate()
    panel.filename.value = str(tmp_path / "missing folder" / "take.wav")
    assert panel.save_history_row(panel.history[0]) is None
    assert "Error" in panel.error.value and panel.history[0].saved.value == ""


def test_the_download_link_holds_the_take_as_a_wav(panel):
    panel.seed.value = 21
    take = panel.generate()
    row = panel.history[0]
    match = DOWNLOAD_URI.search(row.download.value)
    assert match, row.download.value[:200]
    assert match.group(2) == row.filename and re.fullmatch(r"take_seed21_[0-9a-f]{6}\.wav", row.filename)
    audio, rate = sf.read(io.BytesIO(base64.b64decode(match.group(1))), dtype="float64")
    assert rate == SR and len(audio) == len(take.audio)
    assert np.allclose(audio, np.clip(take.audio, -1, 1), rtol=0, atol=PCM_24_STEP)


def test_per_level_temperature_stitching_curve_and_griffin_lim_reach_the_take(panel):
    panel.temperature.value = 0.7
    panel.temperature_per_level.value = True
    # Ticking it starts every level from the single temperature, which it then disables.
    assert [s.value for s in panel.level_temperatures] == [0.7] * Q and panel.temperature.disabled
    assert panel.level_box.layout.display is None
    panel.level_temperatures[0].value, panel.level_temperatures[1].value = 0.5, 1.5
    panel.mode.value = "independent"
    panel.stitch.value = "overlap_add"
    panel.crossfade_curve.value = "hann"
    panel.griffin_lim.value = 3
    expected = GenerationSettings(temperature=(0.5, 1.5), duration_s=1.0, mode="independent", stitch="overlap_add",
                                  overlap_samples=round(50 * SR / 1000), crossfade_curve="hann", griffin_lim_iters=3)
    assert panel.settings() == expected and panel.griffin_lim_iters == 3
    take = panel.generate()
    assert take.settings == expected, panel.error.value
    metadata = take.to_metadata()["settings"]
    assert metadata["temperature"] == [0.5, 1.5] and metadata["stitch"] == "overlap_add"
    assert metadata["crossfade_curve"] == "hann" and metadata["griffin_lim_iters"] == 3
    assert torch.equal(take.codes, generate(panel.loaded, expected, seed=take.seed).codes)
    panel.temperature_per_level.value = False
    assert panel.settings().temperature == 0.7 and not panel.temperature.disabled
    assert panel.level_box.layout.display == "none"


def test_stitching_and_curve_apply_only_in_independent_mode(panel):
    for mode, disabled in (("independent", False), ("continuation", True)):
        panel.mode.value = mode
        assert [c.disabled for c in (panel.crossfade, panel.stitch, panel.crossfade_curve)] == [disabled] * 3


def test_griffin_lim_iterations_are_checked_and_settable(loaded, panel):
    for bad in (0, 513):
        with pytest.raises(ValueError, match="griffin_lim_iters"):
            GeneratorPanel(loaded, griffin_lim_iters=bad)
    panel.griffin_lim_iters = 5
    assert panel.griffin_lim.value == 5 and panel.settings().griffin_lim_iters == 5


def generate_until_stopped(started):
    """A stand-in for generation that reports progress, window after window, until the callback raises."""
    def fake_generate(loaded, settings, *, seed, progress):
        for window in range(10_000):
            progress(window / 10_000, f"Sampling window {window + 1}...")
            started.set()
            time.sleep(0.005)
        raise AssertionError("the take was not stopped")
    return fake_generate


def test_stop_ends_a_take_started_by_the_button(panel, monkeypatch):
    first = panel.generate()
    rows = list(panel.history)
    started = threading.Event()
    monkeypatch.setattr(widgets_module, "generate", generate_until_stopped(started))
    panel.generate_button.click()  # returns at once: the take runs in a worker thread
    assert started.wait(30) and panel.generate_button.disabled and not panel.stop_button.disabled
    panel.generate_button.click()  # a second click while it runs is refused
    assert "already" in panel.status.value
    panel.stop_button.click()
    assert panel.wait(30)
    assert panel.status.value == "Stopped" and panel.progress.bar_style == "warning"
    assert panel.error.value == ""  # a stop is not an error
    assert panel.last_result is first and panel.history == rows and "seed 7" in panel.summary.value
    assert not panel.generate_button.disabled and panel.stop_button.disabled
    assert not panel.stop()  # nothing runs any more


def test_stop_ends_a_real_take_at_its_next_window_and_the_next_take_runs(panel):
    panel.duration.value = 30.0
    messages = []

    def on_status(change):
        messages.append(change["new"])
        if change["new"].startswith("Sampling window 1/"):
            panel.stop_button.click()  # from the worker thread, while the first window is being sampled

    panel.status.observe(on_status, names="value")
    assert click_generate(panel) is None
    windows = [m for m in messages if m.startswith("Sampling window")]
    assert windows == [windows[0]] and messages[-1] == "Stopped", messages
    assert panel.last_result is None and panel.history == []
    panel.status.unobserve(on_status, names="value")
    panel.duration.value = 1.0
    assert panel.generate() is not None and panel.status.value.startswith("Done")  # the stop does not linger


def test_a_stop_after_the_last_window_keeps_the_finished_take(panel, monkeypatch):
    take = panel.generate()

    def finishing_generate(loaded, settings, *, seed, progress):
        progress(0.5, "Decoding...")
        assert panel.stop()  # Stop arrives while the take is being finished
        progress(1.0, "Done")
        return dataclasses.replace(take, seed=99)

    monkeypatch.setattr(widgets_module, "generate", finishing_generate)
    kept = panel.generate()
    assert kept is not None and panel.last_result is kept and row_seeds(panel)[0] == 99
    assert "before Stop" in panel.status.value and panel.progress.bar_style == "success"


def test_every_description_is_shown_whole(panel):
    # ipywidgets cuts a description at a fixed width unless its style asks for its natural width.
    described = [w for w in descendants(panel.widget) if getattr(w, "description", "")
                 and hasattr(getattr(w, "style", None), "description_width")]
    assert {w.description for w in described} >= {"Temperature", "Griffin-Lim iterations", "Crossfade curve",
                                                   "Temperature per level", "Stitching", "Seed"}
    assert all(w.style.description_width == "initial" for w in described), [
        w.description for w in described if w.style.description_width != "initial"]
    toggles = [w for w in descendants(panel.widget) if isinstance(w, ipywidgets.ToggleButtons)]
    assert len(toggles) == 3 and all(w.style.button_width == "auto" for w in toggles)


def test_compare_grid_renders_one_column_per_setting_with_one_seed(loaded):
    base = GenerationSettings(duration_s=1.0, griffin_lim_iters=FAST_GL)
    reports = []
    grid = CompareGrid(loaded, [{"temperature": 0.5}, {"temperature": 1.5},
                                dataclasses.replace(base, top_k=3)],
                       seed=11, base=base, progress=lambda fraction, message: reports.append(fraction))
    assert len(grid.results) == len(grid.columns) == 3
    assert list(grid.widget.children) == grid.columns
    assert grid.labels == ["temperature=0.5, top_k=0", "temperature=1.5, top_k=0", "temperature=1.0, top_k=3"]
    assert [take.seed for take in grid.results] == [11, 11, 11]
    assert [take.settings.temperature for take in grid.results] == [0.5, 1.5, 1.0]
    for name, take, column in zip(grid.labels, grid.results, grid.columns):
        label, player, histogram, stats = column.children
        assert name in label.value
        assert decoded_wav(player.value) == (SR, len(take.audio))
        assert bytes(histogram.value).startswith(PNG_MAGIC)
        assert "entropy" in stats.value and "JSD to training" in stats.value
    direct = generate(loaded, grid.settings[0], seed=11)
    assert torch.equal(direct.codes, grid.results[0].codes)
    assert reports == sorted(reports) and reports[-1] == 1.0
    static = grid.static_html()  # what a front end without the widget shows
    assert static.count("vertical-align: top") == static.count("<audio") == static.count("data:image/png") == 3
    assert all(name in static for name in grid.labels)


def test_compare_grid_labels_and_bad_settings(loaded):
    base = GenerationSettings(duration_s=1.0, griffin_lim_iters=FAST_GL)
    grid = CompareGrid(loaded, [{}], labels=["plain"], base=base)
    assert grid.labels == ["plain"] and "plain" in grid.columns[0].children[0].value
    no_counts = dataclasses.replace(loaded, train_code_counts=None)
    assert "JSD" not in CompareGrid(no_counts, [base]).columns[0].children[3].value
    with pytest.raises(ValueError, match="temprature"):
        CompareGrid(loaded, [{"temprature": 0.5}], base=base)
    with pytest.raises(ValueError, match="labels"):
        CompareGrid(loaded, [base, base], labels=["one"])
    with pytest.raises(ValueError, match="settings_list"):
        CompareGrid(loaded, [])
    with pytest.raises(TypeError, match="settings_list\\[0\\]"):
        CompareGrid(loaded, [0.5])


def test_the_player_puts_its_wav_on_the_audio_element_so_untrusted_notebooks_play_it():
    audio = np.sin(np.arange(8000) / 10.0).astype(np.float32) * 0.5
    html = widgets_module.Player(torch.from_numpy(audio), 8000)._repr_html_()
    # JupyterLab's sanitizer keeps a data URI on <audio src>, and strips it from <source src>.
    assert html.startswith('<audio controls="controls" src="data:audio/wav;base64,') and "<source" not in html
    decoded, rate = sf.read(io.BytesIO(base64.b64decode(WAV_URI.search(html).group(1))), dtype="float32")
    assert rate == 8000 and np.abs(decoded - audio).max() <= 1 / 2**15
    with pytest.raises(ValueError, match="mono array"):
        widgets_module.Player(np.zeros((2, 10)), 8000)
