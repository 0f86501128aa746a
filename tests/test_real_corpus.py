"""bench/real_corpus.py: the corpus of real recordings the quality bench measures on (Debian's sound packages)."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from distill_nb.analysis import audio_features
from distill_nb.corpus import build_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import real_corpus  # noqa: E402

SOURCES = (real_corpus.FREEDESKTOP, real_corpus.SOUND_ICONS, real_corpus.FREEPATS_CONFIG)
have_sources = all(p.exists() for p in SOURCES) and shutil.which("timidity") is not None


def test_the_midi_phrase_is_a_standard_midi_file_of_the_requested_length():
    midi = real_corpus.midi_phrase(40, 55, 88, 2.0, np.random.default_rng(0))
    assert midi[:4] == b"MThd" and midi[14:18] == b"MTrk"
    track = midi[22:]
    assert int.from_bytes(midi[18:22], "big") == len(track) and track.endswith(b"\xff\x2f\x00")
    assert bytes([0xC0, 40]) in track  # the program change
    again = real_corpus.midi_phrase(40, 55, 88, 2.0, np.random.default_rng(0))
    assert again == midi and real_corpus.midi_phrase(40, 55, 88, 2.0, np.random.default_rng(1)) != midi


@pytest.mark.skipif(not have_sources, reason="needs sound-theme-freedesktop, sound-icons, timidity and freepats "
                                             "(.ci/run installs them)")
def test_the_corpus_holds_two_minutes_of_sounds_and_pitched_held_out_phrases(tmp_path):
    seconds = real_corpus.build(tmp_path, seed=0)
    assert 100 < seconds["train"] < 160 and 30 < seconds["heldout"] < 80
    train = build_corpus(tmp_path / "train")
    written = len(list((tmp_path / "train").iterdir()))
    assert not train.skipped and len(train.train_files) + len(train.val_files) == written
    heldout = build_corpus(tmp_path / "heldout", val_fraction=0.5)
    instruments = heldout.train_audio + heldout.val_audio
    assert len(instruments) == len(real_corpus.INSTRUMENTS)
    assert np.mean(audio_features(instruments, 48000).pitchiness) > 0.7  # harmonic instruments, as intended
