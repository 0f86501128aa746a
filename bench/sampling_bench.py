"""Seconds to sample the codes of 10 one-second chunks, and 10 s of audio end to end: seed-style vs ours.

    .venv/bin/python bench/sampling_bench.py [--repeats 3] [--threads N]

Sampling rows, on the same weights (each chunk: the first second of a prior window):
seed-style: a full forward pass every step, batch 1, chunk after chunk (sample_codes(step="full")).
ours:       all 10 chunks in one batch through the KV cache (sample_codes), with the one-token step of
            kernels.PriorStep (the default) and with the reference step CodePrior.next_logits (what the
            kernel buys).
End-to-end rows (10 s of audio; needs the bundled model):
seed-style: that sampler, then per chunk: decode, mel_to_waveform with SEED_STYLE_INVERSION (NNLS, a
            random start and 128 plain fast Griffin-Lim iterations through torch.stft / torch.istft,
            torchaudio's loop), then a 50 ms crossfade.
ours:       generation.generate with the default settings (DECODED_INVERSION: NNLS stopped after a few
            steps, phase-gradient start, 12 relaxed iterations on the kernels), in "independent" mode (all
            chunks sampled in one batch) and in "continuation" mode (the default: one stream of columns,
            window after window, decoded and inverted in one piece).
Inversion rows: mel -> waveform of the 11 decoded chunks of one take with each named InversionSettings,
and with generation's but without the kernels (what they buy). "mel SC" is the spectral convergence of
the result's magnitude mel against the decoded mel it inverts (lower is better); "clicks" counts samples
over 10x their 4 ms neighbourhood, at multiples of n_fft / elsewhere (bench/common.py).
The prior is the bundled default model's if distill_nb/data/default.distill exists (and --random-init is
not given), else a randomly initialised one of the standard preset's size; eval mode either way.
Writes bench/results/sampling_bench.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from common import click_counts, mel_convergence, write_results

from distill_nb.generation import GenerationSettings, generate
from distill_nb.geometry import ChunkGeometry
from distill_nb.inversion import DECODED_INVERSION, PREVIOUS_INVERSION, SEED_STYLE_INVERSION
from distill_nb.model_file import DEFAULT_MODEL_PATH, LoadedVQModel, load_default_model
from distill_nb.prior import CodePrior, PriorConfig, unflatten_codes
from distill_nb.sampling import sample_codes
from distill_nb.spectrogram import SpectrogramConfig
from distill_nb.stages import PRESETS
from distill_nb.stitching import crossfade_chunks
from distill_nb.vqvae import VQVAEConfig

NUM_CHUNKS = 10
SEED_STYLE_OVERLAP = 2400  # 50 ms at 48 kHz
DEFAULT_ITERS = GenerationSettings.griffin_lim_iters


def load_prior(random_init: bool) -> tuple[CodePrior, int, str]:
    """(prior, tokens per chunk, where it comes from)."""
    if DEFAULT_MODEL_PATH.exists() and not random_init:
        loaded = load_default_model()
        if loaded.prior is not None:
            return loaded.prior.eval(), loaded.geometry.chunk_tokens, f"bundled model {DEFAULT_MODEL_PATH.name}"
    standard = PRESETS["standard"]
    vqvae = VQVAEConfig(**standard.vqvae)
    geometry = ChunkGeometry.of(SpectrogramConfig(), vqvae)
    config = PriorConfig.for_vqvae(geometry, vqvae.codebook_size, standard.window_chunks * geometry.columns,
                                   **standard.prior)
    with torch.random.fork_rng():  # nn.Module init draws from the global RNG: seed it, then restore it
        torch.manual_seed(0)
        return CodePrior(config).eval(), geometry.chunk_tokens, "random init (standard preset sizes)"


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def seed_style_audio(loaded: LoadedVQModel, seed: int) -> None:
    """10 s the seed's way: chunk after chunk, full-forward sampling, 128 Griffin-Lim iterations each."""
    chunks = []
    geometry = loaded.geometry
    for i in range(NUM_CHUNKS + 1):  # 11 chunks with 50 ms overlaps cover 10 s
        flat = sample_codes(loaded.prior, 1, [seed + i], length=geometry.chunk_tokens, step="full")
        with torch.inference_mode():
            mel = loaded.vqvae.decode_codes(unflatten_codes(flat, loaded.prior.levels), geometry.frames)
        chunks.append(loaded.spectrogram.mel_to_waveform(mel, SEED_STYLE_INVERSION, length=loaded.chunk_samples,
                                                         generator=torch.Generator().manual_seed(seed + i))[0])
    crossfade_chunks(chunks, SEED_STYLE_OVERLAP)[: NUM_CHUNKS * loaded.chunk_samples]


