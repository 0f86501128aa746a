"""Audio front end: files in and out, the log-mel spectrogram, its inverse, and chunk stitching.

Conventions (DESIGN.md): audio is numpy float32 (n,) mono in [-1, 1] at the model sample rate
(48 kHz by default); a mel is torch float32 [B, n_mels, frames], the natural log of the power mel
plus ``log_floor``; a chunk is ``CHUNK_SECONDS`` of audio.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

__all__ = [
    "CHUNK_SECONDS",
    "AudioFileError",
    "load_audio",
    "save_audio",
    "SpectrogramConfig",
    "Spectrogram",
    "crossfade_chunks",
]

CHUNK_SECONDS: float = 1.0

# The mel -> linear NNLS runs preconditioned FISTA until the relative residual ||F x - p|| / ||p|| (of
# each chunk) is below _NNLS_TOLERANCE, or until it stalls: gains less than 5 % over _NNLS_CHECK_EVERY
# steps while still above _NNLS_CONSISTENT. A decoded mel is slightly inconsistent, its residual
# plateaus at ~0.14 within 6 steps, and chasing it further only sharpens the spectrum towards the
# inconsistency: after Griffin-Lim, 44 decoded chunks ended closer to their mels when stopped this way
# than when run to the plateau's end (mean spectral convergence 0.1749 against 0.1785, closer on 28),
# in 38 ms instead of 48 for 11 chunks. The mel of real audio reaches a small residual, and there
# precision pays (the chirp of the librosa comparison loses 7 % when stopped at 1e-3), so below 1 %
# a chunk runs on to the tolerance or the cap: a real mel converges in ~40 steps, sparse spectra would
# take a few hundred, for nothing audible: on 11 s of demo audio (Griffin-Lim 32) a cap of 512 steps
# gave spectral convergence 0.1783, 128 steps 0.1784 (64: 0.1791) in about 60 % of the time. Hence the
# cap of 128 (64 loses to librosa on the chirp at the coarse test settings).
_NNLS_TOLERANCE = 1e-4
_NNLS_STALL = 0.95
_NNLS_CHECK_EVERY = 2
_NNLS_CONSISTENT = 1e-2
_NNLS_MAX_STEPS = 128
_GRIFFIN_LIM_MOMENTUM = 0.99
# Over-relaxing each Griffin-Lim projection (see `Spectrogram._griffin_lim`) converges faster. On 44 decoded
# chunks (mel spectral convergence, phase-gradient start), 12 relaxed iterations reach 0.1848 and 16 plain ones
# 0.1855 (relaxation 1.2: 0.1857; 16 relaxed: 0.1839). On the vibrato, chirp and noise-burst test signals it
# helps or ties from 12 to 64 iterations, from either start; a larger relaxation (1.3) starts to lose at 12-16.
_GRIFFIN_LIM_RELAXATION = 1.25
_SMALLEST_NORMAL = torch.finfo(torch.float32).tiny
_PHASE_INITS = ("gradient", "random")
# The Gaussian window exp(-pi t^2 / lam) closest to a Hann window of length n has lam = 0.25645 n^2
# (Průša et al. 2017); in units of n_fft^2, as the phase derivatives use it.
_HANN_GAUSSIAN_LAMBDA = 0.25645
# Where the curvature of the log magnitude is below a quarter of an STFT's (see `_concentration`), the
# magnitude is a smoothed average of many components: its derivatives say nothing about the phase.
_MIN_CONCENTRATION = 0.25
# Below -80 dB of a chunk's peak the phase is random, as below PGHI's tolerance.
_PHASE_FLOOR = 1e-4

_SUBTYPES = {".wav": ("PCM_16", "PCM_24", "FLOAT"), ".flac": ("PCM_16", "PCM_24")}
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class AudioFileError(Exception):
    """An audio file is missing, unreadable, corrupt or empty; the message names the file and the cause."""


# --------------------------------------------------------------------------------------------------
# Files


def load_audio(path: str | os.PathLike, sample_rate: int = 48000) -> np.ndarray:
    """Read an audio file as float32 mono at ``sample_rate`` Hz.

    Reads whatever libsndfile reads (WAV, FLAC, OGG, AIFF, and MP3 with libsndfile >= 1.1).
    Channels are averaged; the sample rate is converted with soxr (high quality).

    Returns:
        numpy float32 (n,), n = round(frames * sample_rate / file_rate).

    Raises:
        AudioFileError: the file is missing, unreadable, corrupt, empty or holds non-finite samples.
        ValueError: ``sample_rate`` is not a positive integer.
    """
    sample_rate = _positive_int(sample_rate, "sample_rate")
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"cannot read audio file '{path}': no such file")
    try:
        data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, OSError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioFileError(f"cannot read audio file '{path}': {error}") from error
    if data.shape[0] == 0:
        raise AudioFileError(f"cannot read audio file '{path}': it holds no audio samples")
    audio = data.mean(axis=1, dtype=np.float32)
    if not np.isfinite(audio).all():
        raise AudioFileError(f"cannot read audio file '{path}': it holds NaN or infinite samples")
    if file_rate != sample_rate:
        audio = soxr.resample(audio, file_rate, sample_rate)
    return np.ascontiguousarray(audio, dtype=np.float32)


def save_audio(
    path: str | os.PathLike,
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    subtype: str = "PCM_24",
    metadata: Mapping | None = None,
) -> Path:
    """Write mono audio to WAV or FLAC (chosen by the extension), atomically.

    Args:
        path: ``.wav`` or ``.flac`` file; its folder must exist.
        audio: float (n,) samples in [-1, 1]; samples beyond full scale are clipped with a warning.
        sample_rate: Hz, positive.
        subtype: "PCM_16", "PCM_24" or "FLOAT" (WAV only).
        metadata: JSON-serialisable mapping, written to the sidecar ``path.with_suffix(".json")``.

    The file (and the sidecar) is written to a temporary file in the same folder and renamed into
    place, so a crash never leaves a half-written file under ``path``.

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in _FORMATS:
        raise ValueError(f"path must end in .wav or .flac, got '{path.name}'")
    if subtype not in _SUBTYPES[extension]:
        raise ValueError(f"subtype for {extension} must be one of {_SUBTYPES[extension]}, got {subtype!r}")
    sample_rate = _positive_int(sample_rate, "sample_rate")
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().numpy()
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1 or samples.size == 0:
        raise ValueError(f"audio must be a non-empty mono array of shape (n,), got shape {samples.shape}")
    if not np.isfinite(samples).all():
        raise ValueError("audio contains NaN or infinite samples; expected finite values in [-1, 1]")
    peak = float(np.abs(samples).max())
    if peak > 1.0:
        warnings.warn(f"audio peaks at {peak:.3f}, above full scale; clipping to [-1, 1]", stacklevel=2)
        samples = np.clip(samples, -1.0, 1.0)
    sidecar = None if metadata is None else _metadata_json(metadata)  # fails before anything is written

    _write_atomically(
        path, lambda tmp: sf.write(tmp, samples, sample_rate, subtype=subtype, format=_FORMATS[extension])
    )
    if sidecar is not None:
        _write_atomically(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(sidecar))
    return path


