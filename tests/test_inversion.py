"""Tests for distill_nb.inversion: mel -> waveform against librosa, its settings, the NNLS, the phase start,
Griffin-Lim, and the absence of clicks."""

from __future__ import annotations

import dataclasses
import warnings

import librosa
import numpy as np
import pytest
import torch
from conftest import TINY_MEL, audio_signals, librosa_mel_kwargs, spectral_convergence

from distill_nb.inversion import (DECODED_INVERSION, PREVIOUS_INVERSION, SEED_STYLE_INVERSION, InversionBases,
                                  InversionSettings, NNLSStop, griffin_lim, nnls, nnls_start, phase_gradient_start)
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig, mel_filterbank

CPU = torch.device("cpu")


def _bases(config: SpectrogramConfig) -> InversionBases:
    return InversionBases.build(torch.from_numpy(mel_filterbank(config)), config.n_fft, CPU)


def _nnls(power_mel: torch.Tensor, bases: InversionBases, tolerance: float = 1e-4, max_steps: int = 128):
    """The reference NNLS from its usual start."""
    return nnls(power_mel, nnls_start(power_mel, bases), bases, NNLSStop(tolerance, max_steps))


def _power_mel(spectrogram: Spectrogram, audio: np.ndarray) -> torch.Tensor:
    """The frame-major power mel [B, frames, n_mels] of audio, as the NNLS takes it."""
    return (torch.exp(spectrogram.waveform_to_mel(audio)) - spectrogram.config.log_floor).transpose(1, 2)


def _stft_frames(config: SpectrogramConfig, x: np.ndarray) -> torch.Tensor:
    """The complex STFT of x [n] or [B, n], frame-major [B, frames, bins], framed as the inversion frames it."""
    return torch.stft(torch.as_tensor(x).reshape(-1, x.shape[-1]), config.n_fft, config.hop_length,
                      window=torch.hann_window(config.n_fft), center=True, pad_mode="reflect",
                      return_complex=True).transpose(1, 2)


def _angle_between(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """a - b as angles in (-pi, pi]."""
    return np.angle(np.exp(1j * (a - b).double().numpy()))


# --------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("griffin_lim_iters", -1, ValueError), ("griffin_lim_iters", 2.0, TypeError),
        ("griffin_lim_iters", True, TypeError), ("phase_start", "zeros", ValueError),
        ("relaxation", 0.9, ValueError), ("relaxation", 2.0, ValueError), ("relaxation", "1.25", TypeError),
        ("relaxation", float("nan"), ValueError), ("nnls_tolerance", 0.0, ValueError),
        ("nnls_tolerance", 1.0, ValueError), ("nnls_tolerance", True, TypeError),
        ("nnls_max_steps", -1, ValueError), ("nnls_max_steps", None, TypeError), ("nnls_max_steps", "4", TypeError),
        ("fast_kernels", 1, TypeError),
    ],
)
def test_settings_reject_bad_fields_naming_them(field, value, error):
    with pytest.raises(error, match=field):
        InversionSettings(**{field: value})


def test_settings_are_frozen_and_normalise_numbers():
    settings = InversionSettings(griffin_lim_iters=np.int64(8), relaxation=1, nnls_tolerance=np.float32(0.5))
    assert type(settings.griffin_lim_iters) is int and type(settings.relaxation) is float
    assert type(settings.nnls_tolerance) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.relaxation = 1.5


def test_named_settings_render_a_mel():
    spectrogram = Spectrogram(TINY_MEL)
    mel = spectrogram.waveform_to_mel(audio_signals(TINY_MEL.sample_rate, 0.25)["chirp"])
    for settings in (SEED_STYLE_INVERSION, PREVIOUS_INVERSION, DECODED_INVERSION, InversionSettings()):
        audio = spectrogram.mel_to_waveform(mel, dataclasses.replace(settings, griffin_lim_iters=2))
        assert audio.shape == (1, (mel.shape[-1] - 1) * TINY_MEL.hop_length) and torch.isfinite(audio).all()


# --------------------------------------------------------------------------------------------------
# mel_to_waveform: quality against librosa, lengths, determinism


# Griffin-Lim is chaotic: a change in the last digits of the magnitude moves one run's spectral
# convergence by a few per cent. So the comparison averages over iteration counts and random starts, and
# allows 2 %: a real regression (a broken NNLS, momentum or framing) costs far more.
GRIFFIN_LIM_TOLERANCE = 1.02


