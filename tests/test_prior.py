"""CodePrior: the KV-cached step against the full forward pass, the code layout, and validation."""

from __future__ import annotations

import pytest
import torch

from distill_nb.geometry import ChunkGeometry
from distill_nb.kernels import PriorStep
from distill_nb.prior import CodePrior, KVCache, PriorConfig, flatten_codes, unflatten_codes

# Windows of 4 columns of 2 rows x 3 levels: 24 tokens.
TINY = PriorConfig(codebook_size=16, levels=3, column_tokens=6, seq_len=24, d_model=32, n_layers=2, n_heads=4)


def make_prior(config: PriorConfig = TINY, seed: int = 0) -> CodePrior:
    with torch.random.fork_rng():  # nn.Module init uses the global RNG: seed it without leaking
        torch.manual_seed(seed)
        return CodePrior(config).eval()


def random_tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, TINY.codebook_size, (batch, length), generator=torch.Generator().manual_seed(seed))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


# --- config ----------------------------------------------------------------------------------------


def test_config_round_trips_through_dict():
    config = PriorConfig(codebook_size=64, levels=2, column_tokens=8, seq_len=48, d_model=64, dropout=0.0)
    assert PriorConfig.from_dict(config.to_dict()) == config
    assert config.to_dict() == {
        "codebook_size": 64, "levels": 2, "column_tokens": 8, "seq_len": 48, "d_model": 64,
        "n_layers": 4, "n_heads": 4, "dropout": 0.0,
    }
    assert config.window_columns == 6


def test_config_for_a_vqvae_counts_its_window_in_columns():
    geometry = ChunkGeometry(chunk_samples=48000, hop_length=512, frames=94, rows=32, columns=6, levels=2,
                             column_frames=16)
    config = PriorConfig.for_vqvae(geometry, 256, 12, d_model=64)
    assert (config.levels, config.column_tokens, config.seq_len, config.window_columns) == (2, 64, 768, 12)
    with pytest.raises(ValueError, match="window_columns"):
        PriorConfig.for_vqvae(geometry, 256, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"codebook_size": 1}, ValueError, "codebook_size"),
        ({"codebook_size": 16.0}, TypeError, "codebook_size"),
        ({"codebook_size": True}, TypeError, "codebook_size"),
        ({"levels": 0}, ValueError, "levels"),
        ({"column_tokens": 7}, ValueError, "column_tokens"),
        ({"seq_len": 0}, ValueError, "seq_len"),
        ({"seq_len": 25}, ValueError, "seq_len"),
        ({"d_model": 30}, ValueError, "d_model"),
        ({"n_layers": 0}, ValueError, "n_layers"),
        ({"n_heads": -1}, ValueError, "n_heads"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"dropout": -0.1}, ValueError, "dropout"),
        ({"dropout": "0.1"}, TypeError, "dropout"),
    ],
)
def test_config_rejects_bad_fields_naming_them(kwargs, error, name):
    with pytest.raises(error, match=name):
        PriorConfig(**{**TINY.to_dict(), **kwargs})


def test_config_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="unknown keys.*vocab"):
        PriorConfig.from_dict({"codebook_size": 16, "vocab": 3})
    with pytest.raises(ValueError, match="codebook_size"):
        PriorConfig.from_dict({"levels": 3, "column_tokens": 6, "seq_len": 24})


def test_prior_exposes_its_config():
    prior = make_prior()
    assert (prior.config, prior.seq_len, prior.codebook_size, prior.levels) == (TINY, 24, 16, 3)
    with pytest.raises(TypeError, match="config"):
        CodePrior({"codebook_size": 16})


# --- forward and the KV cache ---------------------------------------------------------------------


def test_forward_shapes_and_causality():
    prior = make_prior()
    tokens = random_tokens(2, 24)
    logits = prior(tokens)
    assert logits.shape == (2, 24, 16) and logits.dtype == torch.float32
    # logits[:, i] depends on tokens[:, :i] only: changing token 10 leaves logits[:, :11] alone.
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] + 1) % 16
    other = prior(changed)
    assert torch.allclose(other[:, :11], logits[:, :11], atol=1e-6)
    assert not torch.allclose(other[:, 11:], logits[:, 11:], atol=1e-6)
    # The first-token distribution comes from the start token alone, whatever follows.
    assert torch.allclose(prior(tokens[:, :1]), logits[:, :1], atol=1e-6)


