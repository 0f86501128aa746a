"""Tests for distill_nb.audio: reading and writing audio files."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import warnings

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from distill_nb import audio as audio_module
from distill_nb.audio import (MAX_SECONDS, AudioFileError, TruncatedAudioWarning, load_audio, read_sidecar,
                              save_audio)


def _tone(sample_rate=48000, seconds=0.1, frequency=440.0, amplitude=0.5) -> np.ndarray:
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("name", "subtype", "atol"),
    [("a.wav", "PCM_16", 2**-15), ("a.wav", "PCM_24", 2**-23), ("a.wav", "FLOAT", 0.0),
     ("a.flac", "PCM_16", 2**-15), ("a.FLAC", "PCM_24", 2**-23)],
)
def test_save_load_round_trip(tmp_path, name, subtype, atol):
    x = _tone()
    path = save_audio(tmp_path / name, torch.from_numpy(x), 48000, subtype=subtype)
    assert path == tmp_path / name and sf.info(path).subtype == subtype
    y = load_audio(str(path))
    assert y.dtype == np.float32 and y.shape == x.shape
    np.testing.assert_allclose(y, x, atol=atol, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no sidecar, no temporary file


def test_load_averages_channels_and_resamples(tmp_path):
    left, right = _tone(22050, 1.0, 440.0, 0.4), _tone(22050, 1.0, 440.0, 0.2)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "stereo.wav", sample_rate=22050), (left + right) / 2,
                               atol=1e-7)
    y = load_audio(tmp_path / "stereo.wav")  # 22.05 kHz -> 48 kHz
    assert y.dtype == np.float32 and y.shape == (48000,)
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 48000 / y.size - 440.0) <= 1.0  # same pitch
    np.testing.assert_allclose(np.abs(y[1000:-1000]).max(), 0.3, atol=0.01)  # same level


def test_save_writes_metadata_sidecar_and_overwrites_atomically(tmp_path):
    path = tmp_path / "take.wav"
    save_audio(path, _tone(), 48000, metadata={"seed": 3, "temperature": [1.0, 0.8]})
    written = json.loads(path.with_suffix(".json").read_text())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert written == {"seed": 3, "temperature": [1.0, 0.8], "audio_sha256": digest}
    assert read_sidecar(path) == written
    save_audio(path, _tone(amplitude=0.25), 48000, metadata={"seed": 4})  # overwrite in place
    np.testing.assert_allclose(np.abs(load_audio(path)).max(), 0.25, atol=1e-3)
    assert read_sidecar(path)["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.json", "take.wav"]
    save_audio(path, _tone(amplitude=0.5), 48000)  # no metadata: the sidecar of the previous take goes
    assert read_sidecar(path) is None and sorted(p.name for p in tmp_path.iterdir()) == ["take.wav"]
    save_audio(path, _tone(), 48000, metadata={"seed": 5})
    save_audio(path.with_suffix(".flac"), _tone(), 48000)  # "take.json" is take.wav's: kept
    assert read_sidecar(path)["seed"] == 5
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's private 0600


def test_failed_save_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "take.flac"
    save_audio(path, _tone(), 48000)
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(audio_module.sf, "write", crash)
    with pytest.raises(OSError, match="disk full"):
        save_audio(path, _tone(amplitude=0.1), 48000)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["take.flac"]


def test_save_clips_above_full_scale_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="full scale"):
        save_audio(tmp_path / "loud.wav", _tone(amplitude=1.5), 48000, subtype="FLOAT")
    assert np.abs(load_audio(tmp_path / "loud.wav")).max() == 1.0


def test_save_errors(tmp_path):
    good = _tone()
    for bad in (np.full(10, np.nan, np.float32), np.array([0.0, np.inf], np.float32),
                np.zeros((10, 2), np.float32), np.zeros(0, np.float32)):
        with pytest.raises(ValueError, match="audio"):
            save_audio(tmp_path / "x.wav", bad, 48000)
    with pytest.raises(ValueError, match="PCM_8"):
        save_audio(tmp_path / "x.wav", good, 48000, subtype="PCM_8")
    with pytest.raises(ValueError, match="subtype"):
        save_audio(tmp_path / "x.flac", good, 48000, subtype="FLOAT")
    with pytest.raises(ValueError, match="x.mp3"):
        save_audio(tmp_path / "x.mp3", good, 48000)
    with pytest.raises(ValueError, match="sample_rate"):
        save_audio(tmp_path / "x.wav", good, 0)
    with pytest.raises(TypeError, match="metadata"):
        save_audio(tmp_path / "x.wav", good, 48000, metadata={"bad": object()})
    with pytest.raises(TypeError, match="metadata"):
        save_audio(tmp_path / "x.wav", good, 48000, metadata=["seed", 3])
    assert list(tmp_path.iterdir()) == []  # nothing written by any failed call


def test_load_errors_name_the_file_and_the_cause(tmp_path):
    valid = tmp_path / "valid.wav"
    sf.write(valid, _tone(), 48000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(valid.read_bytes()[:12] + np.random.default_rng(0).bytes(200))
    (tmp_path / "empty.wav").write_bytes(b"")
    sf.write(tmp_path / "silent.wav", np.zeros(0, np.float32), 48000)
    (tmp_path / "notes.wav").write_text("not audio, just text\n")
    cases = {"missing.wav": "no such file", "corrupt.wav": "", "empty.wav": "", "silent.wav": "no audio",
             "notes.wav": ""}
    for name, cause in cases.items():
        with pytest.raises(AudioFileError, match=name) as info:
            load_audio(tmp_path / name)
        assert cause in str(info.value)
    with pytest.raises(AudioFileError, match="no such file"):
        load_audio(tmp_path)  # a folder is not an audio file
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(valid, sample_rate=-1)


# --- bounded, streaming decoding -------------------------------------------------------------------


def _reference_load(path, sample_rate):
    """What load_audio gave before it streamed: the whole file read, averaged and resampled at once."""
    data, file_rate = sf.read(path, dtype="float32", always_2d=True)
    audio = data.mean(axis=1, dtype=np.float32)
    return audio if file_rate == sample_rate else soxr.resample(audio, file_rate, sample_rate)


@pytest.mark.parametrize("block_samples", [4096, 1 << 20])
@pytest.mark.parametrize(("file_rate", "channels", "frames", "subtype"), [
    (22050, 2, 70001, "FLOAT"), (44100, 1, 300001, "PCM_16"), (96000, 3, 200001, "PCM_24"), (48000, 2, 5000, "FLOAT"),
    (8000, 1, 1, "PCM_16"), (11025, 6, 33333, "PCM_24"),
])
def test_streaming_matches_whole_file_resampling(tmp_path, monkeypatch, block_samples, file_rate, channels, frames,
                                                 subtype):
    monkeypatch.setattr(audio_module, "_BLOCK_SAMPLES", block_samples)
    rng = np.random.default_rng(frames)
    path = tmp_path / "x.wav"
    sf.write(path, rng.uniform(-0.9, 0.9, (frames, channels)).astype(np.float32), file_rate, subtype=subtype)
    for rate in (48000, 16000):
        got = load_audio(path, sample_rate=rate)
        want = _reference_load(path, rate)
        assert got.dtype == np.float32 and got.flags.c_contiguous
        # The length contract: frames * rate / file_rate rounded half up (96 kHz -> 48 kHz, 200001 frames: 100001).
        assert got.shape == want.shape == ((2 * frames * rate + file_rate) // (2 * file_rate),)
        np.testing.assert_allclose(got, want, rtol=0, atol=np.finfo(np.float32).eps)


def test_load_refuses_absurd_sample_rates_and_long_files(tmp_path):
    path = tmp_path / "three_seconds.wav"
    sf.write(path, _tone(8000, 3.0), 8000)
    with pytest.raises(AudioFileError, match=r"three_seconds.wav.*lasts 3.0 s, above the limit of 2.0 s per file.*max"):
        load_audio(path, max_seconds=2.0)
    assert load_audio(path, max_seconds=3.0).shape == (144000,)
    assert MAX_SECONDS == 30 * 60
    for bad in (999, 768001, 0):
        with pytest.raises(ValueError, match="sample_rate"):
            load_audio(path, sample_rate=bad)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="max_seconds"):
            load_audio(path, max_seconds=bad)
    sf.write(tmp_path / "slow.wav", _tone(500, 1.0), 500)  # libsndfile writes it; the toolkit refuses it
    with pytest.raises(AudioFileError, match=r"slow.wav.*sample rate of 500 Hz, outside the 1000-768000 Hz"):
        load_audio(tmp_path / "slow.wav")


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(AudioFileError, match=r"'.*empty.wav': empty file \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav")
    whole = tmp_path / "whole.wav"
    sf.write(whole, _tone(16000, 2.0), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(whole.read_bytes()[:44 + 2 * 16000])  # the header and the first second
    with pytest.warns(TruncatedAudioWarning, match=r"cut.wav.*holds 1.0 s of the 2.0 s its header claims \(50%\)"):
        audio = load_audio(cut, sample_rate=16000)
    np.testing.assert_allclose(audio, load_audio(whole, sample_rate=16000)[:16000], atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete file warns nothing
        load_audio(whole)


# --- sidecars: always the right take's ---------------------------------------------------------------


def test_sidecar_nan_is_written_as_null_and_read_sidecar_checks_the_take(tmp_path):
    path = tmp_path / "take.wav"
    assert read_sidecar(path) is None
    save_audio(path, _tone(), 48000, metadata={"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}],
                                               "d": (np.float64("nan"),)})
    text = path.with_suffix(".json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    metadata = read_sidecar(path)
    assert metadata["a"] is None and metadata["b"] == [1.0, None, {"c": None}] and metadata["d"] == [None]
    sf.write(path, _tone(amplitude=0.1), 48000)  # another take under the same name, the sidecar left behind
    with pytest.raises(AudioFileError, match=r"take.json.*belongs to another take"):
        read_sidecar(path)
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(AudioFileError, match=r"take.json.*not valid JSON"):
        read_sidecar(path)
    path.with_suffix(".json").write_text("[1, 2]")
    with pytest.raises(AudioFileError, match=r"take.json.*JSON object"):
        read_sidecar(path)


def _take_of(path, takes):
    """Which of ``takes`` the audio file at ``path`` holds (an index), or None when there is no file."""
    if not path.exists():
        return None
    audio, _ = sf.read(path, dtype="float32")
    matches = [i for i, take in enumerate(takes) if len(take) == len(audio) and np.allclose(take, audio, atol=1e-6)]
    assert len(matches) == 1, "the audio file is none of the takes: half written?"
    return matches[0]


def _assert_paired(path, takes):
    metadata = read_sidecar(path)  # raises if the sidecar belongs to another take
    if metadata is not None:
        assert metadata["take"] == _take_of(path, takes)
    return metadata


@pytest.mark.parametrize(("failing", "call", "expected"), [
    ("unlink", 1, ("old", "old")), ("replace", 1, ("old", None)), ("replace", 2, ("new", None)),
])
def test_a_save_failing_at_each_step_never_pairs_audio_with_another_takes_sidecar(tmp_path, monkeypatch, failing,
                                                                                   call, expected):
    path = tmp_path / "take.wav"
    takes = [_tone(frequency=440.0), _tone(frequency=660.0)]
    save_audio(path, takes[0], 48000, subtype="FLOAT", metadata={"take": 0})
    real = getattr(os, failing)
    calls = []

    def fail_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise OSError(f"simulated failure of os.{failing}")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, failing, fail_once)
    with pytest.raises(OSError, match="simulated"):
        save_audio(path, takes[1], 48000, subtype="FLOAT", metadata={"take": 1})
    monkeypatch.setattr(os, failing, real)
    names = {0: "old", 1: "new", None: None}
    sidecar = _assert_paired(path, takes)
    assert (names[_take_of(path, takes)], names[None if sidecar is None else sidecar["take"]]) == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.json", "take.wav"][expected[1] is None:]


def test_a_writer_killed_at_any_instant_never_pairs_audio_with_another_takes_sidecar(tmp_path):
    """A child process saves two takes alternately to one path until SIGKILL, after a random (seeded) delay."""
    path = tmp_path / "take.wav"
    takes = [_tone(frequency=440.0), _tone(frequency=660.0, seconds=0.15)]
    rng = np.random.default_rng(0)
    seen = []
    for _ in range(12):
        pid = os.fork()
        if pid == 0:  # the child: save forever, never return into pytest
            try:
                for i in range(10**9):
                    save_audio(path, takes[i % 2], 48000, subtype="FLOAT", metadata={"take": i % 2})
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.15))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        metadata = _assert_paired(path, takes)
        seen.append(None if metadata is None else metadata["take"])
    assert {0, 1} <= set(seen)  # the kills found both takes finished
    save_audio(path, takes[0], 48000, subtype="FLOAT", metadata={"take": 0})
    # The temporary files the killed children left are gone with this write.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.json", "take.wav"]
