"""Benchmark of the audio front end against librosa: mel, and mel -> waveform (NNLS + Griffin-Lim).

Run: .venv/bin/python bench/audio_bench.py [--repeats 5] [--librosa-inverse-repeats 1] [--n-iter 32]
                                           [--phase-seeds 3]

Prints one table of median wall times, speed-ups (librosa time / ours) and, for the inverse, the
spectral convergence ||S| - |S_hat||_F / ||S||_F of the linear STFT magnitude (lower is better),
averaged over the chunks and over --phase-seeds initial phases (one draw varies by about +-0.01).
Both sides use the same mel settings (the default SpectrogramConfig: 48 kHz, n_fft 2048, hop 512,
128 HTK mels, reflect padding) and the same n_iter.

librosa's mel_to_audio is mel_to_stft (NNLS by L-BFGS-B) + griffinlim; the benchmark calls the two
itself so the initial phase comes from an explicit seed rather than numpy's global RNG. A batch of
10 chunks is 10 librosa calls. Its NNLS takes minutes per chunk at n_fft 2048 on a small CPU, hence
the separate (default 1) repeat count for it. Writes bench/results/audio_bench.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import librosa
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import median_seconds, write_results  # noqa: E402

from distill_nb.inversion import InversionSettings  # noqa: E402
from distill_nb.spectrogram import Spectrogram  # noqa: E402


def bench_signal(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A mixture with tonal, noisy and sweeping parts that changes from second to second, float32 (n,)."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    f0 = 110 * 2 ** (np.floor(t) % 5 / 4)  # a new pitch each second
    tone = sum(0.15 / k * np.sin(2 * np.pi * k * f0 * t + 2 * k * np.sin(2 * np.pi * 5 * t)) for k in range(1, 6))
    bursts = 0.1 * rng.standard_normal(t.size) * np.exp(-(((t % 1.0) - 0.6) / 0.08) ** 2)
    sweep = 0.1 * np.sin(2 * np.pi * (200 * (t % 1.0) + 3000 * (t % 1.0) ** 2))
    return (tone + bursts + sweep).astype(np.float32)


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one untimed warm-up call."""
    fn()
    return median_seconds(fn, repeats)


def timed(fn):
    """(result, seconds) of one call."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of every fast measurement")
    parser.add_argument("--librosa-inverse-repeats", type=int, default=1,
                        help="timed repeats of librosa's mel -> waveform (minutes per chunk)")
    parser.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations, both sides")
    parser.add_argument("--phase-seeds", type=int, default=3,
                        help="initial phases per chunk that the spectral convergence is averaged over")
    args = parser.parse_args()

    spectrogram = Spectrogram()
    config = spectrogram.config
    sr, n_fft, hop = config.sample_rate, config.n_fft, config.hop_length
    mel_kwargs = dict(sr=sr, n_fft=n_fft, fmin=config.f_min, fmax=config.f_max,
                      htk=config.mel_scale == "htk", norm=config.mel_norm)
    chunk = spectrogram.chunk_samples
    audio = bench_signal(10.0, sr)
    chunks = audio.reshape(10, chunk)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    def spectral_convergence(reference, estimate):
        def magnitude(x):
            return np.abs(librosa.stft(x, n_fft=n_fft, hop_length=hop, pad_mode="reflect"))
        ref, est = magnitude(reference), magnitude(estimate)
        return float(np.linalg.norm(ref - est) / np.linalg.norm(ref))

    def librosa_log_mel(x):
        power = librosa.feature.melspectrogram(y=x, hop_length=hop, power=2.0, pad_mode="reflect",
                                               n_mels=config.n_mels, **mel_kwargs)
        return np.log(power + config.log_floor)

    rows = []  # (task, ours_s, librosa_s, sc_ours, sc_librosa)

    for seconds in (1, 10):
        x = audio[: seconds * sr]
        log(f"mel {seconds} s ...")
        ours = median_time(lambda: spectrogram.waveform_to_mel(x), args.repeats)
        theirs = median_time(lambda: librosa_log_mel(x), args.repeats)
        rows.append((f"mel, {seconds} s", ours, theirs, None, None))

    mels = spectrogram.waveform_to_mel(chunks)  # [10, n_mels, frames]
    for batch in (1, 10):
        log(f"mel -> waveform, ours, batch {batch} ...")

        def ours_inverse(seed=0):
            return spectrogram.mel_to_waveform(mels[:batch], InversionSettings(griffin_lim_iters=args.n_iter),
                                               length=chunk, generator=torch.Generator().manual_seed(seed)).numpy()

        ours = median_time(ours_inverse, args.repeats)
        sc_ours = np.mean([spectral_convergence(c, y) for seed in range(args.phase_seeds)
                           for c, y in zip(chunks, ours_inverse(seed))])

        times, sc_theirs = [], []
        for repeat in range(args.librosa_inverse_repeats):
            total = 0.0
            for i in range(batch):  # librosa has no batching: one call per chunk
                power_mel = np.exp(mels[i].double().numpy()) - config.log_floor
                log(f"mel -> waveform, librosa, batch {batch}, repeat {repeat + 1}, chunk {i + 1} ...")

                def griffin_lim(magnitude, seed):
                    return librosa.griffinlim(magnitude, n_iter=args.n_iter, hop_length=hop, n_fft=n_fft,
                                              length=chunk, pad_mode="reflect", random_state=seed)

                def librosa_inverse():
                    magnitude = librosa.feature.inverse.mel_to_stft(power_mel, power=2.0, **mel_kwargs)
                    return magnitude, griffin_lim(magnitude, 0)

                (magnitude, y), seconds = timed(librosa_inverse)
                total += seconds
                if repeat == 0:  # more phases reuse the (slow, deterministic) NNLS magnitude, untimed
                    sc_theirs += [spectral_convergence(chunks[i], y)] + [
                        spectral_convergence(chunks[i], griffin_lim(magnitude, seed))
                        for seed in range(1, args.phase_seeds)]
            times.append(total)
        rows.append((f"mel -> waveform, 1 s chunk x {batch}", ours, statistics.median(times), sc_ours,
                     float(np.mean(sc_theirs))))

    header = f"{'task':<34}{'ours (s)':>11}{'librosa (s)':>13}{'speed-up':>10}{'SC ours':>10}{'SC librosa':>12}"
    lines = [f"distill_nb mel and mel_to_waveform vs librosa {librosa.__version__} (n_fft {n_fft}, hop {hop}, "
             f"{config.n_mels} {config.mel_scale} mels, {sr} Hz; n_iter {args.n_iter}; median of {args.repeats} "
             f"repeats, librosa inverse {args.librosa_inverse_repeats}; SC over {args.phase_seeds} phase seeds)",
             header, "-" * len(header)]
    for task, ours, theirs, sc_ours, sc_theirs in rows:
        sc = f"{sc_ours:>10.4f}{sc_theirs:>12.4f}" if sc_ours is not None else f"{'':>10}{'':>12}"
        lines.append(f"{task:<34}{ours:>11.4f}{theirs:>13.3f}{theirs / ours:>9.1f}x{sc}")
    write_results("audio_bench", "\n".join(lines))


if __name__ == "__main__":
    main()
