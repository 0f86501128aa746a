import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from distill_nb.analysis import (
    LevelStats,
    SeamReport,
    code_histograms,
    compare_to_training,
    js_divergence,
    level_statistics,
    seam_discontinuity,
)

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
    torch.testing.assert_close(code_histograms(flat, 8, num_quantizers=3), batched)
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
    with pytest.raises(ValueError, match="num_quantizers"):
        code_histograms(torch.zeros(2, 10, dtype=torch.long), 8, num_quantizers=3)
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
        seam_discontinuity(audio, SR, [100], hop=2048)
    with pytest.raises(ValueError, match="seam_samples"):
        seam_discontinuity(audio, SR, [len(audio)])
    with pytest.raises(ValueError, match="seam_samples"):
        seam_discontinuity(audio[:2048], SR, [1024])  # every stretch touches the seam
