"""Tests for distill_nb.audio: files, the mel spectrogram and its inverse (against librosa), stitching."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from distill_nb import audio as audio_module
from distill_nb.audio import (
    AudioFileError,
    Spectrogram,
    SpectrogramConfig,
    crossfade_chunks,
    load_audio,
    phase_gradient_start,
    save_audio,
)

# A tiny configuration for comparisons with librosa's Griffin-Lim: librosa's NNLS (L-BFGS-B with as many
# corrections as FFT bins) takes minutes per call at n_fft = 2048, and seconds here.
TINY = SpectrogramConfig(sample_rate=8000, n_fft=128, hop_length=32, n_mels=32)


def _signals(sample_rate: int, seconds: float) -> dict[str, np.ndarray]:
    """Test signals that nothing in audio.py was tuned on: float32 (n,)."""
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    rng = np.random.default_rng(1)
    vibrato = sum(0.3 / k * np.sin(2 * np.pi * k * 220 * t + 3 * k * np.sin(2 * np.pi * 5 * t)) for k in range(1, 6))
    noise_burst = 0.3 * rng.standard_normal(t.size) * np.exp(-(((t - seconds / 2) / (seconds / 10)) ** 2))
    f_end = 0.44 * sample_rate
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + (f_end - 100) / (2 * t[-1]) * t**2))
    return {name: x.astype(np.float32) for name, x in
            {"vibrato": vibrato, "noise_burst": noise_burst, "chirp": chirp}.items()}


def _librosa_mel_kwargs(config: SpectrogramConfig) -> dict:
    """The librosa mel settings equal to ``config`` (n_mels apart: mel_to_stft reads it from the mel)."""
    return dict(sr=config.sample_rate, n_fft=config.n_fft, fmin=config.f_min, fmax=config.f_max,
                htk=config.mel_scale == "htk", norm=config.mel_norm)


def _spectral_convergence(reference: np.ndarray, estimate: np.ndarray, config: SpectrogramConfig) -> float:
    """||S_ref| - |S_est||_F / ||S_ref||_F on the linear STFT magnitude."""
    def magnitude(x):
        return np.abs(librosa.stft(x, n_fft=config.n_fft, hop_length=config.hop_length, pad_mode="reflect"))
    ref, est = magnitude(reference), magnitude(estimate)
    return float(np.linalg.norm(ref - est) / np.linalg.norm(ref))


# --------------------------------------------------------------------------------------------------
# Mel filterbank and spectrogram against librosa

MEL_SETTINGS = [
    dict(mel_scale=scale, mel_norm=norm, **band)
    for scale in ("htk", "slaney")
    for norm in (None, "slaney")
    for band in ({}, {"f_min": 40.0, "f_max": 11000.0})
]


@pytest.mark.parametrize("settings", MEL_SETTINGS, ids=str)
def test_filterbank_matches_librosa(settings):
    config = SpectrogramConfig(**settings)
    ours = Spectrogram(config).mel_filterbank
    reference = librosa.filters.mel(n_mels=config.n_mels, **_librosa_mel_kwargs(config), dtype=np.float64)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (128, 1025)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-6, atol=1e-6 * reference.max())


@pytest.mark.parametrize("settings", MEL_SETTINGS[::3], ids=str)
def test_waveform_to_mel_matches_librosa(settings):
    config = SpectrogramConfig(**settings)
    x = _signals(config.sample_rate, 0.25)["vibrato"]
    ours = Spectrogram(config).waveform_to_mel(x)
    power = librosa.feature.melspectrogram(y=x.astype(np.float64), hop_length=config.hop_length, power=2.0,
                                           pad_mode="reflect", n_mels=config.n_mels,
                                           **_librosa_mel_kwargs(config))
    assert ours.shape == (1, config.n_mels, 1 + x.size // config.hop_length)
    np.testing.assert_allclose(ours[0].numpy(), np.log(power + config.log_floor), atol=2e-3)


def test_waveform_to_mel_batches_and_accepts_numpy_or_torch():
    spectrogram = Spectrogram(TINY)
    batch = np.stack(list(_signals(TINY.sample_rate, 0.25).values()))
    mels = spectrogram.waveform_to_mel(torch.from_numpy(batch))
    assert mels.dtype == torch.float32 and mels.shape == (3, 32, 1 + 2000 // 32)
    for row, x in zip(mels, batch):
        torch.testing.assert_close(row, spectrogram.waveform_to_mel(x)[0], atol=1e-5, rtol=0)
    silence = spectrogram.waveform_to_mel(np.zeros(4000, np.float32))
    torch.testing.assert_close(silence, torch.full_like(silence, np.log(TINY.log_floor)))


def test_waveform_to_mel_rejects_bad_audio():
    spectrogram = Spectrogram(TINY)
    with pytest.raises(ValueError, match="audio"):
        spectrogram.waveform_to_mel(np.zeros(TINY.n_fft // 2, np.float32))  # too short to reflect-pad
    with pytest.raises(ValueError, match="audio"):
        spectrogram.waveform_to_mel(np.zeros((2, 2, 4000), np.float32))
    with pytest.raises(ValueError, match="audio"):
        spectrogram.waveform_to_mel(np.zeros(4000, np.int16))


# --------------------------------------------------------------------------------------------------
# Inverse: quality against librosa, lengths, determinism


# Griffin-Lim is chaotic: a change in the last digits of the magnitude moves one run's spectral
# convergence by a few per cent (the chirp's, at 32 iterations: 0.2138 -> 0.2209 for an NNLS change
# of 1e-5 relative). So the comparison averages over iteration counts and random starts, and allows 2 %:
# a real regression (a broken NNLS, momentum or framing) costs far more.
GRIFFIN_LIM_TOLERANCE = 1.02


@pytest.mark.parametrize("name", ["vibrato", "noise_burst", "chirp"])
def test_griffin_lim_no_worse_than_librosa(name):
    x = _signals(TINY.sample_rate, 0.5)[name]
    iteration_counts, takes = (16, 32, 64), 10
    spectrogram = Spectrogram(TINY)
    mel = spectrogram.waveform_to_mel(x)
    # librosa.feature.inverse.mel_to_audio is exactly mel_to_stft + griffinlim; calling the two lets the
    # phase come from an explicit seed instead of numpy's global RNG. Its input is the power mel.
    power_mel = np.exp(mel[0].double().numpy()) - TINY.log_floor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa's "empty filters" warning for this tiny filterbank
        magnitude = librosa.feature.inverse.mel_to_stft(power_mel, power=2.0, **_librosa_mel_kwargs(TINY))
    scores = {"librosa": [], "ours, random starts": [], "ours, phase-gradient start": []}
    for n_iter in iteration_counts:
        reference = [
            librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=TINY.hop_length, n_fft=TINY.n_fft,
                               length=x.size, pad_mode="reflect", random_state=seed)
            for seed in range(takes)
        ]
        # Like with like: one batched call draws `takes` random starts, as librosa starts.
        random_starts = spectrogram.mel_to_waveform(
            mel.expand(takes, -1, -1), n_iter=n_iter, length=x.size, phase_init="random",
            generator=torch.Generator().manual_seed(0)).numpy()
        gradient_start = spectrogram.mel_to_waveform(mel, n_iter=n_iter, length=x.size).numpy()  # the default
        for key, outputs in zip(scores, (reference, random_starts, gradient_start)):
            scores[key] += [_spectral_convergence(x, y, TINY) for y in outputs]
    librosa_sc = np.mean(scores.pop("librosa"))
    for key, values in scores.items():
        assert np.mean(values) <= GRIFFIN_LIM_TOLERANCE * librosa_sc, (
            f"{name}, {key}: mean spectral convergence {np.mean(values):.4f} vs librosa {librosa_sc:.4f}")


def test_mel_to_waveform_lengths_and_shapes():
    spectrogram = Spectrogram()  # the default 48 kHz chunk geometry
    assert spectrogram.chunk_samples == 48000
    assert spectrogram.get_mel_shape(48000) == (128, 94)
    assert spectrogram.get_latent_shape(48000) == (8, 6)
    assert spectrogram.get_latent_shape(48000, downsample=4) == (32, 24)
    mel = spectrogram.waveform_to_mel(np.zeros((2, 48000), np.float32))
    assert mel.shape == (2, 128, 94)
    chunk = spectrogram.mel_to_waveform(mel, n_iter=1, length=48000)
    assert chunk.dtype == torch.float32 and chunk.shape == (2, 48000)
    assert spectrogram.mel_to_waveform(mel[0], n_iter=0).shape == (1, 93 * 512)  # length None
    assert spectrogram.mel_to_waveform(mel[:0], length=48000).shape == (0, 48000)  # an empty batch
    for bad_length in (93 * 512 - 1, 94 * 512, 48000.0):
        with pytest.raises(ValueError, match="length"):
            spectrogram.mel_to_waveform(mel, n_iter=0, length=bad_length)
    with pytest.raises(ValueError, match="mel"):
        spectrogram.mel_to_waveform(mel[:, :64], n_iter=0)
    with pytest.raises(ValueError, match="n_iter"):
        spectrogram.mel_to_waveform(mel, n_iter=-1)
    for bad_tolerance in (0.0, 1.0, -1e-3, True, "1e-3", float("nan")):
        with pytest.raises(ValueError, match="nnls_tolerance"):
            spectrogram.mel_to_waveform(mel, n_iter=0, nnls_tolerance=bad_tolerance)
    for bad_steps in (-1, 2.0, True, "4", None):
        with pytest.raises(ValueError, match="nnls_max_steps"):
            spectrogram.mel_to_waveform(mel, n_iter=0, nnls_max_steps=bad_steps)


def test_mel_to_waveform_is_deterministic_and_random_phases_follow_the_generator():
    spectrogram = Spectrogram(TINY)
    mel = spectrogram.waveform_to_mel(_signals(TINY.sample_rate, 0.25)["vibrato"])

    def invert(seed, phase_init, batch=1):
        return spectrogram.mel_to_waveform(mel.expand(batch, -1, -1), n_iter=4, phase_init=phase_init,
                                           generator=torch.Generator().manual_seed(seed))

    for phase_init in ("random", "gradient"):  # the gradient start draws the phases of noise-like bins
        assert torch.equal(invert(7, phase_init), invert(7, phase_init))
        assert not torch.allclose(invert(7, phase_init), invert(8, phase_init))
        # Chunk b takes the generator's b-th draw: its audio does not depend on the batch size.
        torch.testing.assert_close(invert(7, phase_init, batch=3)[:1], invert(7, phase_init), rtol=0, atol=1e-6)
    assert torch.equal(spectrogram.mel_to_waveform(mel, n_iter=4), invert(0, "gradient"))  # default: seed 0
    with pytest.raises(ValueError, match="phase_init"):
        spectrogram.mel_to_waveform(mel, phase_init="zeros")


def _stft_frames(spectrogram: Spectrogram, x: np.ndarray) -> torch.Tensor:
    """The complex STFT of x, frame-major [1, frames, bins], framed as mel_to_waveform's Griffin-Lim frames it."""
    window = torch.hann_window(spectrogram.config.n_fft)
    return torch.stft(torch.from_numpy(x)[None], spectrogram.config.n_fft, spectrogram.config.hop_length,
                      window=window, center=True, pad_mode="reflect", return_complex=True).transpose(1, 2)