@pytest.mark.parametrize("name", ["vibrato", "noise_burst", "chirp"])
def test_griffin_lim_no_worse_than_librosa(name):
    x = audio_signals(TINY_MEL.sample_rate, 0.5)[name]
    iteration_counts, takes = (16, 32, 64), 10
    spectrogram = Spectrogram(TINY_MEL)
    mel = spectrogram.waveform_to_mel(x)
    # librosa.feature.inverse.mel_to_audio is exactly mel_to_stft + griffinlim; calling the two lets the
    # phase come from an explicit seed instead of numpy's global RNG. Its input is the power mel.
    power_mel = np.exp(mel[0].double().numpy()) - TINY_MEL.log_floor
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa's "empty filters" warning for this tiny filterbank
        magnitude = librosa.feature.inverse.mel_to_stft(power_mel, power=2.0, **librosa_mel_kwargs(TINY_MEL))
    scores = {"librosa": [], "ours, random starts": [], "ours, phase-gradient start": []}
    for n_iter in iteration_counts:
        reference = [
            librosa.griffinlim(magnitude, n_iter=n_iter, hop_length=TINY_MEL.hop_length, n_fft=TINY_MEL.n_fft,
                               length=x.size, pad_mode="reflect", random_state=seed)
            for seed in range(takes)
        ]
        # Like with like: one batched call draws `takes` random starts, as librosa starts.
        random_starts = spectrogram.mel_to_waveform(
            mel.expand(takes, -1, -1), InversionSettings(griffin_lim_iters=n_iter, phase_start="random"),
            length=x.size).numpy()
        gradient_starts = spectrogram.mel_to_waveform(
            mel.expand(takes, -1, -1), InversionSettings(griffin_lim_iters=n_iter), length=x.size).numpy()
        for key, outputs in zip(scores, (reference, random_starts, gradient_starts)):
            scores[key] += [spectral_convergence(x, y, TINY_MEL) for y in outputs]
    librosa_sc = np.mean(scores.pop("librosa"))
    for key, values in scores.items():
        assert np.mean(values) <= GRIFFIN_LIM_TOLERANCE * librosa_sc, (
            f"{name}, {key}: mean spectral convergence {np.mean(values):.4f} vs librosa {librosa_sc:.4f}")


def test_mel_to_waveform_lengths_shapes_and_errors():
    spectrogram = Spectrogram()  # the default 48 kHz chunk geometry
    mel = spectrogram.waveform_to_mel(np.zeros((2, 48000), np.float32))
    one_iteration, no_iterations = InversionSettings(griffin_lim_iters=1), InversionSettings(griffin_lim_iters=0)
    chunk = spectrogram.mel_to_waveform(mel, one_iteration, length=48000)
    assert chunk.dtype == torch.float32 and chunk.shape == (2, 48000)
    assert spectrogram.mel_to_waveform(mel[0], no_iterations).shape == (1, 93 * 512)  # length None
    assert spectrogram.mel_to_waveform(mel[:0], length=48000).shape == (0, 48000)  # an empty batch
    for bad_length in (93 * 512 - 1, 94 * 512):
        with pytest.raises(ValueError, match="length"):
            spectrogram.mel_to_waveform(mel, no_iterations, length=bad_length)
    with pytest.raises(TypeError, match="length"):
        spectrogram.mel_to_waveform(mel, no_iterations, length=48000.0)
    with pytest.raises(ValueError, match="mel"):
        spectrogram.mel_to_waveform(mel[:, :64], no_iterations)
    with pytest.raises(TypeError, match="settings"):
        spectrogram.mel_to_waveform(mel, 16)


def test_mel_to_waveform_needs_more_than_half_a_window_of_samples():
    """Griffin-Lim reflect-pads the waveform by n_fft // 2 = 64 samples at each end: it needs more than 64."""
    spectrogram = Spectrogram(TINY_MEL)  # n_fft 128, hop 32
    mel = spectrogram.waveform_to_mel(audio_signals(TINY_MEL.sample_rate, 0.25)["vibrato"])
    for frames in (1, 2):  # at most 63 samples
        with pytest.raises(ValueError, match="length"):
            spectrogram.mel_to_waveform(mel[..., :frames], InversionSettings(griffin_lim_iters=2))
    audio = spectrogram.mel_to_waveform(mel[..., :3], InversionSettings(griffin_lim_iters=2))
    assert audio.shape == (1, 65) and torch.isfinite(audio).all()