def test_cached_steps_equal_the_full_forward_batch_of_one():
    prior = make_prior()
    tokens = random_tokens(1, 24)
    full = prior(tokens)
    cache = prior.new_cache(1)
    for i in range(24):  # logits for token i, feeding tokens one at a time
        step = prior.next_logits(tokens[:, i - 1 : i] if i else tokens[:, :0], cache)
        assert relative_error(step, full[:, i]) < 1e-5
    assert cache.length == 24 == cache.capacity


def test_cached_steps_equal_the_full_forward_batched():
    prior = make_prior()
    tokens = random_tokens(5, 24, seed=2)
    full = prior(tokens)
    cache = prior.new_cache(5)
    steps = [prior.next_logits(tokens[:, :0], cache)]
    steps += [prior.next_logits(tokens[:, i - 1 : i], cache) for i in range(1, 24)]
    assert relative_error(torch.stack(steps, dim=1), full) < 1e-5


@pytest.mark.parametrize("prefix_length", [1, 7, 23])
def test_a_prefix_fed_at_once_then_single_steps_equal_the_full_forward(prefix_length):
    prior = make_prior()
    tokens = random_tokens(3, 24, seed=3)
    full = prior(tokens)
    cache = prior.new_cache(3)
    steps = [prior.next_logits(tokens[:, :prefix_length], cache)]
    steps += [prior.next_logits(tokens[:, i - 1 : i], cache) for i in range(prefix_length + 1, 24)]
    assert relative_error(torch.stack(steps, dim=1), full[:, prefix_length:]) < 1e-5


@pytest.mark.parametrize("prefix_length", [0, 5])
def test_the_fast_step_kernel_equals_next_logits_and_the_full_forward(prefix_length):
    """kernels.PriorStep, the sampling loop's unchecked one-token path, computes what next_logits and forward do."""
    prior = make_prior()
    tokens = random_tokens(3, 24, seed=5)
    full = prior(tokens)
    stepped, checked = prior.new_cache(3), prior.new_cache(3)
    step = PriorStep(prior)
    with torch.inference_mode():
        steps = [prior.next_logits(tokens[:, :prefix_length], stepped)]
        steps += [step(tokens[:, i - 1], stepped) for i in range(prefix_length + 1, 24)]
        prior.next_logits(tokens[:, :23], checked)
    assert relative_error(torch.stack(steps, dim=1), full[:, prefix_length:]) < 1e-5
    assert stepped.length == checked.length == 24
    torch.testing.assert_close(stepped.keys, checked.keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stepped.values, checked.values, rtol=1e-5, atol=1e-6)


def test_a_folded_temperature_divides_every_path_s_logits():
    """fold_temperature scales the head, so the full forward, next_logits and the kernel all see logits / T."""
    prior, tokens = make_prior(), random_tokens(2, 24, seed=6)
    with torch.inference_mode():
        before = prior(tokens)
        prior.fold_temperature(1.7)
        after = prior(tokens)
        cache = prior.new_cache(2)
        first = prior.next_logits(tokens[:, :5], cache)
        stepped = PriorStep(prior)(tokens[:, 5], cache)
    assert relative_error(after, before / 1.7) < 1e-6
    assert relative_error(first, before[:, 5] / 1.7) < 1e-5
    assert relative_error(stepped, before[:, 6] / 1.7) < 1e-5
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            prior.fold_temperature(bad)


def test_two_multi_token_feeds_equal_the_full_forward():
    prior = make_prior()
    tokens = random_tokens(2, 24, seed=4)
    cache = prior.new_cache(2)
    prior.next_logits(tokens[:, :5], cache)
    assert relative_error(prior.next_logits(tokens[:, 5:12], cache), prior(tokens)[:, 12]) < 1e-5


def test_cache_is_preallocated_and_sized_by_the_config():
    prior = make_prior()
    cache = prior.new_cache(4)
    assert isinstance(cache, KVCache) and cache.batch_size == 4 and cache.length == 0
    assert cache.keys.shape == cache.values.shape == (2, 4, 4, 24, 8)
    keys = cache.keys
    prior.next_logits(random_tokens(4, 3), cache)
    assert cache.keys is keys and cache.length == 4  # written in place: start token + 3 tokens


