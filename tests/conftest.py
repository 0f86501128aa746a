"""Shared test set-up: one intra-op thread, and a tiny random-init model with the real geometry rules."""

import pytest
import torch

from distill_nb.audio import Spectrogram, SpectrogramConfig
from distill_nb.model_file import LoadedVQModel
from distill_nb.prior import CodePrior, PriorConfig
from distill_nb.vqvae import ConvVQVAE, VQVAEConfig

# The tiny model: 8 kHz chunks of 8000 samples, hop 64 -> 126 frames, 32 mels -> a 2 x 8 grid (H x W),
# 2 levels -> 32 tokens per chunk. A grid column is 16 * 64 = 1024 samples.
TINY_SR = 8000
TINY_H, TINY_W, TINY_Q, TINY_K = 2, 8, 2, 16


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    # Tiny models run fastest without intra-op threads; with them, every small op waits for a second
    # thread, which on a loaded 2-core machine makes the per-token loops many times slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(with_counts: bool = False) -> LoadedVQModel:
    """A random-init model of the geometry above, the same on every call."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = ConvVQVAE(VQVAEConfig(n_mels=32, channels=(4, 4, 4, 4), code_dim=8, num_quantizers=TINY_Q,
                                      codebook_size=TINY_K, kmeans_init=False))
        prior = CodePrior(PriorConfig(codebook_size=TINY_K, num_quantizers=TINY_Q, seq_len=TINY_H * TINY_W * TINY_Q,
                                      d_model=16, n_layers=1, n_heads=2, dropout=0.0))
    spectrogram = Spectrogram(SpectrogramConfig(sample_rate=TINY_SR, n_fft=256, hop_length=64, n_mels=32))
    counts = torch.arange(1, TINY_Q * TINY_K + 1, dtype=torch.long).view(TINY_Q, TINY_K) if with_counts else None
    return LoadedVQModel(model=model.eval(), prior=prior.eval(), spectrogram=spectrogram,
                         device=torch.device("cpu"), metadata={"name": "tiny"}, train_code_counts=counts)