def test_mel_to_waveform_is_deterministic_and_random_phases_follow_the_generator():
    spectrogram = Spectrogram(TINY_MEL)
    mel = spectrogram.waveform_to_mel(audio_signals(TINY_MEL.sample_rate, 0.25)["vibrato"])

    def invert(seed, phase_start, batch=1):
        return spectrogram.mel_to_waveform(mel.expand(batch, -1, -1),
                                           InversionSettings(griffin_lim_iters=4, phase_start=phase_start),
                                           generator=torch.Generator().manual_seed(seed))

    for phase_start in ("random", "gradient"):  # the gradient start draws the phases of noise-like bins
        assert torch.equal(invert(7, phase_start), invert(7, phase_start))
        assert not torch.allclose(invert(7, phase_start), invert(8, phase_start))
        # Chunk b takes the generator's b-th draw: its audio does not depend on the batch size.
        torch.testing.assert_close(invert(7, phase_start, batch=3)[:1], invert(7, phase_start), rtol=0, atol=1e-6)
    default_seed = spectrogram.mel_to_waveform(mel, InversionSettings(griffin_lim_iters=4))
    assert torch.equal(default_seed, invert(0, "gradient"))


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
        signals = audio_signals(config.sample_rate, 1.0)
        signals["white_noise"] = np.random.default_rng(2).normal(0, 0.1, config.sample_rate).astype(np.float32)
        mel = spectrogram.waveform_to_mel(signals[source])
    audio = spectrogram.mel_to_waveform(mel, InversionSettings(griffin_lim_iters=12), length=config.sample_rate)
    at_multiples = np.arange(0, audio.shape[1], config.n_fft)
    for chunk in audio.numpy():
        ratios = _click_ratios(chunk, round(0.004 * config.sample_rate))
        worst = int(ratios.argmax())
        assert ratios.max() < CLICK_RATIO, (
            f"click of {ratios.max():.1f} x its neighbourhood at sample {worst} ({worst % config.n_fft} past a "
            f"multiple of n_fft); at the multiples of n_fft: {ratios[at_multiples].max():.1f}")


# --------------------------------------------------------------------------------------------------
# Phase start


