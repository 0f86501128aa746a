"""Measurements over codes and audio: code histograms, per-level statistics, divergences, seams,
audio features and distances between sets of audio.

Pure functions over tensors and arrays; nothing here knows about models or files, so notebooks can
apply them to generated takes, training codes or any audio alike.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from distill_nb.checks import check_int, check_positive

# top_share in LevelStats: the share of all counts that falls on the most used TOP_FRACTION of the codebook.
TOP_FRACTION = 0.1
# A frame more than this many dB below the loudest frame of its signal is silent (seams, audio features).
SILENT_DB = 60.0


def code_histograms(codes: torch.Tensor | np.ndarray, codebook_size: int,
                    levels: int | None = None) -> torch.Tensor:
    """Count how often each code is used at each residual level.

    Args:
        codes: integer codes [..., P, Q] (e.g. [B, P, Q] or [P, Q]; the last axis is the level), or flat
            tokens [..., P*Q] (index p*Q + q) when ``levels`` is given.
        codebook_size: K, the number of codes per level; every code must lie in [0, K).
        levels: the residual levels of flat tokens; None when the last axis of ``codes`` already is the level.

    Returns:
        torch.long [Q, K]: ``counts[q, k]`` = how many positions use code k at level q.
    """
    codes = torch.as_tensor(codes)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    codebook_size = check_int("codebook_size", codebook_size, 1)
    if codes.dim() < 1 or codes.numel() == 0:
        raise ValueError(f"codes must be a non-empty tensor [..., P, Q], got shape {tuple(codes.shape)}")
    if levels is not None:
        if codes.shape[-1] % check_int("levels", levels, 1):
            raise ValueError(f"levels must divide the token count {codes.shape[-1]}, got {levels}")
        codes = codes.reshape(*codes.shape[:-1], -1, levels)
    low, high = int(codes.min()), int(codes.max())
    if low < 0 or high >= codebook_size:
        raise ValueError(f"codes must lie in [0, codebook_size={codebook_size}), got values in [{low}, {high}]")

    levels = codes.shape[-1]
    # Give each level its own block of K bins so one bincount counts all levels at once.
    offsets = torch.arange(levels, device=codes.device) * codebook_size
    flat = (codes.reshape(-1, levels).long() + offsets).reshape(-1)
    return torch.bincount(flat, minlength=levels * codebook_size).reshape(levels, codebook_size).cpu()


@dataclass(frozen=True)
class LevelStats:
    """How one residual level uses its codebook.

    Attributes:
        level: residual level q (0 = coarsest).
        total: number of counted positions.
        unique_codes: number of codes used at least once.
        entropy_bits: Shannon entropy of the code distribution, in bits (log2 K for a uniform codebook).
        perplexity: 2 ** entropy_bits, the effective number of equally used codes.
        top_share: share of all counts on the most used ``TOP_FRACTION`` (10 %) of the codebook, at least
            one code; 0.1 for a uniform codebook, 1.0 when a tenth of the codes does all the work.
    """

    level: int
    total: int
    unique_codes: int
    entropy_bits: float
    perplexity: float
    top_share: float


def level_statistics(histograms: torch.Tensor | np.ndarray) -> list[LevelStats]:
    """Per-level statistics of code histograms [Q, K] (counts, e.g. from ``code_histograms``).

    A level with no counts gets NaN entropy, perplexity and top share.
    """
    counts = _as_counts(histograms, "histograms")
    top_k = max(1, math.ceil(TOP_FRACTION * counts.shape[1]))
    stats = []
    for level, row in enumerate(counts):
        total = float(row.sum())
        if total == 0:
            entropy = top_share = math.nan
        else:
            p = row / total
            entropy = float(-torch.special.xlogy(p, p).sum()) / math.log(2)
            top_share = float(row.topk(top_k).values.sum()) / total
        stats.append(LevelStats(level=level, total=int(total), unique_codes=int((row > 0).sum()),
                                entropy_bits=entropy, perplexity=2.0 ** entropy, top_share=top_share))
    return stats


def js_divergence(p_counts: torch.Tensor | np.ndarray, q_counts: torch.Tensor | np.ndarray,
                  base: float = 2.0) -> torch.Tensor:
    """Jensen-Shannon divergence between two sets of histograms, per level.

    Each histogram is normalised to a distribution first, so the counts may come from different
    amounts of data. JSD(P, Q) = (KL(P || M) + KL(Q || M)) / 2 with M = (P + Q) / 2: symmetric, 0 for
    identical distributions, and log_base(2) (1 bit in base 2) for disjoint ones. Codes unused in
    both histograms contribute nothing.

    Args:
        p_counts, q_counts: non-negative counts [Q, K] (or [K] for a single level), same shape.
        base: logarithm base; 2 gives bits.

    Returns:
        float64 tensor [Q] (a scalar tensor for [K] inputs).
    """
    p = _as_counts(p_counts, "p_counts", allow_1d=True)
    q = _as_counts(q_counts, "q_counts", allow_1d=True)
    if p.shape != q.shape:
        raise ValueError(f"p_counts and q_counts must have the same shape, got {tuple(p.shape)} "
                         f"and {tuple(q.shape)}")
    if not base > 0 or base == 1:
        raise ValueError(f"base must be > 0 and != 1, got {base}")
    for name, counts in (("p_counts", p), ("q_counts", q)):
        if (counts.sum(-1) == 0).any():
            raise ValueError(f"{name} has a level with no counts; it cannot be normalised")
    p = p / p.sum(-1, keepdim=True)
    q = q / q.sum(-1, keepdim=True)
    m = (p + q) / 2
    # xlogy(0, .) = 0: a code that P never uses adds nothing to KL(P || M), and m > 0 wherever p > 0.
    kl_pm = torch.special.xlogy(p, p / m.where(m > 0, 1.0)).sum(-1)
    kl_qm = torch.special.xlogy(q, q / m.where(m > 0, 1.0)).sum(-1)
    jsd = ((kl_pm + kl_qm) / 2).clamp(0.0, math.log(2))  # clamp only absorbs rounding error
    return jsd / math.log(base)


def compare_to_training(generated_codes: torch.Tensor | np.ndarray,
                        train_code_counts: torch.Tensor | np.ndarray) -> list[dict[str, float | int]]:
    """Compare the code usage of generated takes with the training codes, one row per level.

    Args:
        generated_codes: codes [..., P, Q] (e.g. ``GenerationResult.codes`` [n_chunks, P, Q]).
        train_code_counts: long [Q, K] histogram of the training codes
            (``LoadedVQModel.train_code_counts``).

    Returns:
        One dict per level with keys level, entropy_bits, train_entropy_bits, perplexity,
        train_perplexity, unique_codes, train_unique_codes and js_divergence_bits (JSD in bits between
        the generated and training distributions) -- ready for printing as a table.
    """
    train = _as_counts(train_code_counts, "train_code_counts")
    codes = torch.as_tensor(generated_codes)
    if codes.dim() < 2 or codes.shape[-1] != train.shape[0]:
        raise ValueError(f"generated_codes must be [..., P, Q] with Q = {train.shape[0]} levels as in "
                         f"train_code_counts, got shape {tuple(codes.shape)}")
    generated = code_histograms(codes, codebook_size=train.shape[1])
    jsd = js_divergence(generated, train)
    return [
        {"level": gen.level,
         "entropy_bits": gen.entropy_bits, "train_entropy_bits": ref.entropy_bits,
         "perplexity": gen.perplexity, "train_perplexity": ref.perplexity,
         "unique_codes": gen.unique_codes, "train_unique_codes": ref.unique_codes,
         "js_divergence_bits": float(jsd[gen.level])}
        for gen, ref in zip(level_statistics(generated), level_statistics(train))
    ]


@dataclass
class SeamReport:
    """How abrupt the seams of stitched audio are, compared with the rest of the audio.

    Spectral flux measures how much new energy appears from one STFT frame to the next; a click or a
    hard switch of texture at a seam gives a peak. For each seam the peak flux over the frames whose
    window covers the seam is compared with the median of the same peak taken over every stretch of
    as many frames that touches no seam and is not silent. A ratio near 1 means the seam is no more
    abrupt than the audio around it; 2 means twice as abrupt as a typical stretch.

    The sample-level jump |x[s] - x[s - 1]| at each seam is compared in the same way with the median
    |x[n] - x[n - 1]| over the non-silent frames (a single noisy sample, so read it next to the flux ratio).

    Silence: a frame is silent when its RMS is more than ``SILENT_DB`` (60 dB) below the loudest frame
    of the audio. A seam whose covering frames are all silent has nothing to hear, so it is counted in
    ``silent`` and not scored: its ratios are NaN, as are all ratios of a measure without a reference
    (``missing_reference`` says why). No ratio is ever inf.

    Attributes (n_seams = len(seam_samples)):
        seam_samples: seam positions in samples.
        sample_rate: Hz.
        n_fft, hop_length: STFT frame and hop, in samples.
        silent: bool [n_seams], True where every frame covering the seam is silent.
        seam_flux: float64 [n_seams], peak spectral flux around each seam.
        baseline_flux: median peak flux of the non-silent seam-free stretches; NaN when there are none.
        flux_ratio: float64 [n_seams], seam_flux / baseline_flux; NaN for silent seams and when
            baseline_flux is NaN or 0.
        jump: float64 [n_seams], |x[s] - x[s - 1]| at each seam.
        typical_jump: median |x[n] - x[n - 1]| within non-silent frames; NaN when all audio is silent.
        jump_ratio: float64 [n_seams], jump / typical_jump; NaN for silent seams and when typical_jump
            is NaN or 0.
        missing_reference: None when both references exist; otherwise which one is missing and why.
    """

    seam_samples: list[int]
    sample_rate: int
    n_fft: int
    hop_length: int
    silent: np.ndarray
    seam_flux: np.ndarray
    baseline_flux: float
    flux_ratio: np.ndarray
    jump: np.ndarray
    typical_jump: float
    jump_ratio: np.ndarray
    missing_reference: str | None

    @property
    def seam_times_s(self) -> np.ndarray:
        """Seam positions in seconds, float64 [n_seams]."""
        return np.asarray(self.seam_samples, dtype=np.float64) / self.sample_rate

    @property
    def silent_count(self) -> int:
        """How many seams are silent (not scored)."""
        return int(self.silent.sum())

    @property
    def silent_share(self) -> float:
        """Share of the seams that are silent, in [0, 1]; NaN without seams."""
        return self.silent_count / len(self.silent) if len(self.silent) else math.nan

    @property
    def median_flux_ratio(self) -> float:
        """One number for the whole take: the median ``flux_ratio`` of the non-silent seams (NaN if none)."""
        return _scored_median(self.flux_ratio, self.silent)

    @property
    def median_jump_ratio(self) -> float:
        """The median ``jump_ratio`` of the non-silent seams (NaN if none)."""
        return _scored_median(self.jump_ratio, self.silent)


# Log magnitudes are floored this far below the loudest bin, so near-silent bins do not add noise to the flux.
_FLUX_FLOOR_DB = 80.0


def seam_discontinuity(audio: np.ndarray | torch.Tensor, sample_rate: int, seam_samples: list[int],
                       n_fft: int = 1024, hop_length: int = 256) -> SeamReport:
    """Measure how abrupt each seam of stitched audio is (see ``SeamReport`` for the method).

    Args:
        audio: finite mono signal [n] (numpy or torch, any real dtype).
        sample_rate: Hz, > 0.
        seam_samples: seam positions in samples, each in [1, n - 1] (e.g. ``GenerationResult.seam_samples``).
        n_fft: STFT frame length in samples (Hann window, no padding), 2 <= n_fft <= n.
        hop_length: STFT hop in samples, 1 <= hop_length <= n_fft.

    Spectral flux of frame i: L2 norm of the positive part of (S_i - S_{i-1}), with S the log magnitude
    in dB relative to the loudest bin of the signal, floored at -80 dB. Silence is judged on the same
    frames (unwindowed RMS). Deterministic (float64 numpy).
    """
    x = _real_array(audio, "audio")
    if x.ndim != 1:
        raise ValueError(f"audio must be mono [n], got shape {x.shape}")
    check_positive("sample_rate", sample_rate)
    if not 2 <= n_fft <= len(x):
        raise ValueError(f"n_fft must be in [2, len(audio)={len(x)}], got {n_fft}")
    if not 1 <= hop_length <= n_fft:
        raise ValueError(f"hop_length must be in [1, n_fft={n_fft}], got {hop_length}")
    seams = [int(s) for s in seam_samples]
    if any(not 1 <= s <= len(x) - 1 for s in seams):
        raise ValueError(f"seam_samples must lie in [1, len(audio) - 1 = {len(x) - 1}], got {seams}")

    raw_frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop_length]
    silent_frame = _frame_level_db(x, n_fft, hop_length) < -SILENT_DB
    flux = _spectral_flux(raw_frames)
    if len(flux) == 0:
        raise ValueError(f"audio of {len(x)} samples gives a single frame of n_fft={n_fft}; it needs two")

    # The flux values whose frame pair covers seam s: frames starting in (s - n_fft, s], plus the next one.
    regions = []
    for s in seams:
        first_frame = max(0, -(-(s - n_fft + 1) // hop_length))
        last_frame = min(s // hop_length, len(raw_frames) - 1)
        if first_frame > last_frame:
            raise ValueError(f"seam at sample {s} lies after the last full frame of n_fft={n_fft}; "
                             f"seam_samples must leave a frame to measure")
        regions.append((max(first_frame - 1, 0), min(last_frame, len(flux) - 1)))
    seam_flux = np.array([flux[lo:hi + 1].max() for lo, hi in regions])
    # flux[lo..hi] compares frames lo..hi + 1.
    silent = np.array([silent_frame[lo:hi + 2].all() for lo, hi in regions], dtype=bool)

    near_seam = np.zeros(len(flux), dtype=bool)
    for lo, hi in regions:
        near_seam[lo:hi + 1] = True
    width = min(n_fft // hop_length + 1, len(flux))
    stretch_peak = np.lib.stride_tricks.sliding_window_view(flux, width).max(axis=-1)
    clean = ~np.lib.stride_tricks.sliding_window_view(near_seam, width).any(axis=-1)
    if not clean.any():
        raise ValueError(f"audio of {len(x)} samples has no seam-free stretch of {width} frames to compare "
                         f"with; pass longer audio or fewer seam_samples")
    # Stretch k covers flux[k:k + width], i.e. frames k .. k + width; it counts unless all of them are silent.
    audible = ~np.lib.stride_tricks.sliding_window_view(silent_frame, width + 1).all(axis=-1)
    reference = stretch_peak[clean & audible]
    baseline = float(np.median(reference)) if len(reference) else math.nan

    steps = np.abs(np.diff(x))
    jump = np.array([steps[s - 1] for s in seams])
    audible_steps = _audible_steps(steps, silent_frame, n_fft, hop_length)
    typical_jump = float(np.median(audible_steps)) if len(audible_steps) else math.nan

    return SeamReport(seam_samples=seams, sample_rate=int(sample_rate), n_fft=n_fft, hop_length=hop_length,
                      silent=silent, seam_flux=seam_flux, baseline_flux=baseline,
                      flux_ratio=_seam_ratio(seam_flux, baseline, silent), jump=jump, typical_jump=typical_jump,
                      jump_ratio=_seam_ratio(jump, typical_jump, silent),
                      missing_reference=_missing_references(len(reference), baseline, len(audible_steps),
                                                            typical_jump))


def _missing_references(stretches: int, baseline: float, steps: int, typical_jump: float) -> str | None:
    """Why a seam ratio has no reference (``SeamReport.missing_reference``), or None when both have one."""
    problems = []
    if not stretches:
        problems.append("flux: every seam-free stretch is silent, so there is no baseline flux")
    elif baseline == 0:
        problems.append("flux: the non-silent seam-free stretches have no spectral flux (baseline 0)")
    if not steps:
        problems.append("jump: all audio is silent, so there is no typical sample jump")
    elif typical_jump == 0:
        problems.append("jump: the non-silent audio never changes from one sample to the next (typical jump 0)")
    return "; ".join(problems) or None


def _spectral_flux(frames: np.ndarray) -> np.ndarray:
    """flux[j]: the L2 norm of the rise from frame j to frame j + 1 of the Hann-windowed log magnitude (dB
    relative to the loudest bin, floored at -_FLUX_FLOOR_DB) of ``frames`` [n_frames, n_fft]."""
    magnitude = np.abs(np.fft.rfft(frames * np.hanning(frames.shape[-1]), axis=-1))
    log_mag = 20 * np.log10(np.maximum(magnitude / max(magnitude.max(), 1e-12), 1e-12))
    log_mag = np.maximum(log_mag, -_FLUX_FLOOR_DB)
    return np.sqrt((np.maximum(np.diff(log_mag, axis=0), 0.0) ** 2).sum(axis=-1))


def _audible_steps(steps: np.ndarray, silent_frame: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """The sample steps (x[n] to x[n + 1]) whose two samples lie in one non-silent frame."""
    # A difference array marks steps start .. start + n_fft - 2 of every non-silent frame.
    starts = np.flatnonzero(~silent_frame) * hop_length
    cover = np.zeros(len(steps) + 1, dtype=np.int64)
    cover[starts] += 1
    cover[starts + n_fft - 1] -= 1
    return steps[np.cumsum(cover)[:-1] > 0]


def _seam_ratio(values: np.ndarray, reference: float, silent: np.ndarray) -> np.ndarray:
    """values / reference, NaN for silent seams and everywhere when the reference is NaN or 0."""
    if not reference > 0:
        return np.full(len(values), math.nan)
    return np.where(silent, math.nan, values / reference)


def _scored_median(ratios: np.ndarray, silent: np.ndarray) -> float:
    """Median of the ratios of non-silent seams; NaN when there are none (or they are unscored)."""
    scored = ratios[~silent]
    return float(np.median(scored)) if len(scored) else math.nan


def spectral_convergence(reference: np.ndarray | torch.Tensor, estimate: np.ndarray | torch.Tensor) -> float:
    """||reference - estimate||_F / ||reference||_F: the relative error of an estimate, e.g. of a magnitude
    spectrogram rebuilt from a phase guess (0 = exact, 1 = as far off as an all-zero estimate).

    Args:
        reference, estimate: finite real arrays or tensors of the same shape, any number of dimensions;
            ``reference`` must not be all zero.

    Returns:
        A float >= 0 (float64 arithmetic).
    """
    ref = _real_array(reference, "reference")
    est = _real_array(estimate, "estimate")
    if est.shape != ref.shape:
        raise ValueError(f"estimate must have the shape of reference {ref.shape}, got {est.shape}")
    norm = float(np.linalg.norm(ref.ravel()))
    if norm == 0:
        raise ValueError(f"reference must have a non-zero entry (the error is relative to its norm), "
                         f"got {'an empty array' if ref.size == 0 else 'all zeros'} of shape {ref.shape}")
    return float(np.linalg.norm((ref - est).ravel())) / norm


@dataclass(frozen=True)
class AudioFeatures:
    """Frame-wise features of one or more signals, for comparing sets of audio (``feature_distance``).

    Every signal is cut into frames of ``frame_length`` samples every ``hop_length`` samples (no
    padding); the frames of all signals follow one another in signal order. n_frames counts all frames,
    n_sounding the non-silent ones; the three spectral features exist for non-silent frames only.

    Attributes:
        sample_rate: Hz.
        frame_length, hop_length: frame and hop in samples.
        level_db: float64 [n_frames], the frame's RMS in dB relative to the loudest frame of the same
            signal: <= 0, -200 dB for digital silence (the floor) and for every frame of an all-zero signal.
        silent: bool [n_frames], level_db < -SILENT_DB (more than 60 dB below the signal's loudest frame).
        centroid_hz: float64 [n_sounding], spectral centroid of the frame's power spectrum, in Hz,
            in (0, sample_rate / 2].
        flatness_db: float64 [n_sounding], 10 log10(geometric mean / arithmetic mean) of the power
            spectrum, in [-100, 0] dB: 0 for a flat spectrum, about -2.5 dB for white noise (the
            periodogram's e^-gamma), far below for a tone.
        pitchiness: float64 [n_sounding], in [0, 1]: the highest normalised autocorrelation for a
            period of 1/1000 to 1/60 s; about 1 for a steady periodic sound, near 0 for white noise.
    """

    sample_rate: float
    frame_length: int
    hop_length: int
    level_db: np.ndarray
    silent: np.ndarray
    centroid_hz: np.ndarray
    flatness_db: np.ndarray
    pitchiness: np.ndarray

    @property
    def silent_share(self) -> float:
        """Share of silent frames over all frames, in [0, 1]."""
        return float(self.silent.mean())


# Digital silence has no level in dB; frames are floored this far below the loudest frame.
_LEVEL_FLOOR_DB = 200.0
# Power spectra are floored this far below the frame's strongest bin, so flatness stays finite (>= -100 dB).
_SPECTRUM_FLOOR_DB = 100.0
# Periods searched by pitchiness: the range of voices and most pitched instruments.
PITCH_RANGE_HZ = (60.0, 1000.0)
# A frame whose variation about its mean has less than this share of its energy counts as constant.
_CONSTANT_FRAME = 1e-12
# Frames analysed per FFT call: bounds the memory of long inputs without giving up vectorisation.
_FRAMES_PER_BLOCK = 256


def audio_features(signals: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor], sample_rate: float,
                   frame_length: int = 2048, hop_length: int = 512) -> AudioFeatures:
    """Loudness, silence, spectral centroid, flatness and pitchiness per frame (see ``AudioFeatures``).

    Args:
        signals: one mono signal [n] or a sequence of them (the files of a corpus, several takes), numpy
            or torch, real and finite; each needs at least ``frame_length`` samples. Levels are relative
            to each signal's own loudest frame, so the signals' gains do not matter.
        sample_rate: Hz, > 0.
        frame_length: samples per frame; at least 2 * sample_rate / 60, so the longest period searched
            by pitchiness (60 Hz) fits twice.
        hop_length: samples between frame starts, >= 1.

    Each non-silent frame is weighted with a Hann window sampled at half-sample offsets (no zero
    weights, so no sound in a frame is lost) and transformed with a real FFT of 2 * frame_length points:
    its even bins are the frame_length-point power spectrum (centroid, flatness), and the inverse FFT
    of the mean-removed frame's power gives its autocorrelation. Pitchiness follows Boersma (1993): the
    frame's normalised autocorrelation divided by the window's, whose highest value over the lags of
    ``PITCH_RANGE_HZ`` is clipped to [0, 1]; a constant frame (a DC offset) gets 0.
    """
    rate = check_positive("sample_rate", sample_rate)
    hop_length = check_int("hop_length", hop_length, 1)
    shortest_lag = math.ceil(rate / PITCH_RANGE_HZ[1])
    longest_lag = math.floor(rate / PITCH_RANGE_HZ[0])
    frame_length = check_int("frame_length", frame_length)  # the range below says where its bound comes from
    if frame_length < max(2 * longest_lag, 2):
        raise ValueError(f"frame_length must be an int >= 2 * sample_rate / {PITCH_RANGE_HZ[0]:g} = "
                         f"{max(2 * longest_lag, 2)} samples at {rate:g} Hz, got {frame_length!r}")
    arrays = _signal_list(signals, frame_length)

    window = np.sin(np.pi * (np.arange(frame_length) + 0.5) / frame_length) ** 2
    window_spectrum = np.fft.rfft(window, 2 * frame_length)
    window_acf = np.fft.irfft(np.abs(window_spectrum) ** 2, 2 * frame_length)[:longest_lag + 1]
    lags = np.arange(shortest_lag, longest_lag + 1)
    window_acf = window_acf[lags] / window_acf[0]
    freqs = np.fft.rfftfreq(frame_length, 1.0 / rate)

    levels, spectral = [], []
    for x in arrays:
        frames = np.lib.stride_tricks.sliding_window_view(x, frame_length)[::hop_length]
        level = _frame_level_db(x, frame_length, hop_length)
        levels.append(level)
        sounding = np.flatnonzero(level >= -SILENT_DB)
        for block in np.array_split(sounding, max(1, math.ceil(len(sounding) / _FRAMES_PER_BLOCK))):
            frame = frames[block]
            weighted = frame * window
            spectrum = np.fft.rfft(weighted, 2 * frame_length)
            power = np.abs(spectrum[:, ::2]) ** 2
            power = np.maximum(power, power.max(axis=1, keepdims=True) * 10 ** (-_SPECTRUM_FLOOR_DB / 10))
            centroid = (power * freqs).sum(axis=1) / power.sum(axis=1)
            flatness = 10 / math.log(10) * (np.log(power).mean(axis=1) - np.log(power.mean(axis=1)))
            # Removing the mean after windowing: rfft(w (x - m)) = rfft(w x) - m rfft(w).
            centred = spectrum - frame.mean(axis=1, keepdims=True) * window_spectrum
            acf = np.fft.irfft(np.abs(centred) ** 2, 2 * frame_length)[:, :longest_lag + 1]
            energy = acf[:, :1]
            # A constant frame leaves only rounding error after removing its mean: no pitch to find there.
            varied = energy > _CONSTANT_FRAME * (weighted ** 2).sum(axis=1, keepdims=True)
            normalised = np.divide(acf[:, lags], energy, out=np.zeros((len(block), len(lags))), where=varied)
            pitchiness = np.clip((normalised / window_acf).max(axis=1), 0.0, 1.0)
            spectral.append(np.stack([centroid, flatness, pitchiness]))
    # Every signal adds at least one (possibly empty) block, so spectral is never empty.
    centroid, flatness, pitchiness = np.concatenate(spectral, axis=1)
    level_db = np.concatenate(levels)
    return AudioFeatures(sample_rate=rate, frame_length=frame_length, hop_length=hop_length, level_db=level_db,
                         silent=level_db < -SILENT_DB, centroid_hz=centroid, flatness_db=flatness,
                         pitchiness=pitchiness)


# The smallest spread each feature_distance scale may take, so a constant reference does not divide by 0:
# about a just noticeable difference in the feature's unit (1 dB, a semitone in octaves, 1 dB, 0.05, 5 %).
DISTANCE_SCALE_FLOOR = {"loudness": 1.0, "centroid": 1 / 12, "flatness": 1.0, "pitchiness": 0.05,
                        "silent_share": 0.05}


def feature_distance(features: AudioFeatures, reference: AudioFeatures) -> dict[str, float]:
    """How far the feature distributions of ``features`` lie from those of ``reference``, in units of
    the reference's spread (0 = the same distribution; 1 = off by one standard deviation).

    For each frame feature of the non-silent frames -- "loudness" (level_db), "centroid" (log2 of
    centroid_hz, in octaves), "flatness" (flatness_db) and "pitchiness" -- the 1-Wasserstein distance
    between the two empirical distributions, divided by the reference's standard deviation or by
    ``DISTANCE_SCALE_FLOOR[name]`` if that is larger. "silent_share" is the same for the 0/1 silence
    indicator of all frames: |p - q| / max(sqrt(q (1 - q)), 0.05), with p and q the two silent shares.
    "mean" averages the five. W1 is symmetric; the distance is not quite, as it is scaled by the
    reference alone.

    Both must come from ``audio_features`` with the same sample rate, frame and hop. When either set
    has no non-silent frame, the four frame features are NaN, and so is "mean".
    """
    for name, value in (("features", features), ("reference", reference)):
        if not isinstance(value, AudioFeatures):
            raise TypeError(f"{name} must be AudioFeatures (from audio_features), got {type(value).__name__}")
    settings = {"sample_rate": reference.sample_rate, "frame_length": reference.frame_length,
                "hop_length": reference.hop_length}
    theirs = {key: getattr(features, key) for key in settings}
    if theirs != settings:
        raise ValueError(f"features must be computed with the reference's settings {settings}, got {theirs}")

    def frame_features(f: AudioFeatures) -> dict[str, np.ndarray]:
        return {"loudness": f.level_db[~f.silent], "centroid": np.log2(f.centroid_hz),
                "flatness": f.flatness_db, "pitchiness": f.pitchiness}

    distances = {}
    for (name, values), ref_values in zip(frame_features(features).items(), frame_features(reference).values()):
        if len(values) and len(ref_values):
            scale = max(float(ref_values.std()), DISTANCE_SCALE_FLOOR[name])
            distances[name] = _wasserstein_1(values, ref_values) / scale
        else:
            distances[name] = math.nan
    p, q = features.silent_share, reference.silent_share
    distances["silent_share"] = abs(p - q) / max(math.sqrt(q * (1 - q)), DISTANCE_SCALE_FLOOR["silent_share"])
    distances["mean"] = float(np.mean(list(distances.values())))
    return distances


def _wasserstein_1(u: np.ndarray, v: np.ndarray) -> float:
    """1-Wasserstein distance between two empirical distributions: the area between their CDFs."""
    u, v = np.sort(u), np.sort(v)
    points = np.sort(np.concatenate([u, v]))
    cdf_u = np.searchsorted(u, points[:-1], side="right") / len(u)
    cdf_v = np.searchsorted(v, points[:-1], side="right") / len(v)
    return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(points)))


def _frame_level_db(x: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """RMS level [n_frames] of the frames of x in dB relative to the loudest, floored at -200 dB."""
    # Squaring the signal once, not each frame, keeps memory at the signal's size for long inputs.
    power = np.lib.stride_tricks.sliding_window_view(x * x, frame_length)[::hop_length].mean(axis=1)
    loudest = power.max()
    relative = power / loudest if loudest > 0 else np.zeros_like(power)
    return 10 * np.log10(np.maximum(relative, 10 ** (-_LEVEL_FLOOR_DB / 10)))


def _real_array(value: object, name: str) -> np.ndarray:
    """A numpy or torch array of real numbers as finite float64; ValueError naming it otherwise."""
    if isinstance(value, torch.Tensor):
        if value.dtype.is_complex or value.dtype == torch.bool:
            raise ValueError(f"{name} must hold real numbers, got dtype {value.dtype}")
        value = value.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return array


def _signal_list(signals: object, frame_length: int) -> list[np.ndarray]:
    """One signal [n] or a sequence of them as a list of float64 arrays of >= frame_length samples."""
    if isinstance(signals, (np.ndarray, torch.Tensor)):
        if signals.ndim != 1:
            raise ValueError(f"signals must be one mono signal [n] or a sequence of them, got an array of "
                             f"shape {tuple(signals.shape)}")
        named = [("signals", signals)]
    elif isinstance(signals, Sequence) and not isinstance(signals, str):
        if not signals:
            raise ValueError("signals must hold at least one signal, got an empty sequence")
        named = [(f"signals[{i}]", signal) for i, signal in enumerate(signals)]
    else:
        raise ValueError(f"signals must be one mono signal [n] or a sequence of them, got {type(signals).__name__}")
    arrays = []
    for name, signal in named:
        x = _real_array(signal, name)
        if x.ndim != 1 or len(x) < frame_length:
            raise ValueError(f"{name} must be mono [n] with n >= frame_length = {frame_length}, got shape {x.shape}")
        arrays.append(x)
    return arrays


def _as_counts(counts: torch.Tensor | np.ndarray, name: str, allow_1d: bool = False) -> torch.Tensor:
    """Validate non-negative histogram counts [Q, K] (or [K]) and return them as float64."""
    counts = torch.as_tensor(counts)
    dims = (1, 2) if allow_1d else (2,)
    if counts.dim() not in dims or counts.shape[-1] == 0:
        expected = "[Q, K] or [K]" if allow_1d else "[Q, K]"
        raise ValueError(f"{name} must be counts {expected}, got shape {tuple(counts.shape)}")
    counts = counts.detach().cpu().to(torch.float64)
    if not torch.isfinite(counts).all() or (counts < 0).any():
        raise ValueError(f"{name} must be finite counts >= 0")
    return counts
