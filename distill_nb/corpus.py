"""Training corpora: a folder of sounds, or the procedural demo corpus.

A :class:`Corpus` holds mono float32 audio at the model sample rate, already split into training and
validation audio (training plays it as a stream of files in random orders, see ``stages.py``), and
hands out a deterministic tiling into 1 s chunks for measurements.

Files that cannot be used never stop a run: they are listed in ``Corpus.skipped`` with the reason. Files used
with a remark (truncated, or scaled down from beyond full scale) are listed in ``Corpus.notes``.

Validation split (deterministic from ``seed``):

- by file, when possible, so that validation measures how well the models generalise to recordings
  they never saw: the files are shuffled with the seed and each is taken into validation while the
  validation audio stays within ``val_fraction`` of the total duration;
- by time, when no file fits (a single file, or a few long ones): the last ``val_fraction`` of every
  file is held out instead (``Corpus.split_mode == "time"``).
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from distill_nb.audio import (MAX_SAMPLE_RATE, MAX_SECONDS, MIN_SAMPLE_RATE, AudioFileError, TruncatedAudioWarning,
                              load_audio, save_audio)
from distill_nb.checks import check_int, check_positive, check_real
from distill_nb.progress import Progress
from distill_nb.spectrogram import CHUNK_SECONDS

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".aiff", ".aif", ".mp3")
SILENCE_PEAK = 1e-4  # -80 dBFS: below this a file holds nothing worth learning from
DEMO_PHRASE_SECONDS = 4.0
DEMO_PEAK = 10 ** (-3 / 20)  # -3 dBFS


@dataclass
class SkippedFile:
    """A file left out of the corpus. ``path`` is relative to the corpus folder."""

    path: str
    reason: str


@dataclass
class FileNote:
    """A file used with a remark (truncated, scaled down, ...). ``path`` is relative to the corpus folder."""

    path: str
    note: str


@dataclass
class Corpus:
    """Mono training audio at ``sample_rate``, split into training and validation.

    ``train_audio[i]`` comes from ``train_files[i]`` (float32, shape (n,), in [-1, 1]); the same holds
    for validation. With ``split_mode == "time"`` a file appears in both lists: its start trains and its
    last ``val_fraction`` validates. ``skipped`` lists the files left out and ``notes`` remarks on files used
    (truncated, scaled down), both with paths relative to the corpus folder.
    """

    sample_rate: int
    train_audio: list[np.ndarray]
    val_audio: list[np.ndarray]
    train_files: list[str]
    val_files: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    source: str = ""
    split_mode: str = "files"
    ignored_files: int = 0  # files without an audio extension, left out silently
    notes: list[FileNote] = field(default_factory=list)

    @property
    def chunk_samples(self) -> int:
        """Samples in one chunk (1 s)."""
        return int(round(CHUNK_SECONDS * self.sample_rate))

    @property
    def total_seconds(self) -> float:
        """Duration of all usable audio (training + validation), in seconds."""
        return (_samples(self.train_audio) + _samples(self.val_audio)) / self.sample_rate

    def split_seconds(self, split: str) -> float:
        """Duration of the ``"train"`` or ``"val"`` audio, in seconds."""
        return _samples(self.split_audio(split)) / self.sample_rate

    def fixed_chunks(self, split: str = "val") -> torch.Tensor:
        """Deterministic tiling of a split -> float32 [N, chunk_samples].

        Each file is cut into consecutive chunks from its start; the last partial chunk is kept
        (zero-padded) when it holds at least a quarter chunk or is the file's only chunk.
        """
        chunk = self.chunk_samples
        pieces = []
        for source in self.split_audio(split):
            for start in range(0, len(source), chunk):
                piece = source[start:start + chunk]
                if len(piece) < chunk // 4 and start > 0:
                    continue
                padded = np.zeros(chunk, dtype=np.float32)
                padded[:len(piece)] = piece
                pieces.append(padded)
        if not pieces:
            return torch.zeros(0, chunk)
        return torch.from_numpy(np.stack(pieces))

    def report(self) -> str:
        """A readable summary: sizes, the split, every skipped file with its reason and every note on a file."""
        lines = [
            f"Corpus {self.source or '(in memory)'}: {len(set(self.train_files) | set(self.val_files))} "
            f"files, {_format_seconds(self.total_seconds)} at {self.sample_rate} Hz",
        ]
        how = ("held out by file" if self.split_mode == "files"
               else "the last part of each file held out")
        lines.append(
            f"  training: {len(self.train_files)} files, {_format_seconds(self.split_seconds('train'))}; "
            f"validation: {len(self.val_files)} files, {_format_seconds(self.split_seconds('val'))} ({how})"
        )
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} file{'s' if len(self.skipped) != 1 else ''}:")
            lines.extend(f"    {item.path}: {item.reason}" for item in self.skipped)
        if self.notes:
            lines.append(f"  notes on {len(self.notes)} file{'s' if len(self.notes) != 1 else ''} used:")
            lines.extend(f"    {item.path}: {item.note}" for item in self.notes)
        if self.ignored_files:
            lines.append(f"  ignored {self.ignored_files} file(s) without an audio extension "
                         f"({', '.join(AUDIO_EXTENSIONS)})")
        return "\n".join(lines)

    def split_audio(self, split: str) -> list[np.ndarray]:
        """The files of the ``"train"`` or ``"val"`` split, float32 (n,) each."""
        if split == "train":
            return self.train_audio
        if split == "val":
            return self.val_audio
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")


def build_corpus(
    folder: str | pathlib.Path,
    sample_rate: int = 48000,
    val_fraction: float = 0.15,
    seed: int = 0,
    progress: Progress | None = None,
    max_seconds: float = MAX_SECONDS,
) -> Corpus:
    """Load every audio file under ``folder`` (recursively, sorted) into a :class:`Corpus`.

    Files with an audio extension (see ``AUDIO_EXTENSIONS``) are loaded mono and resampled to
    ``sample_rate`` (see ``load_audio``; files longer than ``max_seconds`` are refused). No file stops the
    folder: those that cannot be read (for any reason, running out of memory included), are empty or are
    silent (peak below ``SILENCE_PEAK``) are listed in ``Corpus.skipped``. Truncated files are used as far as
    they go, and files peaking above full scale are scaled to peak 1.0; both are listed in ``Corpus.notes``.
    Other files are ignored (counted in ``Corpus.ignored_files``), and so are hidden files and folders (names
    starting with "."), such as macOS "._name.wav" forks.

    Raises:
        FileNotFoundError: the folder does not exist.
        ValueError: the folder holds no usable audio, or an argument is out of range (the message names it).
        TypeError: an argument has the wrong type.
    """
    sample_rate = check_int("sample_rate", sample_rate, MIN_SAMPLE_RATE, MAX_SAMPLE_RATE)
    val_fraction = check_real("val_fraction", val_fraction, "in (0, 0.5]", lambda v: 0 < v <= 0.5)
    seed = check_int("seed", seed, 0)
    max_seconds = check_positive("max_seconds", max_seconds)
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus folder {str(root)!r} does not exist or is not a folder")
    paths = sorted(p for p in root.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts))
    audio_paths = [p for p in paths if p.suffix.lower() in AUDIO_EXTENSIONS]
    ignored = len(paths) - len(audio_paths)

    names: list[str] = []
    audios: list[np.ndarray] = []
    skipped: list[SkippedFile] = []
    notes: list[FileNote] = []
    for i, path in enumerate(audio_paths):
        name = path.relative_to(root).as_posix()
        if progress is not None:
            progress(i / max(len(audio_paths), 1), f"loading {name}")
        audio, remark = _load_usable(path, sample_rate, max_seconds)
        if audio is None:
            skipped.append(SkippedFile(name, remark))
        else:
            names.append(name)
            audios.append(audio)
            if remark:
                notes.append(FileNote(name, remark))

    if not audios:
        raise ValueError(_no_audio_message(root, skipped, ignored))
    corpus = _split_corpus(names, audios, sample_rate, val_fraction, seed)
    corpus.skipped = skipped
    corpus.notes = notes
    corpus.source = str(root)
    corpus.ignored_files = ignored
    if progress is not None:
        progress(1.0, f"corpus ready: {len(names)} files, {_format_seconds(corpus.total_seconds)}, "
                      f"{len(skipped)} skipped")
    return corpus


def demo_corpus(seed: int = 0, seconds: float = 120.0, sample_rate: int = 48000) -> Corpus:
    """A procedural corpus of plucked strings, bells, drum hits and noise swells.

    The audio is cut into ``DEMO_PHRASE_SECONDS`` phrases ("files" ``phrase_000.wav``, ...) so that the
    by-file split works; the total length is exactly ``round(seconds * sample_rate)`` samples. Each
    phrase peaks at -3 dBFS. Deterministic from ``seed``.
    """
    names, phrases = _demo_phrases(seed, seconds, sample_rate)
    corpus = _split_corpus(names, phrases, int(sample_rate), 0.15, seed)  # checked above; a numpy int becomes an int
    corpus.source = f"demo (seed {seed})"
    return corpus


def write_demo_folder(
    folder: str | pathlib.Path, seed: int = 0, seconds: float = 120.0, sample_rate: int = 48000
) -> list[pathlib.Path]:
    """Write the demo corpus phrases as 24-bit WAV files into ``folder`` (created) -> their paths."""
    root = pathlib.Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    names, phrases = _demo_phrases(seed, seconds, sample_rate)
    return [save_audio(root / name, phrase, sample_rate, subtype="PCM_24") for name, phrase in zip(names, phrases)]


# --- loading and splitting -------------------------------------------------------------------------


def _load_usable(path: pathlib.Path, sample_rate: int, max_seconds: float) -> tuple[np.ndarray | None, str]:
    """Load one file -> (audio, a note or "") or (None, why it cannot be used); never raises an Exception."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            audio = load_audio(path, sample_rate=sample_rate, max_seconds=max_seconds)
    except AudioFileError as error:
        # The report names the file already: keep the cause, without the full path.
        cause = str(error).removeprefix(f"cannot read audio file '{path}': ").replace(str(path), path.name)
        return None, f"could not be read: {cause}"
    except Exception as error:  # MemoryError or a decoder error: one file must never stop the folder
        return None, f"could not be read: {type(error).__name__}{f': {error}' if str(error) else ''}"
    notes = []
    for warning in caught:
        if isinstance(warning.message, TruncatedAudioWarning):
            notes.append(f"truncated: {warning.message.detail}; used what it holds")
        else:  # not ours to swallow
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    if len(audio) == 0:
        return None, "empty (no samples)"
    peak = max(float(audio.max()), -float(audio.min()))  # load_audio's samples are finite; no copy of the file
    if peak < SILENCE_PEAK:
        level = "-inf" if peak == 0 else f"{20 * np.log10(peak):.0f}"
        return None, f"silent (peak {level} dBFS, below {20 * np.log10(SILENCE_PEAK):.0f} dBFS)"
    if peak > 1.0:
        audio /= np.float32(peak)  # a division keeps every sample within [-1, 1]; a product might not
        notes.append(f"peak {peak:.3g} ({20 * np.log10(peak):+.1f} dBFS) above full scale: scaled to peak 1.0")
    return audio.astype(np.float32, copy=False), "; ".join(notes)


