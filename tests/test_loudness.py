"""Level normalisation of takes: peak, RMS of the non-silent frames with a peak ceiling, or off."""

import math

import numpy as np
import pytest

from distill_nb.loudness import PEAK_CEILING_DBFS, normalise_level

SR = 48000


def tone(seconds=1.0, amplitude=0.1, freq=440.0):
    t = np.arange(round(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("target", [None, -1.0, -12.0, 0.0])
def test_peak_puts_the_loudest_sample_at_the_target(target):
    audio = tone(amplitude=0.03)
    out, gain_db = normalise_level(audio, "peak", target)
    expected = -1.0 if target is None else target
    assert 20 * math.log10(np.abs(out).max()) == pytest.approx(expected, abs=1e-5)
    np.testing.assert_allclose(out, audio * 10 ** (gain_db / 20), rtol=1e-6)
    assert gain_db == pytest.approx(expected - 20 * math.log10(np.abs(audio).max()), abs=1e-6)


def test_rms_measures_the_non_silent_frames_only():
    quiet_then_loud = np.concatenate([np.zeros(3 * SR, np.float32), tone(amplitude=0.01)])
    out, gain_db = normalise_level(quiet_then_loud, "rms", -30.0)
    sounding = out[3 * SR:]
    # The silence before the tone does not lower the measured level (the frame where the tone starts, half
    # silent, counts: hence the 0.1 dB).
    assert 20 * math.log10(np.sqrt(np.mean(sounding.astype(np.float64) ** 2))) == pytest.approx(-30.0, abs=0.1)
    assert np.all(out[:3 * SR] == 0)


def test_rms_lowers_its_gain_to_keep_the_peak_below_the_ceiling():
    spiky = tone(amplitude=0.001)
    spiky[SR // 2] = 0.5  # one loud sample: reaching -20 dBFS RMS would push it far over full scale
    out, gain_db = normalise_level(spiky, "rms", -20.0)
    assert 20 * math.log10(np.abs(out).max()) == pytest.approx(PEAK_CEILING_DBFS, abs=1e-5)


def test_off_and_silence_keep_the_audio_and_do_not_modify_the_input():
    audio = tone(amplitude=0.2)
    before = audio.copy()
    out, gain_db = normalise_level(audio, "off")
    assert gain_db == 0.0 and np.array_equal(out, audio) and out is not audio
    silence = np.zeros(SR, np.float32)
    for mode in ("peak", "rms"):
        out, gain_db = normalise_level(silence, mode)
        assert gain_db == 0.0 and not out.any()
    normalise_level(audio, "peak")
    assert np.array_equal(audio, before)


@pytest.mark.parametrize("mode, target, match", [("loud", None, "normalise"), ("peak", 1.0, "target_dbfs"),
                                                 ("rms", math.nan, "target_dbfs"), ("peak", math.inf, "target_dbfs")])
def test_bad_arguments_name_the_parameter(mode, target, match):
    for audio in (tone(), np.zeros(SR, np.float32)):  # checked before silence returns early
        with pytest.raises(ValueError, match=match):
            normalise_level(audio, mode, target)
