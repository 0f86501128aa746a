"""Tests for distill_nb.spectrogram: the mel filterbank and the log-mel against librosa, shapes, the config."""

from __future__ import annotations

import dataclasses
import json

import librosa
import numpy as np
import pytest
import torch
from conftest import TINY_MEL, audio_signals, librosa_mel_kwargs

from distill_nb.spectrogram import Spectrogram, SpectrogramConfig, mel_filterbank

MEL_SETTINGS = [
    dict(mel_scale=scale, mel_norm=norm, **band)
    for scale in ("htk", "slaney")
    for norm in (None, "slaney")
    for band in ({}, {"f_min": 40.0, "f_max": 11000.0})
]


@pytest.mark.parametrize("settings", MEL_SETTINGS, ids=str)
def test_filterbank_matches_librosa(settings):
    config = SpectrogramConfig(**settings)
    ours = Spectrogram(config).mel_filterbank
    reference = librosa.filters.mel(n_mels=config.n_mels, **librosa_mel_kwargs(config), dtype=np.float64)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == (128, 1025)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-6, atol=1e-6 * reference.max())
    np.testing.assert_allclose(mel_filterbank(config), reference, rtol=1e-9, atol=1e-12 * reference.max())


@pytest.mark.parametrize("settings", MEL_SETTINGS[::3], ids=str)
def test_waveform_to_mel_matches_librosa(settings):
    config = SpectrogramConfig(**settings)
    x = audio_signals(config.sample_rate, 0.25)["vibrato"]
    ours = Spectrogram(config).waveform_to_mel(x)
    power = librosa.feature.melspectrogram(y=x.astype(np.float64), hop_length=config.hop_length, power=2.0,
                                           pad_mode="reflect", n_mels=config.n_mels,
                                           **librosa_mel_kwargs(config))
    assert ours.shape == (1, config.n_mels, 1 + x.size // config.hop_length)
    np.testing.assert_allclose(ours[0].numpy(), np.log(power + config.log_floor), atol=2e-3)


def test_waveform_to_mel_batches_and_accepts_numpy_or_torch():
    spectrogram = Spectrogram(TINY_MEL)
    batch = np.stack(list(audio_signals(TINY_MEL.sample_rate, 0.25).values()))
    mels = spectrogram.waveform_to_mel(torch.from_numpy(batch))
    assert mels.dtype == torch.float32 and mels.shape == (3, 32, 1 + 2000 // 32)
    for row, x in zip(mels, batch):
        torch.testing.assert_close(row, spectrogram.waveform_to_mel(x)[0], atol=1e-5, rtol=0)
    silence = spectrogram.waveform_to_mel(np.zeros(4000, np.float32))
    torch.testing.assert_close(silence, torch.full_like(silence, np.log(TINY_MEL.log_floor)))


def test_waveform_to_mel_rejects_bad_audio():
    spectrogram = Spectrogram(TINY_MEL)
    with pytest.raises(ValueError, match="audio"):
        spectrogram.waveform_to_mel(np.zeros(TINY_MEL.n_fft // 2, np.float32))  # too short to reflect-pad
    with pytest.raises(ValueError, match="audio"):
        spectrogram.waveform_to_mel(np.zeros((2, 2, 4000), np.float32))
    with pytest.raises(ValueError, match="audio"):
        spectrogram.waveform_to_mel(np.zeros(4000, np.int16))


def test_chunk_and_mel_shapes():
    spectrogram = Spectrogram()  # the default 48 kHz chunk geometry
    assert spectrogram.chunk_samples == 48000
    assert spectrogram.get_mel_shape(48000) == (128, 94)
    assert spectrogram.waveform_to_mel(np.zeros((2, 48000), np.float32)).shape == (2, 128, 94)
    with pytest.raises(ValueError, match="num_samples"):
        spectrogram.get_mel_shape(0)


def test_config_defaults_and_round_trip():
    config = SpectrogramConfig()
    assert (config.sample_rate, config.n_fft, config.hop_length, config.n_mels) == (48000, 2048, 512, 128)
    assert (config.f_min, config.f_max, config.mel_scale, config.mel_norm, config.log_floor) == (
        0.0, None, "htk", None, 1e-5)
    custom = SpectrogramConfig(sample_rate=np.int64(22050), f_max=8000, mel_scale="slaney", mel_norm="slaney")
    data = json.loads(json.dumps(custom.to_dict()))
    assert SpectrogramConfig.from_dict(data) == custom
    assert type(custom.sample_rate) is int and type(custom.f_max) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.n_fft = 1024


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("sample_rate", 0, ValueError),
        ("sample_rate", 44100.0, TypeError),
        ("n_fft", 8, ValueError),
        ("hop_length", 0, ValueError),
        ("hop_length", 1025, ValueError),
        ("n_mels", 0, ValueError),
        ("n_mels", 2000, ValueError),
        ("f_min", -1.0, ValueError),
        ("f_min", 24000.0, ValueError),
        ("f_max", 30000.0, ValueError),
        ("f_max", float("nan"), ValueError),
        ("mel_scale", "mel", ValueError),
        ("mel_norm", "l2", ValueError),
        ("log_floor", 0.0, ValueError),
        ("log_floor", "1e-5", TypeError),
    ],
)
def test_config_rejects_bad_fields(field, value, error):
    with pytest.raises(error, match=field):
        SpectrogramConfig(**{field: value})


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="hop_size"):
        SpectrogramConfig.from_dict({"hop_size": 256})
    with pytest.raises(TypeError, match="data"):
        SpectrogramConfig.from_dict([("n_fft", 1024)])


def test_spectrogram_rejects_a_config_of_another_type():
    with pytest.raises(TypeError, match="config"):
        Spectrogram({"n_fft": 1024})
