"""Measurements over codes and audio: code histograms, per-level statistics, divergences, seams.

Pure functions over tensors and arrays; nothing here knows about models or files, so notebooks can
apply them to generated takes, training codes or any audio alike.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# top_share in LevelStats: the share of all counts that falls on the most used TOP_FRACTION of the codebook.
TOP_FRACTION = 0.1


def code_histograms(codes: torch.Tensor | np.ndarray, codebook_size: int,
                    num_quantizers: int | None = None) -> torch.Tensor:
    """Count how often each code is used at each residual level.

    Args:
        codes: integer codes [..., P, Q] (e.g. [B, P, Q] or [P, Q]; the last axis is the level), or flat
            tokens [..., P*Q] (index p*Q + q) when ``num_quantizers`` is given.
        codebook_size: K, the number of codes per level; every code must lie in [0, K).
        num_quantizers: Q for flat tokens; None when the last axis of ``codes`` already is the level.

    Returns:
        torch.long [Q, K]: ``counts[q, k]`` = how many positions use code k at level q.
    """
    codes = torch.as_tensor(codes)
    if codes.dtype.is_floating_point or codes.dtype.is_complex or codes.dtype == torch.bool:
        raise TypeError(f"codes must be an integer tensor, got dtype {codes.dtype}")
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size must be an int >= 1, got {codebook_size!r}")
    if codes.dim() < 1 or codes.numel() == 0:
        raise ValueError(f"codes must be a non-empty tensor [..., P, Q], got shape {tuple(codes.shape)}")
    if num_quantizers is not None:
        if num_quantizers < 1 or codes.shape[-1] % num_quantizers:
            raise ValueError(f"num_quantizers must be >= 1 and divide the token count {codes.shape[-1]}, "
                             f"got {num_quantizers}")
        codes = codes.reshape(*codes.shape[:-1], -1, num_quantizers)
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
    as many frames that touches no seam. A ratio near 1 means the seam is no more abrupt than the
    audio around it; 2 means twice as abrupt as a typical stretch.

    The sample-level jump |x[s] - x[s - 1]| at each seam is compared with the median |x[n] - x[n - 1]|
    of the whole signal in the same way (a single noisy sample, so read it next to the flux ratio).

    Attributes (n_seams = len(seam_samples)):
        seam_samples: seam positions in samples.
        sample_rate: Hz.
        n_fft, hop_length: STFT frame and hop, in samples.
        seam_flux: float64 [n_seams], peak spectral flux around each seam.
        baseline_flux: median peak flux of seam-free stretches.
        flux_ratio: float64 [n_seams], seam_flux / baseline_flux.
        jump: float64 [n_seams], |x[s] - x[s - 1]| at each seam.
        typical_jump: median |x[n] - x[n - 1]| of the whole signal.
        jump_ratio: float64 [n_seams], jump / typical_jump (inf when the signal is otherwise constant).
    """

    seam_samples: list[int]
    sample_rate: int
    n_fft: int
    hop_length: int
    seam_flux: np.ndarray
    baseline_flux: float
    flux_ratio: np.ndarray
    jump: np.ndarray
    typical_jump: float
    jump_ratio: np.ndarray

    @property
    def seam_times_s(self) -> np.ndarray:
        """Seam positions in seconds, float64 [n_seams]."""
        return np.asarray(self.seam_samples, dtype=np.float64) / self.sample_rate

    @property
    def median_flux_ratio(self) -> float:
        """One number for the whole take: the median of ``flux_ratio`` (NaN without seams)."""
        return float(np.median(self.flux_ratio)) if len(self.flux_ratio) else math.nan


# Log magnitudes are floored this far below the loudest bin, so near-silent bins do not add noise to the flux.
_FLUX_FLOOR_DB = 80.0


