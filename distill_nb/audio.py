"""Audio files in and out: numpy float32 (n,) mono in [-1, 1] at the model sample rate (DESIGN.md)."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch

from distill_nb.atomic import remove, replace, write_temporary
from distill_nb.checks import check_int, check_positive

__all__ = [
    "MAX_SAMPLE_RATE", "MAX_SECONDS", "MIN_SAMPLE_RATE", "AudioFileError", "TruncatedAudioWarning", "load_audio",
    "read_sidecar", "save_audio",
]

MIN_SAMPLE_RATE = 1_000  # Hz: file and model rates outside [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] are refused
MAX_SAMPLE_RATE = 768_000
MAX_SECONDS = 30 * 60.0  # per file, by default: it bounds the memory one file takes (30 min at 48 kHz: 346 MB)
_BLOCK_SAMPLES = 1 << 20  # decoded or resampled at a time: 4 MB of float32, whatever the channels or rates
_SUBTYPES = {".wav": ("PCM_16", "PCM_24", "FLOAT"), ".flac": ("PCM_16", "PCM_24")}
_FORMATS = {".wav": "WAV", ".flac": "FLAC"}


class AudioFileError(Exception):
    """An audio file is missing, unreadable, corrupt, empty or too long, or its sidecar does not belong to it;
    the message names the file and the cause."""


class TruncatedAudioWarning(UserWarning):
    """A file holds less audio than its header claims (a cut-off copy or download); what is there is loaded."""

    def __init__(self, path: Path, held_seconds: float, claimed_seconds: float):
        self.path, self.held_seconds, self.claimed_seconds = path, held_seconds, claimed_seconds
        super().__init__(f"audio file '{path}' is truncated: {self.detail}; loading what is there")

    @property
    def detail(self) -> str:
        """What is missing, without the file name."""
        held, claimed = self.held_seconds, self.claimed_seconds
        return f"it holds {held:.1f} s of the {claimed:.1f} s its header claims ({100 * held / claimed:.3g}%)"


def load_audio(path: str | os.PathLike, sample_rate: int = 48000, *, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Read an audio file as float32 mono at ``sample_rate`` Hz, in bounded memory.

    Reads whatever libsndfile reads (WAV, FLAC, OGG Vorbis and Opus, AIFF, and MP3 with libsndfile >= 1.1).
    The file is decoded a block at a time, its channels averaged and its sample rate converted with a streaming
    soxr resampler (high quality), so memory peaks at about the returned array. The duration is checked from
    the header before decoding, and never more frames than the header gives are decoded. A file that holds
    less than its header claims is loaded with a `TruncatedAudioWarning`.

    Args:
        path: the audio file.
        sample_rate: Hz, in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE].
        max_seconds: longest file accepted, in seconds (default ``MAX_SECONDS``, 30 min).

    Returns:
        numpy float32 (n,), n = frames * sample_rate / file_rate rounded half up (as soxr rounds).

    Raises:
        AudioFileError: the file is missing, empty, unreadable or corrupt, its sample rate is outside
            [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], it is longer than ``max_seconds``, holds no samples or holds
            non-finite ones, or there is not enough memory to decode it.
        TypeError, ValueError: ``sample_rate`` or ``max_seconds`` is not a number in its range.
    """
    sample_rate = check_int("sample_rate", sample_rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    max_seconds = check_positive("max_seconds", max_seconds)
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"cannot read audio file '{path}': no such file")
    try:
        if path.stat().st_size == 0:
            raise AudioFileError(f"cannot read audio file '{path}': empty file (0 bytes)")
        with sf.SoundFile(path) as file:
            return _decode(file, path, sample_rate, max_seconds)
    except (RuntimeError, OSError) as error:  # soundfile's LibsndfileError is a RuntimeError
        raise AudioFileError(f"cannot read audio file '{path}': {error}") from error
    except MemoryError as error:
        raise AudioFileError(f"cannot read audio file '{path}': not enough memory to decode it ({error})") from error


