"""Audio files in and out: numpy float32 (n,) mono in [-1, 1] at the model sample rate (DESIGN.md)."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from distill_nb.atomic import write_atomically
from distill_nb.checks import check_int

__all__ = ["AudioFileError", "load_audio", "save_audio"]

_SUBTYPES = {".wav": ("PCM_16", "PCM_24", "FLOAT"), ".flac": ("PCM_16", "PCM_24")}
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class AudioFileError(Exception):
    """An audio file is missing, unreadable, corrupt or empty; the message names the file and the cause."""


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
    sample_rate = check_int("sample_rate", sample_rate, 1)
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
    sample_rate = check_int("sample_rate", sample_rate, 1)
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

    write_atomically(
        path, lambda tmp: sf.write(tmp, samples, sample_rate, subtype=subtype, format=_FORMATS[extension])
    )
    if sidecar is not None:
        write_atomically(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(sidecar))
    return path


def _metadata_json(metadata: Mapping) -> str:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping (dict) or None, got {type(metadata).__name__}")
    try:
        return json.dumps(dict(metadata), indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from error
