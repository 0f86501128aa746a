"""How abrupt the seams between chunks are, for each generation mode x stitching.

    .venv/bin/python bench/seam_bench.py [--model PATH] [--seeds 4] [--duration 10] [--device cpu]

For every mode ("independent", "continuation") and stitching ("crossfade", "overlap_add") it generates
one take per seed (all takes in one batch) with otherwise default settings, and measures every seam
with analysis.seam_discontinuity: the peak spectral flux around the seam over the median peak of
seam-free stretches (1.0 = no more abrupt than the rest of the audio), and the sample jump at the seam
over the typical sample step. Spectral flux sees clicks and sudden onsets, not a texture that
changes from one chunk to the next, so a third measure, the texture ratio, compares the mean log-mel
of the 0.1 s just before each blended region with the 0.1 s just after it (RMS difference), over the
same comparison at the points halfway between seams (1.0 = the sound changes at a seam no more than
inside a chunk). The flux ratio is also given relative to the named baseline, independent + crossfade
(the original system's generation). The model is the bundled default unless --model names a file.
Writes bench/results/seam_bench.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import write_results

from distill_nb.analysis import seam_discontinuity
from distill_nb.generation import MODES, STITCHES, GenerationSettings, generate_takes
from distill_nb.model_file import load_default_model, load_model

BASELINE = ("independent", "crossfade")
TEXTURE_WINDOW_S = 0.1


def texture_ratio(loaded, take) -> float:
    """Median log-mel change across seams over the median change halfway between seams."""
    seams = np.asarray(take.seam_samples)
    step = int(seams[1] - seams[0])
    gap = (loaded.chunk_samples - step) // 2 + 1  # from a seam (the blend's centre) to the blend's edge
    width = round(TEXTURE_WINDOW_S * take.sample_rate)
    hop = loaded.spectrogram.config.hop_length
    mel = loaded.spectrogram.waveform_to_mel(take.audio)[0].numpy()  # [n_mels, frames]

    def change(at: int) -> float:
        before = mel[:, (at - gap - width) // hop:(at - gap) // hop].mean(axis=1)
        after = mel[:, (at + gap) // hop:(at + gap + width) // hop].mean(axis=1)
        return float(np.sqrt(np.mean((after - before) ** 2)))

    # Keep the points whose windows fit inside the take.
    inside = lambda at: at - gap - width >= 0 and at + gap + width <= len(take.audio)  # noqa: E731
    at_seams = [change(s) for s in seams if inside(s)]
    between = [change(s) for s in (seams[:-1] + step // 2) if inside(s)]
    return float(np.median(at_seams) / np.median(between))


def measure(loaded, mode: str, stitch: str, seeds: list[int], duration_s: float) -> dict[str, float]:
    """Median flux, jump and texture ratios over all seams of all takes, and seconds per take."""
    settings = GenerationSettings(duration_s=duration_s, mode=mode, stitch=stitch)
    start = time.perf_counter()
    takes = generate_takes(loaded, settings, seeds)
    seconds = (time.perf_counter() - start) / len(seeds)
    reports = [seam_discontinuity(take.audio, take.sample_rate, take.seam_samples) for take in takes]
    return {
        "flux": float(np.median(np.concatenate([r.flux_ratio for r in reports]))),
        "jump": float(np.median(np.concatenate([r.jump_ratio for r in reports]))),
        "texture": float(np.median([texture_ratio(loaded, take) for take in takes])),
        "seams": sum(len(r.seam_samples) for r in reports),
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .distill file (default: the bundled default model)")
    parser.add_argument("--seeds", type=int, default=4, help="takes per row, seeds 0 .. n-1")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per take")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = load_model(args.model, device=args.device) if args.model else load_default_model(device=args.device)
    seeds = list(range(args.seeds))
    lines = [f"model: {args.model or 'bundled default'}; {len(seeds)} takes of {args.duration:g} s per row, "
             f"default settings otherwise; device {args.device}"]

    rows = {(mode, stitch): measure(loaded, mode, stitch, seeds, args.duration) for mode in MODES for stitch in STITCHES}
    baseline = rows[BASELINE]["flux"]
    lines.append(f"\n{'mode':<13} {'stitch':<12} {'seams':>5} {'flux ratio':>10} {'vs baseline':>11} "
                 f"{'jump ratio':>10} {'texture ratio':>13} {'s / take':>9}")
    for (mode, stitch), row in rows.items():
        lines.append(f"{mode:<13} {stitch:<12} {row['seams']:>5} {row['flux']:>10.2f} {row['flux'] / baseline:>10.2f}x "
                     f"{row['jump']:>10.2f} {row['texture']:>13.2f} {row['seconds']:>9.2f}")
    lines.append(f"\nratios: at seams / away from seams, 1.0 = seamless, lower is better; "
                 f"baseline = {' + '.join(BASELINE)}")
    write_results("seam_bench", "\n".join(lines))


if __name__ == "__main__":
    main()