def _split_corpus(
    names: Sequence[str], audios: Sequence[np.ndarray], sample_rate: int, val_fraction: float, seed: int
) -> Corpus:
    """Split by file when some file fits in the validation budget, else by time (see module doc)."""
    lengths = [len(a) for a in audios]
    budget = val_fraction * sum(lengths)
    order = np.random.default_rng(seed).permutation(len(audios))
    val_set: set[int] = set()
    val_length = 0
    for index in order.tolist():
        if len(val_set) + 1 < len(audios) and val_length + lengths[index] <= budget:
            val_set.add(index)
            val_length += lengths[index]
    if val_set:
        train_ids = [i for i in range(len(audios)) if i not in val_set]
        val_ids = sorted(val_set)
        return Corpus(
            sample_rate=sample_rate,
            train_audio=[audios[i] for i in train_ids], val_audio=[audios[i] for i in val_ids],
            train_files=[names[i] for i in train_ids], val_files=[names[i] for i in val_ids],
            split_mode="files",
        )
    cuts = [max(1, n - int(round(val_fraction * n))) for n in lengths]
    return Corpus(
        sample_rate=sample_rate,
        train_audio=[a[:cut] for a, cut in zip(audios, cuts)],
        val_audio=[a[cut:] for a, cut in zip(audios, cuts) if cut < len(a)],
        train_files=list(names),
        val_files=[name for name, a, cut in zip(names, audios, cuts) if cut < len(a)],
        split_mode="time",
    )