def _metadata_json(metadata: Mapping) -> str:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping (dict) or None, got {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from error


def _write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it into place.

    A crash at any point leaves either the old file or the new one, never half a file. The file gets the
    permissions an ordinary ``open(path, "w")`` would give it (mkstemp's are owner-only).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_bytes_atomically(path: Path, data: bytes) -> None:
    _write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


# --------------------------------------------------------------------------------------------------
# Spectrogram


@dataclass(frozen=True)
class SpectrogramConfig:
    """Settings of the log-mel spectrogram.

    Attributes:
        sample_rate: Hz.
        n_fft: FFT size and Hann window length, samples (>= 16).
        hop_length: samples between frames, 1..n_fft // 2 (Griffin-Lim needs >= 50 % overlap).
        n_mels: mel bands, 1..n_fft // 2 + 1.
        f_min: lowest mel edge, Hz, 0 <= f_min < f_max.
        f_max: highest mel edge, Hz, <= sample_rate / 2; None = sample_rate / 2.
        mel_scale: "htk" (2595 log10(1 + f / 700)) or "slaney" (linear below 1 kHz, log above).
        mel_norm: None (peak 1 triangles) or "slaney" (each triangle scaled to unit area in Hz / 2).
        log_floor: the mel is ``ln(power_mel + log_floor)``, so silence maps to ln(log_floor)
            (-11.5 for the default 1e-5); > 0.
    """

    sample_rate: int = 48000
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 0.0
    f_max: float | None = None
    mel_scale: str = "htk"
    mel_norm: str | None = None
    log_floor: float = 1e-5

    def __post_init__(self) -> None:
        # Normalise numeric types (numpy scalars, ints for floats) so to_dict() is JSON-safe.
        set_field = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_field("sample_rate", _positive_int(self.sample_rate, "sample_rate"))
        set_field("n_fft", _positive_int(self.n_fft, "n_fft"))
        if self.n_fft < 16:
            raise ValueError(f"n_fft must be >= 16, got {self.n_fft}")
        set_field("hop_length", _positive_int(self.hop_length, "hop_length"))
        if self.hop_length > self.n_fft // 2:
            raise ValueError(f"hop_length must be in [1, n_fft // 2 = {self.n_fft // 2}], got {self.hop_length}")
        set_field("n_mels", _positive_int(self.n_mels, "n_mels"))
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels must be in [1, n_fft // 2 + 1 = {self.n_fft // 2 + 1}], got {self.n_mels}")
        nyquist = self.sample_rate / 2
        if self.f_max is not None:
            set_field("f_max", _finite_float(self.f_max, "f_max"))
            if not 0.0 < self.f_max <= nyquist:
                raise ValueError(f"f_max must be in (0, sample_rate / 2 = {nyquist}] or None, got {self.f_max}")
        set_field("f_min", _finite_float(self.f_min, "f_min"))
        top = nyquist if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < top:
            raise ValueError(f"f_min must be in [0, {top}) (below f_max), got {self.f_min}")
        if self.mel_scale not in ("htk", "slaney"):
            raise ValueError(f"mel_scale must be 'htk' or 'slaney', got {self.mel_scale!r}")
        if self.mel_norm not in (None, "slaney"):
            raise ValueError(f"mel_norm must be None or 'slaney', got {self.mel_norm!r}")
        set_field("log_floor", _finite_float(self.log_floor, "log_floor"))
        if self.log_floor <= 0:
            raise ValueError(f"log_floor must be > 0, got {self.log_floor}")

    def to_dict(self) -> dict:
        """JSON-safe dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> SpectrogramConfig:
        """Inverse of ``to_dict``; missing keys take their defaults, unknown keys raise ValueError."""
        if not isinstance(data, Mapping):
            raise TypeError(f"data must be a mapping of SpectrogramConfig fields, got {type(data).__name__}")
        unknown = sorted(set(data) - {field.name for field in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown SpectrogramConfig fields: {unknown}")
        return cls(**data)


@dataclass(frozen=True)
class _DeviceBases:
    """The constant tensors of one Spectrogram on one device (float32)."""

    window: torch.Tensor  # [n_fft] periodic Hann
    filterbank: torch.Tensor  # [n_mels, bins]
    pinv: torch.Tensor  # [bins, n_mels] pseudo-inverse of the filterbank
    step: torch.Tensor  # [bins] per-bin NNLS step sizes (diagonal preconditioner)
    spread: torch.Tensor  # [bins, n_mels] a flat spectrum within each band (an NNLS start)


class Spectrogram:
    """Log-mel spectrogram and its Griffin-Lim inverse, batched, on any device.

    The STFT is centred with reflect padding, a periodic Hann window and power 2, as
    ``librosa.feature.melspectrogram(..., pad_mode="reflect")``.
    """

    def __init__(self, config: SpectrogramConfig | None = None) -> None:
        self.config = config if config is not None else SpectrogramConfig()
        if not isinstance(self.config, SpectrogramConfig):
            raise TypeError(f"config must be a SpectrogramConfig or None, got {type(config).__name__}")
        filterbank = _mel_filterbank(self.config)  # float64: the pseudo-inverse and norm need the precision
        self._filterbank64 = torch.from_numpy(filterbank)
        self._pinv64 = torch.linalg.pinv(self._filterbank64)
        # diag(F^T F 1) >= F^T F for a non-negative F (as in Lee & Seung's multiplicative updates), so
        # per-bin steps 1 / (F^T F 1) give a majorising quadratic: the preconditioned FISTA stays
        # convergent and adapts to the very different band widths. Bins in no band get step 0.
        curvature = self._filterbank64.T @ self._filterbank64.sum(dim=1)
        self._step64 = torch.where(curvature > 0, 1.0 / curvature.clamp_min(1e-300), 0.0)
        # A flat spectrum within each band: band m's power p_m over its weight sum, averaged over the bands
        # that hold the bin with their filter weights. Non-negative; exact for a spectrum flat across bands.
        band_weight = self._filterbank64.sum(dim=1, keepdim=True)
        per_band = torch.where(band_weight > 0, self._filterbank64 / band_weight.clamp_min(1e-300), 0.0)
        bin_weight = self._filterbank64.sum(dim=0)[:, None]
        self._spread64 = torch.where(bin_weight > 0, per_band.T / bin_weight.clamp_min(1e-300), 0.0)
        self._bases: dict[torch.device, _DeviceBases] = {}

    @property
    def mel_filterbank(self) -> torch.Tensor:
        """float32 [n_mels, n_fft // 2 + 1], power-spectrum bins to mel bands (librosa.filters.mel)."""
        return self._filterbank64.float()

    @property
    def chunk_samples(self) -> int:
        """Samples in one chunk of CHUNK_SECONDS."""
        return round(CHUNK_SECONDS * self.config.sample_rate)

    def get_mel_shape(self, num_samples: int) -> tuple[int, int]:
        """(n_mels, frames) of the mel of ``num_samples`` samples; frames = 1 + num_samples // hop."""
        num_samples = _positive_int(num_samples, "num_samples")
        return self.config.n_mels, 1 + num_samples // self.config.hop_length

    def get_latent_shape(self, num_samples: int, downsample: int = 16) -> tuple[int, int]:
        """(H, W) latent grid of a mel padded up to multiples of ``downsample``: 48000 -> (8, 6)."""
        downsample = _positive_int(downsample, "downsample")
        n_mels, frames = self.get_mel_shape(num_samples)
        return math.ceil(n_mels / downsample), math.ceil(frames / downsample)

    def waveform_to_mel(self, audio: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Log-compressed power mel of audio.

        Args:
            audio: numpy or torch, [n] or [B, n] samples, n > n_fft // 2 (reflect padding).

        Returns:
            float32 [B, n_mels, 1 + n // hop_length] on the input's device (CPU for numpy).
        """
        waveform = torch.as_tensor(audio)
        if waveform.ndim not in (1, 2) or not waveform.is_floating_point():
            raise ValueError(f"audio must be float [n] or [B, n], got {waveform.dtype} {tuple(waveform.shape)}")
        waveform = waveform.reshape(-1, waveform.shape[-1]).float()
        if waveform.shape[-1] <= self.config.n_fft // 2:
            raise ValueError(f"audio must have more than n_fft // 2 = {self.config.n_fft // 2} samples, "
                             f"got {waveform.shape[-1]}")
        bases = self._bases_on(waveform.device)
        with torch.no_grad():
            power = self._stft(waveform, bases.window).abs().square()  # [B, bins, frames]
            return torch.log(bases.filterbank @ power + self.config.log_floor)

    def mel_to_waveform(
        self,
        mel: torch.Tensor | np.ndarray,
        n_iter: int = 16,
        length: int | None = None,
        generator: torch.Generator | None = None,
        phase_init: str = "gradient",
        nnls_tolerance: float = _NNLS_TOLERANCE,
        nnls_max_steps: int = _NNLS_MAX_STEPS,
    ) -> torch.Tensor:
        """Invert log-mels to audio: NNLS mel -> linear magnitude, then fast Griffin-Lim.

        Args:
            mel: [B, n_mels, frames] or [n_mels, frames] log-mel (as from ``waveform_to_mel``).
            n_iter: Griffin-Lim iterations, >= 0.
            length: output samples, in [(frames - 1) * hop, frames * hop); None = (frames - 1) * hop.
            generator: draws the random initial phases (on its own device); the same seed gives the same
                audio. None uses a fresh generator seeded 0.
            phase_init: "gradient" (default): `phase_gradient_start`, the phase that the magnitude's
                slopes imply where it has the shape of an STFT's, random elsewhere; well ahead of a random
                start on tonal sound. "random": uniform phases from ``generator``, as librosa and
                torchaudio start.
            nnls_tolerance: in (0, 1); the NNLS of a chunk stops once ||F x - p|| / ||p|| is below it.
                The default 1e-4 keeps the mel of real audio exact; a decoded mel renders no better
                below 1e-2 (generation passes that; see `_DECODED_NNLS_TOLERANCE` there).
            nnls_max_steps: an int >= 0, the most FISTA steps of the NNLS (0 = its start estimate). The
                default 128 lets the mel of real audio converge; generation stops a decoded mel's NNLS
                early (see `_DECODED_NNLS_STEPS` there).

        Returns:
            float32 [B, length] on the mel's device.
        """
        mel = torch.as_tensor(mel)
        if mel.ndim == 2:
            mel = mel.unsqueeze(0)
        if mel.ndim != 3 or mel.shape[1] != self.config.n_mels:
            raise ValueError(f"mel must be [B, {self.config.n_mels}, frames] or [{self.config.n_mels}, frames], "
                             f"got {tuple(mel.shape)}")
        if isinstance(n_iter, bool) or not isinstance(n_iter, Integral) or n_iter < 0:
            raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
        hop = self.config.hop_length
        frames = mel.shape[-1]
        if length is None:
            length = (frames - 1) * hop
        # The STFT of `length` samples must have `frames` frames, or Griffin-Lim's projection fails.
        if isinstance(length, bool) or not isinstance(length, Integral) or not (
            max(1, (frames - 1) * hop) <= length < frames * hop
        ):
            raise ValueError(f"length must be an integer in [{(frames - 1) * hop}, {frames * hop}) for "
                             f"{frames} frames, got {length!r}")
        if phase_init not in _PHASE_INITS:
            raise ValueError(f"phase_init must be one of {_PHASE_INITS}, got {phase_init!r}")
        if isinstance(nnls_tolerance, bool) or not isinstance(nnls_tolerance, Real) or not 0 < nnls_tolerance < 1:
            raise ValueError(f"nnls_tolerance must be a float in (0, 1), got {nnls_tolerance!r}")
        if isinstance(nnls_max_steps, bool) or not isinstance(nnls_max_steps, Integral) or nnls_max_steps < 0:
            raise ValueError(f"nnls_max_steps must be an integer >= 0, got {nnls_max_steps!r}")
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        if len(mel) == 0:  # nothing to invert (the FFT libraries reject an empty batch)
            return torch.zeros(0, int(length), device=mel.device)

        bases = self._bases_on(mel.device)
        with torch.no_grad():
            # Frame-major from here on ([B, frames, bins], as rfft of the frames gives): the NNLS products
            # are then one matrix product over all frames of all chunks, and Griffin-Lim needs no transposes.
            power_mel = (torch.exp(mel.float()) - self.config.log_floor).clamp_min(0.0).transpose(1, 2)
            # [B, frames, bins]
            magnitude = self._mel_power_to_linear(power_mel, bases, nnls_tolerance, nnls_max_steps).sqrt()
            if phase_init == "gradient":
                phase = phase_gradient_start(magnitude, self.config.n_fft, hop, generator)
            else:
                phase = _random_phase(magnitude, generator)
            angles = torch.complex(torch.cos(phase), torch.sin(phase))  # torch.polar takes 6x as long on CPU
            return self._griffin_lim(magnitude, angles, n_iter, int(length), bases.window)

    def _mel_power_to_linear(self, power_mel: torch.Tensor, bases: _DeviceBases,
                             tolerance: float = _NNLS_TOLERANCE, max_steps: int = _NNLS_MAX_STEPS) -> torch.Tensor:
        """Non-negative least squares ``filterbank @ x ~= power_mel``, x >= 0, by preconditioned FISTA.

        Frame-major, [B, frames, n_mels] -> [B, frames, bins]. Each chunk starts from the better fitting of
        two non-negative estimates: the clamped pseudo-inverse, close for the mel of real audio (like
        librosa's NNLS, whose L-BFGS-B refinement this replaces), and `_DeviceBases.spread`, each band's
        power spread over its bins. A decoded mel is slightly inconsistent, and its clamped pseudo-inverse
        fits it worse than silence (residual ~3); from the spread start Griffin-Lim ends closer to the
        decoded mel (44 decoded chunks: closer on 31, mean spectral convergence 0.1785 against 0.1827).
        Each chunk stops on its own (at `tolerance`, when it stalls: see `_NNLS_STALL`, or after `max_steps`
        FISTA steps), so its result does not depend on the rest of the batch, and a stopped chunk leaves the
        batch. The updates write into buffers: a fresh multi-megabyte tensor per operation costs more than the
        arithmetic.
        """
        fb, step = bases.filterbank, bases.step
        starts = torch.stack([(power_mel @ bases.pinv.T).clamp_min_(0.0), power_mel @ bases.spread.T])
        errors = starts @ fb.T - power_mel  # [2, B, frames, n_mels]
        spread_fits = torch.linalg.vector_norm(errors, dim=(2, 3)).argmin(dim=0).bool()[:, None, None]
        x = torch.where(spread_fits, starts[1], starts[0])
        error = torch.where(spread_fits, errors[1], errors[0])
        scale = torch.linalg.vector_norm(power_mel, dim=(1, 2)).clamp_min(torch.finfo(torch.float32).tiny)
        result = None  # made when the first chunk stops
        rows = torch.arange(len(power_mel), device=power_mel.device)  # the chunks still iterating
        target, y, t = power_mel, x.clone(), 1.0
        x_next, gradient = torch.empty_like(x), torch.empty_like(x)
        previous_residual = torch.full_like(scale, math.inf)
        for iteration in range(1, max_steps + 1):
            if iteration > 1:
                error = torch.matmul(y, fb.T).sub_(target)
            if iteration % _NNLS_CHECK_EVERY == 0:  # the residual at y is free here: no extra matmul
                residual = torch.linalg.vector_norm(error, dim=(1, 2)) / scale[rows]
                stalled = (residual > _NNLS_STALL * previous_residual) & (residual >= _NNLS_CONSISTENT)
                going = (residual >= tolerance) & ~stalled
                if not bool(going.all()):
                    if result is None:
                        result = torch.empty_like(x)
                    result[rows] = x  # the stopped chunks keep their x; the others are rewritten later
                    rows, target, error = rows[going], target[going], error[going]
                    x, y = x[going], y[going]
                    x_next, gradient = torch.empty_like(x), torch.empty_like(x)
                    if len(rows) == 0:
                        return result
                previous_residual = residual[going]
            torch.matmul(error, fb, out=gradient)
            torch.addcmul(y, step, gradient, value=-1.0, out=x_next).clamp_min_(0.0)
            t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
            # y = x_next + (t - 1) / t_next * (x_next - x), as a lerp from x_next away from x.
            torch.lerp(x_next, x, -(t - 1.0) / t_next, out=y)
            x, x_next, t = x_next, x, t_next
        if result is None:
            return x
        result[rows] = x
        return result

    def _griffin_lim(
        self, magnitude: torch.Tensor, angles: torch.Tensor, n_iter: int, length: int, window: torch.Tensor,
        relaxation: float = _GRIFFIN_LIM_RELAXATION,
    ) -> torch.Tensor:
        """Relaxed fast Griffin-Lim, batched, frame-major: [B, frames, bins] -> [B, length].

        Each iteration projects c onto the spectra with the target magnitude and then onto the consistent
        ones (y = P(c)), over-relaxes (t = c + relaxation (y - c)) and extrapolates with momentum
        (c = t + momentum (t - t_prev)): the accelerated Griffin-Lim of Nenov, Peer & Gerkmann (2023) with
        beta = alpha. relaxation = 1 is plain fast Griffin-Lim (Perraudin et al. 2013; librosa's, torchaudio's).
        The STFT is framed by hand (as torch.stft(center=True, pad_mode="reflect") frames) so that it
        stays frame-major and writes into buffers allocated once where torch allows it (FFT outputs are
        fresh): multi-megabyte temporaries every iteration cost more than the arithmetic.
        Complex element-wise kernels are slow on the CPU (a complex lerp takes 3.6x the time of the same
        lerp on the float view, `sgn` and `abs` 3-6x a float multiply), so the extrapolation runs on float
        views and the magnitude projection c |X| / |c| is written as float operations and one complex
        multiply, which makes an iteration ~30 % shorter than with `torch.sgn`.
        """
        n_fft, hop = self.config.n_fft, self.config.hop_length
        if n_fft % hop:  # torch.stft / torch.istft with fresh tensors; never at the default settings
            return self._griffin_lim_general(magnitude, angles, n_iter, length, window, relaxation)
        batch, frames, bins = magnitude.shape
        device, real = magnitude.device, torch.view_as_real
        spectrum = torch.mul(magnitude, angles).contiguous()  # |X| e^(i phase), rewritten by every projection
        estimate, previous = None, None
        windowed = torch.empty(batch, frames, n_fft, device=device)
        padded = torch.empty(batch, length + n_fft, device=device)  # reflect-padded waveform
        squares = torch.empty(batch, frames, bins, 2, device=device)  # re^2, im^2 of c
        gain = torch.empty_like(magnitude)  # |X| / |c|
        complex_gain = torch.empty_like(spectrum)  # the same as a complex tensor: complex x complex is fast
        half = n_fft // 2
        inverse_envelope = self._inverse_envelope(frames, length, window)
        for iteration in range(n_iter):
            self._overlap_add(spectrum, window, inverse_envelope, windowed, out=padded[:, half : half + length])
            # Reflect padding as torch.stft(center=True, pad_mode="reflect") does it.
            padded[:, :half] = padded[:, half + 1 : 2 * half + 1].flip(-1)
            padded[:, half + length :] = padded[:, length - 1 : half + length - 1].flip(-1)
            rebuilt = torch.fft.rfft(torch.mul(padded.unfold(-1, n_fft, hop), window, out=windowed))  # y, fresh
            if previous is None:  # the first estimate is the projection itself
                estimate = rebuilt
            else:
                # t = c + relaxation (y - c), written over y; then c = t + momentum (t - t_prev), over the
                # old c (at the second iteration c is t_prev itself: each element is read before it is written).
                if relaxation != 1.0:
                    torch.lerp(real(estimate), real(rebuilt), relaxation, out=real(rebuilt))
                torch.lerp(real(rebuilt), real(previous), -_GRIFFIN_LIM_MOMENTUM, out=real(estimate))
            # X = c |X| / |c|. |c| is floored at the smallest normal float, so c = 0 gives X = 0 as torch.sgn
            # does; only a |c| below ~1e-19, whose square underflows, would come out too quiet.
            torch.mul(real(estimate), real(estimate), out=squares)
            torch.add(squares[..., 0], squares[..., 1], out=gain)
            gain.clamp_min_(_SMALLEST_NORMAL).rsqrt_().mul_(magnitude)
            torch.mul(estimate, complex_gain.copy_(gain), out=spectrum)
            previous = rebuilt
        out = torch.empty(batch, length, device=device)
        return self._overlap_add(spectrum, window, inverse_envelope, windowed, out=out)

    def _griffin_lim_general(
        self, magnitude: torch.Tensor, angles: torch.Tensor, n_iter: int, length: int, window: torch.Tensor,
        relaxation: float = _GRIFFIN_LIM_RELAXATION,
    ) -> torch.Tensor:
        """`_griffin_lim` through torch.stft / torch.istft: for a hop that does not divide n_fft, and the
        plain loop (torchaudio's, with relaxation 1) that the tests and bench/sampling_bench.py's seed-style
        row compare with."""
        n_fft, hop = self.config.n_fft, self.config.hop_length
        magnitude, angles = magnitude.transpose(1, 2), angles.transpose(1, 2)  # torch's [B, bins, frames]
        estimate, previous = None, None
        for _ in range(n_iter):
            rebuilt = self._stft(torch.istft(magnitude * angles, n_fft, hop, window=window, length=length), window)
            if previous is None:
                estimate = rebuilt
            else:
                if relaxation != 1.0:
                    rebuilt = torch.lerp(estimate, rebuilt, relaxation)
                estimate = torch.lerp(rebuilt, previous, -_GRIFFIN_LIM_MOMENTUM)
            angles = torch.sgn(estimate)
            previous = rebuilt
        return torch.istft(magnitude * angles, n_fft, hop, window=window, length=length)

    def _overlap_add(self, spectrum: torch.Tensor, window: torch.Tensor, inverse_envelope: torch.Tensor,
                     windowed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """torch.istft(center=True) of a frame-major spectrum [B, frames, bins] into out [B, length].

        Needs hop | n_fft (see `_shifted_add`); torch.istft's general fold is most of its time.
        `inverse_envelope` [length] comes from `_inverse_envelope`.
        """
        n_fft = self.config.n_fft
        start = n_fft // 2  # center=True: frame j is centred on sample j * hop
        samples = self._shifted_add(torch.fft.irfft(spectrum, n=n_fft).mul_(window))
        return torch.mul(samples[..., start : start + out.shape[-1]], inverse_envelope, out=out)

    def _shifted_add(self, frames: torch.Tensor) -> torch.Tensor:
        """Overlap-add [..., n_frames, n_fft] frames hop apart into [..., (n_frames - 1) * hop + n_fft].

        With hop | n_fft, piece r (of n_fft / hop) of frame j lands in output block j + r: n_fft / hop adds.
        """
        hop = self.config.hop_length
        *batch, n_frames, n_fft = frames.shape
        overlap = n_fft // hop
        pieces = frames.reshape(*batch, n_frames, overlap, hop)
        blocks = frames.new_zeros(*batch, n_frames + overlap - 1, hop)
        for r in range(overlap):
            blocks[..., r : r + n_frames, :] += pieces[..., r, :]
        return blocks.flatten(-2)

    def _stft(self, waveform: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        return torch.stft(waveform, self.config.n_fft, self.config.hop_length, window=window, center=True,
                          pad_mode="reflect", return_complex=True)

    def _inverse_envelope(self, frames: int, length: int, window: torch.Tensor) -> torch.Tensor:
        """1 / the overlap-added squared window over the output samples, [length] (what torch.istft
        divides by). Positive: the config keeps hop_length <= n_fft // 2."""
        start = self.config.n_fft // 2
        return 1.0 / self._shifted_add((window * window).expand(frames, -1))[start : start + length]

    def _bases_on(self, device: torch.device) -> _DeviceBases:
        """The window, filterbank and pseudo-inverse on ``device``, built once per device."""
        if device not in self._bases:
            self._bases[device] = _DeviceBases(
                window=torch.hann_window(self.config.n_fft, periodic=True, device=device),
                filterbank=self._filterbank64.to(device=device, dtype=torch.float32),
                pinv=self._pinv64.to(device=device, dtype=torch.float32),
                step=self._step64.to(device=device, dtype=torch.float32),
                spread=self._spread64.to(device=device, dtype=torch.float32),
            )
        return self._bases[device]



# --------------------------------------------------------------------------------------------------
# Phase start


def phase_gradient_start(magnitude: torch.Tensor, n_fft: int, hop: int, generator: torch.Generator) -> torch.Tensor:
    """A Griffin-Lim starting phase, radians [B, frames, bins], from a magnitude [B, frames, bins] alone.

    Phase-gradient integration (Průša, Balazs & Søndergaard 2017) around the peaks that have the shape of
    an STFT's (`_concentration`): a peak continues its phase from the previous frame by its instantaneous
    frequency (time direction), and the bins of its region, down to the minima on either side, take its
    phase plus the integral of the local group delay (frequency direction). Everywhere else (flat,
    noise-like magnitude, and below -80 dB of a chunk's peak) the phase is uniform random from
    ``generator``, as is the phase of a peak that starts a track: integrating a flat magnitude's zero
    derivatives would give every frame the phase of one impulse at the same multiple of n_fft, a click.
    Chunk b's random phases are the generator's b-th draw, so they do not depend on the batch size.
    """
    frames = magnitude.shape[1]
    log_magnitude = torch.log(magnitude + 1e-6 * _chunk_peak(magnitude).clamp_min(1e-30))  # -120 dB floor
    frame_step, bin_step = _phase_steps(log_magnitude, n_fft, hop)
    peak = _peak_of(log_magnitude)
    structured = (_concentration(log_magnitude, n_fft, hop) > _MIN_CONCENTRATION) & (
        magnitude > _PHASE_FLOOR * _chunk_peak(magnitude))
    locked = structured.gather(-1, peak)  # bins in the region of a peak with an STFT's shape
    from_peak = _frequency_integral(bin_step, peak)
    continued = locked[:, 1:] & locked[:, :-1]
    advance = 0.5 * (frame_step[:, 1:] + frame_step[:, :-1])  # trapezoidal rule
    random = _random_phase(magnitude, generator)
    phase = torch.empty_like(magnitude)
    peak_phase = random[:, 0]
    for frame in range(frames):
        if frame > 0:
            peak_phase = torch.where(continued[:, frame - 1], phase[:, frame - 1] + advance[:, frame - 1],
                                     random[:, frame])
        from_phase = peak_phase.gather(-1, peak[:, frame]) + from_peak[:, frame]
        phase[:, frame] = torch.where(locked[:, frame], from_phase, random[:, frame]).remainder_(2 * math.pi)
    return phase


def _random_phase(magnitude: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform phases in [0, 2 pi) of the magnitude's shape, drawn on the generator's device."""
    phase = 2 * math.pi * torch.rand(magnitude.shape, generator=generator, device=generator.device)
    return phase.to(magnitude.device)


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
    """The curvature of log|X| across bins and across frames, [B, frames, bins], scaled so that it is 1
    for a sinusoid and for an impulse: and for any STFT with a Gaussian window, away from its zeros
    (log|X| plus a quadratic is harmonic there). A magnitude smoothed over many components is flatter."""
    ratio = n_fft / hop
    across_bins = -_second_difference(log_magnitude, dim=2) / (2 * math.pi * _HANN_GAUSSIAN_LAMBDA)
    across_frames = -_second_difference(log_magnitude, dim=1) * _HANN_GAUSSIAN_LAMBDA * ratio**2 / (2 * math.pi)
    return across_bins + across_frames


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


def _hz_to_mel(hz: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + hz / 700.0)
    # Slaney (Auditory Toolbox): linear, 200/3 Hz per mel, up to 1 kHz (= mel 15), then logarithmic
    # with 27 mels per factor 6.4 in frequency.
    linear = hz / (200.0 / 3.0)
    logarithmic = 15.0 + np.log(np.maximum(hz, 1e-300) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, logarithmic, linear)


def _mel_to_hz(mel: np.ndarray, scale: str) -> np.ndarray:
    if scale == "htk":
        return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)
    linear = mel * (200.0 / 3.0)
    logarithmic = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, logarithmic, linear)


def _mel_filterbank(config: SpectrogramConfig) -> np.ndarray:
    """Triangular mel filters, float64 [n_mels, n_fft // 2 + 1] (the construction of librosa.filters.mel)."""
    f_max = config.sample_rate / 2 if config.f_max is None else config.f_max
    bin_hz = np.fft.rfftfreq(config.n_fft, d=1.0 / config.sample_rate)
    mel_edges = np.linspace(_hz_to_mel(np.array(config.f_min), config.mel_scale),
                            _hz_to_mel(np.array(f_max), config.mel_scale), config.n_mels + 2)
    edges_hz = _mel_to_hz(mel_edges, config.mel_scale)  # n_mels + 2: lower, centre, upper of each band
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bin_hz - lower) / (centre - lower)
    falling = (upper - bin_hz) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    if config.mel_norm == "slaney":
        weights *= 2.0 / (upper - lower)  # equal area per band
    return weights


# --------------------------------------------------------------------------------------------------
# Stitching

_CURVES = ("equal_power", "linear", "hann")


def crossfade_chunks(
    chunks: Sequence[np.ndarray | torch.Tensor], overlap_samples: int, curve: str = "equal_power"
) -> np.ndarray:
    """Join chunks end to start, crossfading each seam over ``overlap_samples`` samples.

    In each overlap the outgoing chunk fades out while the incoming chunk fades in:
    "linear" and "hann" gains sum to 1 (a constant signal stays constant, right for correlated
    material); "equal_power" gains satisfy g_in^2 + g_out^2 = 1 (keeps the energy of uncorrelated
    material, as Griffin-Lim chunks with independent phases are).

    Args:
        chunks: non-empty sequence of 1-D numpy arrays or tensors.
        overlap_samples: 0 (plain concatenation) up to the length of the shortest chunk.
        curve: "equal_power", "linear" or "hann".

    Returns:
        float32 (sum(lengths) - (len(chunks) - 1) * overlap_samples,).
    """
    if curve not in _CURVES:
        raise ValueError(f"curve must be one of {_CURVES}, got {curve!r}")
    if len(chunks) == 0:
        raise ValueError("chunks must hold at least one chunk, got an empty sequence")
    arrays = [
        np.asarray(c.detach().cpu().numpy() if isinstance(c, torch.Tensor) else c, dtype=np.float32)
        for c in chunks
    ]
    if any(a.ndim != 1 for a in arrays):
        raise ValueError(f"chunks must be 1-D, got shapes {[a.shape for a in arrays]}")
    shortest = min(a.shape[0] for a in arrays)
    if isinstance(overlap_samples, bool) or not isinstance(overlap_samples, Integral) or not (
        0 <= overlap_samples <= shortest
    ):
        raise ValueError(f"overlap_samples must be an integer in [0, {shortest}] (the shortest chunk), "
                         f"got {overlap_samples!r}")
    overlap = int(overlap_samples)

    # Gains sampled at the centres of the overlap samples: symmetric, never exactly 0 or 1.
    t = (np.arange(overlap, dtype=np.float64) + 0.5) / max(overlap, 1)
    if curve == "linear":
        fade_in = t
    elif curve == "hann":
        fade_in = np.sin(0.5 * np.pi * t) ** 2
    else:
        fade_in = np.sin(0.5 * np.pi * t)
    fade_out = np.sqrt(1.0 - fade_in**2) if curve == "equal_power" else 1.0 - fade_in
    fade_in, fade_out = fade_in.astype(np.float32), fade_out.astype(np.float32)

    total = sum(a.shape[0] for a in arrays) - (len(arrays) - 1) * overlap
    out = np.zeros(total, dtype=np.float32)
    out[: arrays[0].shape[0]] = arrays[0]
    end = arrays[0].shape[0]
    for chunk in arrays[1:]:
        start = end - overlap
        out[start:end] = out[start:end] * fade_out + chunk[:overlap] * fade_in
        out[end : start + chunk.shape[0]] = chunk[overlap:]
        end = start + chunk.shape[0]
    return out


# --------------------------------------------------------------------------------------------------
# Validation helpers


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _finite_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)
