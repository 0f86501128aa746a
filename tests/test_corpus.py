"""Corpus building: bad files skipped and reported, deterministic splits and chunks, the demo corpus."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from distill_nb import corpus as corpus_module
from distill_nb.corpus import DEMO_PEAK, Corpus, build_corpus, demo_corpus, write_demo_folder

RATE = 16000  # a small model rate keeps the tests fast; chunks are then 16000 samples


def _tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def _write_good(folder, names, seconds=1.5):
    for i, name in enumerate(names):
        soundfile.write(folder / name, _tone(seconds, RATE, 200.0 + 50 * i), RATE)


@pytest.fixture
def mixed_folder(tmp_path):
    """Good files (one in a subfolder, one stereo, one at 22.05 kHz, one FLAC) beside bad ones."""
    (tmp_path / "sub").mkdir()
    soundfile.write(tmp_path / "good.wav", _tone(2.0, RATE), RATE)
    soundfile.write(tmp_path / "sub" / "nested.flac", _tone(1.0, RATE, 330.0), RATE)
    soundfile.write(tmp_path / "stereo.wav", _tone(1.5, RATE, 550.0, channels=2), RATE)
    soundfile.write(tmp_path / "low_rate.wav", _tone(1.0, 22050, 660.0), 22050)
    soundfile.write(tmp_path / "silent.wav", np.zeros(RATE, dtype=np.float32), RATE)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), RATE)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(40)))
    (tmp_path / "notes.wav").write_text("this is a text file renamed to .wav\n")
    (tmp_path / "readme.txt").write_text("not audio, and not named like audio\n")
    (tmp_path / "._good.wav").write_bytes(b"macOS resource fork")  # hidden: ignored, not reported
    return tmp_path


def test_bad_files_are_skipped_and_reported(mixed_folder):
    corpus = build_corpus(mixed_folder, sample_rate=RATE, seed=0)
    used = set(corpus.train_files) | set(corpus.val_files)
    assert used == {"good.wav", "sub/nested.flac", "stereo.wav", "low_rate.wav"}
    reasons = {item.path: item.reason for item in corpus.skipped}
    assert set(reasons) == {"silent.wav", "empty.wav", "corrupt.wav", "notes.wav"}
    assert reasons["silent.wav"].startswith("silent")
    assert reasons["corrupt.wav"].startswith("could not be read")
    assert reasons["notes.wav"].startswith("could not be read")
    assert reasons["empty.wav"].startswith("could not be read")
    assert corpus.ignored_files == 1  # readme.txt
    report = corpus.report()
    for name, reason in reasons.items():
        assert f"{name}: {reason}" in report
    # Stereo is averaged to mono, 22.05 kHz resampled to the model rate.
    assert corpus.split_mode == "time"  # no file fits in 15% of the audio: each file's end validates
    lengths = dict.fromkeys(used, 0)
    for name, audio in zip(corpus.train_files + corpus.val_files, corpus.train_audio + corpus.val_audio):
        assert audio.ndim == 1 and audio.dtype == np.float32
        lengths[name] += len(audio)
    assert lengths["stereo.wav"] == int(1.5 * RATE)
    assert abs(lengths["low_rate.wav"] - RATE) <= 1
    assert corpus.total_seconds == pytest.approx(2.0 + 1.0 + 1.5 + 1.0, abs=1e-3)


def test_folder_with_only_bad_files_raises_naming_folder_and_reasons(tmp_path):
    soundfile.write(tmp_path / "silent.wav", np.zeros(RATE, dtype=np.float32), RATE)
    (tmp_path / "notes.wav").write_text("text")
    with pytest.raises(ValueError, match="no usable audio") as info:
        build_corpus(tmp_path, sample_rate=RATE)
    assert str(tmp_path) in str(info.value)
    assert "silent.wav: silent" in str(info.value)
    assert "notes.wav: could not be read" in str(info.value)


def test_folder_without_audio_files_and_missing_folder(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no audio files"):
        build_corpus(tmp_path, sample_rate=RATE)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_corpus(tmp_path / "nowhere", sample_rate=RATE)


def test_split_by_file_is_deterministic_by_seed(tmp_path):
    names = [f"f{i:02d}.wav" for i in range(12)]
    _write_good(tmp_path, names)
    a = build_corpus(tmp_path, sample_rate=RATE, seed=3)
    b = build_corpus(tmp_path, sample_rate=RATE, seed=3)
    assert a.split_mode == "files"
    assert (a.train_files, a.val_files) == (b.train_files, b.val_files)
    assert set(a.train_files).isdisjoint(a.val_files)
    assert sorted(a.train_files + a.val_files) == names
    assert len(a.val_files) == 1  # 15% of 12 equal files: within the budget, one file fits
    splits = {tuple(build_corpus(tmp_path, sample_rate=RATE, seed=s).val_files) for s in range(6)}
    assert len(splits) > 1  # the seed chooses the validation files


def test_single_file_is_split_in_time(tmp_path):
    soundfile.write(tmp_path / "only.wav", _tone(4.0, RATE), RATE)
    corpus = build_corpus(tmp_path, sample_rate=RATE, val_fraction=0.15)
    assert corpus.split_mode == "time"
    assert corpus.train_files == corpus.val_files == ["only.wav"]
    assert len(corpus.val_audio[0]) == int(round(0.15 * 4 * RATE))
    whole = np.concatenate([corpus.train_audio[0], corpus.val_audio[0]])
    np.testing.assert_allclose(whole, soundfile.read(tmp_path / "only.wav", dtype="float32")[0], atol=1e-6)


def test_val_fraction_is_validated(tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        build_corpus(tmp_path, val_fraction=0.0)


def _small_corpus() -> Corpus:
    rng = np.random.default_rng(0)
    train = [rng.uniform(-1, 1, n).astype(np.float32) for n in (3 * RATE + 100, RATE // 2)]
    val = [rng.uniform(-1, 1, int(2.5 * RATE)).astype(np.float32)]
    return Corpus(RATE, train, val, ["a.wav", "short.wav"], ["v.wav"])


def test_fixed_chunks_tile_validation_deterministically():
    corpus = _small_corpus()
    chunks = corpus.fixed_chunks("val")
    assert chunks.shape == (3, RATE)  # 2.5 s -> two full chunks + a zero-padded half
    assert torch.equal(chunks, corpus.fixed_chunks("val"))
    val = torch.from_numpy(corpus.val_audio[0])
    assert torch.equal(chunks[1], val[RATE:2 * RATE])
    assert torch.equal(chunks[2, :RATE // 2], val[2 * RATE:]) and torch.all(chunks[2, RATE // 2:] == 0)


def test_demo_corpus_is_deterministic_and_the_right_length():
    a, b = demo_corpus(seed=5, seconds=30.0), demo_corpus(seed=5, seconds=30.0)
    for x, y in zip(a.train_audio + a.val_audio, b.train_audio + b.val_audio):
        np.testing.assert_array_equal(x, y)
    assert a.train_files == b.train_files and a.val_files == b.val_files
    assert sum(len(x) for x in a.train_audio + a.val_audio) == 30 * 48000
    assert len(a.train_files) + len(a.val_files) == 8  # 4 s phrases: 7 x 4 + 2
    assert a.split_mode == "files" and len(a.val_files) >= 1
    for phrase in a.train_audio + a.val_audio:
        assert phrase.dtype == np.float32
        assert np.max(np.abs(phrase)) == pytest.approx(DEMO_PEAK, rel=1e-4)
    c = demo_corpus(seed=6, seconds=10.0)
    assert not np.array_equal(a.train_audio[0], c.train_audio[0])
    odd = demo_corpus(seed=0, seconds=7.3, sample_rate=16000)
    assert odd.total_seconds == pytest.approx(7.3)


def test_demo_corpus_has_the_asked_length_in_four_second_files():
    corpus = demo_corpus(seed=0, seconds=120.0)
    assert corpus.total_seconds == pytest.approx(120.0)
    assert len(corpus.train_files) + len(corpus.val_files) == 30


def test_written_demo_folder_loads_back_with_progress(tmp_path):
    paths = write_demo_folder(tmp_path / "demo", seed=1, seconds=9.0)
    assert [p.name for p in paths] == ["phrase_000.wav", "phrase_001.wav", "phrase_002.wav"]
    calls = []
    corpus = build_corpus(tmp_path / "demo", seed=1, progress=lambda f, m: calls.append((f, m)))
    assert corpus.total_seconds == pytest.approx(9.0)
    assert corpus.skipped == []
    memory = demo_corpus(seed=1, seconds=9.0)
    by_name = dict(zip(memory.train_files + memory.val_files, memory.train_audio + memory.val_audio))
    for name, audio in zip(corpus.train_files, corpus.train_audio):
        np.testing.assert_allclose(audio, by_name[name], atol=1e-6)  # 24-bit PCM
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and 0.0 <= fractions[0]
    assert all(isinstance(m, str) and m for _, m in calls)


def test_seed_sample_rate_and_max_seconds_are_validated(tmp_path):
    _write_good(tmp_path, ["a.wav"])
    with pytest.raises(ValueError, match="seed must be an int >= 0, got -1"):
        build_corpus(tmp_path, sample_rate=RATE, seed=-1)
    with pytest.raises(TypeError, match="seed"):
        build_corpus(tmp_path, sample_rate=RATE, seed=1.5)
    with pytest.raises(ValueError, match="sample_rate"):
        build_corpus(tmp_path, sample_rate=10**9)
    with pytest.raises(ValueError, match="max_seconds"):
        build_corpus(tmp_path, sample_rate=RATE, max_seconds=0)


def test_no_failure_of_one_file_stops_the_folder(tmp_path, monkeypatch):
    _write_good(tmp_path, ["a.wav", "b.wav", "c.wav"])
    real = corpus_module.load_audio

    def out_of_memory_on_b(path, **kwargs):
        if path.name == "b.wav":
            raise MemoryError
        return real(path, **kwargs)

    monkeypatch.setattr(corpus_module, "load_audio", out_of_memory_on_b)
    corpus = build_corpus(tmp_path, sample_rate=RATE)
    assert sorted(set(corpus.train_files + corpus.val_files)) == ["a.wav", "c.wav"]
    assert [(item.path, item.reason) for item in corpus.skipped] == [("b.wav", "could not be read: MemoryError")]


def test_loud_and_truncated_files_are_used_and_noted(tmp_path):
    loud = _tone(1.0, RATE)
    loud[100] = 1e30  # a float WAV far beyond full scale: JSON cannot even write its statistics
    soundfile.write(tmp_path / "loud.wav", loud, RATE, subtype="FLOAT")
    soundfile.write(tmp_path / "whole.wav", _tone(2.0, RATE), RATE, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "whole.wav").read_bytes()[:44 + 2 * RATE // 2])
    corpus = build_corpus(tmp_path, sample_rate=RATE, max_seconds=10)
    assert corpus.skipped == [] and corpus.split_mode == "files"
    audio = dict(zip(corpus.train_files + corpus.val_files, corpus.train_audio + corpus.val_audio))
    assert np.abs(audio["loud.wav"]).max() == 1.0 and audio["loud.wav"][100] == 1.0
    assert len(audio["cut.wav"]) == RATE // 2
    notes = {note.path: note.note for note in corpus.notes}
    assert notes == {
        "cut.wav": "truncated: it holds 0.5 s of the 2.0 s its header claims (25%); used what it holds",
        "loud.wav": "peak 1e+30 (+600.0 dBFS) above full scale: scaled to peak 1.0",
    }
    report = corpus.report()
    assert "notes on 2 files used:" in report
    assert all(f"{name}: {note}" in report for name, note in notes.items())


def test_files_longer_than_the_limit_are_skipped_with_the_limit(tmp_path):
    _write_good(tmp_path, ["short.wav"], seconds=1.0)
    _write_good(tmp_path, ["long.wav"], seconds=3.0)
    corpus = build_corpus(tmp_path, sample_rate=RATE, max_seconds=2.0)
    assert corpus.train_files == ["short.wav"]
    assert corpus.skipped[0].path == "long.wav" and "above the limit" in corpus.skipped[0].reason


@pytest.mark.parametrize(("name", "subtype"), [("a.oga", "VORBIS"), ("a.opus", "OPUS")])
def test_ogg_vorbis_and_opus_files_are_loaded(tmp_path, name, subtype):
    assert subtype in soundfile.available_subtypes("OGG")
    soundfile.write(tmp_path / name, _tone(1.0, 48000), 48000, format="OGG", subtype=subtype)
    corpus = build_corpus(tmp_path, sample_rate=RATE)
    assert corpus.train_files == [name] and corpus.ignored_files == 0
    assert corpus.total_seconds == pytest.approx(1.0)