def _no_audio_message(root: pathlib.Path, skipped: list[SkippedFile], ignored: int) -> str:
    if not skipped:
        return (f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {str(root)!r}"
                f"{f'; {ignored} other file(s) ignored' if ignored else ''}")
    shown = "; ".join(f"{item.path}: {item.reason}" for item in skipped[:5])
    more = f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    return f"no usable audio in {str(root)!r}: all {len(skipped)} audio file(s) skipped ({shown}{more})"


def _samples(audio: Sequence[np.ndarray]) -> int:
    return sum(len(a) for a in audio)


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)} min {rest:.0f} s"


# --- the procedural demo corpus -------------------------------------------------------------------

_PENTATONIC = np.array([0, 2, 4, 7, 9])
# Inharmonic partial ratios, relative amplitudes and relative decay times of a struck bell (after
# Risset's classic bell); higher partials die away faster.
_BELL_RATIOS = np.array([0.56, 0.92, 1.19, 1.71, 2.0, 2.74, 3.0, 3.76, 4.07])
_BELL_AMPS = np.array([1.0, 0.67, 1.0, 1.8, 2.67, 1.67, 1.46, 1.33, 1.33])
_BELL_DECAYS = np.array([1.0, 0.9, 0.65, 0.55, 0.325, 0.35, 0.25, 0.2, 0.15])


