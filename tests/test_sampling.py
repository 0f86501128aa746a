"""Sampling: filter semantics (transformers' warpers), the inverse-CDF draw, and the batched sampler."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from distill_nb.prior import CodePrior, PriorConfig
from distill_nb.sampling import _draw, filter_logits, sample_code_sequence, sample_codes

TINY = PriorConfig(codebook_size=16, levels=3, column_tokens=6, seq_len=24, d_model=32, n_layers=2, n_heads=4)
INF = math.inf


def make_prior(config: PriorConfig = TINY, seed: int = 0) -> CodePrior:
    with torch.random.fork_rng():  # nn.Module init uses the global RNG: seed it without leaking
        torch.manual_seed(seed)
        return CodePrior(config).eval()


def peaked_prior() -> CodePrior:
    """A prior whose head bias dominates, so its code distributions are far from uniform."""
    peaked = make_prior()
    with torch.no_grad():
        peaked.head.bias.copy_(torch.linspace(0.0, 6.0, 16))
    return peaked


@pytest.fixture(scope="module")
def prior() -> CodePrior:
    return make_prior()


def log_probs(*probs: float) -> torch.Tensor:
    """Logits whose float32 softmax is exactly `probs` (dyadic probabilities)."""
    logits = torch.tensor(probs).log()
    assert torch.equal(logits.softmax(-1), torch.tensor(probs))
    return logits


def kept(scores: torch.Tensor) -> list[int]:
    return torch.nonzero(scores > -INF).flatten().tolist()


# --- filter_logits: hand-made distributions ---------------------------------------------------------


@pytest.mark.parametrize(
    ("top_k", "expected"),
    [(1, [1, 2, 4]), (2, [1, 2, 4]), (3, [1, 2, 4]), (4, [1, 2, 3, 4]), (5, [0, 1, 2, 3, 4]), (99, [0, 1, 2, 3, 4])],
)
def test_top_k_keeps_ties_with_the_kth_value_and_clamps_k(top_k, expected):
    logits = torch.tensor([1.0, 3.0, 3.0, 2.0, 3.0])
    scores = filter_logits(logits, top_k=top_k)
    assert kept(scores) == expected
    assert torch.equal(scores[expected], logits[expected])  # kept logits untouched


def test_top_k_zero_is_off():
    logits = torch.tensor([1.0, 3.0, -2.0])
    assert torch.equal(filter_logits(logits, top_k=0), logits)


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (1e-9, [0]),  # the most probable token is always kept
        (0.25, [0]),
        (0.5, [0]),  # mass above token 1 is 0.5, not < 0.5
        (0.5001, [0, 1]),
        (0.75, [0, 1]),  # mass above token 2 is exactly 0.75
        (0.8, [0, 1, 2]),  # of the tied 0.125s the lower index ranks first
        (0.875, [0, 1, 2]),
        (0.9, [0, 1, 2, 3]),
        (0.0, [0, 1, 2, 3]),  # off
        (1.0, [0, 1, 2, 3]),  # off
    ],
)
def test_top_p_keeps_tokens_whose_mass_above_is_below_p(top_p, expected):
    scores = filter_logits(log_probs(0.5, 0.25, 0.125, 0.125), top_p=top_p)
    assert kept(scores) == expected


def test_top_p_ranks_by_probability_not_by_position():
    logits = log_probs(0.125, 0.5, 0.125, 0.25)
    assert kept(filter_logits(logits, top_p=0.75)) == [1, 3]
    assert kept(filter_logits(logits, top_p=0.8)) == [0, 1, 3]  # tie: index 0 before index 2


def test_top_p_works_on_the_distribution_left_by_top_k():
    logits = log_probs(0.5, 0.25, 0.125, 0.0625, 0.0625)
    assert kept(filter_logits(logits, top_p=0.6)) == [0, 1]
    # After top-k 2 the renormalised probabilities are 2/3 and 1/3: the mass above token 1 is 2/3 >= 0.6.
    assert kept(filter_logits(logits, top_k=2, top_p=0.6)) == [0]


@pytest.mark.parametrize(
    ("min_p", "expected"),
    [
        (0.0, [0, 1, 2, 3]),
        (0.25, [0, 1, 2, 3]),  # threshold 0.125: equal is kept
        (0.2501, [0, 1]),
        (0.5, [0, 1]),  # threshold 0.25
        (0.5001, [0]),
        (1.0, [0]),
    ],
)
def test_min_p_removes_tokens_below_a_fraction_of_the_top_probability(min_p, expected):
    assert kept(filter_logits(log_probs(0.5, 0.25, 0.125, 0.125), min_p=min_p)) == expected


def test_min_p_one_keeps_every_tied_top_token():
    assert kept(filter_logits(torch.tensor([2.0, 0.0, 2.0]), min_p=1.0)) == [0, 2]


def test_a_row_with_one_finite_logit_survives_every_filter():
    logits = torch.tensor([-INF, 1.5, -INF, -INF])
    scores = filter_logits(logits, temperature=0.3, top_k=2, top_p=0.1, min_p=0.9)
    assert kept(scores) == [1]
    assert draw(scores[None].expand(3, 4), torch.tensor([0.0, 0.5, 1 - 2**-24])).tolist() == [1, 1, 1]


def test_temperature_divides_the_logits():
    logits = torch.tensor([[1.0, -2.0, 0.5], [4.0, 0.0, -INF]])
    assert torch.equal(filter_logits(logits, temperature=2.0), logits / 2.0)
    assert torch.equal(filter_logits(logits, temperature=1.0), logits)


def test_temperature_changes_which_tokens_top_p_keeps():
    logits = torch.tensor([2.0, 1.0, 0.0])
    assert kept(filter_logits(logits, top_p=0.6)) == [0]  # p = 0.67, 0.24, 0.09
    assert kept(filter_logits(logits, temperature=4.0, top_p=0.6)) == [0, 1]  # p = 0.42, 0.33, 0.25


@pytest.mark.parametrize("shape", [(3,), (3, 1)])
def test_per_row_temperature_scales_each_row(shape):
    logits = torch.tensor([[2.0, 1.0], [2.0, 1.0], [2.0, -1.0]])
    temperature = torch.tensor([1.0, 0.5, 4.0]).reshape(shape)
    expected = logits / torch.tensor([[1.0], [0.5], [4.0]])
    assert torch.equal(filter_logits(logits, temperature=temperature), expected)


def test_filters_never_modify_their_input():
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    logits[0, 3] = -INF
    before = logits.clone()
    scores = filter_logits(logits, temperature=0.7, top_k=5, top_p=0.6, min_p=0.1)
    assert torch.equal(logits, before) and scores.data_ptr() != logits.data_ptr()
    assert torch.equal(filter_logits(logits), logits) and filter_logits(logits) is not logits


def test_filters_return_float32_for_other_float_dtypes():
    scores = filter_logits(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), top_k=2)
    assert scores.dtype == torch.float32 and kept(scores) == [1, 2]
    assert filter_logits(torch.tensor([1.0, 2.0], dtype=torch.bfloat16)).dtype == torch.float32


# --- filter_logits: against an independent per-row reference on random logits -----------------------


def reference_keep(row: np.ndarray, temperature: float, top_k: int, top_p: float, min_p: float) -> list[bool]:
    """The kept tokens of one row, written out step by step from DESIGN.md's definitions."""
    x = row.astype(np.float32) / np.float32(temperature)  # the division in float32, like the tensor code
    keep = [bool(v > -INF) for v in x]

    def probs() -> list[float]:
        weights = [math.exp(float(v) - float(x.max())) if k else 0.0 for v, k in zip(x, keep)]
        return [w / sum(weights) for w in weights]

    if top_k > 0:
        kth_largest = sorted(x.tolist(), reverse=True)[min(top_k, len(x)) - 1]
        keep = [k and v >= kth_largest for v, k in zip(x.tolist(), keep)]
    if 0 < top_p < 1:
        p = probs()
        mass_above = 0.0
        for j in sorted(range(len(p)), key=lambda j: -p[j]):  # stable: ties by index
            keep[j] = keep[j] and mass_above < top_p
            mass_above += p[j]
    if min_p > 0:
        p = probs()
        keep = [k and pj >= min_p * max(p) for pj, k in zip(p, keep)]
    return keep