def _angle_between(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """a - b as angles in (-pi, pi]."""
    return np.angle(np.exp(1j * (a - b).double().numpy()))


def test_phase_gradient_start_follows_a_sinusoid_in_time_and_across_its_lobe():
    """At a sinusoid's peak bin the phase turns by 2 pi hop nu / n_fft per frame (nu in fractional bins), and
    across its main lobe it steps from bin to bin as the STFT's phase does: from the magnitude alone."""
    spectrogram = Spectrogram()  # n_fft 2048, hop 512: the lambda of the Hann window is tuned for n_fft
    config = spectrogram.config
    for nu in (40.0, 40.25, 40.5, 123.8):
        t = np.arange(config.sample_rate // 2) / config.sample_rate
        x = np.sin(2 * np.pi * nu * config.sample_rate / config.n_fft * t).astype(np.float32)
        stft = _stft_frames(spectrogram, x)[:, 5:-5]  # away from the reflect-padded ends
        phase = phase_gradient_start(stft.abs(), config.n_fft, config.hop_length, torch.Generator().manual_seed(0))
        peak = int(stft[0, 20].abs().argmax())
        turn = _angle_between(phase[0, 1:, peak], phase[0, :-1, peak])
        expected_turn = 2 * np.pi * config.hop_length * nu / config.n_fft
        assert np.abs(np.angle(np.exp(1j * (turn - expected_turn)))).max() < 0.05, nu
        lobe = slice(peak - 1, peak + 2)
        steps, expected = phase[0, :, lobe].diff(dim=-1), torch.angle(stft[0, :, lobe]).diff(dim=-1)
        assert np.abs(_angle_between(steps, expected)).max() < 1e-2, nu


def test_phase_gradient_start_places_an_impulse_from_the_magnitude():
    """In the frame centred on an impulse, the phase steps across the bins by the impulse's delay."""
    spectrogram = Spectrogram()
    config = spectrogram.config
    for delay in (0, 60, -120):  # samples after the frame centre
        x = np.zeros(config.sample_rate // 2, np.float32)
        x[40 * config.hop_length + delay] = 1.0
        stft = _stft_frames(spectrogram, x)
        phase = phase_gradient_start(stft.abs(), config.n_fft, config.hop_length, torch.Generator().manual_seed(0))
        error = _angle_between(phase[0, 40].diff(), torch.angle(stft[0, 40]).diff())
        assert np.median(np.abs(error)) < 0.02, (delay, np.median(np.abs(error)))


def test_phase_gradient_start_is_random_where_the_magnitude_is_flat():
    """A flat magnitude (smoothed noise) says nothing about the phase: neighbouring bins and frames get
    independent phases, not the linear phase of an impulse at a multiple of n_fft."""
    config = SpectrogramConfig()
    flat = torch.ones(2, 94, config.n_fft // 2 + 1)
    phase = phase_gradient_start(flat, config.n_fft, config.hop_length, torch.Generator().manual_seed(0))
    for steps in (phase.diff(dim=-1), phase.diff(dim=1)):  # across bins, across frames
        assert float(torch.exp(1j * steps.double()).mean().abs()) < 0.01


@pytest.mark.parametrize("name", ["vibrato", "noise_burst", "chirp"])
def test_phase_gradient_start_beats_a_random_start_on_tones_and_matches_it_on_noise(name):
    x = _signals(48000, 0.5)[name]
    spectrogram = Spectrogram()
    mel = spectrogram.waveform_to_mel(x)
    sc = {init: _spectral_convergence(x, spectrogram.mel_to_waveform(mel, n_iter=8, length=x.size,
                                                                    phase_init=init)[0].numpy(),
                                      spectrogram.config)
          for init in ("gradient", "random")}
    if name == "noise_burst":  # noise has no phase structure to find
        assert sc["gradient"] < 1.02 * sc["random"], sc
    else:
        assert sc["gradient"] < sc["random"], sc


def _smooth_mels(seed: int, batch: int, n_mels: int = 128, frames: int = 94) -> torch.Tensor:
    """Log-mels [batch, n_mels, frames] that vary slowly over bands and frames, as decoded mels do."""
    coarse = torch.randn(batch, 1, 9, 7, generator=torch.Generator().manual_seed(seed))
    envelope = torch.nn.functional.interpolate(coarse, size=(n_mels, frames), mode="bicubic", align_corners=True)[:, 0]
    tilt = -6.0 * torch.linspace(0, 1, n_mels)[:, None]  # nats, low to high bands
    return torch.log(torch.exp(envelope + tilt - 2.0) + SpectrogramConfig().log_floor)


def _click_ratios(audio: np.ndarray, neighbourhood: int) -> np.ndarray:
    """|x[n]| over the median |x| of the ``neighbourhood`` samples centred on n; medians below 1 % of the
    peak count as 1 % of the peak (a click must be audible, not just louder than near-silence)."""
    half = neighbourhood // 2
    magnitude = np.abs(audio)
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(magnitude, half, mode="reflect"), 2 * half + 1)
    return magnitude / np.maximum(np.median(windows, axis=1), 1e-2 * magnitude.max())


# Gaussian noise and the test tones, rendered from a random start, stay below 8; the impulses that a phase
# start coherent across bins puts at multiples of n_fft stand 20-60 times above their neighbourhood.
CLICK_RATIO = 10.0


@pytest.mark.parametrize("source", ["white_noise", "noise_burst", "vibrato", "chirp", "smooth_mels", "flat_mel"])
def test_rendered_audio_has_no_clicks(source):
    """No sample stands far above its 4 ms neighbourhood, at multiples of n_fft or anywhere else."""
    spectrogram = Spectrogram()
    config = spectrogram.config
    if source == "smooth_mels":
        mel = _smooth_mels(0, 2)
    elif source == "flat_mel":
        mel = torch.full((1, config.n_mels, 94), -4.0)
    else:
        signals = _signals(config.sample_rate, 1.0)
        signals["white_noise"] = np.random.default_rng(2).normal(0, 0.1, config.sample_rate).astype(np.float32)
        mel = spectrogram.waveform_to_mel(signals[source])
    audio = spectrogram.mel_to_waveform(mel, n_iter=12, length=config.sample_rate).numpy()
    at_multiples = np.arange(0, audio.shape[1], config.n_fft)
    for chunk in audio:
        ratios = _click_ratios(chunk, round(0.004 * config.sample_rate))
        worst = int(ratios.argmax())
        assert ratios.max() < CLICK_RATIO, (
            f"click of {ratios.max():.1f} x its neighbourhood at sample {worst} ({worst % config.n_fft} past a "
            f"multiple of n_fft); at the multiples of n_fft: {ratios[at_multiples].max():.1f}")


@pytest.mark.parametrize("relaxation", [1.0, 1.25])
@pytest.mark.parametrize("config", [SpectrogramConfig(), TINY, SpectrogramConfig(n_fft=1024, hop_length=256)])
def test_griffin_lim_framing_matches_torch_stft_and_istft(config, relaxation):
    """The hand-framed, buffer-reusing Griffin-Lim equals the same iterations through torch.stft/istft."""
    spectrogram = Spectrogram(config)
    window = spectrogram._bases_on(torch.device("cpu")).window
    x = torch.from_numpy(np.stack(list(_signals(config.sample_rate, 0.3).values())))
    length = x.shape[1]
    spectrum = spectrogram._stft(x, window).transpose(1, 2)  # frame-major
    angles = torch.sgn(torch.randn(spectrum.shape, dtype=torch.complex64, generator=torch.Generator().manual_seed(0)))
    for n_iter in (0, 1, 3):
        fast = spectrogram._griffin_lim(spectrum.abs(), angles, n_iter, length, window, relaxation)
        general = spectrogram._griffin_lim_general(spectrum.abs(), angles, n_iter, length, window, relaxation)
        torch.testing.assert_close(fast, general, rtol=0, atol=1e-4 * float(general.abs().max()))


@pytest.mark.parametrize("relaxation", [1.0, 1.25])
def test_griffin_lim_iterations_match_a_librosa_reference(relaxation):
    """Our loop against the relaxed fast Griffin-Lim recurrence written out with librosa's STFT in float64:
    y = P(c) (target magnitude, then consistency), t = c + relaxation (y - c), c = t + momentum (t - t_prev).
    With relaxation 1 it is also librosa.griffinlim's own loop."""
    config = TINY
    spectrogram = Spectrogram(config)
    window = spectrogram._bases_on(torch.device("cpu")).window
    x = _signals(config.sample_rate, 0.25)["chirp"].astype(np.float64)
    stft_kwargs = dict(n_fft=config.n_fft, hop_length=config.hop_length, window="hann")
    magnitude = np.abs(librosa.stft(x, pad_mode="reflect", **stft_kwargs))  # [bins, frames]
    phase0 = np.random.default_rng(0).uniform(0, 2 * np.pi, magnitude.shape)
    momentum = 0.99

    def synthesize(c):  # the waveform of the target magnitude with c's phase
        return librosa.istft(magnitude * np.exp(1j * np.angle(c)), length=x.size, **stft_kwargs)

    def ours(phase, n_iter):
        angles = torch.polar(torch.ones(phase.T.shape), torch.from_numpy(phase.T).float())[None]  # frame-major
        magnitudes = torch.from_numpy(magnitude.T).float()[None]
        return spectrogram._griffin_lim(magnitudes, angles, n_iter, x.size, window, relaxation)[0].double().numpy()

    c, previous = np.exp(1j * phase0), None
    for n_iter in range(4):
        expected = synthesize(c)
        np.testing.assert_allclose(ours(phase0, n_iter), expected, rtol=0, atol=1e-4 * np.abs(expected).max(),
                                   err_msg=f"after {n_iter} iterations")
        y = librosa.stft(expected, pad_mode="reflect", **stft_kwargs)
        t = y if previous is None else c + relaxation * (y - c)
        c, previous = (t if previous is None else t + momentum * (t - previous)), t
    if relaxation == 1.0:  # librosa's loop starts from zero phase with init=None
        reference = librosa.griffinlim(magnitude, n_iter=3, init=None, momentum=momentum, length=x.size,
                                       pad_mode="reflect", **stft_kwargs)
        np.testing.assert_allclose(ours(np.zeros_like(phase0), 3), reference, rtol=0,
                                   atol=1e-4 * np.abs(reference).max())


def test_nnls_recovers_the_linear_power_of_a_real_mel():
    """The preconditioned FISTA reaches a small residual where the clamped pseudo-inverse does not."""
    spectrogram = Spectrogram()
    x = _signals(48000, 0.25)["chirp"]
    # Frame-major, as mel_to_waveform works: [B, frames, n_mels] -> [B, frames, bins].
    power_mel = (torch.exp(spectrogram.waveform_to_mel(x)) - spectrogram.config.log_floor).transpose(1, 2)
    bases = spectrogram._bases_on(torch.device("cpu"))
    fb = spectrogram.mel_filterbank

    def residual(linear):
        return float(torch.linalg.norm(linear @ fb.T - power_mel) / torch.linalg.norm(power_mel))

    linear = spectrogram._mel_power_to_linear(power_mel, bases)
    assert linear.min() >= 0
    assert residual(linear) < 1e-3 < residual((power_mel @ bases.pinv.T).clamp_min(0))
    # A looser tolerance stops sooner, still within it (generation's, for decoded mels).
    loose = spectrogram._mel_power_to_linear(power_mel, bases, tolerance=1e-2)
    assert residual(linear) < residual(loose) < 1e-2


def test_nnls_max_steps_stops_fista_after_that_many_steps():
    """max_steps = k gives the k-th FISTA iterate, here written out in float64 from the better-fitting start."""
    spectrogram = Spectrogram()
    x = _signals(48000, 0.25)["chirp"]  # a real mel: its NNLS runs ~40 steps when not stopped
    power_mel = (torch.exp(spectrogram.waveform_to_mel(x)) - spectrogram.config.log_floor).transpose(1, 2)
    bases = spectrogram._bases_on(torch.device("cpu"))
    fb, step = bases.filterbank.double().numpy(), bases.step.double().numpy()
    p = power_mel[0].double().numpy()  # [frames, n_mels]
    starts = [np.maximum(p @ bases.pinv.double().numpy().T, 0.0), p @ bases.spread.double().numpy().T]
    x_k = min(starts, key=lambda start: np.linalg.norm(start @ fb.T - p))
    y, t = x_k, 1.0
    for k in range(6):
        ours = spectrogram._mel_power_to_linear(power_mel, bases, max_steps=k)[0].double().numpy()
        np.testing.assert_allclose(ours, x_k, rtol=0, atol=1e-4 * np.abs(x_k).max(), err_msg=f"after {k} steps")
        x_next = np.maximum(y - step * ((y @ fb.T - p) @ fb), 0.0)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y, x_k, t = x_next + (t - 1.0) / t_next * (x_next - x_k), x_next, t_next
    converged = spectrogram._mel_power_to_linear(power_mel, bases)[0].double().numpy()
    assert np.abs(converged - x_k).max() > 1e-2 * np.abs(x_k).max()  # 5 steps are far from the end


@pytest.mark.parametrize(
    "config", [SpectrogramConfig(), TINY, SpectrogramConfig(mel_scale="slaney", mel_norm="slaney")])
def test_nnls_spread_start_is_exact_for_a_flat_spectrum(config):
    spectrogram = Spectrogram(config)
    bases = spectrogram._bases_on(torch.device("cpu"))
    fb = bases.filterbank
    covered = fb.sum(dim=0) > 0  # bins in no band cannot be recovered
    flat = torch.full((fb.shape[1],), 3.0)
    recovered = bases.spread @ (fb @ flat)
    torch.testing.assert_close(recovered[covered], flat[covered], rtol=1e-5, atol=0)
    assert recovered.min() >= 0 and bases.spread.min() >= 0


def test_nnls_result_of_a_chunk_does_not_depend_on_the_batch():
    spectrogram = Spectrogram()
    bases = spectrogram._bases_on(torch.device("cpu"))
    batch = np.stack(list(_signals(48000, 0.25).values()))  # chunks that converge at different speeds
    power_mel = (torch.exp(spectrogram.waveform_to_mel(batch)) - spectrogram.config.log_floor).transpose(1, 2)
    together = spectrogram._mel_power_to_linear(power_mel, bases)
    for row, mel in zip(together, power_mel):
        alone = spectrogram._mel_power_to_linear(mel[None], bases)[0]
        torch.testing.assert_close(row, alone, rtol=0, atol=1e-6 * float(alone.max()))


# --------------------------------------------------------------------------------------------------
# SpectrogramConfig


def test_config_defaults_and_round_trip():
    config = SpectrogramConfig()
    assert (config.sample_rate, config.n_fft, config.hop_length, config.n_mels) == (48000, 2048, 512, 128)
    assert (config.f_min, config.f_max, config.mel_scale, config.mel_norm, config.log_floor) == (
        0.0, None, "htk", None, 1e-5)
    custom = SpectrogramConfig(sample_rate=np.int64(22050), f_max=8000, mel_scale="slaney", mel_norm="slaney")
    data = json.loads(json.dumps(custom.to_dict()))
    assert SpectrogramConfig.from_dict(data) == custom
    assert type(custom.sample_rate) is int and type(custom.f_max) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_fft = 1024


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("sample_rate", 0, ValueError),
        ("sample_rate", 44100.0, TypeError),
        ("n_fft", 8, ValueError),
        ("hop_length", 0, ValueError),
        ("hop_length", 1025, ValueError),
        ("n_mels", 0, ValueError),
        ("n_mels", 2000, ValueError),
        ("f_min", -1.0, ValueError),
        ("f_min", 24000.0, ValueError),
        ("f_max", 30000.0, ValueError),
        ("f_max", float("nan"), ValueError),
        ("mel_scale", "mel", ValueError),
        ("mel_norm", "l2", ValueError),
        ("log_floor", 0.0, ValueError),
        ("log_floor", "1e-5", TypeError),
    ],
)
def test_config_rejects_bad_fields(field, value, error):
    with pytest.raises(error, match=field):
        SpectrogramConfig(**{field: value})


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="hop_size"):
        SpectrogramConfig.from_dict({"hop_size": 256})
    with pytest.raises(TypeError, match="data"):
        SpectrogramConfig.from_dict([("n_fft", 1024)])


