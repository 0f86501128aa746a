"""Joining overlapping chunks: a waveform crossfade, or an overlap-add of their mels.

Both fade with the same curves (`fade_in`): "linear" and "hann" gains sum to 1 across a seam (a constant
signal stays constant, right for correlated material); "equal_power" gains satisfy g_in^2 + g_out^2 = 1
(keeps the energy of uncorrelated material, as Griffin-Lim chunks with independent phases are).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from distill_nb.checks import check_int

__all__ = ["CURVES", "fade_in", "crossfade_chunks", "overlap_add_mels"]

CURVES = ("equal_power", "linear", "hann")


def fade_in(length: int, curve: str) -> np.ndarray:
    """Amplitude gains [length] of the incoming side of a seam, float64, rising from ~0 to ~1.

    Sampled at the centres of the overlap samples: symmetric, never exactly 0 or 1. The outgoing side's
    gains are the same curve reversed.
    """
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if curve == "linear":
        return t
    if curve == "hann":
        return np.sin(0.5 * np.pi * t) ** 2
    return np.sin(0.5 * np.pi * t)


def crossfade_chunks(
    chunks: Sequence[np.ndarray | torch.Tensor], overlap_samples: int, curve: str = "equal_power"
) -> np.ndarray:
    """Join chunks end to start, crossfading each seam over ``overlap_samples`` samples.

    In each overlap the outgoing chunk fades out while the incoming chunk fades in (see `fade_in`).

    Args:
        chunks: non-empty sequence of 1-D numpy arrays or tensors.
        overlap_samples: 0 (plain concatenation) up to the length of the shortest chunk.
        curve: "equal_power", "linear" or "hann".

    Returns:
        float32 (sum(lengths) - (len(chunks) - 1) * overlap_samples,).
    """
    if curve not in CURVES:
        raise ValueError(f"curve must be one of {CURVES}, got {curve!r}")
    if len(chunks) == 0:
        raise ValueError("chunks must hold at least one chunk, got an empty sequence")
    arrays = [
        np.asarray(c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else c, dtype=np.float32)
        for c in chunks
    ]
    if any(a.ndim != 1 for a in arrays):
        raise ValueError(f"chunks must be 1-D, got shapes {[a.shape for a in arrays]}")
    shortest = min(a.shape[0] for a in arrays)
    overlap = check_int("overlap_samples", overlap_samples)  # the range below says where its bound comes from
    if not 0 <= overlap <= shortest:
        raise ValueError(f"overlap_samples must be an int in [0, {shortest}] (the shortest chunk), got {overlap}")
    gain_in = fade_in(overlap, curve)
    gain_out = np.sqrt(1.0 - gain_in**2) if curve == "equal_power" else 1.0 - gain_in
    gain_in, gain_out = gain_in.astype(np.float32), gain_out.astype(np.float32)

    total = sum(a.shape[0] for a in arrays) - (len(arrays) - 1) * overlap
    out = np.zeros(total, dtype=np.float32)
    out[: arrays[0].shape[0]] = arrays[0]
    end = arrays[0].shape[0]
    for chunk in arrays[1:]:
        start = end - overlap
        out[start:end] = out[start:end] * gain_out + chunk[:overlap] * gain_in
        out[end : start + chunk.shape[0]] = chunk[overlap:]
        end = start + chunk.shape[0]
    return out


def overlap_add_mels(mels: torch.Tensor, step_frames: int, curve: str = "equal_power") -> torch.Tensor:
    """Blend chunk mels whose starts are ``step_frames`` apart into one mel.

    Args:
        mels: log-mel [n_chunks, n_mels, frames] (log of power + floor, as ``Spectrogram`` makes).
        step_frames: frames between chunk starts, in [1, frames].
        curve: fade shape over the overlapping frames ("equal_power", "linear" or "hann").

    Returns:
        log-mel [n_mels, (n_chunks - 1) * step_frames + frames]. Frames are mixed in the power domain, each
        chunk weighted by its share of the crossfade's power (the squared gain for "equal_power", the gain
        itself for the curves whose gains sum to 1), normalised so the weights sum to 1 at every frame,
        also where more than two chunks overlap.
    """
    n_chunks, n_mels, frames = mels.shape
    overlap = frames - step_frames
    weights = torch.ones(n_chunks, frames, device=mels.device)
    if overlap > 0 and n_chunks > 1:
        gain = fade_in(overlap, curve)
        share = torch.from_numpy(gain**2 if curve == "equal_power" else gain).float().to(mels.device)
        weights[1:, :overlap] *= share
        weights[:-1, -overlap:] *= share.flip(0)
    total_frames = (n_chunks - 1) * step_frames + frames
    power = torch.zeros(n_mels, total_frames, device=mels.device)
    weight_sum = torch.zeros(total_frames, device=mels.device)
    for i in range(n_chunks):
        span = slice(i * step_frames, i * step_frames + frames)
        power[:, span] += weights[i] * mels[i].exp()
        weight_sum[span] += weights[i]
    return (power / weight_sum).log()
