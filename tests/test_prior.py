"""CodePrior: the KV-cached step against the full forward pass, the code layout, and validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill_nb.prior import (
    CodePrior,
    KVCache,
    PriorConfig,
    extract_code_sequences,
    flatten_codes,
    unflatten_codes,
)

TINY = PriorConfig(codebook_size=16, num_quantizers=3, seq_len=24, d_model=32, n_layers=2, n_heads=4)


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
    config = PriorConfig(codebook_size=64, seq_len=48, d_model=64, dropout=0.0)
    assert PriorConfig.from_dict(config.to_dict()) == config
    assert config.to_dict() == {
        "codebook_size": 64, "num_quantizers": 3, "seq_len": 48, "d_model": 64,
        "n_layers": 4, "n_heads": 4, "dropout": 0.0,
    }


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"codebook_size": 1}, ValueError, "codebook_size"),
        ({"codebook_size": 16.0}, TypeError, "codebook_size"),
        ({"codebook_size": True}, TypeError, "codebook_size"),
        ({"codebook_size": 16, "num_quantizers": 0}, ValueError, "num_quantizers"),
        ({"codebook_size": 16, "seq_len": 0}, ValueError, "seq_len"),
        ({"codebook_size": 16, "seq_len": 25}, ValueError, "seq_len"),
        ({"codebook_size": 16, "d_model": 30}, ValueError, "d_model"),
        ({"codebook_size": 16, "n_layers": 0}, ValueError, "n_layers"),
        ({"codebook_size": 16, "n_heads": -1}, ValueError, "n_heads"),
        ({"codebook_size": 16, "dropout": 1.0}, ValueError, "dropout"),
        ({"codebook_size": 16, "dropout": -0.1}, ValueError, "dropout"),
        ({"codebook_size": 16, "dropout": "0.1"}, TypeError, "dropout"),
    ],
)
def test_config_rejects_bad_fields_naming_them(kwargs, error, name):
    with pytest.raises(error, match=name):
        PriorConfig(**kwargs)


def test_config_from_dict_rejects_unknown_and_missing_keys():
    with pytest.raises(ValueError, match="unknown keys.*vocab"):
        PriorConfig.from_dict({"codebook_size": 16, "vocab": 3})
    with pytest.raises(ValueError, match="codebook_size"):
        PriorConfig.from_dict({"seq_len": 24})


def test_prior_exposes_its_config():
    prior = make_prior()
    assert (prior.config, prior.seq_len, prior.codebook_size, prior.num_quantizers) == (TINY, 24, 16, 3)
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
def test_step_equals_next_logits_and_the_full_forward(prefix_length):
    """step, the sampling loop's unchecked one-token path, computes what next_logits and forward do."""
    prior = make_prior()
    tokens = random_tokens(3, 24, seed=5)
    full = prior(tokens)
    stepped, checked = prior.new_cache(3), prior.new_cache(3)
    with torch.inference_mode():
        steps = [prior.next_logits(tokens[:, :prefix_length], stepped)]
        steps += [prior.step(tokens[:, i - 1], stepped) for i in range(prefix_length + 1, 24)]
        prior.next_logits(tokens[:, :23], checked)
    assert relative_error(torch.stack(steps, dim=1), full[:, prefix_length:]) < 1e-5
    assert stepped.length == checked.length == 24
    torch.testing.assert_close(stepped.keys, checked.keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stepped.values, checked.values, rtol=1e-5, atol=1e-6)


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
    # The model file stores the state dict; the level table is derived from the config.
    names = set(make_prior().state_dict())
    assert "levels" not in names and "start_token" in names and "head.weight" in names


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
    with pytest.raises(ValueError, match="not a multiple of num_quantizers=3"):
        unflatten_codes(torch.zeros(2, 10, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="num_quantizers"):
        unflatten_codes(torch.zeros(2, 9, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="flat"):
        unflatten_codes(torch.zeros(9, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="codes"):
        flatten_codes(torch.zeros(2, 9, dtype=torch.long))


class FakeVQVAE(nn.Module):
    """Stands in for ConvVQVAE: codes [B, 2, 3] made from each mel's mean, recording how it was called."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.calls: list[tuple[int, bool, bool]] = []

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        self.calls.append((len(mel), self.training, torch.is_grad_enabled()))
        value = (mel * self.scale).mean(dim=(1, 2)).round().long()
        return value[:, None, None] + torch.arange(6).reshape(1, 2, 3)


def test_extract_code_sequences_encodes_in_batches_in_eval_mode():
    vqvae = FakeVQVAE().train()
    mels = torch.arange(5.0)[:, None, None].expand(5, 4, 7)
    flat = extract_code_sequences(vqvae, mels, batch_size=2)
    assert flat.dtype == torch.long and flat.shape == (5, 6)
    assert torch.equal(flat, torch.arange(5)[:, None] + torch.arange(6))
    assert vqvae.calls == [(2, False, False), (2, False, False), (1, False, False)]
    assert vqvae.training  # restored


def test_extract_code_sequences_validates_its_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        extract_code_sequences(FakeVQVAE(), torch.zeros(2, 4, 7), batch_size=0)
    with pytest.raises(ValueError, match="mels"):
        extract_code_sequences(FakeVQVAE(), torch.zeros(4, 7))
