"""Log-mel -> waveform, the inverse of `Spectrogram.waveform_to_mel`, and the settings that choose how.

    log-mel -> power mel -> NNLS: linear power -> sqrt -> phase start -> Griffin-Lim -> waveform

Each step has one readable reference here: the NNLS by preconditioned FISTA (`nnls`), the phase start
(`phase_gradient_start`) and Griffin-Lim through torch.stft / torch.istft (`griffin_lim`). ``kernels.py``
holds faster equivalents of the NNLS and Griffin-Lim that `InversionSettings.fast_kernels` selects.
Spectra are frame-major, [B, frames, bins], as the rfft of the frames gives them: the NNLS is then one
matrix product over all frames of all chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from distill_nb import kernels
from distill_nb.checks import check_bool, check_int, check_real

if TYPE_CHECKING:  # spectrogram.py imports this module
    from distill_nb.spectrogram import SpectrogramConfig

__all__ = [
    "InversionSettings", "SEED_STYLE_INVERSION", "PREVIOUS_INVERSION", "DECODED_INVERSION", "InversionBases",
    "NNLSStop", "invert_mel", "nnls", "nnls_start", "phase_gradient_start", "random_phase", "griffin_lim",
]

_PHASE_STARTS = ("gradient", "random")
_GRIFFIN_LIM_MOMENTUM = 0.99  # fast Griffin-Lim's (Perraudin et al. 2013), as librosa and torchaudio use it
# The Gaussian window exp(-pi t^2 / lam) closest to a Hann window of length n has lam = 0.25645 n^2
# (Průša et al. 2017); in units of n_fft^2, as the phase derivatives use it.
_HANN_GAUSSIAN_LAMBDA = 0.25645
# Where the curvature of the log magnitude is below a quarter of an STFT's (see `_concentration`), the
# magnitude is a smoothed average of many components: its slopes say nothing about the phase.
_MIN_CONCENTRATION = 0.25
# A window's main lobe curves across bins by 1 in `_concentration`'s units, and neighbouring partials bend it
# by up to about 40 %; a peak sharper than this was sharpened by the NNLS (see `_peak_frame_steps`).
_MAX_LOBE_CURVATURE = 1.5
# A Hann window's main lobe reaches 2 bins either side of its centre.
_LOBE_HALF_WIDTH = 2
# Below -80 dB of a chunk's peak the phase is random, as below PGHI's tolerance.
_PHASE_FLOOR = 1e-4


@dataclass(frozen=True)
class InversionSettings:
    """How `Spectrogram.mel_to_waveform` inverts a log-mel. Every field is validated on construction.

    Attributes:
        griffin_lim_iters: Griffin-Lim iterations, an int in [0, 4096] (0 = the start phase as it is).
        phase_start: "gradient" (`phase_gradient_start`: well ahead of a random start on tonal sound)
            or "random" (uniform phases, as librosa and torchaudio start).
        relaxation: over-relaxation of each Griffin-Lim projection, in [1, 2); 1 is plain fast
            Griffin-Lim, more converges in fewer iterations (see `griffin_lim`).
        nnls_tolerance: in (0, 1); a chunk's NNLS stops once ||F x - p|| / ||p|| is below it (or when it
            stalls, see `NNLSStop`).
        nnls_max_steps: the most FISTA steps of the NNLS, an int in [0, 4096] (0 = its start estimate).
        fast_kernels: run the NNLS and Griffin-Lim on the kernels of ``kernels.py`` (Griffin-Lim where
            hop divides n_fft); False runs the references `nnls` and `griffin_lim`. They agree to float
            rounding.
    """

    griffin_lim_iters: int = 16
    phase_start: str = "gradient"
    relaxation: float = 1.25
    nnls_tolerance: float = 1e-4
    nnls_max_steps: int = 128
    fast_kernels: bool = True

    def __post_init__(self) -> None:
        # Bounded so that a typo cannot start hours of work; the defaults are a few dozen.
        object.__setattr__(self, "griffin_lim_iters", check_int("griffin_lim_iters", self.griffin_lim_iters, 0, 4096))
        object.__setattr__(self, "nnls_max_steps", check_int("nnls_max_steps", self.nnls_max_steps, 0, 4096))
        if self.phase_start not in _PHASE_STARTS:
            raise ValueError(f"phase_start must be one of {_PHASE_STARTS}, got {self.phase_start!r}")
        relaxation = check_real("relaxation", self.relaxation, "in [1, 2)", lambda v: 1.0 <= v < 2.0)
        tolerance = check_real("nnls_tolerance", self.nnls_tolerance, "in (0, 1)", lambda v: 0.0 < v < 1.0)
        check_bool("fast_kernels", self.fast_kernels)
        object.__setattr__(self, "relaxation", relaxation)
        object.__setattr__(self, "nnls_tolerance", tolerance)


# The seed project's inversion: a random start and 128 plain fast Griffin-Lim iterations via torch.stft/istft.
SEED_STYLE_INVERSION = InversionSettings(griffin_lim_iters=128, phase_start="random", relaxation=1.0,
                                         fast_kernels=False)
# Generation's settings before the relaxed Griffin-Lim: 16 plain iterations, a decoded mel's NNLS run to its stall.
PREVIOUS_INVERSION = InversionSettings(griffin_lim_iters=16, relaxation=1.0, nnls_tolerance=1e-2)
# Generation's settings for a decoded mel: it is slightly inconsistent, and fitting it closely only sharpens the
# spectrum towards the inconsistency, so its NNLS stops at 1 % or after 4 FISTA steps; 12 relaxed iterations.
DECODED_INVERSION = InversionSettings(griffin_lim_iters=12, nnls_tolerance=1e-2, nnls_max_steps=4)


@dataclass(frozen=True)
class InversionBases:
    """The constant tensors of one mel filterbank's inversion on one device, float32."""

    window: torch.Tensor  # [n_fft] periodic Hann
    filterbank: torch.Tensor  # [n_mels, bins]
    pinv: torch.Tensor  # [bins, n_mels] pseudo-inverse of the filterbank
    step: torch.Tensor  # [bins] per-bin FISTA step sizes (a diagonal preconditioner)
    spread: torch.Tensor  # [bins, n_mels] a flat spectrum within each band (an NNLS start)

    @classmethod
    def build(cls, filterbank: torch.Tensor, n_fft: int, device: torch.device) -> InversionBases:
        """From a float64 filterbank [n_mels, bins] (the pseudo-inverse and the sums need the precision)."""
        # diag(F^T F 1) >= F^T F for a non-negative F (as in Lee & Seung's multiplicative updates), so per-bin
        # steps 1 / (F^T F 1) majorise the quadratic: FISTA stays convergent whatever the band widths.
        curvature = filterbank.T @ filterbank.sum(dim=1)
        step = torch.where(curvature > 0, 1.0 / curvature.clamp_min(1e-300), 0.0)  # bins in no band: 0
        # Band m's power over its weight sum, averaged over the bands that hold the bin with their weights:
        # non-negative, and exact for a spectrum flat across bands.
        band_weight = filterbank.sum(dim=1, keepdim=True)
        per_band = torch.where(band_weight > 0, filterbank / band_weight.clamp_min(1e-300), 0.0)
        bin_weight = filterbank.sum(dim=0)[:, None]
        spread = torch.where(bin_weight > 0, per_band.T / bin_weight.clamp_min(1e-300), 0.0)
        as_float = dict(device=device, dtype=torch.float32)
        return cls(window=torch.hann_window(n_fft, periodic=True, device=device), filterbank=filterbank.to(**as_float),
                   pinv=torch.linalg.pinv(filterbank).to(**as_float), step=step.to(**as_float),
                   spread=spread.to(**as_float))


