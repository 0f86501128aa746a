"""ConvVQVAE: shapes, time-major code order, losses, codebook state and config validation."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from distill_nb import vqvae as vqvae_module
from distill_nb.vqvae import CodebookHealth, ConvVQVAE, VQVAEConfig, VQVAEOutput, mel_spectral_convergence

# 8x frequency and 16x time downsampling: 32 mels -> 4 rows, a column every 16 frames; 3 levels.
TINY = dict(n_mels=32, channels=(8, 8, 16, 16), strides=((2, 2), (2, 2), (2, 2), (1, 2)), res_blocks=1, code_dim=8,
            levels=3, codebook_size=16)
SILENCE = math.log(1e-5)


def make_model(seed: int = 0, **overrides) -> ConvVQVAE:
    config = VQVAEConfig(**{**TINY, "input_mean": -6.0, "input_std": 4.0, **overrides})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ConvVQVAE(config)


def block_mels(n: int, frames: int, seed: int, n_mels: int = 32) -> torch.Tensor:
    """Silence with a few random rectangles of sound: structured enough to be learnable."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.full((n, n_mels, frames), SILENCE)
    for b in range(n):
        for _ in range(3):
            start = int(torch.randint(0, frames - 4, (1,), generator=g))
            length = int(torch.randint(4, 24, (1,), generator=g))
            low = int(torch.randint(0, n_mels - 8, (1,), generator=g))
            mel[b, low:low + 8, start:start + length] = torch.randn(1, generator=g) * 2
    return mel


def train_steps(model: ConvVQVAE, mel: torch.Tensor, steps: int, lr: float = 3e-3, seed: int = 0) -> None:
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            loss = model(mel).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()


@pytest.fixture(scope="module")
def trained() -> ConvVQVAE:
    """A model after k-means init and a few steps, in eval mode (do not mutate: deepcopy first)."""
    model = make_model()
    train_steps(model, block_mels(8, 94, seed=1), steps=8)
    return model


def hand_codes(model: ConvVQVAE, z: torch.Tensor, codebooks: torch.Tensor):
    """Residual nearest-neighbour quantisation of every grid cell, by hand.

    z [B, D, H, W], codebooks [Q, K, D] -> codes [B, H, W, Q], per-level MSEs [Q].
    """
    residual = z.permute(0, 2, 3, 1)  # [B, H, W, D]
    codes, mses = [], []
    for codebook in codebooks:
        distances = ((residual.unsqueeze(-2) - codebook) ** 2).sum(-1)  # [B, H, W, K]
        index = distances.argmin(-1)
        vectors = codebook[index]
        mses.append(F.mse_loss(residual, vectors))
        codes.append(index)
        residual = residual - vectors
    return torch.stack(codes, dim=-1), torch.stack(mses)


@pytest.mark.parametrize("frames", [94, 17, 50, 200])
def test_shapes_through_encode_embed_decode(trained, frames):
    mel = block_mels(2, frames, seed=frames)
    h, w = trained.grid_shape(frames)
    assert (h, w) == (4, math.ceil(frames / 16))
    codes = trained.encode(mel)
    assert codes.shape == (2, h * w, 3) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < 16
    z = trained.codes_to_embeddings(codes, (h, w))
    assert z.shape == (2, 8, h, w)
    recon = trained.decode(z, frames)
    assert recon.shape == (2, 32, frames) and recon.dtype == torch.float32
    assert torch.equal(trained.decode_codes(codes, frames), recon)
    out = trained(mel)
    assert isinstance(out, VQVAEOutput)
    assert out.recon.shape == mel.shape and torch.equal(out.codes, codes)
    assert out.commit_loss.dim() == 0 and out.recon_loss.dim() == 0


def test_one_second_grid_matches_design():
    # 128 mels / 4 = 32 rows; 94 frames padded to 96 / 16 = 6 columns.
    assert ConvVQVAE(VQVAEConfig()).grid_shape(94) == (32, 6)
    assert VQVAEConfig().downsampling == (4, 16)


