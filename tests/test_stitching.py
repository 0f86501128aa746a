"""Tests for distill_nb.stitching: the fade curves, the waveform crossfade and the mel overlap-add."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from distill_nb.stitching import CURVES, crossfade_chunks, fade_in, overlap_add_mels


@pytest.mark.parametrize("curve", CURVES)
def test_fade_in_rises_symmetrically_inside_zero_to_one(curve):
    gain = fade_in(16, curve)
    assert gain.shape == (16,) and np.all(np.diff(gain) > 0) and 0 < gain.min() and gain.max() < 1
    complement = np.sqrt(1 - gain**2) if curve == "equal_power" else 1 - gain
    np.testing.assert_allclose(complement, gain[::-1], atol=1e-12)  # the fade-out is the fade-in reversed
    with pytest.raises(ValueError, match="curve"):
        fade_in(16, "cosine")


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("overlap", [0, 1, 7, 50])
def test_crossfade_length(curve, overlap):
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal(n).astype(np.float32) for n in (50, 80, 64)]
    out = crossfade_chunks(chunks, overlap, curve)
    assert out.dtype == np.float32 and out.shape == (50 + 80 + 64 - 2 * overlap,)
    # Outside the seams every chunk is copied unchanged.
    np.testing.assert_array_equal(out[: 50 - overlap], chunks[0][: 50 - overlap])
    np.testing.assert_array_equal(out[len(out) - 64 + overlap :], chunks[2][overlap:])


def test_crossfade_without_overlap_concatenates():
    chunks = [np.arange(3, dtype=np.float32), torch.arange(3, 7, dtype=torch.float64)]
    np.testing.assert_array_equal(crossfade_chunks(chunks, 0), np.arange(7, dtype=np.float32))


@pytest.mark.parametrize("curve", CURVES)
def test_crossfade_gains(curve):
    overlap, ones, zeros = 32, np.ones(100, np.float32), np.zeros(100, np.float32)
    fade_out = crossfade_chunks([ones, zeros], overlap, curve)[100 - overlap : 100]  # outgoing gain
    fade_in_gain = crossfade_chunks([zeros, ones], overlap, curve)[100 - overlap : 100]  # incoming gain
    assert np.all(np.diff(fade_out) < 0) and np.all(np.diff(fade_in_gain) > 0)
    assert 0 < fade_out.min() and fade_out.max() < 1
    np.testing.assert_allclose(fade_in_gain, fade_out[::-1], atol=1e-6)  # symmetric
    if curve == "equal_power":
        np.testing.assert_allclose(fade_in_gain**2 + fade_out**2, 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(fade_in_gain + fade_out, 1.0, atol=1e-6)
        constant = crossfade_chunks([ones * 0.5, ones * 0.5, ones * 0.5], overlap, curve)
        np.testing.assert_allclose(constant, 0.5, atol=1e-6)


def test_crossfade_errors():
    chunks = [np.zeros(10, np.float32), np.zeros(20, np.float32)]
    for overlap in (-1, 11):
        with pytest.raises(ValueError, match=r"overlap_samples must be an int in \[0, 10\]"):
            crossfade_chunks(chunks, overlap)
    for overlap in (2.5, True):
        with pytest.raises(TypeError, match="overlap_samples"):
            crossfade_chunks(chunks, overlap)
    with pytest.raises(ValueError, match="curve"):
        crossfade_chunks(chunks, 5, curve="cosine")
    with pytest.raises(ValueError, match="chunks"):
        crossfade_chunks([], 0)
    with pytest.raises(ValueError, match="chunks"):
        crossfade_chunks([np.zeros((2, 10))], 0)


@pytest.mark.parametrize("curve", CURVES)
@pytest.mark.parametrize("step", [1, 5, 8, 10])
def test_overlap_add_keeps_a_constant_mel_constant(curve, step):
    mels = torch.full((4, 3, 10), -2.0)
    out = overlap_add_mels(mels, step, curve)
    assert out.shape == (3, 3 * step + 10)
    torch.testing.assert_close(out, torch.full_like(out, -2.0))


def test_overlap_add_fades_from_one_chunk_to_the_next():
    mels = torch.stack([torch.full((1, 10), 0.0), torch.full((1, 10), math.log(3.0))])
    out = overlap_add_mels(mels, 6, "linear").exp()[0]  # power 1 fading to power 3 over 4 frames
    torch.testing.assert_close(out[:6], torch.ones(6))
    torch.testing.assert_close(out[6:10], 1 + 2 * (torch.arange(4) + 0.5) / 4)
    torch.testing.assert_close(out[10:], torch.full((6,), 3.0))


@pytest.mark.parametrize("curve", CURVES)
def test_overlap_add_mixes_power_as_the_crossfade_mixes_uncorrelated_energy(curve):
    """Each frame's power is the chunks' powers weighted by their share of the crossfade: for equal-power
    gains the squared gains (the energy of uncorrelated chunks), for the others the gains."""
    mels = torch.stack([torch.full((1, 10), 0.0), torch.full((1, 10), math.log(3.0))])
    out = overlap_add_mels(mels, 6, curve).exp()[0, 6:10].double().numpy()
    gain_in = fade_in(4, curve)
    gain_out = np.sqrt(1 - gain_in**2) if curve == "equal_power" else 1 - gain_in
    share_in, share_out = (gain_in**2, gain_out**2) if curve == "equal_power" else (gain_in, gain_out)
    np.testing.assert_allclose(out, (share_out * 1 + share_in * 3) / (share_out + share_in), rtol=1e-6)