# --------------------------------------------------------------------------------------------------
# Crossfading

CURVES = ["equal_power", "linear", "hann"]


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
    fade_in = crossfade_chunks([zeros, ones], overlap, curve)[100 - overlap : 100]  # incoming gain
    assert np.all(np.diff(fade_out) < 0) and np.all(np.diff(fade_in) > 0)
    assert 0 < fade_out.min() and fade_out.max() < 1
    np.testing.assert_allclose(fade_in, fade_out[::-1], atol=1e-6)  # symmetric
    if curve == "equal_power":
        np.testing.assert_allclose(fade_in**2 + fade_out**2, 1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(fade_in + fade_out, 1.0, atol=1e-6)
        constant = crossfade_chunks([ones * 0.5, ones * 0.5, ones * 0.5], overlap, curve)
        np.testing.assert_allclose(constant, 0.5, atol=1e-6)


def test_crossfade_errors():
    chunks = [np.zeros(10, np.float32), np.zeros(20, np.float32)]
    for overlap in (-1, 11, 2.5):
        with pytest.raises(ValueError, match="overlap_samples"):
            crossfade_chunks(chunks, overlap)
    with pytest.raises(ValueError, match="curve"):
        crossfade_chunks(chunks, 5, curve="cosine")
    with pytest.raises(ValueError, match="chunks"):
        crossfade_chunks([], 0)
    with pytest.raises(ValueError, match="chunks"):
        crossfade_chunks([np.zeros((2, 10))], 0)


# --------------------------------------------------------------------------------------------------
# Files


def _tone(sample_rate=48000, seconds=0.1, frequency=440.0, amplitude=0.5) -> np.ndarray:
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "subtype", "atol"),
    [("a.wav", "PCM_16", 2**-15), ("a.wav", "PCM_24", 2**-23), ("a.wav", "FLOAT", 0.0),
     ("a.flac", "PCM_16", 2**-15), ("a.FLAC", "PCM_24", 2**-23)],
)
def test_save_load_round_trip(tmp_path, name, subtype, atol):
    x = _tone()
    path = save_audio(tmp_path / name, torch.from_numpy(x), 48000, subtype=subtype)
    assert path == tmp_path / name and sf.info(path).subtype == subtype
    y = load_audio(str(path))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=atol, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no sidecar, no temporary file


