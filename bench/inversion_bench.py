"""Mel -> waveform on real and decoded mels: how close, how clicky, how fast, and what the kernels buy.

    .venv/bin/python bench/inversion_bench.py [--corpus DIR] [--seeds 3] [--repeats 3]

Mels: the middle second of every file of at least 1 s in DIR/train and DIR/heldout (a corpus of real
recordings as bench/real_corpus.py writes it; without --corpus it is built in a temporary folder), and the 44
decoded chunks of the bundled model's "independent" takes with seeds 0, 11, 22 and 33 (10 s each).
Quality rows: each phase start at the settings such mels get (the default InversionSettings with 12
Griffin-Lim iterations for real mels, DECODED_INVERSION for decoded ones). "mel SC" is the spectral
convergence of the result's magnitude mel against the mel it inverts, mean over --seeds generator seeds
(lower is better); "clicks" counts samples over 10x their 4 ms neighbourhood, at multiples of n_fft /
elsewhere, per seed (bench/common.py), beside the count in the recordings themselves (their transients);
"s" is the median time of one inversion of all chunks.
Kernel rows: each kernel of distill_nb.kernels against its reference in distill_nb.inversion on the same
inputs, median of --repeats, and the largest difference of their results relative to the largest value.
Writes bench/results/inversion_bench.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import click_counts, median_seconds, mel_convergence, write_results
from real_corpus import build

from distill_nb import kernels
from distill_nb.audio import load_audio
from distill_nb.generation import GenerationSettings, generate
from distill_nb.inversion import (DECODED_INVERSION, InversionBases, InversionSettings, NNLSStop, griffin_lim, nnls,
                                  nnls_start, random_phase)
from distill_nb.model_file import load_default_model
from distill_nb.spectrogram import Spectrogram, mel_filterbank

DECODED_SEEDS = (0, 11, 22, 33)  # chunk i of seed s is sampled with seed s + i: 11 chunks each, none shared
REAL_INVERSION = InversionSettings(griffin_lim_iters=12)


def corpus_chunks(spectrogram: Spectrogram, corpus: Path) -> torch.Tensor:
    """The middle second [B, samples] of each file of at least 1 s."""
    chunk = spectrogram.chunk_samples
    chunks = []
    for path in sorted((corpus / "train").glob("*.wav")) + sorted((corpus / "heldout").glob("*.wav")):
        audio = load_audio(path, spectrogram.config.sample_rate)
        if len(audio) >= chunk:
            start = (len(audio) - chunk) // 2
            chunks.append(audio[start : start + chunk])
    return torch.from_numpy(np.stack(chunks))


def quality_rows(spectrogram: Spectrogram, label: str, mels: torch.Tensor, settings: InversionSettings,
                 seeds: int, repeats: int) -> list[str]:
    rows = []
    for start in ("gradient", "random"):
        chosen = dataclasses.replace(settings, phase_start=start)

        def invert(seed: int = 0) -> torch.Tensor:
            return spectrogram.mel_to_waveform(mels, chosen, length=spectrogram.chunk_samples,
                                               generator=torch.Generator().manual_seed(seed))

        audio = [invert(seed) for seed in range(seeds)]
        sc = np.mean([mel_convergence(spectrogram, mels, a) for a in audio])
        clicks = np.mean([click_counts(a, spectrogram.config.n_fft, spectrogram.config.sample_rate) for a in audio],
                         axis=0)
        rows.append(f"{f'{label}, {start} start':<40} {sc:>7.4f} {f'{clicks[0]:.1f} / {clicks[1]:.1f}':>13} "
                    f"{median_seconds(invert, repeats):>7.2f}")
    return rows


def kernel_row(name: str, reference: Callable[[], torch.Tensor], kernel: Callable[[], torch.Tensor],
               repeats: int) -> str:
    expected, fast = reference(), kernel()
    difference = float((fast - expected).abs().max() / expected.abs().max())
    reference_s, kernel_s = median_seconds(reference, repeats), median_seconds(kernel, repeats)
    return (f"{name:<44} {reference_s:>7.3f} {kernel_s:>7.3f} {100 * (1 - kernel_s / reference_s):>6.0f} % "
            f"{difference:>9.1e}")


def kernel_rows(spectrogram: Spectrogram, label: str, mels: torch.Tensor, settings: InversionSettings,
                repeats: int) -> list[str]:
    config = spectrogram.config
    bases = InversionBases.build(torch.from_numpy(mel_filterbank(config)), config.n_fft, mels.device)
    power_mel = (mels.exp() - config.log_floor).clamp_min(0.0).transpose(1, 2)
    start = nnls_start(power_mel, bases)
    stop = NNLSStop(settings.nnls_tolerance, settings.nnls_max_steps)
    magnitude = nnls(power_mel, start, bases, stop).sqrt()
    phase = random_phase(magnitude, torch.Generator().manual_seed(0))
    angles = torch.complex(torch.cos(phase), torch.sin(phase))
    gl_args = (magnitude, angles, settings.griffin_lim_iters, spectrogram.chunk_samples, bases.window,
               config.hop_length, settings.relaxation, 0.99)
    return [
        kernel_row(f"NNLS, {label}", lambda: nnls(power_mel, start, bases, stop),
                   lambda: kernels.nnls_shrinking_batch(power_mel, start, bases, stop), repeats),
        kernel_row(f"Griffin-Lim {settings.griffin_lim_iters}, {label}", lambda: griffin_lim(*gl_args),
                   lambda: kernels.griffin_lim_frame_major(*gl_args), repeats),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path,
                        help="a folder with train/ and heldout/ WAV files of real audio (default: build one)")
    parser.add_argument("--seeds", type=int, default=3, help="generator seeds per quality row")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    args = parser.parse_args()

    loaded = load_default_model()
    spectrogram = loaded.spectrogram
    decoded = torch.cat([generate(loaded, GenerationSettings(mode="independent"), seed=seed).mels
                         for seed in DECODED_SEEDS])
    with tempfile.TemporaryDirectory() as tmp:
        if args.corpus is None:
            build(Path(tmp), seed=0)
        recordings = corpus_chunks(spectrogram, args.corpus or Path(tmp))
    real = spectrogram.waveform_to_mel(recordings)
    inputs = [(f"{len(real)} real chunks", real, REAL_INVERSION),
              (f"{len(decoded)} decoded chunks", decoded, DECODED_INVERSION)]

    lines = [f"mel -> waveform; real: middle seconds of {args.corpus or 'bench/real_corpus.py (seed 0)'}, "
             f"InversionSettings(griffin_lim_iters=12); decoded: bundled model, DECODED_INVERSION", "",
             f"{'mels, phase start':<40} {'mel SC':>7} {'clicks':>13} {'s':>7}"]
    # Recordings have transients the click count also finds: the inverted audio has as many or fewer.
    clicks = click_counts(recordings, spectrogram.config.n_fft, spectrogram.config.sample_rate)
    lines.append(f"{f'{len(real)} real chunks, the recordings':<40} {'-':>7} {f'{clicks[0]} / {clicks[1]}':>13}")
    for label, mels, settings in inputs:
        lines += quality_rows(spectrogram, label, mels, settings, args.seeds, args.repeats)
    lines += ["", f"{'kernel vs reference':<44} {'ref s':>7} {'kernel':>7} {'saved':>8} {'max diff':>9}"]
    for label, mels, settings in inputs:
        lines += kernel_rows(spectrogram, label, mels, settings, args.repeats)
    write_results("inversion_bench", "\n".join(lines))


if __name__ == "__main__":
    main()
