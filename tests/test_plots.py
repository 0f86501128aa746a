import importlib.util
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from distill_nb.plots import (  # noqa: E402
    plot_code_histograms,
    plot_filter_demo,
    plot_seam_zoom,
    plot_spectrogram,
    plot_training_curves,
)

SR = 48000
HOP = 512


@pytest.fixture(autouse=True)
def no_open_pyplot_figures():
    """The plots close their figures in pyplot, so nothing is left open (and a notebook shows each once)."""
    import matplotlib.pyplot as plt

    yield
    assert plt.get_fignums() == []


def vertical_line_xs(ax):
    """x positions of the axvline markers on ax (lines whose two x data points are equal)."""
    xs = []
    for line in ax.lines:
        x = np.asarray(line.get_xdata(), dtype=float)
        if len(x) == 2 and x[0] == x[1]:
            xs.append(float(x[0]))
    return xs


def counts(seed, levels=3, codebook_size=16):
    return torch.randint(0, 50, (levels, codebook_size), generator=torch.Generator().manual_seed(seed))


def test_code_histograms_one_panel_per_level_with_reference():
    fig = plot_code_histograms({"t=0.8": counts(0), "t=1.2": counts(1)}, reference=counts(2), title="usage")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert fig.get_suptitle() == "usage"
    top = fig.axes[0]
    assert [text.get_text() for text in top.get_legend().get_texts()] == ["t=0.8", "t=1.2", "training"]
    reference = counts(2).double()
    np.testing.assert_allclose(top.lines[0].get_ydata(), reference[0] / reference[0].sum())
    assert [ax.get_title(loc="left") for ax in fig.axes] == ["level 0", "level 1", "level 2"]


def test_code_histograms_single_tensor_and_shape_errors():
    fig = plot_code_histograms(counts(0, levels=2).numpy())
    assert len(fig.axes) == 2 and not fig.axes[0].lines
    with pytest.raises(ValueError, match="same shape"):
        plot_code_histograms({"a": counts(0), "b": counts(1, codebook_size=8)})
    with pytest.raises(ValueError, match="reference"):
        plot_code_histograms(counts(0), reference=counts(1, levels=2))
    with pytest.raises(ValueError, match="histograms"):
        plot_code_histograms(torch.ones(16))


def test_spectrogram_time_axis_and_seam_markers():
    mel = torch.randn(1, 128, 188)
    fig = plot_spectrogram(mel, SR, HOP, seam_samples=[48000, 72000], title="take 0")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2  # the image and its colour bar
    ax = fig.axes[0]
    assert ax.get_title() == "take 0" and ax.get_xlabel() == "time (s)"
    assert vertical_line_xs(ax) == pytest.approx([1.0, 1.5])
    left, right, _, _ = ax.images[0].get_extent()
    frame_s = HOP / SR
    assert (left, right) == pytest.approx((-frame_s / 2, (188 - 0.5) * frame_s))