def _demo_phrases(seed: int, seconds: float, sample_rate: int) -> tuple[list[str], list[np.ndarray]]:
    seconds = check_positive("seconds", seconds)
    sample_rate = check_int("sample_rate", sample_rate, 8000)
    rng = np.random.default_rng(seed)
    total = int(round(seconds * sample_rate))
    phrase = int(round(DEMO_PHRASE_SECONDS * sample_rate))
    lengths = [phrase] * (total // phrase) + ([total % phrase] if total % phrase else [])
    phrases = [_demo_phrase(rng, n, sample_rate) for n in lengths]
    names = [f"phrase_{i:03d}.wav" for i in range(len(phrases))]
    return names, phrases


def _demo_phrase(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """One phrase: a drum pattern, a plucked melody, a bell or two and a noise swell, on a 1/8 grid."""
    out = np.zeros(n)
    step = int(round(0.25 * sr))  # eighth notes at 120 bpm
    root = 45 + int(rng.integers(0, 12))  # MIDI note of the phrase's key
    steps = max(1, -(-n // step))
    kicks = rng.random(steps) < 0.3
    kicks[0] = True
    for i in np.flatnonzero(kicks):
        start = i * step
        _add(out, start, rng.uniform(0.5, 0.9) * _drum(rng, n - start, sr))
    for i in np.flatnonzero(rng.random(steps) < 0.35):
        midi = root + 12 + rng.choice(_PENTATONIC) + 12 * int(rng.integers(0, 2))
        start = i * step
        note = _pluck(rng, _hz(midi), rng.uniform(0.8, 2.0), n - start, sr)
        _add(out, start, rng.uniform(0.3, 0.7) * note)
    for _ in range(int(rng.integers(0, 3))):
        midi = root + 24 + rng.choice(_PENTATONIC)
        start = int(rng.integers(0, steps)) * step
        note = _bell(rng, _hz(midi), rng.uniform(1.5, 3.0), n - start, sr)
        _add(out, start, rng.uniform(0.2, 0.4) * note)
    if rng.random() < 0.35:  # an occasional texture under the notes, not a wall of noise
        start = int(rng.integers(0, max(1, n - sr)))
        _add(out, start, rng.uniform(0.08, 0.2) * _swell(rng, rng.uniform(1.0, 3.0), n - start, sr))
    peak = np.max(np.abs(out))
    return (out * (DEMO_PEAK / peak) if peak > 0 else out).astype(np.float32)


def _add(out: np.ndarray, start: int, sound: np.ndarray) -> None:
    """Mix ``sound`` into ``out`` at ``start``; the synths already cut it to fit."""
    out[start:start + len(sound)] += sound


def _hz(midi: float) -> float:
    return 440.0 * 2 ** ((midi - 69) / 12)


# Each synth renders a sound that lasts ``seconds`` but returns at most ``limit`` samples of it: what
# would fall after the end of the phrase is never computed.


def _pluck(rng: np.random.Generator, freq: float, seconds: float, limit: int, sr: int) -> np.ndarray:
    """Karplus-Strong plucked string, one period per numpy step; rings down by 60 dB in ``seconds``."""
    period = max(2, int(round(sr / freq)))
    n = min(int(seconds * sr), limit)
    blocks = -(-n // period) + 1
    y = np.zeros(blocks * period + 1)  # y[0] = 0 lets the first block read "one sample before" itself
    burst = rng.uniform(-1, 1, period)
    y[1:period + 1] = burst - burst.mean()  # no DC: the averaging filter would keep it forever
    gain = 10 ** (-3 * period / (seconds * sr))
    for start in range(period + 1, len(y) - period + 1, period):
        # y[t] = gain * (y[t - period] + y[t - period - 1]) / 2, a whole period at once
        y[start:start + period] = gain * 0.5 * (y[start - period:start] + y[start - period - 1:start - 1])
    return y[1:n + 1]


def _bell(rng: np.random.Generator, freq: float, seconds: float, limit: int, sr: int) -> np.ndarray:
    """Struck bell: inharmonic partials, each with its own exponential decay (float32 for speed)."""
    t = np.arange(min(int(seconds * sr), limit), dtype=np.float32) / np.float32(sr)
    ratios = _BELL_RATIOS * (1 + rng.normal(0, 0.003, len(_BELL_RATIOS)))
    omegas = (2 * np.pi * freq * ratios).astype(np.float32)[:, None]
    phases = rng.uniform(0, 2 * np.pi, len(ratios)).astype(np.float32)[:, None]
    rates = (5 / (_BELL_DECAYS * seconds)).astype(np.float32)[:, None]  # longest partial: -43 dB at the end
    partials = np.sin(omegas * t + phases) * np.exp(-rates * t)
    return (_BELL_AMPS / _BELL_AMPS.sum()).astype(np.float32) @ partials


def _drum(rng: np.random.Generator, limit: int, sr: int) -> np.ndarray:
    """Drum hit: a sine whose pitch sweeps down, plus a short high-passed noise burst."""
    t = np.arange(min(int(0.5 * sr), limit)) / sr
    f_start, f_end = rng.uniform(120, 300), rng.uniform(40, 90)
    freq = f_end + (f_start - f_end) * np.exp(-t / rng.uniform(0.02, 0.06))
    body = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / rng.uniform(0.08, 0.2))
    noise = np.diff(rng.standard_normal(len(t) + 1)) * np.exp(-t / rng.uniform(0.005, 0.03))
    return body + rng.uniform(0.1, 0.5) * noise


def _swell(rng: np.random.Generator, seconds: float, limit: int, sr: int) -> np.ndarray:
    """Band-passed noise (a Gaussian band on a log-frequency axis) that fades in and out."""
    n = int(seconds * sr)
    size = 1 << (n - 1).bit_length()  # a power of two keeps the FFT fast
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1 / sr)
    center, width = rng.uniform(300, 4000), rng.uniform(0.3, 1.0)  # Hz, octaves
    band = np.zeros_like(freqs)
    band[1:] = np.exp(-0.5 * (np.log2(freqs[1:] / center) / width) ** 2)
    noise = np.fft.irfft(spectrum * band, size)[:n]
    noise /= np.sqrt(np.mean(noise ** 2)) + 1e-12
    return (noise * np.sin(np.pi * np.arange(n) / n) ** 2)[:limit]
