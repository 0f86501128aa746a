"""How abrupt the seams of a take are, for continuation and for each stitching of independent chunks.

    .venv/bin/python bench/seam_bench.py [--model PATH] [--seeds 4] [--duration 10] [--device cpu]

For continuation (one stream of columns: its seams are where a prior window starts its new columns, with
no blend in the audio) and for independent chunks with each stitching ("crossfade", "overlap_add"), it
generates one take per seed (all takes in one batch) with otherwise default settings, and measures every seam
with analysis.seam_discontinuity: the peak spectral flux around the seam over the median peak of
non-silent seam-free stretches (1.0 = no more abrupt than the rest of the audio), and the sample jump at
the seam over the typical sample step of non-silent audio. Spectral flux sees clicks and sudden onsets,
not a texture that changes from one chunk to the next, so a third measure, the texture ratio, compares
the mean log-mel of the 0.1 s just before each blended region (or seam point) with the 0.1 s just after it (RMS
difference), over the same comparison at the points halfway between seams (1.0 = the sound changes at a
seam no more than inside a chunk).

Seams in silence (every frame around them more than analysis.SILENT_DB below the take's loudest frame)
have nothing to hear: they are counted, not scored, and all three ratios are medians over the non-silent
seams of all takes of a row (halfway points whose texture windows are all silent are left out too; so
are the seams of a take without a non-silent reference, whose ratios seam_discontinuity leaves NaN).
"silent frames" is the share of silent analysis.audio_features frames over all the row's takes: a model
that falls silent scores few seams, whatever its ratios. The flux ratio is also given relative to the
named baseline, independent + crossfade (the original system's generation). The model is the bundled
default unless --model names a file. The table is printed and written to bench/results/seam_bench.md.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from common import click_counts, write_results

from distill_nb.analysis import SILENT_DB, AudioFeatures, audio_features, seam_discontinuity
from distill_nb.generation import STITCHES, GenerationSettings, generate_takes
from distill_nb.model_file import load_default_model, load_model

BASELINE = ("independent", "crossfade")
TEXTURE_WINDOW_S = 0.1
SEED_SPACING = 1_000_003


def all_silent(features: AudioFeatures, start: int, stop: int) -> bool:
    """Whether every audio_features frame overlapping samples [start, stop) of one take is silent."""
    first = max(0, -(-(start - features.frame_length + 1) // features.hop_length))
    last = min(len(features.silent) - 1, (stop - 1) // features.hop_length)
    return bool(features.silent[first:last + 1].all())


def texture_changes(loaded, take, silent_seams: np.ndarray, features: AudioFeatures,
                    gap: int) -> tuple[list[float], list[float]]:
    """Log-mel changes across the non-silent seams and across the non-silent halfway points of one take; the
    compared windows start ``gap`` samples from the point (the edge of a blend)."""
    seams = np.asarray(take.seam_samples)
    if len(seams) < 2:
        return [], []
    width = round(TEXTURE_WINDOW_S * take.sample_rate)
    hop = loaded.spectrogram.config.hop_length
    mel = loaded.spectrogram.waveform_to_mel(take.audio)[0].numpy()  # [n_mels, frames]

    def change(at: int) -> float:
        before = mel[:, (at - gap - width) // hop:(at - gap) // hop].mean(axis=1)
        after = mel[:, (at + gap) // hop:(at + gap + width) // hop].mean(axis=1)
        return float(np.sqrt(np.mean((after - before) ** 2)))

    def inside(at: int) -> bool:
        return at - gap - width >= 0 and at + gap + width <= len(take.audio)

    at_seams = [change(s) for s, silent in zip(seams, silent_seams) if inside(s) and not silent]
    halfway = [at for at in (seams[:-1] + seams[1:]) // 2 if inside(at)]
    between = [change(at) for at in halfway if not all_silent(features, at - gap - width, at + gap + width)]
    return at_seams, between


def median_or_nan(values: np.ndarray | list[float]) -> float:
    """The median of the values that are not NaN (unscored seams), or NaN when none are left."""
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if len(values) else math.nan


def measure(loaded, mode: str, stitch: str, seeds: list[int], duration_s: float) -> dict[str, float]:
    """Seam counts, median ratios over the non-silent seams of all takes, silent frame share, seconds per take."""
    settings = GenerationSettings(duration_s=duration_s, mode=mode, stitch=stitch)
    # Independent chunks blend over overlap_samples around each seam; a continuation seam is a point.
    gap = settings.overlap_samples // 2 + 1 if mode == "independent" else 0
    start = time.perf_counter()
    takes = generate_takes(loaded, settings, seeds)
    seconds = (time.perf_counter() - start) / len(seeds)
    reports = [seam_discontinuity(take.audio, take.sample_rate, take.seam_samples) for take in takes]
    features = [audio_features(take.audio, take.sample_rate) for take in takes]
    at_seams, between = [], []
    for take, report, take_features in zip(takes, reports, features):
        seam_changes, halfway_changes = texture_changes(loaded, take, report.silent, take_features, gap)
        at_seams += seam_changes
        between += halfway_changes
    between_median = median_or_nan(between)
    counts = [click_counts(torch.from_numpy(take.audio)[None], loaded.spectrogram.config.n_fft, take.sample_rate)
              for take in takes]
    clicks = f"{sum(c[0] for c in counts)} / {sum(c[1] for c in counts)}"
    return {
        "clicks": clicks,
        "seams": sum(len(r.silent) for r in reports),
        "silent": sum(r.silent_count for r in reports),
        "flux": median_or_nan(np.concatenate([r.flux_ratio for r in reports])),
        "jump": median_or_nan(np.concatenate([r.jump_ratio for r in reports])),
        "texture": median_or_nan(at_seams) / between_median if between_median > 0 else math.nan,
        "silent_frames": float(np.concatenate([f.silent for f in features]).mean()),
        "seconds": seconds,
    }


def table(rows: dict[tuple[str, str], dict[str, float]]) -> list[str]:
    """The rows as a Markdown table, one line per mode x stitching."""
    baseline = rows[BASELINE]["flux"]
    lines = ["| mode | stitch | seams | silent seams | flux ratio | vs baseline | jump ratio | texture ratio "
             "| silent frames | clicks | s / take |",
             "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for (mode, stitch), row in rows.items():
        silent_share = row["silent"] / row["seams"] if row["seams"] else math.nan
        stitch_name = stitch if mode == "independent" else "(one stream)"
        lines.append(f"| {mode} | {stitch_name} | {row['seams']} | {row['silent']} ({silent_share:.0%}) "
                     f"| {row['flux']:.2f} | {row['flux'] / baseline:.2f}x | {row['jump']:.2f} "
                     f"| {row['texture']:.2f} | {row['silent_frames']:.0%} | {row['clicks']} | {row['seconds']:.2f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .distill file (default: the bundled default model)")
    parser.add_argument("--seeds", type=int, default=4, help="takes per row (seeds SEED_SPACING apart)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per take")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    loaded = (load_default_model(device=args.device) if args.model is None
              else load_model(args.model, device=args.device))
    seeds = [SEED_SPACING * k for k in range(args.seeds)]  # far apart: neighbouring seeds share windows
    # Stitching applies to independent chunks only: continuation is one stream, one row.
    variants = [("continuation", "crossfade")] + [("independent", stitch) for stitch in STITCHES]
    rows = {variant: measure(loaded, *variant, seeds, args.duration) for variant in variants}

    header = [f"model: {args.model or 'bundled default'}; device {args.device}; {len(seeds)} takes of "
              f"{args.duration:g} s per row (seeds {SEED_SPACING} apart), default settings otherwise.", ""]
    footer = [
        "",
        "Ratios: at seams / away from seams over the non-silent seams, 1.0 = seamless, lower is better; "
        f"baseline = {' + '.join(BASELINE)}. Silent seams (every frame around them more than {SILENT_DB:g} dB "
        "below the take's loudest) are counted, not scored; silent frames: share of the takes' frames that are "
        "silent; clicks: samples over 10x the median of their 4 ms neighbourhood in all takes, at multiples of n_fft "
        "(where the old phase start put them) / elsewhere (bench/common.py). "
        "nan: no non-silent seam to score.",
    ]
    write_results("seam_bench", "\n".join(header + table(rows) + footer))


if __name__ == "__main__":
    main()
