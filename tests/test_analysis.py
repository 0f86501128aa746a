import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon
from scipy.stats import wasserstein_distance

from distill_nb.analysis import (DISTANCE_SCALE_FLOOR, AudioFeatures, LevelStats, SeamReport, audio_features,
                                 code_histograms, compare_to_training, feature_distance, js_divergence,
                                 level_statistics, seam_discontinuity, spectral_convergence)

SR = 48000


def random_codes(shape, codebook_size, seed=0):
    return torch.randint(0, codebook_size, shape, generator=torch.Generator().manual_seed(seed))


# --- code_histograms -------------------------------------------------------------------------------

def test_histograms_match_numpy_bincount_per_level():
    codes = random_codes((4, 48, 3), 16)
    counts = code_histograms(codes, 16)
    assert counts.dtype == torch.long and counts.shape == (3, 16)
    for q in range(3):
        expected = np.bincount(codes[..., q].numpy().ravel(), minlength=16)
        np.testing.assert_array_equal(counts[q].numpy(), expected)


def test_histograms_accept_unbatched_flat_and_numpy_codes():
    codes = random_codes((2, 48, 3), 8, seed=1)
    batched = code_histograms(codes, 8)
    flat = codes.reshape(2, 48 * 3)  # index p*Q + q
    torch.testing.assert_close(code_histograms(flat, 8, levels=3), batched)
    torch.testing.assert_close(code_histograms(codes.numpy(), 8), batched)
    torch.testing.assert_close(code_histograms(codes[0], 8) + code_histograms(codes[1], 8), batched)


@pytest.mark.parametrize("bad_value", [-1, 8])
def test_histograms_reject_codes_out_of_range(bad_value):
    codes = torch.zeros(4, 3, dtype=torch.long)
    codes[1, 2] = bad_value
    with pytest.raises(ValueError, match="codebook_size"):
        code_histograms(codes, 8)


def test_histograms_reject_bad_arguments():
    with pytest.raises(TypeError, match="codes"):
        code_histograms(torch.zeros(4, 3), 8)
    with pytest.raises(ValueError, match="codebook_size"):
        code_histograms(torch.zeros(4, 3, dtype=torch.long), 0)
    with pytest.raises(TypeError, match="codebook_size"):
        code_histograms(torch.zeros(4, 3, dtype=torch.long), True)
    with pytest.raises(ValueError, match="levels"):
        code_histograms(torch.zeros(2, 10, dtype=torch.long), 8, levels=3)
    with pytest.raises(ValueError, match="codes"):
        code_histograms(torch.zeros(0, 3, dtype=torch.long), 8)


# --- level_statistics ------------------------------------------------------------------------------

def test_uniform_level_has_log2_k_bits_and_perplexity_k():
    stats = level_statistics(torch.full((1, 8), 5))
    assert stats == [LevelStats(level=0, total=40, unique_codes=8, entropy_bits=pytest.approx(3.0),
                                perplexity=pytest.approx(8.0), top_share=pytest.approx(1 / 8))]


def test_statistics_by_hand():
    histograms = torch.tensor([[10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],    # a single code
                               [6, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0]])   # p = .6, .2, .2
    single, skewed = level_statistics(histograms)
    assert (single.entropy_bits, single.perplexity, single.unique_codes, single.top_share) == (0.0, 1.0, 1, 1.0)
    entropy = -(0.6 * math.log2(0.6) + 2 * 0.2 * math.log2(0.2))
    assert skewed.entropy_bits == pytest.approx(entropy)
    assert skewed.perplexity == pytest.approx(2 ** entropy)
    assert skewed.unique_codes == 3 and skewed.total == 10
    assert skewed.top_share == pytest.approx(0.8)  # top 10 % of 12 codes = the 2 most used


def test_empty_level_gives_nan():
    stats = level_statistics(torch.zeros(1, 4, dtype=torch.long))[0]
    assert stats.total == 0 and stats.unique_codes == 0
    assert math.isnan(stats.entropy_bits) and math.isnan(stats.perplexity) and math.isnan(stats.top_share)