def _decode(file: sf.SoundFile, path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    file_rate, frames = file.samplerate, file.frames
    if not MIN_SAMPLE_RATE <= file_rate <= MAX_SAMPLE_RATE:
        raise AudioFileError(f"cannot read audio file '{path}': its header gives a sample rate of {file_rate} Hz, "
                             f"outside the {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz this toolkit reads")
    if frames > max_seconds * file_rate:
        raise AudioFileError(
            f"cannot read audio file '{path}': it lasts {_duration(frames / file_rate)}, above the limit of "
            f"{_duration(max_seconds)} per file; cut it into shorter files, or pass a larger max_seconds")
    if frames == 0:
        raise AudioFileError(f"cannot read audio file '{path}': it holds no audio samples")
    resampler = None if file_rate == sample_rate else soxr.ResampleStream(file_rate, sample_rate, 1, "float32")
    out = np.empty(_resampled_length(frames, file_rate, sample_rate), dtype=np.float32)
    # A block is at most _BLOCK_SAMPLES samples, read in (all channels) and resampled out (48x more from 1 kHz)
    block_frames = max(1, min(_BLOCK_SAMPLES // file.channels, _BLOCK_SAMPLES * file_rate // sample_rate))
    block = np.empty((block_frames, file.channels), dtype=np.float32)
    done = filled = 0
    while True:  # the last pass reads nothing and flushes the resampler
        # soundfile stops at the header's frames too: a header that lies cannot make this decode more
        data = file.read(out=block[:min(len(block), frames - done)]) if done < frames else block[:0]
        done += len(data)
        mono = data.mean(axis=1, dtype=np.float32)
        samples = mono if resampler is None else resampler.resample_chunk(mono, last=len(data) == 0)
        if not np.isfinite(samples).all():
            raise AudioFileError(f"cannot read audio file '{path}': it holds NaN, infinite or overflowing samples")
        filled = _append(out, filled, samples)
        if len(data) == 0:
            break
    if done == 0:
        raise AudioFileError(f"cannot read audio file '{path}': it holds no audio samples (its header claims {frames})")
    n = _resampled_length(done, file_rate, sample_rate)
    out[filled:n] = 0  # soxr gives exactly n samples; this only keeps the length contract if it ever did not
    out.resize(n, refcheck=False)  # shrinks in place when the file held less than its header claimed
    held = _wav_held_fraction(path) * done / frames
    if held < 1:
        claimed = done / held / file_rate
        warnings.warn(TruncatedAudioWarning(path, done / file_rate, claimed), stacklevel=3)
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _resampled_length(frames: int, file_rate: int, sample_rate: int) -> int:
    """frames * sample_rate / file_rate rounded half up, in exact integer arithmetic."""
    return (2 * frames * sample_rate + file_rate) // (2 * file_rate)


def _append(out: np.ndarray, filled: int, samples: np.ndarray) -> int:
    piece = out[filled:filled + len(samples)]
    piece[:] = samples[:len(piece)]
    return filled + len(piece)


def _wav_held_fraction(path: Path) -> float:
    """For a RIFF WAV whose data chunk claims more bytes than the file holds: held / claimed bytes; else 1.

    libsndfile quietly shortens such a file to what it holds; the chunk headers say what was meant to be there.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        if header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return 1.0
        size = os.fstat(f.fileno()).st_size
        for _ in range(1000):  # a bounded walk: a hostile file may chain chunks forever
            chunk = f.read(8)
            if len(chunk) < 8:
                return 1.0
            claimed = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"data":
                held = size - f.tell()
                # 0 and 0xFFFFFFFF mean "length unknown" (streaming writers), not a claim
                return held / claimed if 0 < held < claimed < 0xFFFFFFFF else 1.0
            f.seek(claimed + (claimed & 1), os.SEEK_CUR)  # chunks are padded to an even size
    return 1.0


def save_audio(
    path: str | os.PathLike,
    audio: np.ndarray | torch.Tensor,
    sample_rate: int,
    subtype: str = "PCM_24",
    metadata: Mapping | None = None,
) -> Path:
    """Write mono audio to WAV or FLAC (chosen by the extension), atomically, with an optional JSON sidecar.

    Args:
        path: ``.wav`` or ``.flac`` file; its folder must exist.
        audio: float (n,) samples in [-1, 1]; samples beyond full scale are clipped with a warning.
        sample_rate: Hz, positive.
        subtype: "PCM_16", "PCM_24" or "FLOAT" (WAV only).
        metadata: JSON-serialisable mapping, written to the sidecar ``path.with_suffix(".json")`` with the
            audio file's SHA-256 added as ``"audio_sha256"`` (see `read_sidecar`); NaN and infinite floats are
            written as null. Without metadata, the sidecar of the take this one replaces is removed.

    The audio and the sidecar are written to temporary files in the same folder, then the old sidecar is
    removed, the audio renamed into place and the sidecar after it: killed at any instant, the folder holds the
    old audio with its sidecar, the old audio alone, the new audio alone, or the new audio with its sidecar,
    never a file paired with another take's sidecar and never half a file.

    Returns:
        ``path`` as a ``pathlib.Path``.

    Raises:
        ValueError: a bad extension, subtype, sample rate or audio array (empty, not mono, non-finite).
        TypeError: ``metadata`` is not a JSON-serialisable mapping.
        OSError: the folder is not writable, the disk is full, ... (the old files are then untouched).
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
    rendered = io.BytesIO()
    sf.write(rendered, samples, sample_rate, subtype=subtype, format=_FORMATS[extension])
    data = rendered.getvalue()
    sidecar = None if metadata is None else _sidecar_json(metadata, data)  # fails before anything is written
    sidecar_path = path.with_suffix(".json")
    # Without metadata, only the replaced take's own sidecar goes: "take.json" may describe "take.flac" instead
    stale = sidecar is None and _sidecar_belongs_to(path)
    temporaries = [write_temporary(path, lambda tmp: Path(tmp).write_bytes(data))]
    try:
        if sidecar is not None:
            temporaries.append(write_temporary(sidecar_path, lambda tmp: Path(tmp).write_text(sidecar)))
        if sidecar is not None or stale:
            remove(sidecar_path)  # before the audio: no instant pairs the new audio with the old sidecar
        replace(temporaries[0], path)
        if sidecar is not None:
            replace(temporaries[1], sidecar_path)
    except BaseException:
        for tmp in temporaries:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # the next write to this path removes it (see atomic.remove_orphans)
        raise
    return path


def read_sidecar(audio_path: str | os.PathLike) -> dict | None:
    """The metadata `save_audio` wrote beside ``audio_path`` (``audio_path.with_suffix(".json")``), or None.

    The sidecar's ``"audio_sha256"`` is checked against the audio file, so metadata is never attributed to
    another take. A sidecar without that key (written before it existed) is returned unchecked.

    Raises:
        AudioFileError: the sidecar is not valid JSON or not an object, the audio file is missing, or the
            sidecar belongs to another take (its hash does not match the audio file).
    """
    audio_path = Path(audio_path)
    sidecar_path = audio_path.with_suffix(".json")
    try:
        text = sidecar_path.read_text()
    except FileNotFoundError:
        return None
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise AudioFileError(f"sidecar '{sidecar_path}' is not valid JSON: {error}") from error
    if not isinstance(metadata, dict):
        raise AudioFileError(f"sidecar '{sidecar_path}' must hold a JSON object, got {type(metadata).__name__}")
    if "audio_sha256" in metadata:
        digest = hashlib.sha256()
        try:
            with open(audio_path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        except OSError as error:
            raise AudioFileError(f"sidecar '{sidecar_path}' has no audio beside it: {error}") from error
        if digest.hexdigest() != metadata["audio_sha256"]:
            raise AudioFileError(f"sidecar '{sidecar_path}' belongs to another take: its audio_sha256 does not "
                                 f"match the contents of '{audio_path}'")
    return metadata


def _sidecar_belongs_to(audio_path: Path) -> bool:
    try:
        return read_sidecar(audio_path) is not None
    except AudioFileError:
        return False


def _sidecar_json(metadata: Mapping, audio_bytes: bytes) -> str:
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping (dict) or None, got {type(metadata).__name__}")
    sidecar = {**_finite_or_null(metadata), "audio_sha256": hashlib.sha256(audio_bytes).hexdigest()}
    try:
        return json.dumps(sidecar, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as error:
        raise TypeError(f"metadata must be JSON-serialisable: {error}") from error


def _finite_or_null(value: object) -> object:
    """``value`` with every NaN or infinite float, at any depth, replaced by None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
