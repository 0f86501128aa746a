"""Tests for distill_nb.kernels: each kernel gives its reference's result (distill_nb.inversion)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_MEL, audio_signals

from distill_nb import kernels
from distill_nb.inversion import InversionBases, InversionSettings, NNLSStop, griffin_lim, nnls, nnls_start
from distill_nb.kernels import griffin_lim_frame_major, nnls_shrinking_batch
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig, mel_filterbank


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


@pytest.mark.parametrize(("tolerance", "max_steps"), [(1e-4, 128), (1e-2, 128), (1e-2, 4), (1e-4, 0), (1e-4, 3)])
def test_shrinking_batch_nnls_equals_the_reference(tolerance, max_steps):
    """Chunks that stop at different steps (a tone, noise, a chirp, silence, a smooth mel) give the
    reference's result, and the start is not overwritten."""
    config = SpectrogramConfig()
    spectrogram = Spectrogram(config)
    signals = list(audio_signals(config.sample_rate, 0.25).values()) + [np.zeros(12000, np.float32)]
    mels = torch.cat([spectrogram.waveform_to_mel(np.stack(signals)),
                      torch.linspace(-8, -2, config.n_mels)[None, :, None].expand(1, -1, 24)])
    power_mel = (mels.exp() - config.log_floor).clamp_min(0).transpose(1, 2)
    bases = InversionBases.build(torch.from_numpy(mel_filterbank(config)), config.n_fft, torch.device("cpu"))
    start = nnls_start(power_mel, bases)
    kept = start.clone()
    stop = NNLSStop(tolerance, max_steps)
    fast, reference = nnls_shrinking_batch(power_mel, start, bases, stop), nnls(power_mel, start, bases, stop)
    assert torch.equal(start, kept)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5 * float(reference.abs().max()))


def _recording(kernel, calls: list[str]):
    """``kernel``, appending its name to ``calls`` on every call."""
    def recorded(*args):
        calls.append(kernel.__name__)
        return kernel(*args)
    return recorded


@pytest.mark.parametrize("config", [SpectrogramConfig(), SpectrogramConfig(n_fft=1000, hop_length=300)])
def test_fast_kernels_selects_the_kernels_where_they_apply(config, monkeypatch):
    """fast_kernels runs the kernels (Griffin-Lim's where hop | n_fft) and gives the references' audio. (From a
    random start: the phase-gradient start's peak picking would turn float rounding into other phases.)"""
    called = []
    for name in ("nnls_shrinking_batch", "griffin_lim_frame_major"):
        monkeypatch.setattr(kernels, name, _recording(getattr(kernels, name), called))
    spectrogram = Spectrogram(config)
    mel = spectrogram.waveform_to_mel(audio_signals(config.sample_rate, 0.3)["vibrato"])
    fast, reference = (spectrogram.mel_to_waveform(mel, InversionSettings(griffin_lim_iters=4, phase_start="random",
                                                                          fast_kernels=use))
                       for use in (True, False))
    hop_divides = config.n_fft % config.hop_length == 0
    assert called == ["nnls_shrinking_batch"] + ["griffin_lim_frame_major"] * hop_divides
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-4 * float(reference.abs().max()))