def test_statistics_reject_bad_histograms():
    with pytest.raises(ValueError, match="histograms"):
        level_statistics(torch.ones(8))
    with pytest.raises(ValueError, match="histograms"):
        level_statistics(-torch.ones(2, 8))


# --- js_divergence ---------------------------------------------------------------------------------

def test_jsd_identical_is_zero_even_with_different_totals():
    p = torch.tensor([[1, 2, 3, 0], [4, 0, 0, 1]])
    torch.testing.assert_close(js_divergence(p, 3 * p), torch.zeros(2, dtype=torch.float64))


def test_jsd_disjoint_is_one_bit():
    p = torch.tensor([[5, 5, 0, 0]])
    q = torch.tensor([[0, 0, 1, 7]])
    torch.testing.assert_close(js_divergence(p, q), torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(js_divergence(p, q, base=math.e), torch.full((1,), math.log(2), dtype=torch.float64))


def test_jsd_matches_scipy_and_is_symmetric():
    rng = np.random.default_rng(0)
    p = rng.integers(0, 20, size=(3, 64)) * (rng.random((3, 64)) < 0.7)  # some zero counts
    q = rng.integers(0, 20, size=(3, 64))
    jsd = js_divergence(p, q)
    expected = [jensenshannon(p[level], q[level], base=2) ** 2 for level in range(3)]
    np.testing.assert_allclose(jsd.numpy(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(js_divergence(q, p), jsd)


def test_jsd_single_level_and_errors():
    assert js_divergence(torch.tensor([1, 0]), torch.tensor([0, 1])).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        js_divergence(torch.ones(3, 8), torch.ones(3, 9))
    with pytest.raises(ValueError, match="q_counts"):
        js_divergence(torch.ones(2, 8), torch.tensor([[1.0] * 8, [0.0] * 8]))
    with pytest.raises(ValueError, match="base"):
        js_divergence(torch.ones(8), torch.ones(8), base=1)


# --- compare_to_training ---------------------------------------------------------------------------

def test_compare_to_training_rows():
    train_codes = random_codes((50, 48, 3), 16, seed=2)
    train_counts = code_histograms(train_codes, 16)
    generated = train_codes[:5]
    rows = compare_to_training(generated, train_counts)
    assert [row["level"] for row in rows] == [0, 1, 2]
    gen_stats = level_statistics(code_histograms(generated, 16))
    train_stats = level_statistics(train_counts)
    for row, gen, ref in zip(rows, gen_stats, train_stats):
        assert row["entropy_bits"] == gen.entropy_bits and row["train_entropy_bits"] == ref.entropy_bits
        assert row["unique_codes"] == gen.unique_codes and row["train_unique_codes"] == ref.unique_codes
        assert 0.0 < row["js_divergence_bits"] < 0.2

    one_code = torch.zeros(2, 48, 3, dtype=torch.long)
    assert compare_to_training(one_code, code_histograms(one_code, 16))[0]["js_divergence_bits"] == 0.0


def test_compare_to_training_rejects_level_mismatch():
    with pytest.raises(ValueError, match="generated_codes"):
        compare_to_training(torch.zeros(2, 48, 2, dtype=torch.long), torch.ones(3, 16, dtype=torch.long))


# --- seam_discontinuity ----------------------------------------------------------------------------

def noise(seconds, seed=0, scale=0.1):
    return (scale * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def test_stationary_noise_has_seam_ratio_near_one():
    report = seam_discontinuity(noise(3), SR, [48000, 96000, 70001])
    assert isinstance(report, SeamReport)
    assert report.seam_samples == [48000, 96000, 70001]
    np.testing.assert_allclose(report.seam_times_s, [1.0, 2.0, 70001 / SR])
    assert report.flux_ratio.shape == report.jump_ratio.shape == (3,)
    assert np.all((report.flux_ratio > 0.8) & (report.flux_ratio < 1.25))
    assert 0.8 < report.median_flux_ratio < 1.25
    assert not report.silent.any() and report.silent_share == 0.0 and report.missing_reference is None


def test_hard_switch_at_seam_gives_large_ratio():
    t = np.arange(2 * SR) / SR
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    switched = np.where(t < 1.0, tone, noise(2, seed=1)).astype(np.float32)
    assert seam_discontinuity(switched, SR, [SR]).flux_ratio[0] > 3


def test_click_at_seam_gives_large_flux_and_jump_ratio():
    t = np.arange(2 * SR) / SR
    audio = 0.3 * np.sin(2 * np.pi * 220 * t) + noise(2, seed=2, scale=0.001)
    audio[SR:SR + 4] += 0.5  # a short step: what a careless splice sounds like
    report = seam_discontinuity(torch.from_numpy(audio), SR, [SR])
    assert report.flux_ratio[0] > 3
    assert report.jump_ratio[0] > 10


def test_seam_report_is_deterministic():
    audio = np.concatenate([noise(2, seed=3), np.zeros(SR, dtype=np.float32)])
    first, second = (seam_discontinuity(audio, SR, [SR, 2 * SR + SR // 2]) for _ in range(2))
    for field in ("silent", "seam_flux", "flux_ratio", "jump", "jump_ratio"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))  # NaN == NaN here
    assert (first.baseline_flux, first.typical_jump) == (second.baseline_flux, second.typical_jump)


def all_finite_or_nan(report):
    return not any(np.isinf(getattr(report, field)).any()
                   for field in ("flux_ratio", "jump_ratio", "baseline_flux", "typical_jump"))


def test_seams_in_digital_silence_are_silent_not_perfect():
    report = seam_discontinuity(np.zeros(3 * SR, dtype=np.float32), SR, [SR, 2 * SR])
    np.testing.assert_array_equal(report.silent, [True, True])
    assert (report.silent_count, report.silent_share) == (2, 1.0)
    assert np.isnan(report.flux_ratio).all() and np.isnan(report.jump_ratio).all()
    assert math.isnan(report.median_flux_ratio) and math.isnan(report.median_jump_ratio)
    assert math.isnan(report.baseline_flux) and math.isnan(report.typical_jump)
    assert "flux" in report.missing_reference and "jump" in report.missing_reference


def test_half_silent_take_scores_only_its_sounding_seams():
    quiet = noise(2, seed=4, scale=0.1 * 10 ** (-80 / 20))  # 80 dB down: below SILENT_DB, yet not digital zero
    audio = np.concatenate([noise(2, seed=4), quiet])
    report = seam_discontinuity(audio, SR, [SR // 2, 3 * SR // 2, 5 * SR // 2, 7 * SR // 2])
    np.testing.assert_array_equal(report.silent, [False, False, True, True])
    assert report.silent_share == 0.5 and report.missing_reference is None
    assert np.all((report.flux_ratio[:2] > 0.8) & (report.flux_ratio[:2] < 1.25))
    assert np.isnan(report.flux_ratio[2:]).all() and np.isnan(report.jump_ratio[2:]).all()
    assert 0.8 < report.median_flux_ratio < 1.25
    assert 0.1 < report.median_jump_ratio < 10  # typical jump of the noise half, not of the quiet half


def test_mostly_silent_take_keeps_a_sounding_baseline():
    audio = np.concatenate([noise(1, seed=5), np.zeros(3 * SR, dtype=np.float32)])
    report = seam_discontinuity(audio, SR, [SR // 2, 3 * SR // 2, 5 * SR // 2, 7 * SR // 2])
    np.testing.assert_array_equal(report.silent, [False, True, True, True])
    assert report.baseline_flux > 0 and report.typical_jump > 0
    assert 0.7 < report.flux_ratio[0] < 1.4 and 0.01 < report.jump_ratio[0] < 100
    assert report.median_flux_ratio == report.flux_ratio[0]
    assert all_finite_or_nan(report)


def test_click_in_silence_at_a_seam_is_scored_high():
    audio = np.concatenate([noise(1, seed=6), np.zeros(SR, dtype=np.float32)])
    click = 3 * SR // 2
    audio[click:click + 4] = 0.5
    report = seam_discontinuity(audio, SR, [click, 7 * SR // 4])
    np.testing.assert_array_equal(report.silent, [False, True])
    assert report.flux_ratio[0] > 3 and report.jump_ratio[0] > 3  # white noise's steps are large too
    assert np.isnan(report.flux_ratio[1])


def test_without_a_sounding_reference_ratios_are_nan_and_the_report_says_why():
    # A click exactly at a seam in silence: every seam-free stretch is silent and the click's frames
    # hold almost only zero steps, so neither measure has a reference.
    seam = 256 * 187
    audio = np.zeros(2 * SR, dtype=np.float32)
    audio[seam:seam + 4] = 0.5
    report = seam_discontinuity(audio, SR, [seam])
    assert not report.silent[0]
    assert math.isnan(report.baseline_flux) and report.typical_jump == 0
    assert np.isnan(report.flux_ratio).all() and np.isnan(report.jump_ratio).all()
    assert "every seam-free stretch is silent" in report.missing_reference
    assert "typical jump 0" in report.missing_reference
    assert all_finite_or_nan(report)


def test_constant_audio_gives_nan_ratios_not_one_or_inf():
    report = seam_discontinuity(np.full(2 * SR, 0.5, dtype=np.float32), SR, [SR])
    assert not report.silent[0]  # a DC offset is loud, but nothing changes to compare with
    assert report.baseline_flux == 0 and report.typical_jump == 0
    assert np.isnan(report.flux_ratio).all() and np.isnan(report.jump_ratio).all()
    assert "baseline 0" in report.missing_reference and all_finite_or_nan(report)


def test_seam_discontinuity_errors():
    audio = noise(1)
    with pytest.raises(ValueError, match="audio"):
        seam_discontinuity(audio.reshape(2, -1), SR, [100])
    with pytest.raises(ValueError, match="audio must be finite"):
        seam_discontinuity(np.where(np.arange(len(audio)) == 7, np.nan, audio), SR, [100])
    with pytest.raises(ValueError, match="sample_rate"):
        seam_discontinuity(audio, 0, [100])
    with pytest.raises(ValueError, match="n_fft"):
        seam_discontinuity(audio[:512], SR, [100])
    with pytest.raises(ValueError, match="hop"):
        seam_discontinuity(audio, SR, [100], hop_length=2048)
    with pytest.raises(ValueError, match="seam_samples"):
        seam_discontinuity(audio, SR, [len(audio)])
    with pytest.raises(ValueError, match="seam_samples"):
        seam_discontinuity(audio[:2048], SR, [1024])  # every stretch touches the seam


# --- spectral_convergence --------------------------------------------------------------------------

def test_spectral_convergence_by_hand():
    reference = np.array([[3.0, 0.0], [0.0, 4.0]])  # ||reference|| = 5
    assert spectral_convergence(reference, reference) == 0.0
    assert spectral_convergence(reference, np.zeros((2, 2))) == pytest.approx(1.0)
    assert spectral_convergence(reference, np.array([[3.0, 1.0], [0.0, 4.0]])) == pytest.approx(0.2)
    estimate = torch.tensor([[0.0, 0.0], [0.0, 4.0]], dtype=torch.float32)
    assert spectral_convergence(torch.from_numpy(reference), estimate) == pytest.approx(0.6)


def test_spectral_convergence_matches_numpy_norms():
    rng = np.random.default_rng(7)
    reference = rng.random((128, 94))
    estimate = reference + 0.1 * rng.standard_normal((128, 94))
    expected = np.sqrt(((reference - estimate) ** 2).sum()) / np.sqrt((reference ** 2).sum())
    assert spectral_convergence(reference, estimate) == pytest.approx(expected, rel=1e-12)


def test_spectral_convergence_errors_name_the_argument():
    with pytest.raises(ValueError, match="estimate must have the shape of reference"):
        spectral_convergence(np.ones((4, 3)), np.ones((3, 4)))
    with pytest.raises(ValueError, match="reference must have a non-zero entry.*all zeros"):
        spectral_convergence(np.zeros((4, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="reference must have a non-zero entry.*empty"):
        spectral_convergence(np.zeros(0), np.zeros(0))
    with pytest.raises(ValueError, match="estimate must be finite"):
        spectral_convergence(np.ones(3), np.array([1.0, np.inf, 1.0]))
    with pytest.raises(ValueError, match="reference must hold real numbers"):
        spectral_convergence(np.ones(3, dtype=complex), np.ones(3))


# --- audio_features --------------------------------------------------------------------------------

def tone(frequency, seconds=1.0, amplitude=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def frame_count(n, frame_length=2048, hop_length=512):
    return 1 + (n - frame_length) // hop_length


@pytest.mark.parametrize("frequency", [70.0, 440.0, 997.0, 3000.0])
def test_sine_is_pitchy_with_its_frequency_as_centroid(frequency):
    features = audio_features(tone(frequency), SR)
    assert isinstance(features, AudioFeatures)
    assert features.pitchiness.min() > 0.95
    np.testing.assert_allclose(features.centroid_hz, frequency, rtol=0.01)
    assert features.flatness_db.max() < -30  # a tone is the opposite of flat
    assert not features.silent.any() and features.silent_share == 0.0


def test_white_noise_is_unpitched_with_the_periodogram_flatness():
    features = audio_features(noise(4, seed=8, scale=0.3), SR)
    assert features.pitchiness.max() < 0.3
    # Every bin of a Gaussian noise periodogram is exponential: E[ln P] = ln E[P] - Euler's gamma.
    assert features.flatness_db.mean() == pytest.approx(-10 * np.euler_gamma / math.log(10), abs=0.1)
    assert features.centroid_hz.mean() == pytest.approx(SR / 4, rel=0.02)  # flat spectrum: centre of 0..SR/2


def test_harmonic_tone_with_many_partials_is_pitchy():
    rng = np.random.default_rng(9)
    t = np.arange(SR) / SR
    partials = [np.sin(2 * np.pi * k * 110 * t + rng.uniform(0, 2 * np.pi)) / k for k in range(1, 41)]
    features = audio_features(np.sum(partials, axis=0), SR)
    assert features.pitchiness.min() > 0.95
    # Partial k has power 1 / k^2 at k * 110 Hz, so the centroid is 110 * sum(1 / k) / sum(1 / k^2).
    k = np.arange(1, 41)
    np.testing.assert_allclose(features.centroid_hz, 110 * (1 / k).sum() / (1 / k ** 2).sum(), rtol=0.01)


def test_tone_then_digital_silence_has_the_silent_share_of_its_silent_frames():
    audio = np.concatenate([tone(440), np.zeros(SR, dtype=np.float32)])
    features = audio_features(audio, SR)
    starts = np.arange(frame_count(len(audio))) * 512
    expected_silent = starts >= SR  # a frame holding any of the tone is within 60 dB of the loudest
    np.testing.assert_array_equal(features.silent, expected_silent)
    assert features.silent_share == pytest.approx(expected_silent.mean())
    assert len(features.pitchiness) == len(features.centroid_hz) == (~expected_silent).sum()
    assert features.level_db.max() == 0.0 and features.level_db.min() == -200.0


@pytest.mark.parametrize("drop_db, silent", [(50.0, False), (70.0, True)])
def test_silence_threshold_is_sixty_db_below_the_loudest_frame(drop_db, silent):
    quiet = tone(440) * 10 ** (-drop_db / 20)
    features = audio_features(np.concatenate([tone(440), quiet]), SR)
    quiet_frames = np.arange(frame_count(2 * SR)) * 512 >= SR
    np.testing.assert_allclose(features.level_db[quiet_frames], -drop_db, atol=0.1)
    assert (features.silent[quiet_frames] == silent).all() and not features.silent[~quiet_frames].any()


def test_features_of_several_signals_are_their_frames_in_order():
    loud, soft = noise(1, seed=10), tone(220, seconds=0.5, amplitude=0.001)
    both = audio_features([loud, torch.from_numpy(soft)], SR)
    parts = [audio_features(loud, SR), audio_features(soft, SR)]
    for field in ("level_db", "silent", "centroid_hz", "flatness_db", "pitchiness"):
        np.testing.assert_array_equal(getattr(both, field), np.concatenate([getattr(p, field) for p in parts]))
    # Levels are relative to each signal's own loudest frame: the soft tone is not silent.
    assert not both.silent.any() and len(both.level_db) == frame_count(SR) + frame_count(SR // 2)


def test_a_dc_offset_is_loud_but_not_pitchy():
    features = audio_features(np.full(SR, 0.3), SR)  # 0.3 * window is inexact: rounding error remains
    assert not features.silent.any()
    np.testing.assert_array_equal(features.pitchiness, 0.0)


def test_all_zero_signal_is_silent_throughout():
    features = audio_features(np.zeros(SR, dtype=np.float32), SR)
    assert features.silent.all() and features.silent_share == 1.0
    assert len(features.centroid_hz) == len(features.flatness_db) == len(features.pitchiness) == 0


@pytest.mark.parametrize("signals, match", [
    (np.zeros((2, SR)), "signals must be one mono signal"),
    ([], "signals must hold at least one signal"),
    ("noise.wav", "signals must be one mono signal"),
    ([np.zeros(SR), np.zeros((SR, 2))], r"signals\[1\] must be mono"),
    ([np.zeros(SR), np.zeros(100)], r"signals\[1\] must be mono \[n\] with n >= frame_length = 2048"),
    ([np.zeros(0)], r"signals\[0\] must be mono"),
    ([np.r_[np.zeros(SR), np.nan]], r"signals\[0\] must be finite"),
    (np.ones(SR, dtype=bool), "signals must hold real numbers"),
])
def test_audio_features_reject_bad_signals(signals, match):
    with pytest.raises(ValueError, match=match):
        audio_features(signals, SR)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"sample_rate": 0}, ValueError, "sample_rate must be a finite number > 0"),
    ({"sample_rate": -SR}, ValueError, "sample_rate"),
    ({"sample_rate": math.nan}, ValueError, "sample_rate"),
    ({"sample_rate": True}, TypeError, "sample_rate"),
    ({"sample_rate": "48000"}, TypeError, "sample_rate"),
    ({"sample_rate": 96000}, ValueError, "frame_length must be an int >= 2 \\* sample_rate / 60 = 3200"),
    ({"frame_length": 1024}, ValueError, "frame_length"),
    ({"frame_length": 2048.0}, TypeError, "frame_length must be an int"),
    ({"hop_length": 0}, ValueError, "hop_length must be an int >= 1"),
    ({"hop_length": 1.5}, TypeError, "hop_length"),
])
def test_audio_features_reject_bad_settings(kwargs, error, match):
    with pytest.raises(error, match=match):
        audio_features(noise(1), **{"sample_rate": SR, **kwargs})


# --- feature_distance ------------------------------------------------------------------------------

FRAME_FEATURES = ("loudness", "centroid", "flatness", "pitchiness")


def made_features(level_db, centroid_hz, flatness_db, pitchiness):
    """AudioFeatures with given frame values (non-silent frames first, then silent ones at -200 dB)."""
    level_db = np.asarray(level_db, dtype=np.float64)
    return AudioFeatures(sample_rate=SR, frame_length=2048, hop_length=512, level_db=level_db,
                         silent=level_db < -60, centroid_hz=np.asarray(centroid_hz, dtype=np.float64),
                         flatness_db=np.asarray(flatness_db, dtype=np.float64),
                         pitchiness=np.asarray(pitchiness, dtype=np.float64))


def test_distance_of_a_set_to_itself_is_zero():
    features = audio_features([noise(1, seed=11), tone(330), np.zeros(SR)], SR)
    distance = feature_distance(features, features)
    assert set(distance) == {*FRAME_FEATURES, "silent_share", "mean"}
    assert all(value == 0.0 for value in distance.values())


def test_frame_distances_are_w1_over_the_reference_std_as_scipy_computes_it():
    rng = np.random.default_rng(12)
    sizes = (300, 200)
    features, reference = (
        made_features(-20 * rng.random(n), 2 ** rng.uniform(8, 13, n), -30 * rng.random(n), rng.random(n))
        for n in sizes)
    distance = feature_distance(features, reference)
    pairs = {"loudness": (features.level_db, reference.level_db),
             "centroid": (np.log2(features.centroid_hz), np.log2(reference.centroid_hz)),
             "flatness": (features.flatness_db, reference.flatness_db),
             "pitchiness": (features.pitchiness, reference.pitchiness)}
    for name, (u, v) in pairs.items():
        assert distance[name] == pytest.approx(wasserstein_distance(u, v) / v.std(), rel=1e-10)
    assert distance["silent_share"] == 0.0
    assert distance["mean"] == pytest.approx(np.mean([distance[name] for name in pairs] + [0.0]))


def test_shifted_distribution_is_the_shift_over_the_std_both_ways():
    values = np.random.default_rng(13).normal(-20.0, 3.0, 500)
    ones = np.ones(500)
    base = made_features(np.minimum(values, 0), 1000 * ones, -10 * ones, 0.5 * ones)
    distances = []
    for shift in (0.5, 1.0, 2.0, 4.0):
        shifted = made_features(np.minimum(values, 0) - shift, 1000 * ones, -10 * ones, 0.5 * ones)
        there, back = feature_distance(shifted, base)["loudness"], feature_distance(base, shifted)["loudness"]
        assert there == pytest.approx(back) == pytest.approx(shift / base.level_db.std())  # same std both ways
        distances.append(there)
    assert distances == sorted(distances)


def test_a_constant_reference_is_scaled_by_the_documented_floor():
    ones = np.ones(100)
    reference = made_features(-6 * ones, 1000 * ones, -10 * ones, 0.5 * ones)
    features = made_features(-8 * ones, 2000 * ones, -13 * ones, 0.6 * ones)
    distance = feature_distance(features, reference)
    floors = DISTANCE_SCALE_FLOOR
    assert distance["loudness"] == pytest.approx(2.0 / floors["loudness"])
    assert distance["centroid"] == pytest.approx(1.0 / floors["centroid"])  # one octave up
    assert distance["flatness"] == pytest.approx(3.0 / floors["flatness"])
    assert distance["pitchiness"] == pytest.approx(0.1 / floors["pitchiness"])
    assert all(math.isfinite(value) for value in distance.values())


def test_silent_share_distance_is_w1_over_the_indicator_std():
    ones = np.ones(10)
    reference = made_features(np.r_[-3 * ones[:8], -200 * ones[:2]], ones[:8], ones[:8], ones[:8] / 2)  # q = 0.2
    features = made_features(np.r_[-3 * ones[:5], -200 * ones[:5]], ones[:5], ones[:5], ones[:5] / 2)  # p = 0.5
    expected = wasserstein_distance(features.silent.astype(float), reference.silent.astype(float)) / 0.4
    assert feature_distance(features, reference)["silent_share"] == pytest.approx(expected) == pytest.approx(0.75)
    silent_free = made_features(-3 * ones, ones, ones, ones / 2)
    assert feature_distance(features, silent_free)["silent_share"] == pytest.approx(
        0.5 / DISTANCE_SCALE_FLOOR["silent_share"])


def test_an_all_silent_set_has_nan_frame_distances_and_mean():
    sounding = audio_features(noise(1, seed=14), SR)
    silent = audio_features(np.zeros(SR), SR)
    for features, reference in ((silent, sounding), (sounding, silent)):
        distance = feature_distance(features, reference)
        assert all(math.isnan(distance[name]) for name in FRAME_FEATURES)
        assert math.isnan(distance["mean"]) and math.isfinite(distance["silent_share"])


def test_feature_distance_rejects_bad_arguments():
    features = audio_features(noise(1), SR)
    with pytest.raises(TypeError, match="reference must be AudioFeatures"):
        feature_distance(features, {"level_db": features.level_db})
    with pytest.raises(TypeError, match="features must be AudioFeatures"):
        feature_distance(noise(1), features)
    with pytest.raises(ValueError, match="features must be computed with the reference's settings"):
        feature_distance(audio_features(noise(1), SR, hop_length=256), features)