def inversion_rows(loaded: LoadedVQModel, repeats: int) -> list[str]:
    spectrogram = loaded.spectrogram
    mels = generate(loaded, GenerationSettings(duration_s=10.0, mode="independent"), seed=0).mels
    settings = {
        "seed-style: random start, 128 via torch.stft/istft": SEED_STYLE_INVERSION,
        "previous settings: NNLS to its stall, plain GL 16": PREVIOUS_INVERSION,
        f"ours: phase-gradient start, relaxed, {DEFAULT_ITERS} (default)": DECODED_INVERSION,
        "ours without the kernels (fast_kernels=False)": dataclasses.replace(DECODED_INVERSION, fast_kernels=False),
    }
    runs = {name: (lambda s=s: spectrogram.mel_to_waveform(mels, s, length=spectrogram.chunk_samples))
            for name, s in settings.items()}
    audio = {name: run() for name, run in runs.items()}  # warm-up, and the audio to measure
    times = [{name: seconds(run) for name, run in runs.items()} for _ in range(repeats)]
    n_fft, rate = spectrogram.config.n_fft, spectrogram.config.sample_rate
    lines = [f"\n{'mel -> waveform, 11 decoded chunks (GL iterations)':<52} {'median s':>9} {'speed-up':>9} "
             f"{'mel SC':>7} {'clicks':>9}"]
    baseline = None
    for name in runs:
        median = statistics.median(t[name] for t in times)
        baseline = baseline or median
        at, elsewhere = click_counts(audio[name], n_fft, rate)
        lines.append(f"{name:<52} {median:>9.3f} {baseline / median:>8.1f}x "
                     f"{mel_convergence(spectrogram, mels, audio[name]):>7.3f} {f'{at} / {elsewhere}':>9}")
    return lines


def end_to_end_rows(loaded: LoadedVQModel, repeats: int) -> list[str]:
    runs = {
        "seed-style: full forward, batch 1, GL 128 per chunk": lambda: seed_style_audio(loaded, 0),
        f"ours: independent, one batch, GL {DEFAULT_ITERS}": lambda: generate(
            loaded, GenerationSettings(duration_s=10.0, mode="independent"), seed=0),
        f"ours: continuation (default), GL {DEFAULT_ITERS}": lambda: generate(
            loaded, GenerationSettings(duration_s=10.0), seed=0),
    }
    for run in runs.values():  # warm-up
        run()
    times = [{name: seconds(run) for name, run in runs.items()} for _ in range(repeats)]
    medians = {name: statistics.median(t[name] for t in times) for name in runs}
    baseline = medians[next(iter(runs))]
    lines = [f"\n{'10 s of audio, end to end':<52} {'median s':>9} {'speed-up':>9}"]
    lines += [f"{name:<52} {median:>9.3f} {baseline / median:>8.1f}x" for name, median in medians.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument(
        "--random-init", action="store_true", help="a random default-sized prior even if a bundled model exists"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    prior, chunk_tokens, source = load_prior(args.random_init)
    seeds = list(range(NUM_CHUNKS))
    c = prior.config
    lines = [f"prior: {source}; codebook {c.codebook_size}, d_model {c.d_model}, {c.n_layers} layers, "
             f"{c.n_heads} heads, windows of {c.seq_len} tokens, {chunk_tokens} tokens per chunk"]
    runs = {
        "seed-style: full forward each step, batch 1": lambda: [
            sample_codes(prior, 1, [seed], length=chunk_tokens, step="full") for seed in seeds],
        "ours: KV cache, batch 10, PriorStep kernel": lambda: sample_codes(prior, NUM_CHUNKS, seeds,
                                                                           length=chunk_tokens),
        "ours: KV cache, batch 10, reference step": lambda: sample_codes(prior, NUM_CHUNKS, seeds, length=chunk_tokens,
                                                                         step="cache"),
    }
    for run in runs.values():  # warm-up: first calls pay for allocations and kernel setup
        run()
    # Interleaved, so a change in machine load during the run hits every row alike.
    times = [{name: seconds(run) for name, run in runs.items()} for _ in range(args.repeats)]
    medians = {name: statistics.median(t[name] for t in times) for name in runs}
    baseline = medians[next(iter(runs))]
    lines.append(f"\n{'sampler (codes of 10 one-second chunks)':<52} {'median s':>9} {'speed-up':>9}")
    lines += [f"{name:<52} {median:>9.3f} {baseline / median:>8.1f}x" for name, median in medians.items()]
    if DEFAULT_MODEL_PATH.exists() and not args.random_init:
        loaded = load_default_model()
        lines += end_to_end_rows(loaded, args.repeats)
        lines += inversion_rows(loaded, args.repeats)
    write_results("sampling_bench", "\n".join(lines))


if __name__ == "__main__":
    main()