def seam_discontinuity(audio: np.ndarray | torch.Tensor, sample_rate: int, seam_samples: list[int],
                       n_fft: int = 1024, hop: int = 256) -> SeamReport:
    """Measure how abrupt each seam of stitched audio is (see ``SeamReport`` for the method).

    Args:
        audio: mono signal [n] (numpy or torch, any float dtype).
        sample_rate: Hz, > 0.
        seam_samples: seam positions in samples, each in [1, n - 1] (e.g. ``GenerationResult.seam_samples``).
        n_fft: STFT frame length in samples (Hann window, no padding), 2 <= n_fft <= n.
        hop: STFT hop in samples, 1 <= hop <= n_fft.

    Spectral flux of frame i: L2 norm of the positive part of (S_i - S_{i-1}), with S the log magnitude
    in dB relative to the loudest bin of the signal, floored at -80 dB. Deterministic (float64 numpy).
    """
    x = np.asarray(audio.detach().cpu() if isinstance(audio, torch.Tensor) else audio, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"audio must be mono [n], got shape {x.shape}")
    if not sample_rate > 0:
        raise ValueError(f"sample_rate must be > 0 Hz, got {sample_rate}")
    if not 2 <= n_fft <= len(x):
        raise ValueError(f"n_fft must be in [2, len(audio)={len(x)}], got {n_fft}")
    if not 1 <= hop <= n_fft:
        raise ValueError(f"hop must be in [1, n_fft={n_fft}], got {hop}")
    seams = [int(s) for s in seam_samples]
    if any(not 1 <= s <= len(x) - 1 for s in seams):
        raise ValueError(f"seam_samples must lie in [1, len(audio) - 1 = {len(x) - 1}], got {seams}")

    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    magnitude = np.abs(np.fft.rfft(frames, axis=-1))
    log_mag = 20 * np.log10(np.maximum(magnitude / max(magnitude.max(), 1e-12), 1e-12))
    log_mag = np.maximum(log_mag, -_FLUX_FLOOR_DB)
    # flux[j] compares frame j + 1 with frame j.
    flux = np.sqrt((np.maximum(np.diff(log_mag, axis=0), 0.0) ** 2).sum(axis=-1))
    if len(flux) == 0:
        raise ValueError(f"audio of {len(x)} samples gives a single frame of n_fft={n_fft}; it needs two")

    # The flux values whose frame pair covers seam s: frames starting in (s - n_fft, s], plus the next one.
    regions = []
    for s in seams:
        first_frame = max(0, -(-(s - n_fft + 1) // hop))
        last_frame = min(s // hop, len(frames) - 1)
        if first_frame > last_frame:
            raise ValueError(f"seam at sample {s} lies after the last full frame of n_fft={n_fft}; "
                             f"seam_samples must leave a frame to measure")
        regions.append((max(first_frame - 1, 0), min(last_frame, len(flux) - 1)))
    seam_flux = np.array([flux[lo:hi + 1].max() for lo, hi in regions])

    near_seam = np.zeros(len(flux), dtype=bool)
    for lo, hi in regions:
        near_seam[lo:hi + 1] = True
    width = min(n_fft // hop + 1, len(flux))
    stretch_peak = np.lib.stride_tricks.sliding_window_view(flux, width).max(axis=-1)
    clean = ~np.lib.stride_tricks.sliding_window_view(near_seam, width).any(axis=-1)
    if not clean.any():
        raise ValueError(f"audio of {len(x)} samples has no seam-free stretch of {width} frames to compare "
                         f"with; pass longer audio or fewer seam_samples")
    baseline = float(np.median(stretch_peak[clean]))

    steps = np.abs(np.diff(x))
    jump = np.array([steps[s - 1] for s in seams])
    typical_jump = float(np.median(steps))
    return SeamReport(seam_samples=seams, sample_rate=int(sample_rate), n_fft=n_fft, hop_length=hop,
                      seam_flux=seam_flux, baseline_flux=baseline, flux_ratio=_ratio(seam_flux, baseline),
                      jump=jump, typical_jump=typical_jump, jump_ratio=_ratio(jump, typical_jump))


def _ratio(values: np.ndarray, reference: float) -> np.ndarray:
    """values / reference, with 0 / 0 = 1 (no change where nothing changes) and x / 0 = inf."""
    if reference > 0:
        return values / reference
    return np.where(values > 0, np.inf, 1.0)


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