def random_logits(ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(7 + ties)
    logits = torch.randn(12, 40, generator=g) * 2.0
    if ties:  # few distinct values, so the k-th value and equal probabilities are often tied
        logits = (logits * 2).round() / 2
    logits[torch.rand(12, 40, generator=g) < 0.1] = -INF
    return logits


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("temperature", [0.5, 1.0, 1.7])
def test_filters_match_a_per_row_reference(ties, temperature):
    logits = random_logits(ties)
    for top_k, top_p, min_p in itertools.product([0, 1, 5, 40, 100], [0.0, 0.3, 0.9, 1.0], [0.0, 0.05, 0.5]):
        scores = filter_logits(logits, temperature, top_k, top_p, min_p)
        for row, row_scores in zip(logits.numpy(), scores):
            assert (row_scores > -INF).tolist() == reference_keep(row, temperature, top_k, top_p, min_p), (
                top_k, top_p, min_p
            )
        kept_mask = scores > -INF
        assert torch.equal(scores[kept_mask], (logits / temperature)[kept_mask])


# --- filter_logits: validation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        ({"temperature": -1.0}, ValueError, "temperature"),
        ({"temperature": math.nan}, ValueError, "temperature"),
        ({"temperature": INF}, ValueError, "temperature"),
        ({"temperature": True}, TypeError, "temperature"),
        ({"temperature": "1"}, TypeError, "temperature"),
        ({"temperature": None}, TypeError, "temperature"),
        ({"temperature": torch.tensor([1.0, 0.0])}, ValueError, "temperature"),
        ({"temperature": torch.tensor([1.0, 1.0, 1.0])}, ValueError, r"temperature tensor must have shape \[B\]"),
        ({"top_k": -1}, ValueError, r"top_k must be an int >= 0"),
        ({"top_k": 2.0}, TypeError, "top_k"),
        ({"top_k": True}, TypeError, "top_k"),
        ({"top_p": -0.1}, ValueError, r"top_p must be a finite number in \[0, 1\]"),
        ({"top_p": 1.01}, ValueError, "top_p"),
        ({"top_p": math.nan}, ValueError, "top_p"),
        ({"top_p": True}, TypeError, "top_p"),
        ({"top_p": "0.5"}, TypeError, "top_p"),
        ({"min_p": -0.1}, ValueError, r"min_p must be a finite number in \[0, 1\]"),
        ({"min_p": 2}, ValueError, "min_p"),
        ({"min_p": False}, TypeError, "min_p"),
    ],
)
def test_filter_rejects_bad_parameters_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        filter_logits(torch.zeros(2, 4), **kwargs)


