"""Shared test set-up: one intra-op thread, a tiny random-init model with the real geometry rules, and the
audio test signals and librosa settings of the spectrogram and inversion tests."""

import librosa
import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from distill_nb.geometry import ChunkGeometry
from distill_nb.model_file import LoadedVQModel
from distill_nb.prior import CodePrior, PriorConfig
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig
from distill_nb.vqvae import ConvVQVAE, VQVAEConfig

# The tiny model: 8 kHz chunks of 8000 samples, hop 64 -> 126 frames, 32 mels; 8x frequency and 16x time
# downsampling -> a 4 x 8 grid (rows x columns), 2 levels -> 64 tokens per chunk, windows of 2 chunks.
# A grid column is 16 * 64 = 1024 samples.
TINY_SR = 8000
TINY_H, TINY_W, TINY_Q, TINY_K = 4, 8, 2, 16
TINY_VQVAE = VQVAEConfig(n_mels=32, channels=(4, 4, 4, 4), strides=((2, 2), (2, 2), (2, 2), (1, 2)), res_blocks=1,
                         code_dim=8, levels=TINY_Q, codebook_size=TINY_K, kmeans_init=False)
TINY_SPECTROGRAM = SpectrogramConfig(sample_rate=TINY_SR, n_fft=256, hop_length=64, n_mels=32)
TINY_GEOMETRY = ChunkGeometry.of(TINY_SPECTROGRAM, TINY_VQVAE)


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
        model = ConvVQVAE(TINY_VQVAE)
        prior = CodePrior(PriorConfig.for_vqvae(TINY_GEOMETRY, TINY_K, 2 * TINY_W, d_model=16, n_layers=1,
                                                n_heads=2, dropout=0.0))
    counts = torch.arange(1, TINY_Q * TINY_K + 1, dtype=torch.long).view(TINY_Q, TINY_K) if with_counts else None
    return LoadedVQModel(vqvae=model.eval(), prior=prior.eval(), spectrogram=Spectrogram(TINY_SPECTROGRAM),
                         device=torch.device("cpu"), metadata={"name": "tiny"}, train_code_counts=counts)


def rewrite_safetensors(source, target, *, metadata=None, tensors=None):
    """A valid safetensors copy of ``source`` at ``target``, its metadata and tensors edited in place by callables."""
    with safetensors.safe_open(str(source), framework="pt") as f:
        meta, data = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    if metadata:
        metadata(meta)
    if tensors:
        tensors(data)
    safetensors.torch.save_file(data, str(target), metadata=meta)
    return target


# A tiny spectrogram for comparisons with librosa: librosa's NNLS (L-BFGS-B with as many corrections as FFT
# bins) takes minutes per call at n_fft = 2048, and seconds here.
TINY_MEL = SpectrogramConfig(sample_rate=8000, n_fft=128, hop_length=32, n_mels=32)


def audio_signals(sample_rate: int, seconds: float) -> dict[str, np.ndarray]:
    """Test signals that nothing in the package was tuned on: float32 (n,)."""
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    rng = np.random.default_rng(1)
    vibrato = sum(0.3 / k * np.sin(2 * np.pi * k * 220 * t + 3 * k * np.sin(2 * np.pi * 5 * t)) for k in range(1, 6))
    noise_burst = 0.3 * rng.standard_normal(t.size) * np.exp(-(((t - seconds / 2) / (seconds / 10)) ** 2))
    f_end = 0.44 * sample_rate
    chirp = 0.5 * np.sin(2 * np.pi * (100 * t + (f_end - 100) / (2 * t[-1]) * t**2))
    return {name: x.astype(np.float32) for name, x in
            {"vibrato": vibrato, "noise_burst": noise_burst, "chirp": chirp}.items()}


def librosa_mel_kwargs(config: SpectrogramConfig) -> dict:
    """The librosa mel settings equal to ``config`` (n_mels apart: mel_to_stft reads it from the mel)."""
    return dict(sr=config.sample_rate, n_fft=config.n_fft, fmin=config.f_min, fmax=config.f_max,
                htk=config.mel_scale == "htk", norm=config.mel_norm)


def spectral_convergence(reference: np.ndarray, estimate: np.ndarray, config: SpectrogramConfig) -> float:
    """||S_ref| - |S_est||_F / ||S_ref||_F on the linear STFT magnitude (librosa's STFT)."""
    def magnitude(x):
        return np.abs(librosa.stft(x, n_fft=config.n_fft, hop_length=config.hop_length, pad_mode="reflect"))
    ref, est = magnitude(reference), magnitude(estimate)
    return float(np.linalg.norm(ref - est) / np.linalg.norm(ref))
