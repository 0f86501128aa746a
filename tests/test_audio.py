"""Tests for distill_nb.audio: reading and writing audio files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from distill_nb import audio as audio_module
from distill_nb.audio import AudioFileError, load_audio, save_audio


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
    assert json.loads(path.with_suffix(".json").read_text()) == {"seed": 3, "temperature": [1.0, 0.8]}
    save_audio(path, _tone(amplitude=0.25), 48000)  # overwrite in place
    np.testing.assert_allclose(np.abs(load_audio(path)).max(), 0.25, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["take.json", "take.wav"]
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