@pytest.mark.parametrize(
    ("logits", "kwargs", "error"),
    [
        (torch.tensor([[0.0, math.nan, 1.0]]), {}, ValueError),
        (torch.tensor([[0.0, INF, 1.0]]), {}, ValueError),
        (torch.tensor([[0.0, 1.0], [-INF, -INF]]), {}, ValueError),
        (torch.tensor([1e30, 0.0]), {"temperature": 1e-20}, ValueError),  # scaling overflows
        (torch.tensor(1.0), {}, ValueError),
        (torch.zeros(2, 0), {}, ValueError),
        (torch.tensor([1, 2]), {}, TypeError),
        ([1.0, 2.0], {}, TypeError),
    ],
)
def test_filter_rejects_bad_logits(logits, kwargs, error):
    with pytest.raises(error, match="logits"):
        filter_logits(logits, **kwargs)


# --- the inverse-CDF draw -------------------------------------------------------------------------------


def draw(logits, uniforms, top_k=0, top_p=0.0, min_p=0.0):
    return _draw(logits, top_k, top_p, min_p, uniforms[:, None])[0]  # _draw takes uniforms [B, 1]


def test_draw_splits_the_unit_interval_in_proportion_to_the_probabilities():
    logits = torch.cat([log_probs(0.125, 0.5, 0.125, 0.25), torch.tensor([-INF, -INF])])[[0, 1, 4, 2, 3, 5]]
    uniforms = (torch.arange(1024) + 0.5) / 1024
    tokens = draw(logits.expand(1024, 6), uniforms)
    assert torch.bincount(tokens, minlength=6).tolist() == [128, 512, 0, 128, 256, 0]


