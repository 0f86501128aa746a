"""Level normalisation of generated takes: a take's level depends on what the prior happened to
sample, so without it takes range from very quiet to clipping."""
from __future__ import annotations

import math

import numpy as np

from distill_nb.analysis import SILENT_DB
from distill_nb.checks import check_choice, check_real

NORMALISATIONS = ("peak", "rms", "off")
# "peak": the loudest sample at the target; "rms": the RMS of the non-silent frames at the target, with the
# peak kept at or below PEAK_CEILING_DBFS (the gain is lowered when it would be exceeded).
DEFAULT_TARGET_DBFS = {"peak": -1.0, "rms": -20.0}
PEAK_CEILING_DBFS = -1.0
_FRAME = 2048  # samples per RMS frame, as analysis.audio_features frames a 48 kHz signal


def normalise_level(audio: np.ndarray, mode: str = "peak",
                    target_dbfs: float | None = None) -> tuple[np.ndarray, float]:
    """Scale ``audio`` (float32 [n]) to a level -> (scaled copy, gain in dB).

    Args:
        mode: "peak", "rms" or "off" (gain 0 dB).
        target_dbfs: the level to reach in dB re full scale, <= 0; None = DEFAULT_TARGET_DBFS[mode].

    A silent signal (all zeros) is returned unchanged with gain 0 dB.
    """
    check_choice("normalise", mode, NORMALISATIONS)
    if target_dbfs is not None:
        check_real("target_dbfs", target_dbfs, "<= 0 dBFS", lambda v: v <= 0.0)
    audio = np.asarray(audio, dtype=np.float32)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if mode == "off" or peak == 0.0:
        return audio.copy(), 0.0
    target = DEFAULT_TARGET_DBFS[mode] if target_dbfs is None else float(target_dbfs)
    if mode == "peak":
        gain_db = target - 20 * math.log10(peak)
    else:
        gain_db = min(target - 20 * math.log10(_active_rms(audio)), PEAK_CEILING_DBFS - 20 * math.log10(peak))
    return (audio * np.float32(10 ** (gain_db / 20))).astype(np.float32), gain_db


def _active_rms(audio: np.ndarray) -> float:
    """RMS over the frames no more than SILENT_DB below the loudest frame (silence does not dilute it)."""
    frames = audio[: max(len(audio) // _FRAME, 1) * _FRAME]
    if len(frames) < _FRAME:
        return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    power = np.mean(np.square(frames.reshape(-1, _FRAME), dtype=np.float64), axis=1)
    active = power >= power.max() * 10 ** (-SILENT_DB / 10)
    return float(np.sqrt(power[active].mean()))