def test_load_averages_channels_and_resamples(tmp_path):
    left, right = _tone(22050, 1.0, 440.0, 0.4), _tone(22050, 1.0, 440.0, 0.2)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav", sample_rate=22050), (left + right) / 2,
                               atol=1e-7)
    y = load_audio(tmp_path / "stereo.wav")  # 22.05 kHz -> 48 kHz
    assert y.dtype == np.float32 and y.shape == (48000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 48000 / y.size - 440.0) <= 1.0  # same pitch
    np.testing.assert_allclose(np.abs(y[1000:-1000]).max(), 0.3, atol=0.01)  # same level


def test_save_writes_metadata_sidecar_and_overwrites_atomically(tmp_path):
    path = tmp_path / "take.wav"
    save_audio(path, _tone(), 48000, metadata={"seed": 3, "temperature": [1.0, 0.8]})
    assert json.loads(path.with_suffix(".json").read_text()) == {"seed": 3, "temperature": [1.0, 0.8]}
    save_audio(path, _tone(amplitude=0.25), 48000)  # overwrite in place
    np.testing.assert_allclose(np.abs(load_audio(path)).max(), 0.25, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.json", "take.wav"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's private 0600


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "take.flac"
    save_audio(path, _tone(), 48000)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(audio_module.sf, "write", crash)
    with pytest.raises(OSError, match="disk full"):
        save_audio(path, _tone(amplitude=0.1), 48000)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["take.flac"]


def test_save_clips_above_full_scale_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="full scale"):
        save_audio(tmp_path / "loud.wav", _tone(amplitude=1.5), 48000, subtype="FLOAT")
    assert np.abs(load_audio(tmp_path / "loud.wav")).max() == 1.0


