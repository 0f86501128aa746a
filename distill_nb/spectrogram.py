"""The log-mel spectrogram: its settings, the mel filterbank, analysis, and chunk geometry.

Conventions (DESIGN.md): audio is float32 [n] or [B, n] mono at ``SpectrogramConfig.sample_rate``; a mel
is torch float32 [B, n_mels, frames], the natural log of the power mel plus ``log_floor``; a chunk is
``CHUNK_SECONDS`` of audio. `Spectrogram.mel_to_waveform` inverts a mel (see ``inversion.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from distill_nb.checks import check_int, check_real, config_from_dict
from distill_nb.inversion import InversionBases, InversionSettings, invert_mel

__all__ = ["CHUNK_SECONDS", "SpectrogramConfig", "Spectrogram", "mel_filterbank"]

CHUNK_SECONDS: float = 1.0
# Bounds on the settings (a model file's config is untrusted input: these cap what loading it can allocate).
SAMPLE_RATE_RANGE = (1000, 384000)
N_FFT_RANGE = (16, 16384)
MAX_MELS = 512


@dataclass(frozen=True)
class SpectrogramConfig:
    """Settings of the log-mel spectrogram.

    Attributes:
        sample_rate: Hz, in SAMPLE_RATE_RANGE.
        n_fft: FFT size and Hann window length, samples, in N_FFT_RANGE.
        hop_length: samples between frames, 1..n_fft // 2 (Griffin-Lim needs >= 50 % overlap).
        n_mels: mel bands, 1..min(n_fft // 2 + 1, MAX_MELS).
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
        set_field("sample_rate", check_int("sample_rate", self.sample_rate, *SAMPLE_RATE_RANGE))
        set_field("n_fft", check_int("n_fft", self.n_fft, *N_FFT_RANGE))
        set_field("hop_length", check_int("hop_length", self.hop_length, 1))
        if self.hop_length > self.n_fft // 2:
            raise ValueError(f"hop_length must be in [1, n_fft // 2 = {self.n_fft // 2}], got {self.hop_length}")
        set_field("n_mels", check_int("n_mels", self.n_mels, 1, MAX_MELS))
        if self.n_mels > self.n_fft // 2 + 1:
            raise ValueError(f"n_mels must be in [1, n_fft // 2 + 1 = {self.n_fft // 2 + 1}], got {self.n_mels}")
        nyquist = self.sample_rate / 2
        if self.f_max is not None:
            set_field("f_max", check_real("f_max", self.f_max))
            if not 0.0 < self.f_max <= nyquist:
                raise ValueError(f"f_max must be in (0, sample_rate / 2 = {nyquist}] or None, got {self.f_max}")
        set_field("f_min", check_real("f_min", self.f_min))
        top = nyquist if self.f_max is None else self.f_max
        if not 0.0 <= self.f_min < top:
            raise ValueError(f"f_min must be in [0, {top}) (below f_max), got {self.f_min}")
        if self.mel_scale not in ("htk", "slaney"):
            raise ValueError(f"mel_scale must be 'htk' or 'slaney', got {self.mel_scale!r}")
        if self.mel_norm not in (None, "slaney"):
            raise ValueError(f"mel_norm must be None or 'slaney', got {self.mel_norm!r}")
        set_field("log_floor", check_real("log_floor", self.log_floor))
        if self.log_floor <= 0:
            raise ValueError(f"log_floor must be > 0, got {self.log_floor}")

    def to_dict(self) -> dict:
        """JSON-safe dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> SpectrogramConfig:
        """Inverse of ``to_dict``; missing keys take their defaults, unknown keys raise ValueError."""
        return config_from_dict(cls, data)


class Spectrogram:
    """Log-mel spectrogram and its inverse, batched, on any device.

    The STFT is centred with reflect padding, a periodic Hann window and power 2, as
    ``librosa.feature.melspectrogram(..., pad_mode="reflect")``.
    """

    def __init__(self, config: SpectrogramConfig | None = None) -> None:
        self.config = config if config is not None else SpectrogramConfig()
        if not isinstance(self.config, SpectrogramConfig):
            raise TypeError(f"config must be a SpectrogramConfig or None, got {type(config).__name__}")
        self._filterbank64 = torch.from_numpy(mel_filterbank(self.config))
        self._analysis_bases: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._inversion_bases: dict[torch.device, InversionBases] = {}

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
        num_samples = check_int("num_samples", num_samples, 1)
        return self.config.n_mels, 1 + num_samples // self.config.hop_length

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
        window, filterbank = self._window_and_filterbank(waveform.device)
        with torch.no_grad():
            spectrum = torch.stft(waveform, self.config.n_fft, self.config.hop_length, window=window, center=True,
                                  pad_mode="reflect", return_complex=True)  # [B, bins, frames]
            return torch.log(filterbank @ spectrum.abs().square() + self.config.log_floor)

    def mel_to_waveform(
        self,
        mel: torch.Tensor | np.ndarray,
        settings: InversionSettings = InversionSettings(),
        length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Invert log-mels to audio: NNLS mel -> linear magnitude, a phase start, then Griffin-Lim.

        Args:
            mel: [B, n_mels, frames] or [n_mels, frames] log-mel (as from ``waveform_to_mel``).
            settings: the iterations, phase start, relaxation and NNLS stopping rule; the default suits
                the mel of real audio, ``inversion.DECODED_INVERSION`` a decoded mel.
            length: output samples, in [(frames - 1) * hop, frames * hop) and > n_fft // 2; None = the
                shortest.
            generator: draws the random initial phases (on its own device), chunk b taking the b-th draw;
                the same seed gives the same audio. None uses a fresh generator seeded 0.

        Returns:
            float32 [B, length] on the mel's device.
        """
        mel = torch.as_tensor(mel)
        if mel.device not in self._inversion_bases:
            self._inversion_bases[mel.device] = InversionBases.build(self._filterbank64, self.config.n_fft, mel.device)
        return invert_mel(mel, self.config, self._inversion_bases[mel.device], settings, length, generator)

    def _window_and_filterbank(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The periodic Hann window [n_fft] and the float32 filterbank [n_mels, bins] on ``device``, made once."""
        if device not in self._analysis_bases:
            window = torch.hann_window(self.config.n_fft, periodic=True, device=device)
            self._analysis_bases[device] = window, self._filterbank64.to(device=device, dtype=torch.float32)
        return self._analysis_bases[device]


def mel_filterbank(config: SpectrogramConfig) -> np.ndarray:
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
