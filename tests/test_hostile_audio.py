"""Hostile and broken audio files, all generated here: each gets its documented outcome in bounded memory.

Memory is measured in a child process that loads the files in turn: its peak resident size (ru_maxrss) against
a baseline child that only imports ``distill_nb.audio``, and on Linux also each load's own peak (the peak is reset
before each file). The pytest process itself loads a hostile file only after the child has, so a regression fails
these tests instead of taking the machine's memory.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_model

from distill_nb import cli
from distill_nb.corpus import build_corpus
from distill_nb.model_file import save_model

MEMORY_BUDGET_MB = 500  # above the baseline child, for any one file
RATE = 48000
LIMIT = 2.0  # max_seconds where a case needs a small limit
HOSTILE = ("rate_1hz.wav", "rate_1e9.wav", "rate_0.wav", "frames_2_31.wav", "channels_65535.wav", "au.wav",
           "channels_1000.wav", "empty.wav", "truncated.wav", "random.wav", "random_riff.wav", "float_1e30.wav",
           "nan.wav", "long_header.flac", "too_long.wav")

CHILD = r"""
import json, resource, sys, warnings
from distill_nb.audio import load_audio

def load(path, max_seconds):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            audio = load_audio(path, 48000, max_seconds=max_seconds)
            result = {"outcome": "loaded", "samples": len(audio), "peak": max(float(audio.max()), -float(audio.min()))}
        except Exception as error:
            result = {"outcome": type(error).__name__, "message": str(error)}
    result["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    return result

def status_mb(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field)) / 1024

for path, max_seconds in json.loads(sys.argv[1]):
    try:  # Linux: reset the peak resident size to the present one, so the peak after the load is the load's own
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        rss_before_mb = status_mb("VmRSS:")
    except OSError:
        rss_before_mb = None
    result = load(path, max_seconds)  # the audio is freed before the peak is read and the next file loaded
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["load_mb"] = None if rss_before_mb is None else status_mb("VmHWM:") - rss_before_mb
    print(json.dumps(result), flush=True)
