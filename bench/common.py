"""What the benches share: the results file each one writes, and the measures of inverted audio."""

from __future__ import annotations

import datetime
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from distill_nb.spectrogram import Spectrogram

RESULTS = Path(__file__).resolve().parent / "results"
CLICK_RATIO = 10.0  # as tests/test_inversion.py: a sample this far above its 4 ms neighbourhood is a click


def write_results(bench: str, report: str) -> Path:
    """Print ``report`` and write it to bench/results/<bench>.md under the command, date, torch version and
    thread count."""
    print(report)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{bench}.md"
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = shlex.join(["python", f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    path.write_text(f"# {bench}\n\n`{command}`: {when}; torch {torch.__version__}, {torch.get_num_threads()} intra-op "
                    f"threads; Python {platform.python_version()} on {platform.machine()}\n\n"
                    f"```\n{report.strip()}\n```\n")
    return path


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``run`` (warm it up first where the first call is slower)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mel_convergence(spectrogram: Spectrogram, mels: torch.Tensor, audio: torch.Tensor) -> float:
    """||sqrt(P) - sqrt(P_hat)|| / ||sqrt(P)|| between the power mels of ``mels`` and of ``audio``, all chunks."""
    floor = spectrogram.config.log_floor
    target = (mels.exp() - floor).clamp_min(0.0).sqrt()
    rebuilt = (spectrogram.waveform_to_mel(audio).exp() - floor).clamp_min(0.0).sqrt()
    return float(torch.linalg.norm(target - rebuilt) / torch.linalg.norm(target))


def click_counts(audio: torch.Tensor, n_fft: int, sample_rate: int) -> tuple[int, int]:
    """Samples of ``audio`` [B, n] that stand over CLICK_RATIO times the median |x| of their 4 ms
    neighbourhood (medians floored at 1 % of the chunk's peak): (within 3 samples of a multiple of n_fft,
    elsewhere). The old phase-gradient start put its clicks at the multiples of n_fft."""
    half = round(0.002 * sample_rate)
    at_multiples, elsewhere = 0, 0
    for chunk in np.abs(audio.cpu().numpy()):
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(chunk, half, mode="reflect"), 2 * half + 1)
        clicks = np.flatnonzero(chunk > CLICK_RATIO * np.maximum(np.median(windows, axis=1), 1e-2 * chunk.max()))
        offset = np.minimum(clicks % n_fft, n_fft - clicks % n_fft)
        at_multiples += int((offset <= 3).sum())
        elsewhere += int((offset > 3).sum())
    return at_multiples, elsewhere
