"""quality.py: reconstruction and generated-take measures of a model against its corpus."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import TINY_SR, tiny_model

from distill_nb.analysis import spectral_convergence
from distill_nb.quality import QualityReport, evaluate_model, reconstruct, stream_windows


def noise(seconds, seed, amplitude=0.3):
    rng = np.random.default_rng(seed)
    return (amplitude * rng.standard_normal(round(seconds * TINY_SR))).astype(np.float32)


def test_stream_windows_play_the_files_back_to_back_and_cut_take_sized_windows():
    files = [np.full(300, 1.0, np.float32), np.full(500, 2.0, np.float32), np.full(4000, 3.0, np.float32)]
    windows = stream_windows(files, 2048 / TINY_SR, TINY_SR)
    assert [len(w) for w in windows] == [2048, 2048]
    np.testing.assert_array_equal(windows[0][:300], 1.0)
    np.testing.assert_array_equal(windows[0][300:800], 2.0)
    np.testing.assert_array_equal(windows[1], 3.0)
    several = stream_windows(files, 2048 / TINY_SR, TINY_SR, orders=3, seed=0)
    assert len(several) == 6 and all(len(w) == 2048 for w in several)
    assert any(w[0] != 1.0 for w in several[2:]), "the later orders are shuffled"
    short = stream_windows([np.ones(3000, np.float32)], 10.0, TINY_SR)
    assert len(short) == 1 and len(short[0]) == 3000  # shorter than a window: the stream whole


def test_reconstruct_runs_the_audio_through_the_codec_as_one_stream():
    loaded = tiny_model()
    audio = noise(1.5, seed=1)
    mel, decoded, audio_out = reconstruct(loaded, audio)
    expected_mel = loaded.spectrogram.waveform_to_mel(audio)[0]
    torch.testing.assert_close(mel, expected_mel)
    with torch.inference_mode():
        expected = loaded.vqvae.decode_codes(loaded.vqvae.encode(mel[None]), mel.shape[1])[0]
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-4)
    assert audio_out.shape == audio.shape and np.isfinite(audio_out).all()


@pytest.fixture(scope="module")
def report():
    loaded = tiny_model()
    corpus = [noise(0.8, seed=s) for s in range(4)]
    heldout = [noise(0.9, seed=10)]
    return loaded, heldout, evaluate_model(loaded, corpus, heldout, takes=2, take_seconds=1.0, seed=3)


def test_the_report_measures_every_set(report):
    loaded, heldout, quality = report
    sets = {"corpus", "heldout", "reconstruction", "continuation", "independent"}
    assert set(quality.pitchiness) == set(quality.silent_share) == sets
    assert set(quality.distance) == {"reconstruction", "continuation", "independent"}
    for distances in quality.distance.values():
        assert set(distances) == {"loudness", "centroid", "flatness", "pitchiness", "silent_share", "mean"}
    assert all(0.0 <= share <= 1.0 for share in quality.silent_share.values())
    assert quality.takes == 2 and quality.take_seconds == 1.0


def test_reconstruction_convergence_is_that_of_the_held_out_mel_and_its_codes_decoded(report):
    loaded, heldout, quality = report
    mel, decoded, _ = reconstruct(loaded, heldout[0])  # one file shorter than a window: one window
    assert quality.reconstruction_sc == pytest.approx(
        spectral_convergence(torch.exp(0.5 * mel), torch.exp(0.5 * decoded)), rel=1e-6)
    # An untrained codec reconstructs nothing; Griffin-Lim alone loses little of white noise's mel.
    assert quality.ceiling_sc < 0.5 < quality.reconstruction_sc


def test_the_report_survives_json_and_reads_back(report):
    _, _, quality = report
    data = json.loads(json.dumps(quality.to_dict(), allow_nan=False))
    again = QualityReport.from_dict(data)
    assert again.reconstruction_sc == quality.reconstruction_sc and again.distance == quality.distance
    text = again.summary()
    assert "spectral convergence" in text and "silent share" in text and "feature distance" in text


def test_nan_becomes_none_in_json_and_nan_again():
    quality = QualityReport(reconstruction_sc=0.3, ceiling_sc=0.1, pitchiness={"corpus": math.nan},
                            silent_share={"corpus": 0.2}, distance={"reconstruction": {"mean": math.nan}},
                            takes=1, take_seconds=1.0)
    data = quality.to_dict()
    assert data["pitchiness"]["corpus"] is None and data["distance"]["reconstruction"]["mean"] is None
    assert math.isnan(QualityReport.from_dict(data).pitchiness["corpus"])


def test_empty_sets_are_refused():
    loaded = tiny_model()
    with pytest.raises(ValueError, match="corpus_audio"):
        evaluate_model(loaded, [], [noise(1.0, 0)])
    with pytest.raises(ValueError, match="heldout_audio"):
        evaluate_model(loaded, [noise(1.0, 0)], [np.zeros(10, np.float32)])
