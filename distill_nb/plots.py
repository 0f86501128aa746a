"""Matplotlib figures for notebooks: code histograms, spectrograms with seams, seam close-ups,
training curves and a teaching plot of the sampling filters.

Every function returns a ``matplotlib.figure.Figure`` (never calls ``show``): a notebook shows it once,
as the cell's value, and scripts can ``fig.savefig(...)``. Nothing is left open in pyplot's registry.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Prefixes that name the split of a metric; keys that differ only by them share a panel.
_SPLIT_PREFIXES = ("train_", "val_", "valid_", "validation_", "test_")


def plot_code_histograms(histograms: Mapping[str, Any] | Any, reference: Any = None,
                         title: str | None = None) -> Figure:
    """Code usage per level, one panel per level, as probabilities.

    Args:
        histograms: counts [Q, K] (torch or numpy, e.g. from ``analysis.code_histograms``), or a dict
            {name: counts [Q, K]} to overlay several settings or takes.
        reference: optional counts [Q, K] of the training codes, drawn as a black line.
        title: figure title.

    Returns:
        A Figure with Q axes (level 0 at the top), x = code index, y = probability.
    """
    if not isinstance(histograms, Mapping):
        histograms = {"generated": histograms}
    if not histograms:
        raise ValueError("histograms must hold at least one [Q, K] histogram")
    series = {name: _probabilities(counts, f"histograms[{name!r}]") for name, counts in histograms.items()}
    shape = next(iter(series.values())).shape
    if any(probs.shape != shape for probs in series.values()):
        raise ValueError(f"histograms must all have the same shape [Q, K], got "
                         f"{[probs.shape for probs in series.values()]}")
    ref = None if reference is None else _probabilities(reference, "reference")
    if ref is not None and ref.shape != shape:
        raise ValueError(f"reference must have the histograms' shape {shape}, got {ref.shape}")

    levels, codebook_size = shape
    fig, axes = _figure(levels, 1, figsize=(8, 0.6 + 1.8 * levels), sharex=True)
    edges = np.arange(codebook_size + 1) - 0.5
    for level, ax in enumerate(axes):
        for name, probs in series.items():
            ax.stairs(probs[level], edges, fill=True, alpha=0.45, label=name)
        if ref is not None:
            ax.plot(np.arange(codebook_size), ref[level], color="black", linewidth=1, label="training")
        ax.set_title(f"level {level}", loc="left", fontsize="medium")
        ax.set_ylabel("probability")
    axes[-1].set_xlabel("code")
    axes[0].legend(loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def plot_spectrogram(data: Any, sample_rate: int | None = None, hop_length: int | None = None, *,
                     spectrogram: Any = None, seam_samples: Sequence[int] | None = None,
                     ax: Axes | None = None, title: str | None = None) -> Figure:
    """A log-mel spectrogram with time in seconds and a dashed white line at each seam.

    Args:
        data: a log-mel [n_mels, frames] or [1, n_mels, frames] (torch or numpy), or mono audio [n]
            together with ``spectrogram``.
        sample_rate, hop_length: Hz and samples per frame; taken from ``spectrogram.config`` when omitted.
        spectrogram: an ``audio.Spectrogram``; needed for audio, optional for a mel.
        seam_samples: seam positions in samples (e.g. ``GenerationResult.seam_samples``).
        ax: draw into this Axes instead of a new figure.
        title: axes title.

    Returns:
        The Figure holding the spectrogram axes and its colour bar.
    """
    if spectrogram is not None:
        sample_rate = spectrogram.config.sample_rate if sample_rate is None else sample_rate
        hop_length = spectrogram.config.hop_length if hop_length is None else hop_length
    if sample_rate is None or hop_length is None:
        raise ValueError("sample_rate and hop_length are needed (or a spectrogram to take them from)")
    mel = data.detach().cpu() if isinstance(data, torch.Tensor) else data
    if np.ndim(mel) == 1:
        if spectrogram is None:
            raise ValueError("spectrogram is needed to plot audio [n]; pass a Spectrogram or a mel")
        mel = spectrogram.waveform_to_mel(mel)[0].cpu()
    mel = np.asarray(mel, dtype=np.float32)
    if mel.ndim == 3 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.ndim != 2:
        raise ValueError(f"data must be a mel [n_mels, frames] or [1, n_mels, frames] or audio [n], "
                         f"got shape {mel.shape}")

    if ax is None:
        fig, (ax,) = _figure(1, 1, figsize=(9, 3.5))
    else:
        fig = ax.figure
    frame_s = hop_length / sample_rate
    n_mels, frames = mel.shape
    # Frame f is centred on sample f * hop_length, so pixel centres sit at f * frame_s.
    image = ax.imshow(mel, origin="lower", aspect="auto", interpolation="nearest", cmap="magma",
                      extent=(-frame_s / 2, (frames - 0.5) * frame_s, -0.5, n_mels - 0.5))
    for seam in seam_samples or ():
        ax.axvline(seam / sample_rate, color="white", linestyle="--", linewidth=1)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    if title:
        ax.set_title(title)
    fig.colorbar(image, ax=ax, label="log power")
    return fig


def plot_seam_zoom(audio: Any, sample_rate: int, seam_sample: int, window_s: float = 0.1, *,
                   n_fft: int = 256, title: str | None = None) -> Figure:
    """Waveform (top) and short-time spectrogram (bottom) of seam ± window_s, with the seam at 0 ms.

    Args:
        audio: mono audio [n] (numpy or torch).
        sample_rate: Hz.
        seam_sample: the seam position in samples, in [0, n].
        window_s: seconds shown on each side of the seam (0.1 shows a 50 ms crossfade with context).
        n_fft: frame length of the spectrogram in samples (hop = n_fft / 4).
        title: figure title.

    Returns:
        A Figure with two axes sharing the time axis, in milliseconds relative to the seam.
    """
    x = np.asarray(audio.detach().cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono [n], got shape {x.shape}")
    if not 0 <= seam_sample <= len(x):
        raise ValueError(f"seam_sample must be in [0, len(audio)={len(x)}], got {seam_sample}")
    if not window_s > 0:
        raise ValueError(f"window_s must be > 0 seconds, got {window_s}")
    half = max(1, round(window_s * sample_rate))
    start, stop = max(0, seam_sample - half), min(len(x), seam_sample + half)
    segment = x[start:stop]
    to_ms = 1000.0 / sample_rate
    time_ms = (np.arange(start, stop) - seam_sample) * to_ms

    fig, (wave_ax, spec_ax) = _figure(2, 1, figsize=(8, 5), sharex=True)
    wave_ax.plot(time_ms, segment, linewidth=0.8)
    wave_ax.set_ylabel("amplitude")
    hop = max(1, n_fft // 4)
    with np.errstate(divide="ignore"):  # silence gives log10(0) = -inf, drawn as the lowest colour
        _, freqs, centres_s, image = spec_ax.specgram(segment, NFFT=n_fft, Fs=sample_rate, noverlap=n_fft - hop)
    # specgram puts time 0 at the segment start; shift its image so 0 ms is the seam.
    pad_ms = hop * to_ms / 2
    offset_ms = (start - seam_sample) * to_ms
    image.set_extent((offset_ms + centres_s[0] * 1000 - pad_ms, offset_ms + centres_s[-1] * 1000 + pad_ms,
                      freqs[0], freqs[-1]))
    spec_ax.set_ylabel("frequency (Hz)")
    spec_ax.set_xlabel("time from seam (ms)")
    spec_ax.set_xlim(time_ms[0], time_ms[-1])
    for ax in (wave_ax, spec_ax):
        ax.axvline(0.0, color="red", linestyle="--", linewidth=1)
    if title:
        fig.suptitle(title)
    return fig


def plot_training_curves(history: Any, title: str | None = None) -> Figure:
    """Per-epoch metrics, one panel per metric family (train_loss and val_loss share the "loss" panel).

    Args:
        history: an object with an ``.epochs`` list (e.g. ``TrainingHistory``) or a plain list of
            per-epoch records; each record is a dict, a dataclass or an object with attributes. Every
            numeric value is plotted (a list of numbers, e.g. per-level perplexity, gives one line per
            item); an ``epoch`` key, when present, is the x axis; missing values leave gaps.
        title: figure title.

    Returns:
        A Figure with one axes per metric family.
    """
    records = getattr(history, "epochs", history)
    if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence) or not records:
        raise ValueError("history must be a non-empty list of per-epoch records or have an .epochs list")
    rows = [_numeric_items(_record_dict(record)) for record in records]
    epochs = [row.pop("epoch", math.nan) for row in rows]
    x = epochs if not any(math.isnan(epoch) for epoch in epochs) else list(range(1, len(rows) + 1))
    families: dict[str, list[str]] = {}
    for row in rows:
        for key in row:
            family = families.setdefault(_family(key), [])
            if key not in family:
                family.append(key)
    if not families:
        raise ValueError("history has no numeric values to plot")

    ncols = min(3, len(families))
    nrows = math.ceil(len(families) / ncols)
    fig, axes = _figure(nrows, ncols, figsize=(4 * ncols, 3 * nrows))
    for ax in axes[len(families):]:
        ax.remove()
    for ax, (family, keys) in zip(axes, families.items()):
        for key in keys:
            ax.plot(x, [row.get(key, math.nan) for row in rows], marker="o", markersize=3, label=key)
        ax.set_title(family)
        ax.set_xlabel("epoch")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def plot_filter_demo(logits: Any, settings: Sequence[Mapping[str, float]], title: str | None = None) -> Figure:
    """Teaching plot: a toy next-token distribution before and after ``sampling.filter_logits``.

    Args:
        logits: a toy distribution's logits [V].
        settings: one dict of ``filter_logits`` keyword arguments per panel,
            e.g. ``[{"temperature": 0.5}, {"top_k": 5}, {"top_p": 0.9}, {"min_p": 0.1}]``.
        title: figure title.

    Returns:
        A Figure with one axes per setting: grey bars = softmax(logits), blue bars = the probabilities
        after filtering (removed tokens have none).
    """
    from distill_nb.sampling import filter_logits  # lazily: plotting does not need the sampler otherwise

    logits = torch.as_tensor(logits, dtype=torch.float32)
    if logits.dim() != 1 or logits.numel() == 0:
        raise ValueError(f"logits must be a non-empty vector [V], got shape {tuple(logits.shape)}")
    settings = list(settings)
    if not settings or not all(isinstance(setting, Mapping) for setting in settings):
        raise TypeError("settings must be a non-empty list of dicts of filter_logits keyword arguments")

    tokens = np.arange(logits.numel())
    before = torch.softmax(logits, dim=-1).numpy()
    fig, axes = _figure(1, len(settings), figsize=(3.2 * len(settings), 3), sharey=True)
    for ax, setting in zip(axes, settings):
        after = torch.softmax(filter_logits(logits, **setting), dim=-1).numpy()
        ax.bar(tokens, before, color="lightgray", label="before")
        ax.bar(tokens, after, width=0.5, color="C0", label="after")
        ax.set_title(", ".join(f"{name}={value}" for name, value in setting.items()) or "no filter")
        ax.set_xlabel("token")
    axes[0].set_ylabel("probability")
    axes[0].legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def _figure(nrows: int, ncols: int, figsize: tuple[float, float], **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    """A new Figure and its axes as a flat array (row-major).

    Made through pyplot so the notebook's backend (and its display hook) is loaded, then closed at once:
    the caller gets the Figure back, so the notebook shows it once, as the cell's value, and nothing
    stays open in pyplot's registry.
    """
    fig, axes = plt.subplots(nrows, ncols, squeeze=False, figsize=figsize, layout="constrained", **subplot_kw)
    plt.close(fig)
    return fig, axes.ravel()


def _probabilities(counts: Any, name: str) -> np.ndarray:
    """Counts [Q, K] -> float64 probabilities per level (a level without counts stays all zero)."""
    counts = np.asarray(counts.detach().cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64)
    if counts.ndim != 2 or (counts < 0).any():
        raise ValueError(f"{name} must be non-negative counts [Q, K], got shape {counts.shape}")
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _record_dict(record: Any) -> dict[str, Any]:
    """One per-epoch record (dict, dataclass or plain object) as a dict."""
    if isinstance(record, Mapping):
        return dict(record)
    if is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in fields(record)}
    if hasattr(record, "__dict__"):
        return vars(record)
    raise TypeError(f"history records must be dicts, dataclasses or objects, got {type(record).__name__}")


def _numeric_items(record: dict[str, Any]) -> dict[str, float]:
    """The plottable values of a record: numbers, and lists of numbers expanded to key[i]."""
    items = {}
    for key, value in record.items():
        value = value.tolist() if hasattr(value, "tolist") else value  # tensors and numpy values
        if _is_number(value):
            items[key] = float(value)
        elif isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
            items.update({f"{key}[{i}]": float(v) for i, v in enumerate(value)})
    return items


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _family(key: str) -> str:
    """The panel a metric goes to: its name without a split prefix and per-item index."""
    key = key.split("[")[0]
    for prefix in _SPLIT_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key
