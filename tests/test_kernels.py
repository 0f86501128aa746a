"""Tests for distill_nb.kernels: each kernel gives its reference's result (distill_nb.inversion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MEL, audio_signals

from distill_nb.inversion import InversionSettings, griffin_lim
from distill_nb.kernels import griffin_lim_frame_major
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig


def _spectrum_and_start(config: SpectrogramConfig) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The frame-major STFT [3, frames, bins] of the test signals, random start angles, and their length."""
    x = torch.from_numpy(np.stack(list(audio_signals(config.sample_rate, 0.3).values())))
    spectrum = torch.stft(x, config.n_fft, config.hop_length, window=torch.hann_window(config.n_fft), center=True,
                          pad_mode="reflect", return_complex=True).transpose(1, 2)
    angles = torch.sgn(torch.randn(spectrum.shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0)))
    return spectrum, angles, x.shape[1]


@pytest.mark.parametrize("relaxation", [1.0, 1.25])
@pytest.mark.parametrize("config", [SpectrogramConfig(), TINY_MEL, SpectrogramConfig(n_fft=1024, hop_length=256)])
def test_frame_major_griffin_lim_equals_the_reference(config, relaxation):
    """The hand-framed, buffer-reusing Griffin-Lim equals the same iterations through torch.stft/istft."""
    spectrum, angles, length = _spectrum_and_start(config)
    window = torch.hann_window(config.n_fft)
    for n_iter in (0, 1, 3):
        fast = griffin_lim_frame_major(spectrum.abs(), angles, n_iter, length, window, config.hop_length,
                                       relaxation, 0.99)
        reference = griffin_lim(spectrum.abs(), angles, n_iter, length, window, config.hop_length, relaxation, 0.99)
        torch.testing.assert_close(fast, reference, rtol=0, atol=1e-4 * float(reference.abs().max()))


def test_frame_major_griffin_lim_needs_a_hop_that_divides_n_fft():
    config = SpectrogramConfig(n_fft=1000, hop_length=300)
    spectrum, angles, length = _spectrum_and_start(config)
    with pytest.raises(ValueError, match="hop"):
        griffin_lim_frame_major(spectrum.abs(), angles, 1, length, torch.hann_window(1000), 300, 1.0, 0.99)


@pytest.mark.parametrize("config", [SpectrogramConfig(), SpectrogramConfig(n_fft=1000, hop_length=300)])
def test_mel_to_waveform_gives_the_same_audio_with_and_without_kernels(config):
    """fast_kernels selects the kernel where it applies (hop | n_fft) and the reference elsewhere."""
    spectrogram = Spectrogram(config)
    mel = spectrogram.waveform_to_mel(audio_signals(config.sample_rate, 0.3)["vibrato"])
    fast, reference = (spectrogram.mel_to_waveform(mel, InversionSettings(griffin_lim_iters=4, fast_kernels=use))
                       for use in (True, False))
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-4 * float(reference.abs().max()))