def invert_mel(mel: torch.Tensor, config: SpectrogramConfig, bases: InversionBases,
               settings: InversionSettings = InversionSettings(), length: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """`Spectrogram.mel_to_waveform`: log-mel [B, n_mels, frames] or [n_mels, frames] -> float32 [B, length].

    ``bases`` must be on the mel's device; see `Spectrogram.mel_to_waveform` for the arguments.
    """
    mel, length = _checked(mel, config, settings, length)
    generator = torch.Generator().manual_seed(0) if generator is None else generator
    if len(mel) == 0:  # nothing to invert (the FFT libraries reject an empty batch)
        return torch.zeros(0, length, device=mel.device)
    with torch.no_grad():
        power_mel = (torch.exp(mel.float()) - config.log_floor).clamp_min(0.0).transpose(1, 2)
        stop = NNLSStop(settings.nnls_tolerance, settings.nnls_max_steps)
        solve = kernels.nnls_shrinking_batch if settings.fast_kernels else nnls
        magnitude = solve(power_mel, nnls_start(power_mel, bases), bases, stop).sqrt()
        if settings.phase_start == "gradient":
            phase = phase_gradient_start(magnitude, config.n_fft, config.hop_length, generator)
        else:
            phase = random_phase(magnitude, generator)
        angles = torch.complex(torch.cos(phase), torch.sin(phase))  # torch.polar is several times slower on CPU
        frame_major = settings.fast_kernels and config.n_fft % config.hop_length == 0
        run = kernels.griffin_lim_frame_major if frame_major else griffin_lim
        return run(magnitude, angles, settings.griffin_lim_iters, length, bases.window, config.hop_length,
                   settings.relaxation, _GRIFFIN_LIM_MOMENTUM)


def _checked(mel: torch.Tensor, config: SpectrogramConfig, settings: InversionSettings,
             length: int | None) -> tuple[torch.Tensor, int]:
    """The mel as [B, n_mels, frames] and the output length as an int; errors name the argument."""
    if not isinstance(settings, InversionSettings):
        raise TypeError(f"settings must be an InversionSettings, got {type(settings).__name__}")
    mel = mel.unsqueeze(0) if mel.ndim == 2 else mel
    if mel.ndim != 3 or mel.shape[1] != config.n_mels:
        raise ValueError(f"mel must be [B, {config.n_mels}, frames] or [{config.n_mels}, frames], "
                         f"got {tuple(mel.shape)}")
    frames, hop = mel.shape[-1], config.hop_length
    # The STFT of `length` samples must have `frames` frames, or Griffin-Lim's projection fails, and more
    # than n_fft // 2 samples, or it cannot reflect-pad them.
    shortest = max((frames - 1) * hop, config.n_fft // 2 + 1)
    length = shortest if length is None else length
    length = check_int("length", length)  # the range below says where its bounds come from
    if not shortest <= length < frames * hop:
        raise ValueError(f"length must be an int in [{shortest}, {frames * hop}) for {frames} frames "
                         f"(hop {hop}, n_fft {config.n_fft}), got {length}")
    return mel, length


# --------------------------------------------------------------------------------------------------
# NNLS: mel power -> linear power


@dataclass(frozen=True)
class NNLSStop:
    """When a chunk's NNLS stops: every ``check_every`` FISTA steps it checks its relative residual
    ||F y - p|| / ||p|| and stops below ``tolerance`` or when it stalls, gaining less than 1 - ``stall``
    while still above ``consistent`` (an inconsistent, decoded mel plateaus there, and chasing the plateau
    only sharpens the spectrum towards the inconsistency); after ``max_steps`` steps at the latest."""

    tolerance: float
    max_steps: int
    check_every: int = 2
    stall: float = 0.95
    consistent: float = 1e-2

    def keeps_going(self, residual: torch.Tensor, previous_residual: torch.Tensor) -> torch.Tensor:
        """bool [B]: which chunks go on, from their residuals [B] now and at the previous check."""
        stalled = (residual > self.stall * previous_residual) & (residual >= self.consistent)
        return (residual >= self.tolerance) & ~stalled


def nnls(power_mel: torch.Tensor, start: torch.Tensor, bases: InversionBases, stop: NNLSStop) -> torch.Tensor:
    """Non-negative least squares ``x @ filterbank.T ~= power_mel``, x >= 0, by preconditioned FISTA.

    Frame-major: power mel [B, frames, n_mels] and a non-negative ``start`` (`nnls_start`) -> linear power
    [B, frames, bins]. FISTA (Beck & Teboulle 2009) with the per-bin steps of `InversionBases.step`;
    each chunk stops on its own (``stop``) and keeps its x, so its result does not depend on the batch.
    """
    filterbank, step = bases.filterbank, bases.step
    x, y, t = start, start, 1.0
    scale = torch.linalg.vector_norm(power_mel, dim=(1, 2)).clamp_min(torch.finfo(torch.float32).tiny)
    going = torch.ones(len(power_mel), dtype=torch.bool, device=power_mel.device)
    previous_residual = torch.full_like(scale, math.inf)
    for iteration in range(1, stop.max_steps + 1):
        error = y @ filterbank.T - power_mel
        if iteration % stop.check_every == 0:  # the residual at y comes with the gradient
            residual = torch.linalg.vector_norm(error, dim=(1, 2)) / scale
            going &= stop.keeps_going(residual, previous_residual)
            previous_residual = residual
            if not bool(going.any()):
                break
        x_next = (y - step * (error @ filterbank)).clamp_min(0.0)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y_next = x_next + (t - 1.0) / t_next * (x_next - x)
        x = torch.where(going[:, None, None], x_next, x)
        y = torch.where(going[:, None, None], y_next, y)
        t = t_next
    return x


def nnls_start(power_mel: torch.Tensor, bases: InversionBases) -> torch.Tensor:
    """The better fitting, chunk by chunk, of two non-negative estimates [B, frames, bins]: the clamped
    pseudo-inverse, close for the mel of real audio, and each band's power spread over its bins, closer
    for a decoded mel (slightly inconsistent: its clamped pseudo-inverse fits it worse than silence)."""
    estimates = torch.stack([(power_mel @ bases.pinv.T).clamp_min(0.0), power_mel @ bases.spread.T])
    misfit = torch.linalg.vector_norm(estimates @ bases.filterbank.T - power_mel, dim=(2, 3))  # [2, B]
    return torch.where(misfit.argmin(dim=0).bool()[:, None, None], estimates[1], estimates[0])


# --------------------------------------------------------------------------------------------------
# Phase start


def random_phase(magnitude: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform phases in [0, 2 pi) of the magnitude's shape, drawn on the generator's device; chunk b
    takes the b-th draw, so its phases do not depend on the batch size."""
    phase = 2 * math.pi * torch.rand(magnitude.shape, generator=generator, device=generator.device)
    return phase.to(magnitude.device)


def phase_gradient_start(magnitude: torch.Tensor, n_fft: int, hop: int, generator: torch.Generator) -> torch.Tensor:
    """A Griffin-Lim starting phase, radians [B, frames, bins], from a magnitude [B, frames, bins] alone.

    Phase-gradient integration (Průša, Balazs & Søndergaard 2017) around the peaks that have the shape of
    an STFT's (`_concentration`): a peak continues its phase from the previous frame by its instantaneous
    frequency (time direction: `_peak_frame_steps`, `_frame_advance`), and the bins of its region, down to
    the minima on either side, take its phase plus the integral of the local group delay (frequency
    direction). Everywhere else (flat, noise-like magnitude, and below -80 dB of a chunk's peak) the phase
    is uniform random from ``generator``, as is the phase of a peak that starts a track: integrating a flat
    magnitude's zero derivatives would give every frame the phase of one impulse at the same multiple of
    n_fft, a click. Chunk b's random phases are the generator's b-th draw, so they do not depend on the
    batch size.
    """
    log_magnitude = torch.log(magnitude + 1e-6 * _chunk_peak(magnitude).clamp_min(1e-30))  # -120 dB floor
    frame_step, bin_step = _phase_steps(log_magnitude, n_fft, hop)
    peak = _peak_of(log_magnitude)
    advance = _frame_advance(_peak_frame_steps(frame_step, magnitude, log_magnitude, peak, n_fft, hop), peak)
    structured = (_concentration(log_magnitude, n_fft, hop) > _MIN_CONCENTRATION) & (
        magnitude > _PHASE_FLOOR * _chunk_peak(magnitude))
    return _integrate_frames(structured.gather(-1, peak), peak, _frequency_integral(bin_step, peak), advance,
                             random_phase(magnitude, generator))


def _integrate_frames(locked: torch.Tensor, peak: torch.Tensor, from_peak: torch.Tensor, advance: torch.Tensor,
                      random: torch.Tensor) -> torch.Tensor:
    """Frame by frame, [B, frames, bins]: a peak takes its bin's phase in the previous frame plus ``advance``
    if that bin was locked there, else its random phase; a ``locked`` bin (in the region of a structured
    peak) takes its peak's phase plus ``from_peak``; any other bin keeps its ``random`` phase."""
    phase = torch.empty_like(random)
    peak_phase = random[:, 0]
    for frame in range(random.shape[1]):
        if frame > 0:
            continued = locked[:, frame - 1] & locked[:, frame]
            peak_phase = torch.where(continued, phase[:, frame - 1] + advance[:, frame - 1], random[:, frame])
        from_phase = peak_phase.gather(-1, peak[:, frame]) + from_peak[:, frame]
        phase[:, frame] = torch.where(locked[:, frame], from_phase, random[:, frame]).remainder_(2 * math.pi)
    return phase


def _chunk_peak(magnitude: torch.Tensor) -> torch.Tensor:
    return magnitude.amax(dim=(1, 2), keepdim=True)


def _phase_steps(log_magnitude: torch.Tensor, n_fft: int, hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase increments, radians, that the magnitude's slopes imply: (per frame, per bin), each
    [B, frames, bins].

    For a Gaussian window exp(-pi t^2 / (lam n_fft^2)), the instantaneous frequency of bin m is
    m + d log|X|/dm / (2 pi lam) bins, so its phase turns by 2 pi hop / n_fft times that per frame; the
    component sits d log|X|/dframe lam n_fft^2 / (2 pi hop) samples after the frame centre, so the phase
    changes by -pi - 2 pi offset / n_fft per bin (-pi: a frame's phase is measured from its first sample).
    """
    ratio = n_fft / hop
    bins = torch.arange(log_magnitude.shape[-1], device=log_magnitude.device, dtype=log_magnitude.dtype)
    per_frame = (2 * math.pi / ratio) * bins + _slope(log_magnitude, dim=2) / (_HANN_GAUSSIAN_LAMBDA * ratio)
    per_bin = -math.pi - _HANN_GAUSSIAN_LAMBDA * ratio * _slope(log_magnitude, dim=1)
    return per_frame, per_bin


def _concentration(log_magnitude: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """The curvature of log|X| across bins plus across frames, [B, frames, bins], scaled to be 1 for a
    sinusoid, for an impulse, and for any STFT with a Gaussian window away from its zeros (log|X| plus a
    quadratic is harmonic there); a magnitude smoothed over many components is flatter, near 0."""
    ratio = n_fft / hop
    across_frames = -_second_difference(log_magnitude, dim=1) * _HANN_GAUSSIAN_LAMBDA * ratio**2 / (2 * math.pi)
    return _curvature_across_bins(log_magnitude) + across_frames


def _curvature_across_bins(log_magnitude: torch.Tensor) -> torch.Tensor:
    """-d2 log|X| / dm2 [B, frames, bins] in units of a Gaussian window's lobe (1 at a sinusoid's peak)."""
    return -_second_difference(log_magnitude, dim=2) / (2 * math.pi * _HANN_GAUSSIAN_LAMBDA)


def _peak_frame_steps(frame_step: torch.Tensor, magnitude: torch.Tensor, log_magnitude: torch.Tensor,
                      peak: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    """The per-frame phase steps [B, frames, bins] of `_phase_steps`, at the peaks sharper than a window's
    lobe replaced by those of their lobe's frequency: its power centroid (`_lobe_centroids`).

    Where mel bands span several bins, the NNLS is free to shape a partial's lobe within them, and it
    often sharpens it: the slopes then overstate how far the partial lies from the peak bin, and its
    phase drifts from frame to frame. Peak-1 triangles sum to one over each bin and interpolate the band
    centres, so the mel keeps a lobe's power centroid: a sharpened lobe's centroid is still the partial's
    frequency. Elsewhere the slopes stay: a lobe the mel resolves is an STFT's, and the centroid of
    partials closer than a lobe's width mixes them.
    """
    bins = torch.arange(magnitude.shape[-1], device=magnitude.device)
    sharpened = (peak == bins) & (_curvature_across_bins(log_magnitude) > _MAX_LOBE_CURVATURE)
    steps = frame_step.clone()
    steps[sharpened] = (2 * math.pi * hop / n_fft) * _lobe_centroids(magnitude, peak, sharpened)
    return steps


def _frame_advance(frame_step: torch.Tensor, peak: torch.Tensor) -> torch.Tensor:
    """Phase advance [B, frames - 1, bins] of each bin from one frame to the next, by the trapezoidal rule:
    its step in the next frame and, in this one, its peak's step where its peak is within a lobe's
    half-width (a partial that moved a bin or two, as in vibrato: on a lobe's flank the NNLS's slopes can
    be far off, next to the zeros it leaves between lobes), else its own."""
    bins = torch.arange(peak.shape[-1], device=peak.device)
    near_peak = (peak - bins).abs() <= _LOBE_HALF_WIDTH
    leaving = torch.where(near_peak, frame_step.gather(-1, peak), frame_step)
    return 0.5 * (frame_step[:, 1:] + leaving[:, :-1])


def _lobe_centroids(magnitude: torch.Tensor, peak: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
    """Fractional bins [n] of the n peaks where ``at`` (bool [B, frames, bins]) holds, in the order of
    at.nonzero(): each one's power centroid over the bins within ``_LOBE_HALF_WIDTH`` of it that share it
    as their peak (`_peak_of`). Computed at these peaks alone, a small share of the bins."""
    chunk, frame, centre = (index[:, None] for index in at.nonzero(as_tuple=True))
    offsets = torch.arange(-_LOBE_HALF_WIDTH, _LOBE_HALF_WIDTH + 1, device=magnitude.device)
    bins = centre + offsets  # [n, 2 * _LOBE_HALF_WIDTH + 1]
    within = (bins >= 0) & (bins < magnitude.shape[-1])
    bins = bins.clamp(0, magnitude.shape[-1] - 1)
    in_lobe = within & (peak[chunk, frame, bins] == centre)
    power = torch.where(in_lobe, magnitude[chunk, frame, bins].square(), 0.0)
    shift = power @ offsets.to(power.dtype) / power.sum(dim=-1).clamp_min(torch.finfo(power.dtype).tiny)
    return centre[:, 0] + shift


def _slope(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Central differences along ``dim``, one-sided at the ends; 0 along a dimension of one."""
    if values.shape[dim] < 2:
        return torch.zeros_like(values)
    return torch.gradient(values, dim=dim)[0]


def _second_difference(values: torch.Tensor, dim: int) -> torch.Tensor:
    """x[i - 1] - 2 x[i] + x[i + 1] along ``dim``, the ends repeating their neighbours; 0 below 3 values."""
    if values.shape[dim] < 3:
        return torch.zeros_like(values)
    inner = values.diff(n=2, dim=dim)
    return torch.cat([inner.narrow(dim, 0, 1), inner, inner.narrow(dim, -1, 1)], dim=dim)


def _peak_of(log_magnitude: torch.Tensor) -> torch.Tensor:
    """For each bin, the local maximum of log|X| that climbing from it along the bins reaches, long
    [B, frames, bins]: each peak's region of influence reaches down to the minima on either side. Level
    steps climb towards lower bins, so a plateau is one region, held by its first bin."""
    bins = torch.arange(log_magnitude.shape[-1], device=log_magnitude.device)
    padded = torch.nn.functional.pad(log_magnitude, (1, 1), value=-math.inf)
    below, here, above = padded[..., :-2], padded[..., 1:-1], padded[..., 2:]
    climbs_up = above > here  # towards higher bins
    climbs_down = (below >= here) & ~climbs_up
    peak = ~climbs_up & ~climbs_down
    last = len(bins) - 1
    next_peak = torch.where(peak, bins, last).flip(-1).cummin(dim=-1).values.flip(-1)
    previous_peak = torch.where(peak, bins, 0).cummax(dim=-1).values
    return torch.where(climbs_up, next_peak, torch.where(climbs_down, previous_peak, bins))


def _frequency_integral(bin_step: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Phase of each bin relative to its anchor bin, radians in [0, 2 pi) [B, frames, bins]: the
    per-bin steps integrated by the trapezoidal rule (in float64: the sum over a frame reaches ~3e3 rad)."""
    steps = 0.5 * (bin_step[..., 1:] + bin_step[..., :-1]).double()
    from_first = torch.nn.functional.pad(steps.cumsum(dim=-1), (1, 0))
    return (from_first - from_first.gather(-1, anchor)).remainder_(2 * math.pi).float()




# --------------------------------------------------------------------------------------------------
# Griffin-Lim


def griffin_lim(magnitude: torch.Tensor, angles: torch.Tensor, griffin_lim_iters: int, length: int,
                window: torch.Tensor, hop: int, relaxation: float,
                momentum: float = _GRIFFIN_LIM_MOMENTUM) -> torch.Tensor:
    """Relaxed fast Griffin-Lim through torch.stft / torch.istft: a magnitude [B, frames, bins] and start
    angles (complex, |angle| = 1, the same shape) -> waveform float32 [B, length].

    Each iteration projects c onto the spectra with the target magnitude and then onto the consistent ones
    (y = P(c)), over-relaxes (t = c + relaxation (y - c)) and extrapolates with momentum
    (c = t + momentum (t - t_prev)): the accelerated Griffin-Lim of Nenov, Peer & Gerkmann (2023) with
    beta = alpha; relaxation 1 is plain fast Griffin-Lim (Perraudin et al. 2013; librosa's, torchaudio's).
    The STFT is framed as `Spectrogram.waveform_to_mel` frames it (centred, reflect padding, ``window``).
    """
    n_fft = window.numel()
    magnitude, angles = magnitude.transpose(1, 2), angles.transpose(1, 2)  # torch's [B, bins, frames]
    estimate, previous = None, None
    for _ in range(griffin_lim_iters):
        waveform = torch.istft(magnitude * angles, n_fft, hop, window=window, length=length)
        rebuilt = torch.stft(waveform, n_fft, hop, window=window, center=True, pad_mode="reflect",
                             return_complex=True)  # y = P(c)
        if previous is None:  # the first estimate is the projection itself
            relaxed = estimate = rebuilt
        else:
            relaxed = torch.lerp(estimate, rebuilt, relaxation)
            estimate = torch.lerp(relaxed, previous, -momentum)
        angles = torch.sgn(estimate)
        previous = relaxed
    return torch.istft(magnitude * angles, n_fft, hop, window=window, length=length)