def test_codes_are_time_major_by_hand(trained):
    mel = block_mels(3, 50, seed=7)
    codebooks = trained.quantizer.codebooks
    with torch.no_grad():
        expected, _ = hand_codes(trained, trained.encode_latent(mel), codebooks)  # [B, H, W, Q]
    codes = trained.encode(mel)
    h, w = trained.grid_shape(50)
    assert len(expected.unique()) > 3, "codes should be non-trivial"
    for p in range(h * w):
        assert torch.equal(codes[:, p], expected[:, p % h, p // h]), f"position {p}"
    # The same order, as one reshape: [B, P, Q] -> [B, W, H, Q].
    assert torch.equal(codes.reshape(3, w, h, 3).permute(0, 2, 1, 3), expected)


def test_shifting_the_mel_by_one_column_shifts_the_code_columns():
    model = make_model(seed=3)
    frames, column = 320, 8  # 20 columns; the block sits well inside
    g = torch.Generator().manual_seed(5)
    block = torch.randn(32, 16, generator=g) * 2

    def mel_with_block_at(col: int) -> torch.Tensor:
        mel = torch.full((1, 32, frames), SILENCE)
        mel[0, :, 16 * col:16 * col + 16] = block
        return mel

    # Warm up on blocks in every column so the codebooks know both silence and sound.
    train_steps(model, torch.cat([mel_with_block_at(c) for c in range(2, 18, 2)]), steps=3)
    h, w = model.grid_shape(frames)
    before = model.encode(mel_with_block_at(column)).reshape(w, h, 3)  # [W, H, Q] by time-major order
    after = model.encode(mel_with_block_at(column + 1)).reshape(w, h, 3)
    # Away from the borders (the receptive field reaches ~4 columns), column w moves to w + 1.
    for col in range(4, w - 5):
        assert torch.equal(after[col + 1], before[col]), f"column {col}"
    z_before = model.encode_latent(mel_with_block_at(column))
    z_after = model.encode_latent(mel_with_block_at(column + 1))
    assert (z_before[..., column] - z_before[..., 3]).abs().max() > 1e-2, \
        "the block's column should differ from silence"
    torch.testing.assert_close(z_after[..., 5:w - 4], z_before[..., 4:w - 5])


def test_decoder_output_is_not_capped(trained):
    model = copy.deepcopy(trained)
    codes = model.encode(block_mels(1, 94, seed=2))
    with torch.no_grad():
        model.decoder[-1].bias.fill_(100.0)
        recon = model.decode_codes(codes, 94)
        # Normalised output ~100 -> 100 * std + mean = 394, far beyond any log-mel seen in training.
        assert float(recon.min()) > 300.0
        model.decoder[-1].bias.fill_(-100.0)
        assert float(model.decode_codes(codes, 94).max()) < -300.0


def test_decode_denormalises_the_decoder_output(trained):
    codes = trained.encode(block_mels(1, 50, seed=4))
    z = trained.codes_to_embeddings(codes, trained.grid_shape(50))
    raw = trained.decoder(z)[:, 0, :32, :50]
    torch.testing.assert_close(trained.decode(z, 50), raw * 4.0 - 6.0)


@pytest.mark.parametrize("training", [True, False])
def test_commit_loss_is_weighted_once(trained, training):
    model = copy.deepcopy(trained)
    mel = block_mels(4, 94, seed=11)
    with torch.no_grad():
        expected_codes, mses = hand_codes(model, model.encode_latent(mel), model.quantizer.codebooks.clone())
    model.train(training)
    out = model(mel)  # in training mode the codebooks move only after quantising
    assert torch.equal(out.codes.reshape(4, 6, 4, 3).permute(0, 2, 1, 3), expected_codes)
    assert float(mses[1:].sum()) > 0, "the residual levels should contribute"
    torch.testing.assert_close(out.commit_loss, 0.25 * mses.sum(), rtol=1e-4, atol=1e-7)


def test_recon_loss_is_l1_in_normalised_space_plus_weighted_spectral_convergence(trained):
    mel = block_mels(2, 94, seed=12)
    out = trained(mel)
    torch.testing.assert_close(out.l1_loss, F.l1_loss((out.recon + 6.0) / 4.0, (mel + 6.0) / 4.0))
    magnitude, estimate = torch.exp(mel / 2), torch.exp(out.recon / 2)
    per_item = [torch.linalg.norm(magnitude[b] - estimate[b]) / torch.linalg.norm(magnitude[b]) for b in range(2)]
    torch.testing.assert_close(out.spectral_convergence, torch.stack(per_item).mean())
    torch.testing.assert_close(out.recon_loss, out.l1_loss + out.spectral_weight * out.spectral_convergence)
    torch.testing.assert_close(out.loss, out.recon_loss + out.commit_loss)
    assert out.spectral_weight == trained.config.spectral_weight


def test_spectral_convergence_is_zero_for_a_copy_and_finite_for_huge_estimates():
    mel = block_mels(2, 30, seed=20)
    assert torch.equal(mel_spectral_convergence(mel, mel), torch.zeros(2))
    silence = torch.full_like(mel, SILENCE)
    torch.testing.assert_close(mel_spectral_convergence(mel, silence),
                               torch.linalg.vector_norm(torch.exp(mel / 2) - torch.exp(silence / 2), dim=(1, 2))
                               / torch.linalg.vector_norm(torch.exp(mel / 2), dim=(1, 2)))
    assert torch.isfinite(mel_spectral_convergence(mel, mel + 1e4)).all()


@pytest.mark.parametrize("columns", [5, 23, 40])
def test_streams_encode_and_decode_in_segments_like_one_call(trained, monkeypatch, columns):
    monkeypatch.setattr(vqvae_module, "SEGMENT_COLUMNS", 8)  # several segments, each with 4 columns of context
    frames = 16 * columns - 3
    mel = block_mels(1, frames, seed=columns)
    codes = trained.encode_stream(mel[0])
    whole = trained.encode(mel)[0]
    assert codes.shape == whole.shape == (4 * columns, 3)
    assert torch.equal(codes, whole)
    torch.testing.assert_close(trained.decode_stream(codes, frames), trained.decode_codes(whole[None], frames)[0],
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="codes must have shape"):
        trained.decode_stream(codes[:-1], frames)


def test_training_steps_lower_the_reconstruction_loss():
    model = make_model(seed=1)
    mel = block_mels(8, 94, seed=13)
    train_steps(model, mel, steps=1)  # k-means init
    with torch.no_grad():
        before = float(model(mel).recon_loss)
    train_steps(model, mel, steps=15, seed=1)
    with torch.no_grad():
        after = float(model(mel).recon_loss)
    assert after < 0.8 * before


def test_training_forward_updates_codebooks(trained):
    model = copy.deepcopy(trained)
    before = model.quantizer.codebooks.clone()
    model.train()
    with torch.random.fork_rng(devices=[]):
        model(block_mels(4, 94, seed=14))
    assert not torch.equal(model.quantizer.codebooks, before)


@pytest.mark.parametrize("training", [False, True])
def test_encode_is_deterministic_and_leaves_the_model_alone(trained, training):
    model = copy.deepcopy(trained).train(training)
    mel = block_mels(4, 94, seed=15)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    first, second = model.encode(mel), model.encode(mel)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.training == training


def test_untrained_model_encodes_without_kmeans_or_randomness():
    model = make_model().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    codes = model.encode(block_mels(2, 94, seed=16))
    assert torch.equal(codes, torch.zeros_like(codes))  # all-zero codebooks: every vector -> code 0
    out = model(block_mels(2, 94, seed=16))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert out.recon.shape == (2, 32, 94)


def test_codebook_health_in_range(trained):
    health = trained.codebook_health()
    assert [h.level for h in health] == [0, 1, 2]
    for h in health:
        assert isinstance(h, CodebookHealth) and h.codebook_size == 16
        assert 0.0 <= h.utilisation <= 1.0
        assert 1.0 <= h.perplexity <= 16.0
        assert 0 <= h.dead_codes <= 16
        assert h.dead_codes == 16 - round(h.utilisation * 16)


def test_codebook_health_counts_dead_codes_from_cluster_sizes():
    model = make_model(dead_code_threshold=2.0)
    sizes = torch.zeros(16)
    sizes[:4] = torch.tensor([10.0, 10.0, 10.0, 10.0])
    sizes[4] = 1.5  # below the threshold: dead
    model.quantizer.layers[0]._codebook.cluster_size.copy_(sizes.unsqueeze(0))
    level0 = model.codebook_health()[0]
    assert level0.dead_codes == 12 and level0.utilisation == pytest.approx(4 / 16)
    p = sizes / sizes.sum()
    expected = math.exp(-float((p[p > 0] * p[p > 0].log()).sum()))
    assert level0.perplexity == pytest.approx(expected)


def test_codes_to_embeddings_validates(trained):
    codes = trained.encode(block_mels(1, 94, seed=17))
    with pytest.raises(ValueError, match="codes"):
        trained.codes_to_embeddings(codes, (4, 5))
    with pytest.raises(ValueError, match="codebook_size"):
        trained.codes_to_embeddings(codes + 16, (4, 6))
    with pytest.raises(TypeError, match="codes"):
        trained.codes_to_embeddings(codes.float(), (4, 6))


def test_encode_rejects_wrong_mel_shape(trained):
    with pytest.raises(ValueError, match="n_mels=32"):
        trained.encode(torch.zeros(1, 40, 94))
    with pytest.raises(ValueError, match="mel"):
        trained.encode(torch.zeros(32, 94))


def test_config_json_round_trip():
    config = VQVAEConfig(**TINY, input_mean=-5.5, input_std=3.25, kmeans_init=False)
    restored = VQVAEConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and isinstance(restored.channels, tuple) and isinstance(restored.strides[0], tuple)


@pytest.mark.parametrize("field, value", [
    ("n_mels", 0), ("n_mels", 2.5), ("channels", ()), ("channels", (8, 0, 16, 16)),
    ("channels", "8816"), ("strides", ((2, 2),)), ("strides", ((2, 2), (2, 2), (3, 2), (1, 2))),
    ("strides", ((2, 2), (2, 2), (2,), (1, 2))), ("strides", "2x2"), ("res_blocks", -1),
    ("code_dim", 0), ("levels", 0), ("codebook_size", 1), ("spectral_weight", -1.0),
    ("commitment_weight", -0.1), ("ema_decay", 1.0), ("ema_decay", 0.0), ("kmeans_init", 1),
    ("dead_code_threshold", -1.0), ("input_mean", float("nan")), ("input_std", 0.0),
    ("input_std", float("inf")), ("code_dim", True),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        VQVAEConfig(**{**TINY, field: value})


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="codebook_sizes"):
        VQVAEConfig.from_dict({"codebook_sizes": 4})