def test_save_errors(tmp_path):
    good = _tone()
    for bad in (np.full(10, np.nan, np.float32), np.array([0.0, np.inf], np.float32),
                np.zeros((10, 2), np.float32), np.zeros(0, np.float32)):
        with pytest.raises(ValueError, match="audio"):
            save_audio(tmp_path / "x.wav", bad, 48000)
    with pytest.raises(ValueError, match="PCM_8"):
        save_audio(tmp_path / "x.wav", good, 48000, subtype="PCM_8")
    with pytest.raises(ValueError, match="subtype"):
        save_audio(tmp_path / "x.flac", good, 48000, subtype="FLOAT")
    with pytest.raises(ValueError, match="x.mp3"):
        save_audio(tmp_path / "x.mp3", good, 48000)
    with pytest.raises(ValueError, match="sample_rate"):
        save_audio(tmp_path / "x.wav", good, 0)
    with pytest.raises(TypeError, match="metadata"):
        save_audio(tmp_path / "x.wav", good, 48000, metadata={"bad": object()})
    with pytest.raises(TypeError, match="metadata"):
        save_audio(tmp_path / "x.wav", good, 48000, metadata=["seed", 3])
    assert list(tmp_path.iterdir()) == []  # nothing written by any failed call


def test_load_errors_name_the_file_and_the_cause(tmp_path):
    valid = tmp_path / "valid.wav"
    sf.write(valid, _tone(), 48000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(valid.read_bytes()[:12] + np.random.default_rng(0).bytes(200))
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "silent.wav", np.zeros(0, np.float32), 48000)
    (tmp_path / "notes.wav").write_text("not audio, just text\n")
    cases = {"missing.wav": "no such file", "corrupt.wav": "", "empty.wav": "", "silent.wav": "no audio",
             "notes.wav": ""}
    for name, cause in cases.items():
        with pytest.raises(AudioFileError, match=name) as info:
            load_audio(tmp_path / name)
        assert cause in str(info.value)
    with pytest.raises(AudioFileError, match="no such file"):
        load_audio(tmp_path)  # a folder is not an audio file
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(valid, sample_rate=-1)
