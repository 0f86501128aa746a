"""A corpus of real recordings from Debian packages, for judging sound quality on more than the demo corpus.

    .venv/bin/python bench/real_corpus.py OUT_DIR [--seed 0]

Writes OUT_DIR/train/ (about 2 minutes) and OUT_DIR/heldout/ (about 50 s) as 48 kHz mono WAV files:

- train: the effects of ``sound-theme-freedesktop`` (bells, dialogs, phones, a voice naming the speaker
  channels, a noise test signal), the instrument and effect samples of ``sound-icons``, and phrases of
  13 sampled instruments (piano, harpsichord, guitar, violin, cello, trumpet, flute, clarinet, organ,
  sax, horn, xylophone, bass) rendered from generated MIDI by ``timidity`` with ``freepats``;
- heldout: other phrases of the same instruments (other notes and rhythms, same seed scheme), the
  harmonic instruments the quality targets are measured on.

Install the sources with ``apt-get install sound-theme-freedesktop sound-icons timidity freepats``.
Nothing is downloaded: the audio comes from those packages and the MIDI is written here from ``--seed``.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 48000
FREEDESKTOP = pathlib.Path("/usr/share/sounds/freedesktop/stereo")
SOUND_ICONS = pathlib.Path("/usr/share/sounds/sound-icons")
FREEPATS_CONFIG = pathlib.Path("/etc/timidity/freepats.cfg")
# General MIDI programs that freepats has a sample for: (program, name, lowest and highest MIDI note).
INSTRUMENTS = (
    (0, "piano", 48, 84), (6, "harpsichord", 48, 84), (24, "nylon_guitar", 45, 76), (40, "violin", 55, 88),
    (42, "cello", 36, 67), (56, "trumpet", 55, 82), (73, "flute", 60, 93), (71, "clarinet", 50, 82),
    (19, "church_organ", 36, 84), (65, "alto_sax", 49, 80), (60, "french_horn", 41, 72),
    (13, "xylophone", 65, 96), (32, "acoustic_bass", 28, 55),
)
TRAIN_PHRASE_S = 3.0
HELDOUT_PHRASE_S = 2.0
_MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
_TICKS = 480  # per quarter note; 120 bpm, so a quarter is 0.5 s


def _variable_length(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def midi_phrase(program: int, low: int, high: int, seconds: float, rng: np.random.Generator) -> bytes:
    """A one-track Standard MIDI File: a melody in a random major key within [low, high], ~seconds long."""
    events = [(0, bytes([0xC0, program]))]  # program change on channel 0
    root = int(rng.integers(low, max(low + 1, high - 12)))
    pitches = root + np.concatenate([_MAJOR, _MAJOR + 12])
    pitches = pitches[pitches <= high]
    time, index = 0, int(rng.integers(0, len(pitches)))
    while time < seconds * 2 * _TICKS:
        length = int(rng.choice([_TICKS // 2, _TICKS, _TICKS, 3 * _TICKS // 2, 2 * _TICKS]))
        index = int(np.clip(index + rng.integers(-2, 3), 0, len(pitches) - 1))  # mostly steps, as melodies go
        velocity = int(rng.integers(60, 115))
        rest = int(rng.choice([0, 0, 0, _TICKS // 2]))
        events.append((time, bytes([0x90, int(pitches[index]), velocity])))
        events.append((time + length, bytes([0x80, int(pitches[index]), 0])))
        time += length + rest
    events.sort(key=lambda event: event[0])
    track, last = b"", 0
    for when, message in events:
        track += _variable_length(when - last) + message
        last = when
    track += _variable_length(_TICKS) + b"\xff\x2f\x00"  # let the last note ring a beat, then end
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, _TICKS)
    return header + b"MTrk" + struct.pack(">I", len(track)) + track


def render_midi(midi: bytes, out: pathlib.Path) -> None:
    """Render MIDI bytes to a 48 kHz mono WAV with timidity and the freepats samples."""
    with tempfile.TemporaryDirectory() as tmp:
        source = pathlib.Path(tmp) / "phrase.mid"
        source.write_bytes(midi)
        rendered = pathlib.Path(tmp) / "phrase.wav"
        subprocess.run(["timidity", "-c", str(FREEPATS_CONFIG), "-Ow", "--output-mono", "-s", str(SAMPLE_RATE),
                        "-o", str(rendered), str(source)], check=True, capture_output=True)
        audio, rate = sf.read(rendered, dtype="float32", always_2d=True)
    write_wav(out, audio.mean(axis=1), rate)


def write_wav(path: pathlib.Path, audio: np.ndarray, rate: int) -> None:
    """Mono float audio -> 24-bit WAV at SAMPLE_RATE, with leading/trailing digital silence trimmed."""
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE)
    nonzero = np.flatnonzero(np.abs(audio) > 1e-5)
    audio = audio[nonzero[0]:nonzero[-1] + 1] if len(nonzero) else audio
    sf.write(path, np.clip(audio, -1, 1), SAMPLE_RATE, subtype="PCM_24")


def copy_recordings(folder: pathlib.Path, pattern: str, target: pathlib.Path, prefix: str) -> int:
    count = 0
    for path in sorted(folder.glob(pattern)):
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        write_wav(target / f"{prefix}_{path.stem}.wav", audio.mean(axis=1), rate)
        count += 1
    return count


def build(out: pathlib.Path, seed: int) -> dict[str, float]:
    """Write OUT/train and OUT/heldout -> seconds of audio in each."""
    missing = [str(p) for p in (FREEDESKTOP, SOUND_ICONS, FREEPATS_CONFIG) if not p.exists()]
    if missing or shutil.which("timidity") is None:
        sys.exit("missing sources " + ", ".join(missing + ([] if shutil.which("timidity") else ["timidity"]))
                 + "; install them with: apt-get install sound-theme-freedesktop sound-icons timidity freepats")
    train, heldout = out / "train", out / "heldout"
    for folder in (train, heldout):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    copy_recordings(FREEDESKTOP, "*.oga", train, "freedesktop")
    copy_recordings(SOUND_ICONS, "*.wav", train, "icons")
    rng = np.random.default_rng(seed)
    for program, name, low, high in INSTRUMENTS:
        render_midi(midi_phrase(program, low, high, TRAIN_PHRASE_S, rng), train / f"midi_{name}.wav")
    for program, name, low, high in INSTRUMENTS:
        render_midi(midi_phrase(program, low, high, HELDOUT_PHRASE_S, rng), heldout / f"midi_{name}.wav")
    return {folder.name: sum(sf.info(p).duration for p in folder.glob("*.wav")) for folder in (train, heldout)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path, help="folder to write train/ and heldout/ into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MIDI phrases")
    args = parser.parse_args()
    seconds = build(args.out, args.seed)
    print(", ".join(f"{name}: {s:.1f} s" for name, s in seconds.items()))


if __name__ == "__main__":
    main()