def test_phase_gradient_start_follows_a_sinusoid_in_time_and_across_its_lobe():
    """At a sinusoid's peak bin the phase turns by 2 pi hop nu / n_fft per frame (nu in fractional bins), and
    across its main lobe it steps from bin to bin as the STFT's phase does: from the magnitude alone."""
    config = SpectrogramConfig()  # n_fft 2048, hop 512: the lambda of the Hann window is tuned for n_fft
    for nu in (40.0, 40.25, 40.5, 123.8):
        t = np.arange(config.sample_rate // 2) / config.sample_rate
        x = np.sin(2 * np.pi * nu * config.sample_rate / config.n_fft * t).astype(np.float32)
        stft = _stft_frames(config, x)[:, 5:-5]  # away from the reflect-padded ends
        phase = phase_gradient_start(stft.abs(), config.n_fft, config.hop_length, torch.Generator().manual_seed(0))
        peak = int(stft[0, 20].abs().argmax())
        turn = _angle_between(phase[0, 1:, peak], phase[0, :-1, peak])
        expected_turn = 2 * np.pi * config.hop_length * nu / config.n_fft
        assert np.abs(np.angle(np.exp(1j * (turn - expected_turn)))).max() < 0.05, nu
        lobe = slice(peak - 1, peak + 2)
        steps, expected = phase[0, :, lobe].diff(dim=-1), torch.angle(stft[0, :, lobe]).diff(dim=-1)
        assert np.abs(_angle_between(steps, expected)).max() < 1e-2, nu


@pytest.mark.parametrize("hz", [800.0, 880.0, 1320.0])
def test_phase_gradient_start_follows_a_tone_from_the_magnitude_the_nnls_recovers(hz):
    """Between mel bands several bins wide the NNLS sharpens a tone's lobe, and the slopes of a sharpened
    lobe put the tone up to half a bin off; the peak's phase must still turn by 2 pi hop nu / n_fft."""
    config = SpectrogramConfig()
    spectrogram = Spectrogram(config)
    t = np.arange(config.sample_rate // 2) / config.sample_rate
    magnitude = _nnls(_power_mel(spectrogram, np.sin(2 * np.pi * hz * t).astype(np.float32)), _bases(config)).sqrt()
    phase = phase_gradient_start(magnitude, config.n_fft, config.hop_length, torch.Generator().manual_seed(0))
    peak = magnitude[0, 5:-5].argmax(dim=-1, keepdim=True)  # away from the reflect-padded ends
    turn = _angle_between(phase[0, 6:-5].gather(-1, peak[1:]), phase[0, 5:-6].gather(-1, peak[:-1]))
    expected_turn = 2 * np.pi * config.hop_length * hz / config.sample_rate
    assert np.median(np.abs(np.angle(np.exp(1j * (turn - expected_turn))))) < 0.1, hz


def test_phase_gradient_start_places_an_impulse_from_the_magnitude():
    """In the frame centred on an impulse, the phase steps across the bins by the impulse's delay."""
    config = SpectrogramConfig()
    for delay in (0, 60, -120):  # samples after the frame centre
        x = np.zeros(config.sample_rate // 2, np.float32)
        x[40 * config.hop_length + delay] = 1.0
        stft = _stft_frames(config, x)
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


def _convergence_by_start(x: np.ndarray) -> dict[str, float]:
    """Mean spectral convergence of x's mel inverted 3 times with 8 Griffin-Lim iterations, per phase start."""
    spectrogram = Spectrogram()
    mel = spectrogram.waveform_to_mel(x).expand(3, -1, -1)
    return {start: np.mean([spectral_convergence(x, y, spectrogram.config) for y in spectrogram.mel_to_waveform(
                mel, InversionSettings(griffin_lim_iters=8, phase_start=start), length=x.size).numpy()])
            for start in ("gradient", "random")}


@pytest.mark.parametrize("name", ["vibrato", "noise_burst", "chirp"])
def test_phase_gradient_start_beats_a_random_start_on_tones_and_matches_it_on_noise(name):
    sc = _convergence_by_start(audio_signals(48000, 0.5)[name])
    if name == "noise_burst":  # noise has no phase structure to find
        assert sc["gradient"] < 1.02 * sc["random"], sc
    else:
        assert sc["gradient"] < sc["random"], sc


@pytest.mark.parametrize(("hz", "vibrato_cents"), [(880.0, 0.0), (1320.0, 20.0)])
def test_phase_gradient_start_beats_a_random_start_on_a_breathy_flute_like_tone(hz, vibrato_cents):
    """A tone with a weak octave, breath noise and a 5 Hz vibrato. The NNLS sharpens its lobe between mel
    bands several bins wide (see the tone test above), and under vibrato its peak moves between bins: a
    start that drifts with a sharpened lobe's slopes, or with those of the flank its peak moved to, ends
    up close to or behind a random start."""
    t = np.arange(48000) / 48000
    depth = hz * (2 ** (vibrato_cents / 1200) - 1)  # Hz
    tone = 2 * np.pi * hz * t + depth / 5.0 * np.sin(2 * np.pi * 5.0 * t)
    noise = 0.006 * np.random.default_rng(3).standard_normal(t.size)
    sc = _convergence_by_start((0.3 * np.sin(tone) + 0.03 * np.sin(2 * tone) + noise).astype(np.float32))
    assert sc["gradient"] < 0.75 * sc["random"], sc


# --------------------------------------------------------------------------------------------------
# Griffin-Lim


@pytest.mark.parametrize("relaxation", [1.0, 1.25])
def test_griffin_lim_iterations_match_a_librosa_reference(relaxation):
    """The reference loop against the relaxed fast Griffin-Lim recurrence written out with librosa's STFT in
    float64: y = P(c) (target magnitude, then consistency), t = c + relaxation (y - c),
    c = t + momentum (t - t_prev). With relaxation 1 it is also librosa.griffinlim's own loop."""
    config = TINY_MEL
    x = audio_signals(config.sample_rate, 0.25)["chirp"].astype(np.float64)
    stft_kwargs = dict(n_fft=config.n_fft, hop_length=config.hop_length, window="hann")
    magnitude = np.abs(librosa.stft(x, pad_mode="reflect", **stft_kwargs))  # [bins, frames]
    phase0 = np.random.default_rng(0).uniform(0, 2 * np.pi, magnitude.shape)
    momentum = 0.99

    def synthesize(c):  # the waveform of the target magnitude with c's phase
        return librosa.istft(magnitude * np.exp(1j * np.angle(c)), length=x.size, **stft_kwargs)

    def ours(phase, n_iter):
        angles = torch.polar(torch.ones(phase.T.shape), torch.from_numpy(phase.T).float())[None]  # frame-major
        magnitudes = torch.from_numpy(magnitude.T).float()[None]
        return griffin_lim(magnitudes, angles, n_iter, x.size, torch.hann_window(config.n_fft), config.hop_length,
                           relaxation, momentum)[0].double().numpy()

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


# --------------------------------------------------------------------------------------------------
# NNLS


def test_nnls_recovers_the_linear_power_of_a_real_mel():
    """The preconditioned FISTA reaches a small residual where the clamped pseudo-inverse does not."""
    spectrogram = Spectrogram()
    power_mel = _power_mel(spectrogram, audio_signals(48000, 0.25)["chirp"])
    bases = _bases(spectrogram.config)

    def residual(linear):
        return float(torch.linalg.norm(linear @ bases.filterbank.T - power_mel) / torch.linalg.norm(power_mel))

    linear = _nnls(power_mel, bases)
    assert linear.min() >= 0
    assert residual(linear) < 1e-3 < residual((power_mel @ bases.pinv.T).clamp_min(0))
    # A looser tolerance stops sooner, still within it (generation's, for decoded mels).
    loose = _nnls(power_mel, bases, tolerance=1e-2)
    assert residual(linear) < residual(loose) < 1e-2


def test_nnls_max_steps_stops_fista_after_that_many_steps():
    """max_steps = k gives the k-th FISTA iterate, here written out in float64 from the better-fitting start."""
    spectrogram = Spectrogram()
    power_mel = _power_mel(spectrogram, audio_signals(48000, 0.25)["chirp"])  # its NNLS runs ~40 steps
    bases = _bases(spectrogram.config)
    fb, step = bases.filterbank.double().numpy(), bases.step.double().numpy()
    p = power_mel[0].double().numpy()  # [frames, n_mels]
    starts = [np.maximum(p @ bases.pinv.double().numpy().T, 0.0), p @ bases.spread.double().numpy().T]
    x_k = min(starts, key=lambda start: np.linalg.norm(start @ fb.T - p))
    y, t = x_k, 1.0
    for k in range(6):
        ours = _nnls(power_mel, bases, max_steps=k)[0].double().numpy()
        np.testing.assert_allclose(ours, x_k, rtol=0, atol=1e-4 * np.abs(x_k).max(), err_msg=f"after {k} steps")
        x_next = np.maximum(y - step * ((y @ fb.T - p) @ fb), 0.0)
        t_next = (1.0 + np.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y, x_k, t = x_next + (t - 1.0) / t_next * (x_next - x_k), x_next, t_next
    converged = _nnls(power_mel, bases)[0].double().numpy()
    assert np.abs(converged - x_k).max() > 1e-2 * np.abs(x_k).max()  # 5 steps are far from the end


def test_nnls_stop_ends_at_the_tolerance_or_a_stall_above_one_percent():
    stop = NNLSStop(tolerance=1e-3, max_steps=128)
    residual = torch.tensor([5e-4, 0.20, 0.20, 5e-3, 5e-3])
    previous = torch.tensor([1e-3, 0.30, 0.205, 5.1e-3, 6e-3])
    # converged; gaining fast; stalled above 1 %; slow but below 1 % (a real mel: runs on); gaining
    assert stop.keeps_going(residual, previous).tolist() == [False, True, False, True, True]


@pytest.mark.parametrize(
    "config", [SpectrogramConfig(), TINY_MEL, SpectrogramConfig(mel_scale="slaney", mel_norm="slaney")])
def test_nnls_spread_start_is_exact_for_a_flat_spectrum(config):
    bases = _bases(config)
    covered = bases.filterbank.sum(dim=0) > 0  # bins in no band cannot be recovered
    flat = torch.full((bases.filterbank.shape[1],), 3.0)
    recovered = bases.spread @ (bases.filterbank @ flat)
    torch.testing.assert_close(recovered[covered], flat[covered], rtol=1e-5, atol=0)
    assert recovered.min() >= 0 and bases.spread.min() >= 0


def test_nnls_result_of_a_chunk_does_not_depend_on_the_batch():
    spectrogram = Spectrogram()
    bases = _bases(spectrogram.config)
    batch = np.stack(list(audio_signals(48000, 0.25).values()))  # chunks that converge at different speeds
    power_mel = _power_mel(spectrogram, batch)
    together = _nnls(power_mel, bases)
    for row, mel in zip(together, power_mel):
        alone = _nnls(mel[None], bases)[0]
        torch.testing.assert_close(row, alone, rtol=0, atol=1e-6 * float(alone.max()))