def test_draw_never_draws_removed_tokens_at_the_ends_of_the_interval():
    logits = torch.tensor([[-INF, 0.0, 1.0, -INF]]).expand(2, 4)
    assert draw(logits, torch.tensor([0.0, 1 - 2**-24])).tolist() == [2, 1]  # most probable first
    # top_p 0.5 keeps only token 2 (p = 0.73): the whole interval maps to it.
    assert draw(logits, torch.tensor([0.0, 1 - 2**-24]), top_p=0.5).tolist() == [2, 2]


@pytest.mark.parametrize("settings", [
    {}, {"top_k": 3}, {"top_p": 0.7}, {"min_p": 0.2}, {"top_k": 5, "top_p": 0.9, "min_p": 0.05},
])
def test_draw_follows_the_distribution_filter_logits_leaves(settings):
    """On an even grid of n uniforms each token is drawn n * p times (+-1), p from filter_logits."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 10, generator=generator)
    logits[0, 3] = logits[0, 7]  # a tie
    n = 4096
    uniforms = (torch.arange(n) + 0.5) / n
    for row in logits:
        tokens = draw(row.expand(n, -1), uniforms, **settings)
        expected = filter_logits(row, **settings).softmax(-1) * n
        assert (torch.bincount(tokens, minlength=10) - expected).abs().max() <= 1.0


# --- sample_codes -------------------------------------------------------------------------------------------


def test_codes_have_the_right_shape_dtype_and_range(prior):
    codes = sample_codes(prior, 3, [0, 1, 2])
    assert codes.shape == (3, 24) and codes.dtype == torch.long and codes.device.type == "cpu"
    assert codes.min() >= 0 and codes.max() < 16
    assert not codes.is_inference()  # callers may edit the codes in place


def test_same_seed_same_codes_and_different_seeds_differ(prior):
    assert torch.equal(sample_codes(prior, 2, [5, 6]), sample_codes(prior, 2, [5, 6]))
    codes = sample_codes(prior, 2, [5, 5 + 1])
    assert not torch.equal(codes[0], codes[1])


def test_batched_rows_equal_rows_sampled_one_by_one(prior):
    seeds = [3, 1, 4, 1, 5]
    batched = sample_codes(prior, 5, seeds, temperature=1.3, top_k=10, top_p=0.8, min_p=0.02)
    for row, seed in zip(batched, seeds):
        single = sample_codes(prior, 1, [seed], temperature=1.3, top_k=10, top_p=0.8, min_p=0.02)
        assert torch.equal(row, single[0])
    assert torch.equal(batched[1], batched[3])  # same seed, same row


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"temperature": 0.7, "top_k": 6, "top_p": 0.95, "min_p": 0.05},
        {"temperature": (0.5, 1.0, 2.0), "top_p": 0.0},
        {"prefix": torch.arange(12).reshape(2, 6) % 16},
    ],
)
def test_kv_cached_sampling_equals_full_forward_sampling(prior, kwargs):
    cached = sample_codes(prior, 2, [11, 12], **kwargs)
    assert torch.equal(cached, sample_codes(prior, 2, [11, 12], step="full", **kwargs))
    assert torch.equal(cached, sample_codes(prior, 2, [11, 12], step="cache", **kwargs))  # the reference step


def test_an_unknown_step_is_refused(prior):
    with pytest.raises(ValueError, match="step must be one of 'kernel', 'cache', 'full'"):
        sample_codes(prior, 1, [0], step="fast")


@pytest.mark.parametrize("length", [1, 7, 23])
def test_a_shorter_length_samples_the_same_first_tokens(prior, length):
    whole = sample_codes(prior, 2, [3, 4], top_p=0.8)
    assert torch.equal(sample_codes(prior, 2, [3, 4], top_p=0.8, length=length), whole[:, :length])
    prefix = whole[:, :5]
    assert torch.equal(sample_codes(prior, 2, [3, 4], top_p=0.8, prefix=prefix, length=max(length, 5)),
                       whole[:, :max(length, 5)])


def test_top_k_one_is_greedy_and_ignores_the_seed(prior):
    codes = sample_codes(prior, 3, [0, 1, 2], top_k=1)
    assert torch.equal(codes[0], codes[1]) and torch.equal(codes[0], codes[2])
    assert torch.equal(codes, prior(codes).argmax(dim=-1))  # every code is the argmax given those before it


def test_sampled_codes_lie_in_the_kept_set(prior):
    settings = {"temperature": 1.5, "top_k": 5, "top_p": 0.5, "min_p": 0.1}
    codes = sample_codes(prior, 6, list(range(6)), **settings)
    with torch.no_grad():
        logits = prior(codes)
    scores = filter_logits(logits.reshape(-1, 16), **settings).reshape(6, 24, 16)
    assert bool((scores.gather(-1, codes[..., None]) > -INF).all())


def test_lower_temperature_gives_lower_code_entropy():
    sharp = peaked_prior()

    def code_entropy(temperature: float) -> float:
        codes = sample_codes(sharp, 32, list(range(32)), temperature=temperature, top_p=0.0)
        p = torch.bincount(codes.flatten(), minlength=16).double() / codes.numel()
        return float(-(p[p > 0] * p[p > 0].log()).sum())

    entropies = [code_entropy(t) for t in (0.25, 1.0, 4.0)]
    assert entropies[0] < entropies[1] < entropies[2], entropies


def test_prefix_is_kept_and_continues_like_the_unprimed_sample(prior):
    free = sample_codes(prior, 2, [21, 22])
    prefix = free[:, :9].clone()
    primed = sample_codes(prior, 2, [21, 22], prefix=prefix)
    assert torch.equal(primed[:, :9], prefix)
    # Uniforms are drawn per position, so feeding a row's own first 9 codes reproduces the rest.
    assert torch.equal(primed, free)
    other = torch.full((2, 9), 7)
    assert torch.equal(sample_codes(prior, 2, [21, 22], prefix=other)[:, :9], other)
    assert torch.equal(sample_codes(prior, 2, [0, 1], prefix=free), free)  # a full-length prefix
    assert torch.equal(sample_codes(prior, 2, [21, 22], prefix=free[:, :0]), free)  # an empty one


@pytest.mark.parametrize("level", [0, 1, 2])
def test_per_level_temperature_applies_to_its_level_only(prior, level):
    temperature = [1.0, 1.0, 1.0]
    temperature[level] = 1e-5  # effectively argmax at this level (logit margins here are >= ~1e-4)
    codes = sample_codes(prior, 8, list(range(8)), temperature=temperature, top_p=0.0)
    with torch.no_grad():
        is_argmax = codes == prior(codes).argmax(dim=-1)
    levels = torch.arange(24) % 3
    assert bool(is_argmax[:, levels == level].all())
    assert not bool(is_argmax[:, levels != level].all())


def test_sampling_runs_in_eval_mode_and_restores_the_mode():
    noisy = make_prior(PriorConfig(**{**TINY.to_dict(), "dropout": 0.5}))
    expected = sample_codes(noisy, 2, [1, 2])
    noisy.train()
    assert torch.equal(sample_codes(noisy, 2, [1, 2]), expected)  # no dropout while sampling
    assert noisy.training


def test_sampling_leaves_the_global_rng_alone(prior):
    state = torch.random.get_rng_state()
    sample_codes(prior, 2, [1, 2])
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_sequences": 0, "seeds": []}, ValueError, "num_sequences must be an int >= 1"),
        ({"num_sequences": True, "seeds": [1]}, TypeError, "num_sequences must be an int >= 1"),
        ({"seeds": [1]}, ValueError, "seeds must be a sequence of num_sequences=2 ints"),
        ({"seeds": 12}, ValueError, "seeds"),
        ({"seeds": [1, -1]}, ValueError, r"seeds\[1\] must be an int in \[0, 18446744073709551615\]"),
        ({"seeds": [1, 2**64]}, ValueError, "seeds"),
        ({"seeds": [1, 2.0]}, TypeError, "seeds"),
        ({"seeds": [1, True]}, TypeError, "seeds"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": "warm"}, TypeError, "temperature"),
        ({"temperature": (1.0, 1.0)}, ValueError, r"one value per level \(3\)"),
        ({"temperature": (1.0, 0.0, 1.0)}, ValueError, r"temperature\[1\] must be a finite number > 0"),
        ({"temperature": (1.0, None, 1.0)}, TypeError, r"temperature\[1\]"),
        ({"top_k": -2}, ValueError, "top_k"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"min_p": -0.5}, ValueError, "min_p"),
        ({"prefix": torch.zeros(2, 3)}, TypeError, "prefix must be an integer"),
        ({"prefix": torch.zeros(3, 3, dtype=torch.long)}, ValueError, r"prefix must have shape \[num_sequences=2"),
        ({"prefix": torch.zeros(2, 25, dtype=torch.long)}, ValueError, "seq_len=24"),
        ({"prefix": torch.full((2, 3), 16)}, ValueError, r"prefix codes must lie in \[0, codebook_size=16\)"),
        ({"device": "meta"}, ValueError, r"device must be the prior's device \(cpu\)"),
        ({"length": 0}, ValueError, r"length must be an int in \[1, 24\]"),
        ({"length": 25}, ValueError, r"length must be an int in \[1, 24\]"),
        ({"length": 2, "prefix": torch.zeros(2, 3, dtype=torch.long)}, ValueError,
         r"length must be an int in \[3, 24\]"),
        ({"length": 2.0}, TypeError, "length"),
    ],
)
def test_sample_codes_rejects_bad_inputs_naming_them(prior, kwargs, error, match):
    arguments = {"num_sequences": 2, "seeds": [1, 2], **kwargs}
    with pytest.raises(error, match=match):
        sample_codes(prior, **arguments)


# --- sample_code_sequence ------------------------------------------------------------------------------------


def test_sample_code_sequence_is_the_one_row_sampler(prior):
    codes = sample_code_sequence(prior, temperature=0.9, top_k=8, top_p=0.7, seed=42)
    assert codes.shape == (1, 24) and codes.dtype == torch.long
    assert torch.equal(codes, sample_codes(prior, 1, [42], temperature=0.9, top_k=8, top_p=0.7))


def test_sample_code_sequence_draws_a_fresh_seed_when_none_is_given(prior):
    first, second = sample_code_sequence(prior), sample_code_sequence(prior)
    assert first.shape == second.shape == (1, 24)
    assert not torch.equal(first, second)


def test_the_first_code_comes_from_the_start_token_distribution():
    peaked = peaked_prior()
    with torch.no_grad():
        start_probs = peaked.next_logits(torch.zeros(1, 0, dtype=torch.long), peaked.new_cache(1)).softmax(-1)[0]
    assert sample_code_sequence(peaked, top_k=1, seed=0)[0, 0] == start_probs.argmax()
    # Sampled first codes follow that (peaked) distribution, not a uniform one.
    first_codes = sample_codes(peaked, 400, list(range(400)), top_p=0.0)[:, 0]
    frequencies = torch.bincount(first_codes, minlength=16) / 400
    assert start_probs.max() > 4 / 16 and (frequencies - start_probs).abs().max() < 0.1
