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
import wave

import ipywidgets
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_H, TINY_K, TINY_Q, TINY_SR, tiny_model
from traitlets import TraitError

import distill_nb.widgets as widgets_module
from distill_nb.generation import GenerationResult, GenerationSettings, generate
from distill_nb.widgets import MAX_SEED, CompareGrid, GeneratorPanel

# 8 kHz chunks, hop 64 -> 126 frames, 32 mels -> a 2 x 8 grid of 2 levels: 32 tokens per chunk.
SR = TINY_SR
H, Q, K = TINY_H, TINY_Q, TINY_K
FAST_GL = 2
WAV_URI = re.compile(r'src="data:audio/wav;base64,([A-Za-z0-9+/=]+)"')
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def loaded():
    return tiny_model(with_counts=True)


@pytest.fixture
def panel(loaded):
    panel = GeneratorPanel(loaded, seed=7, griffin_lim_iters=FAST_GL)
    panel.duration.value = 1.0
    return panel


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
    # The 7.7 run puts the side directory first on PYTHONPATH; without it the venv's 8.x is used.
    major = int(ipywidgets.__version__.split(".")[0])
    expected = 7 if "ipywidgets7" in os.environ.get("PYTHONPATH", "") else 8
    record_property("ipywidgets_version", ipywidgets.__version__)
    print(f"ipywidgets {ipywidgets.__version__}")
    assert major == expected, f"ipywidgets {ipywidgets.__version__} imported from {ipywidgets.__file__}"


def test_controls_have_the_documented_ranges_and_defaults(panel):
    expected = {  # widget: (min, max, default)
        panel.temperature: (0.1, 2.0, 1.0), panel.top_k: (0, 512, 0), panel.top_p: (0.0, 1.0, 1.0),
        panel.min_p: (0.0, 1.0, 0.0), panel.crossfade: (0, 200, 50), panel.seed: (0, 2**31 - 1, 7),
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


def test_clicking_generate_makes_a_take_with_the_controls_settings(panel):
    panel.temperature.value = 0.8
    panel.top_k.value = 5
    panel.top_p.value = 0.5
    panel.min_p.value = 0.05
    panel.duration.value = 1.5
    panel.mode.value = "independent"
    panel.crossfade.value = 100
    assert not panel.crossfade.disabled
    button_states = []
    panel.generate_button.observe(lambda change: button_states.append(change["new"]), names="disabled")

    panel.generate_button.click()

    take = panel.last_result
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
    panel.generate_button.click()
    assert panel.generate() is None  # called directly: no exception either
    assert panel.last_result is None
    assert "ValueError" in panel.error.value and "prior" in panel.error.value
    assert "color" in panel.error.value
    assert not panel.generate_button.disabled and panel.save_button.disabled
    assert panel.progress.bar_style == "danger" and panel.status.value == "Failed"
    assert panel.take_box.layout.display == "none"


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


@pytest.mark.parametrize("name", ["temperature", "top_k", "top_p", "min_p", "duration", "crossfade", "seed"])
def test_out_of_range_values_cannot_get_through_a_control(panel, name):
    control = getattr(panel, name)
    for value in (control.max + 1000, control.min - 1000):
        try:  # ipywidgets clamps to [min, max]; a version that rejects instead is fine too
            control.value = value
        except TraitError:
            pass
        assert control.min <= control.value <= control.max


def test_every_corner_of_the_control_ranges_is_a_valid_call(panel):
    sliders = [panel.temperature, panel.top_k, panel.top_p, panel.min_p, panel.duration, panel.crossfade]
    for end in ("min", "max"):
        for slider in sliders:
            slider.value = getattr(slider, end)
        for mode in panel.mode.options:
            panel.mode.value = mode
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
    panel.save_button.click()
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


def test_the_panel_displays_its_root_widget(panel, monkeypatch):
    shown = []
    monkeypatch.setattr(widgets_module, "display", shown.append)
    panel._ipython_display_()
    assert shown == [panel.widget] and isinstance(panel.widget, ipywidgets.VBox)
    assert "tiny" in panel.widget.children[0].value


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