def test_spectrogram_from_audio_uses_the_spectrogram_config():
    class FakeConfig:
        sample_rate = 16000
        hop_length = 160

    class FakeSpectrogram:
        config = FakeConfig()

        def waveform_to_mel(self, audio):
            return torch.zeros(1, 8, 1 + len(audio) // self.config.hop_length)

    fig = plot_spectrogram(np.zeros(16000, dtype=np.float32), spectrogram=FakeSpectrogram(), seam_samples=[8000])
    assert vertical_line_xs(fig.axes[0]) == pytest.approx([0.5])
    assert fig.axes[0].images[0].get_array().shape == (8, 101)


def test_spectrogram_draws_into_given_axes_and_errors():
    fig = Figure()
    ax = fig.subplots()
    assert plot_spectrogram(np.zeros((16, 10)), SR, HOP, ax=ax) is fig
    with pytest.raises(ValueError, match="spectrogram"):
        plot_spectrogram(np.zeros(1000), SR, HOP)
    with pytest.raises(ValueError, match="sample_rate"):
        plot_spectrogram(np.zeros((16, 10)))
    with pytest.raises(ValueError, match="data"):
        plot_spectrogram(np.zeros((2, 16, 10)), SR, HOP)


def test_seam_zoom_waveform_and_spectrogram_around_the_seam():
    audio = np.random.default_rng(0).standard_normal(SR).astype(np.float32) * 0.1
    fig = plot_seam_zoom(audio, SR, seam_sample=24000, window_s=0.05, title="seam 1")
    assert len(fig.axes) == 2 and fig.get_suptitle() == "seam 1"
    wave_ax, spec_ax = fig.axes
    assert vertical_line_xs(wave_ax) == [0.0] and vertical_line_xs(spec_ax) == [0.0]
    times = wave_ax.lines[0].get_xdata()
    assert times[0] == pytest.approx(-50.0) and times[-1] == pytest.approx(50.0 - 1000 / SR)
    # 256-sample frames, hop 64: centres from 128 samples after the window start, each pixel one hop wide.
    left, right, _, _ = spec_ax.images[0].get_extent()
    ms = 1000 / SR
    assert (left, right) == pytest.approx((-50 + (128 - 32) * ms, -50 + (128 + 71 * 64 + 32) * ms))


def test_seam_zoom_clips_to_the_signal_and_validates():
    audio = np.zeros(1000, dtype=np.float32)
    fig = plot_seam_zoom(torch.from_numpy(audio), SR, seam_sample=10)
    assert fig.axes[0].lines[0].get_xdata()[0] == pytest.approx(-10 * 1000 / SR)
    with pytest.raises(ValueError, match="seam_sample"):
        plot_seam_zoom(audio, SR, seam_sample=2000)
    with pytest.raises(ValueError, match="window_s"):
        plot_seam_zoom(audio, SR, seam_sample=10, window_s=0)


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    perplexity: list


class History:
    def __init__(self, epochs):
        self.epochs = epochs


def test_training_curves_group_train_and_val_in_one_panel():
    history = History([EpochRecord(e, 1.0 / e, 1.2 / e, [10.0 + e, 20.0 + e]) for e in (1, 2, 3)])
    fig = plot_training_curves(history, title="VQ-VAE")
    assert len(fig.axes) == 2 and fig.get_suptitle() == "VQ-VAE"
    loss_ax, perplexity_ax = fig.axes
    assert loss_ax.get_title() == "loss"
    assert [line.get_label() for line in loss_ax.lines] == ["train_loss", "val_loss"]
    np.testing.assert_allclose(loss_ax.lines[1].get_ydata(), [1.2, 0.6, 0.4])
    assert [line.get_label() for line in perplexity_ax.lines] == ["perplexity[0]", "perplexity[1]"]
    np.testing.assert_array_equal(perplexity_ax.lines[0].get_xdata(), [1, 2, 3])


def test_training_curves_from_plain_dicts_with_gaps():
    records = [{"train_loss": 2.0, "lr": 1e-3, "note": "warmup"},
               {"train_loss": 1.5, "val_loss": torch.tensor(1.7), "lr": 5e-4}]
    fig = plot_training_curves(records)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "lr"]
    val = fig.axes[0].lines[1]
    np.testing.assert_array_equal(val.get_xdata(), [1, 2])
    assert np.isnan(val.get_ydata()[0]) and val.get_ydata()[1] == pytest.approx(1.7)


def test_training_curves_errors():
    with pytest.raises(ValueError, match="history"):
        plot_training_curves([])
    with pytest.raises(ValueError, match="numeric"):
        plot_training_curves([{"note": "nothing to plot"}])


@pytest.mark.skipif(importlib.util.find_spec("distill_nb.sampling") is None, reason="sampling.py not written yet")
def test_filter_demo_one_panel_per_setting():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0, -1.0])
    settings = [{"temperature": 0.5}, {"top_k": 2}, {"top_p": 0.9}]
    fig = plot_filter_demo(logits, settings, title="filters")
    assert len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["temperature=0.5", "top_k=2", "top_p=0.9"]
    top_k_after = [bar.get_height() for bar in fig.axes[1].containers[1]]
    assert sum(height > 0 for height in top_k_after) == 2
    assert sum(top_k_after) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="logits"):
        plot_filter_demo(torch.zeros(2, 3), settings)