def test_next_logits_rejects_overflow_and_mismatched_batches():
    prior = make_prior()
    cache = prior.new_cache(2)
    with pytest.raises(ValueError, match="cache was made for 2"):
        prior.next_logits(random_tokens(3, 1), cache)
    with pytest.raises(ValueError, match="seq_len=24"):
        prior.next_logits(random_tokens(2, 24), cache)
    prior.next_logits(random_tokens(2, 23), cache)
    with pytest.raises(ValueError, match="seq_len=24"):
        prior.next_logits(random_tokens(2, 1), cache)
    with pytest.raises(ValueError, match="at least one new token"):
        prior.next_logits(random_tokens(2, 0), cache)
    with pytest.raises(ValueError, match="batch_size"):
        prior.new_cache(0)


@pytest.mark.parametrize(
    ("tokens", "error", "match"),
    [
        (torch.zeros(1, 25, dtype=torch.long), ValueError, "between 1 and seq_len=24"),
        (torch.zeros(1, 0, dtype=torch.long), ValueError, "between 1 and seq_len=24"),
        (torch.full((1, 4), 16), ValueError, r"\[0, codebook_size=16\)"),
        (torch.full((1, 4), -1), ValueError, r"\[0, codebook_size=16\)"),
        (torch.zeros(4, dtype=torch.long), ValueError, r"\[B, T\]"),
        (torch.zeros(1, 4), TypeError, "integer"),
    ],
)
def test_forward_rejects_bad_tokens(tokens, error, match):
    with pytest.raises(error, match=match):
        make_prior()(tokens)


def test_training_mode_uses_dropout_and_eval_mode_does_not():
    prior = make_prior(PriorConfig(**{**TINY.to_dict(), "dropout": 0.5}))
    tokens = random_tokens(2, 24)
    assert torch.equal(prior(tokens), prior(tokens))
    prior.train()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        assert not torch.allclose(prior(tokens), prior(tokens))


def test_state_dict_holds_only_learned_tensors():
    # The model file stores the state dict; the column and slot tables are derived from the config.
    names = set(make_prior().state_dict())
    assert not {"columns", "slots"} & names and "start_token" in names and "head.weight" in names


def test_each_position_is_told_the_column_and_slot_of_the_token_it_predicts():
    prior = make_prior()
    assert prior.columns.tolist() == [i // 6 for i in range(24)]
    assert prior.slots.tolist() == [i % 6 for i in range(24)]
    # Moving the column embedding of column 2 changes the logits of positions 12..17 only.
    tokens = random_tokens(1, 24, seed=6)
    before = prior(tokens)
    with torch.no_grad():
        # Random, not constant: LayerNorm removes a constant shift.
        prior.column_embedding.weight[2] += torch.randn(32, generator=torch.Generator().manual_seed(0))
    after = prior(tokens)
    assert torch.allclose(after[:, :12], before[:, :12], atol=1e-6)
    assert not torch.allclose(after[:, 12:18], before[:, 12:18], atol=1e-3)


# --- code layout -------------------------------------------------------------------------------------


def test_flatten_uses_index_p_times_q_plus_q():
    codes = torch.arange(2 * 5 * 3).reshape(2, 5, 3)
    flat = flatten_codes(codes)
    assert flat.shape == (2, 15)
    for p in range(5):
        for q in range(3):
            assert torch.equal(flat[:, p * 3 + q], codes[:, p, q])


def test_flatten_and_unflatten_are_inverses():
    codes = torch.randint(0, 16, (4, 8, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(unflatten_codes(flatten_codes(codes), 3), codes)
    flat = torch.randint(0, 16, (4, 24), generator=torch.Generator().manual_seed(1))
    assert torch.equal(flatten_codes(unflatten_codes(flat, 3)), flat)
    # A non-contiguous view flattens the same way.
    assert torch.equal(flatten_codes(codes.transpose(1, 2).transpose(1, 2)), flatten_codes(codes))


def test_unflatten_and_flatten_reject_bad_shapes():
    with pytest.raises(ValueError, match="not a multiple of levels=3"):
        unflatten_codes(torch.zeros(2, 10, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="levels"):
        unflatten_codes(torch.zeros(2, 9, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="flat"):
        unflatten_codes(torch.zeros(9, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="codes"):
        flatten_codes(torch.zeros(2, 9, dtype=torch.long))