"""
BASELINE = "import resource, distill_nb.audio; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"


def _patch(path, offset, fmt, value):
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))


def _pcm_wav(path, frames, subtype="PCM_16", rate=RATE):
    """A mono tone as a canonical 44-byte-header WAV (fmt at 12, data at 36), to patch by offset."""
    sf.write(path, (0.5 * np.sin(np.arange(frames) / 7)).astype(np.float32), rate, subtype=subtype)
    data = path.read_bytes()
    assert data[12:16] == b"fmt " and data[36:40] == b"data"
    return path


def _write_hostile(folder):
    """Write every hostile file -> {name: (max_seconds, expected: an error's name or the samples loaded at 48 kHz,
    what its message or its warning says)}."""
    cases = {}
    _patch(_pcm_wav(folder / "rate_1hz.wav", 1 << 20), 24, "<I", 1)  # 2 MB at 1 Hz: 48e9 samples at 48 kHz
    cases["rate_1hz.wav"] = (None, "AudioFileError", "sample rate of 1 Hz, outside the 1000-768000 Hz")
    _patch(_pcm_wav(folder / "rate_1e9.wav", RATE), 24, "<I", 10**9)
    cases["rate_1e9.wav"] = (None, "AudioFileError", "sample rate of 1000000000 Hz")
    _patch(_pcm_wav(folder / "rate_0.wav", RATE), 24, "<I", 0)  # libsndfile refuses it itself
    cases["rate_0.wav"] = (None, "AudioFileError", "rate_0.wav")
    _patch(_pcm_wav(folder / "frames_2_31.wav", RATE, "PCM_U8"), 40, "<I", 2**31)  # 8-bit mono: bytes = frames
    cases["frames_2_31.wav"] = (None, 48000, "holds 1.0 s of the 44739.2 s its header claims")
    _patch(_pcm_wav(folder / "channels_65535.wav", RATE), 22, "<H", 65535)  # the most a WAV header can say
    cases["channels_65535.wav"] = (None, "AudioFileError", "channels")
    sf.write(folder / "au.wav", np.zeros(RATE, np.float32), RATE, format="AU", subtype="PCM_16")
    _patch(folder / "au.wav", 20, ">I", 2**31)  # an AU header has 32 bits for channels (named .wav)
    cases["au.wav"] = (None, "AudioFileError", "au.wav")
    wide = _pcm_wav(folder / "channels_1000.wav", RATE)  # 96000 bytes: 48 frames of 1000 channels
    _patch(wide, 22, "<H", 1000)
    _patch(wide, 28, "<I", RATE * 2000)
    _patch(wide, 32, "<H", 2000)
    cases["channels_1000.wav"] = (None, 48, None)
    (folder / "empty.wav").write_bytes(b"")
    cases["empty.wav"] = (None, "AudioFileError", "empty file (0 bytes)")
    whole = _pcm_wav(folder / "truncated.wav", 2 * RATE).read_bytes()
    (folder / "truncated.wav").write_bytes(whole[:44 + 2 * RATE // 2])
    cases["truncated.wav"] = (None, 24000, "holds 0.5 s of the 2.0 s its header claims (25%)")
    (folder / "random.wav").write_bytes(np.random.default_rng(0).bytes(100_000))
    cases["random.wav"] = (None, "AudioFileError", "random.wav")
    (folder / "random_riff.wav").write_bytes(whole[:12] + np.random.default_rng(1).bytes(100_000))
    cases["random_riff.wav"] = (None, "AudioFileError", "random_riff.wav")
    loud = np.full(RATE, 0.25, np.float32)
    loud[10] = 1e30
    sf.write(folder / "float_1e30.wav", loud, RATE, subtype="FLOAT")
    cases["float_1e30.wav"] = (None, 48000, None)  # load_audio returns the file's values; corpora scale
    loud[10] = np.nan
    sf.write(folder / "nan.wav", loud, RATE, subtype="FLOAT")
    cases["nan.wav"] = (None, "AudioFileError", "NaN")
    sf.write(folder / "long_header.flac", np.full(RATE, 0.25, np.float32), RATE, subtype="PCM_16")
    flac = bytearray((folder / "long_header.flac").read_bytes())
    assert flac[:4] == b"fLaC"
    info = int.from_bytes(flac[18:26], "big")  # STREAMINFO: 36 bits of total samples end this field
    flac[18:26] = ((info & ~((1 << 36) - 1)) | (1 << 35)).to_bytes(8, "big")
    (folder / "long_header.flac").write_bytes(bytes(flac))
    cases["long_header.flac"] = (None, "AudioFileError", "lasts 11930.5 min, above the limit of 30.0 min per file")
    _pcm_wav(folder / "too_long.wav", int(3 * RATE))
    cases["too_long.wav"] = (LIMIT, "AudioFileError", "lasts 3.0 s, above the limit of 2.0 s per file")
    assert tuple(cases) == HOSTILE
    return cases


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    return folder, _write_hostile(folder)


def _children(*jobs):
    """Run child pythons concurrently (each a list of arguments after -c) -> their stdout lines."""
    processes = [subprocess.Popen([sys.executable, "-c", *job], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for job in jobs]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        outputs.append(out.splitlines())
    return outputs


@pytest.fixture(scope="module")
def measured(hostile, tmp_path_factory):
    """Every hostile file loaded in turn in one child, then a legal extreme (29 min at 1 kHz: 334 MB at 48 kHz) and
    a long stereo file -> (baseline MB, {name: result}, the stereo file's result, its output in MB)."""
    folder, cases = hostile
    extreme = _pcm_wav(tmp_path_factory.mktemp("extreme") / "rate_1khz_29min.wav", 29 * 60 * 1000, rate=1000)
    files = [[str(folder / name), max_seconds or 1800.0] for name, (max_seconds, _, _) in cases.items()]
    stereo = tmp_path_factory.mktemp("stereo") / "stereo_5min.wav"
    with sf.SoundFile(stereo, "w", 44100, 2, "PCM_16") as f:
        second = np.random.default_rng(0).uniform(-0.5, 0.5, (44100, 2)).astype(np.float32)
        for _ in range(5 * 60):
            f.write(second)
    files += [[str(extreme), 1800.0], [str(stereo), 1800.0]]
    baseline, results = _children([BASELINE], [CHILD, json.dumps(files)])
    loaded = dict(zip([*cases, extreme.name, stereo.name], map(json.loads, results)))
    print(f"baseline child {float(baseline[0]):.0f} MB; peak after each file (MB), and each load's own peak:",
          {name: (round(result["peak_rss_mb"]), result["load_mb"] and round(result["load_mb"]))
           for name, result in loaded.items()})
    stereo_result = loaded.pop(stereo.name)
    return float(baseline[0]), loaded, stereo_result, 5 * 60 * RATE * 4 / 2**20


@pytest.mark.parametrize("name", HOSTILE)
def test_each_hostile_file_gets_its_outcome_in_bounded_memory(hostile, measured, name):
    _, cases = hostile
    baseline, results, _, _ = measured
    _, expected, says = cases[name]
    result = results[name]
    if isinstance(expected, int):
        assert (result["outcome"], result.get("message")) == ("loaded", None)
        assert result["samples"] == expected
        if says is None:
            assert result["warnings"] == []
        else:
            assert len(result["warnings"]) == 1 and result["warnings"][0].startswith("TruncatedAudioWarning")
            assert says in result["warnings"][0] and name in result["warnings"][0]
    else:
        assert result["outcome"] == expected and name in result["message"] and says in result["message"]
    # The child's peak resident size since this file's load began (Linux), or since it started: a bound either way.
    assert result["peak_rss_mb"] - baseline < MEMORY_BUDGET_MB
    assert result["load_mb"] is None or result["load_mb"] < MEMORY_BUDGET_MB


def test_a_float_file_beyond_full_scale_is_returned_as_it_is(measured):
    assert measured[1]["float_1e30.wav"]["peak"] == pytest.approx(1e30, rel=1e-6)


def test_the_longest_file_at_the_lowest_rate_fits_the_budget(measured):
    baseline, results, _, _ = measured
    result = results["rate_1khz_29min.wav"]
    assert result["outcome"] == "loaded" and result["samples"] == 29 * 60 * RATE
    assert result["peak_rss_mb"] - baseline < MEMORY_BUDGET_MB
    assert result["load_mb"] is None or result["load_mb"] < MEMORY_BUDGET_MB


def test_peak_memory_is_about_the_output_array(measured):
    """Decoding a block at a time: a 5 min stereo 44.1 kHz file used to take its float32 copy (2 x 53 MB), the mono
    mix and the resampled output at once."""
    _, _, result, output_mb = measured
    assert result["outcome"] == "loaded" and result["samples"] == 5 * 60 * RATE
    if result["load_mb"] is None:
        pytest.skip("needs Linux's /proc/self/clear_refs: the baseline child's import peak hides a load this small")
    taken = result["load_mb"]
    print(f"stereo 5 min: the load took {taken:.0f} MB at its peak, output {output_mb:.0f} MB")
    assert taken < 1.25 * output_mb + 32


def test_a_folder_of_good_and_hostile_files_keeps_the_good_and_reports_every_hostile_one(hostile, measured,
                                                                                         tmp_path):
    source, cases = hostile  # measured first: the child has shown these files load in bounded memory
    for name in cases:
        shutil.copy(source / name, tmp_path / name)
    good = [f"good_{i}.wav" for i in range(4)]
    for i, name in enumerate(good):
        sf.write(tmp_path / name, 0.5 * np.sin(np.arange(int(1.5 * 16000)) * (0.05 + 0.01 * i)), 16000)
    corpus = build_corpus(tmp_path, sample_rate=16000, max_seconds=LIMIT)
    used = set(corpus.train_files) | set(corpus.val_files)
    skipped = {item.path: item.reason for item in corpus.skipped}
    notes = {item.path: item.note for item in corpus.notes}
    assert set(good) <= used and not set(good) & (set(skipped) | set(notes))
    for name, (_, expected, says) in cases.items():
        if name == "channels_1000.wav":  # a legal if odd file: 48 frames of 1000 channels, used as it is
            assert name in used and name not in notes
        elif isinstance(expected, int) and says is not None:
            assert name in used and notes[name].startswith("truncated: ") and says in notes[name]
        elif name == "float_1e30.wav":
            # The resampler spreads the one 1e30 sample: the peak is lower at 16 kHz, far above full scale still
            assert name in used and re.fullmatch(r"peak \S+ \(\+5\d\d.\d dBFS\) above full scale: scaled to peak 1.0",
                                                 notes[name])
        else:
            assert skipped[name].startswith("could not be read") and name not in used
    report = corpus.report()
    for name, reason in {**skipped, **notes}.items():
        assert f"{name}: {reason}" in report


def test_every_cli_command_answers_a_hostile_audio_file_with_one_error_line(hostile, measured, tmp_path, capsys):
    source, cases = hostile  # measured first, as above
    refused = [name for name, (limit, expected, _) in cases.items() if expected == "AudioFileError" and limit is None]
    model = save_model(tiny_model(), tmp_path / "tiny.distill")
    for name in refused:
        code = cli.main(["generate", "--model", str(model), "-o", str(tmp_path / "take.wav"), "--duration", "1",
                         "--prompt", str(source / name)])
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
        assert code == 2 and len(errors) == 1 and errors[0].startswith("error: ") and name in errors[0], errors
        assert not (tmp_path / "take.wav").exists()
    folder = tmp_path / "all_hostile"
    folder.mkdir()
    for name in refused:
        shutil.copy(source / name, folder / name)
    assert cli.main(["train", str(folder), "-o", str(tmp_path / "m.distill")]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: no usable audio") and "Traceback" not in captured.err
