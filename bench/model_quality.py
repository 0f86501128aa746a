"""How good a model sounds, in numbers: held-out reconstruction, generated takes against the corpus, the prior.

    .venv/bin/python bench/model_quality.py [--model PATH] [--takes 8] [--seconds 10]
    .venv/bin/python bench/model_quality.py --real [--corpus DIR] [--model PATH] [--preset standard]

Default: the bundled model (or --model) against the procedural demo corpus it trains on (seed 0) and a fresh
one held out (seed 1). --real: the corpus of real recordings that bench/real_corpus.py writes (into --corpus,
a temporary folder by default): a model is trained on its train/ folder with --preset (unless --model names
one, which must have been trained on that folder) and measured against its heldout/ instrument phrases.

The measures are quality.evaluate_model's (every set in take-sized windows of a stream):
- reconstruction: spectral convergence ||A - A_hat|| / ||A|| of the held-out mel magnitudes and their codes
  decoded, beside the Griffin-Lim ceiling (the mel inverted and analysed again);
- pitchiness and silent share of the corpus, the held-out audio, its reconstruction and generated takes;
- feature distance (loudness, centroid, flatness, pitchiness, silent share; 1 = one corpus standard deviation)
  of the reconstruction and of each generation mode to the corpus.
Then the prior's perplexity on the held-out codes, the codes' Jensen-Shannon divergence to the training
codes, and the issue's targets. Writes bench/results/model_quality.md (--real: model_quality_real.md).
"""

from __future__ import annotations

import argparse
import math
import pathlib
import tempfile
import time

import torch
import torch.nn.functional as F
from common import write_results
from real_corpus import build

from distill_nb.analysis import code_histograms, js_divergence
from distill_nb.corpus import build_corpus, demo_corpus
from distill_nb.generation import GenerationSettings, generate_takes
from distill_nb.model_file import LoadedVQModel, load_default_model, load_model, save_model
from distill_nb.quality import QualityReport, evaluate_model, stream_windows
from distill_nb.stages import DEFAULT_PRESET, PRESETS, train_model

# The sound-quality issue's targets.
MAX_RECONSTRUCTION_SC = 0.35
MIN_RECONSTRUCTION_PITCHINESS = 0.7
MAX_SILENT_SHARE_GAP = 0.10
MAX_DISTANCE_RATIO = 1.5


def prior_lines(loaded: LoadedVQModel, heldout: list, seconds: float, takes: int) -> list[str]:
    """Perplexity of the prior on held-out windows of codes, and the JSD of generated codes to the training codes."""
    prior, geometry = loaded.prior, loaded.geometry
    with torch.inference_mode():
        tokens = []
        for window in stream_windows(heldout, seconds, loaded.sample_rate):
            codes = loaded.vqvae.encode_stream(loaded.spectrogram.waveform_to_mel(window)[0]).reshape(-1)
            whole = len(codes) // prior.seq_len * prior.seq_len
            tokens += list(codes[:whole].view(-1, prior.seq_len))
        lines = []
        if tokens:
            tokens = torch.stack(tokens)
            loss = F.cross_entropy(prior(tokens).flatten(0, 1), tokens.flatten())
            lines.append(f"prior perplexity on held-out windows of codes: {math.exp(float(loss)):.1f} "
                         f"(codebook {prior.codebook_size}; {len(tokens)} windows of {prior.seq_len} tokens)")
        if loaded.train_code_counts is not None:
            results = generate_takes(loaded, GenerationSettings(duration_s=seconds), list(range(0, takes * 997, 997)))
            generated = code_histograms(torch.cat([r.codes.reshape(-1, geometry.levels) for r in results]),
                                        prior.codebook_size)
            jsd = js_divergence(generated, loaded.train_code_counts)
            lines.append("JS divergence of generated codes (continuation) to the training codes, per level (bits): "
                         + ", ".join(f"{float(v):.3f}" for v in jsd))
    return lines


def target_lines(report: QualityReport) -> list[str]:
    reconstruction = report.distance["reconstruction"]["mean"]
    checks = [
        (f"held-out reconstruction spectral convergence <= {MAX_RECONSTRUCTION_SC}",
         f"{report.reconstruction_sc:.3f}", report.reconstruction_sc <= MAX_RECONSTRUCTION_SC),
        (f"pitchiness of reconstructions >= {MIN_RECONSTRUCTION_PITCHINESS}",
         f"{report.pitchiness['reconstruction']:.2f}",
         report.pitchiness["reconstruction"] >= MIN_RECONSTRUCTION_PITCHINESS),
    ]
    for mode in ("continuation", "independent"):
        gap = abs(report.silent_share[mode] - report.silent_share["corpus"])
        checks.append((f"{mode}: silent share within {MAX_SILENT_SHARE_GAP:.0%} of the corpus's",
                       f"{report.silent_share[mode]:.0%} vs {report.silent_share['corpus']:.0%}",
                       gap <= MAX_SILENT_SHARE_GAP))
        ratio = report.distance[mode]["mean"] / reconstruction
        checks.append((f"{mode}: feature distance <= {MAX_DISTANCE_RATIO}x the reconstruction's",
                       f"{report.distance[mode]['mean']:.2f} = {ratio:.2f}x", ratio <= MAX_DISTANCE_RATIO))
    return ["", "targets:"] + [f"  {'met' if ok else 'MISSED':6s} {name}: {value}" for name, value, ok in checks]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="the corpus of real recordings (bench/real_corpus.py)")
    parser.add_argument("--corpus", type=pathlib.Path, help="--real: where to write it (default: a temporary folder)")
    parser.add_argument("--model", help="a .distill file (default: the bundled model; with --real, train one)")
    parser.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET, help="--real: training preset")
    parser.add_argument("--save", type=pathlib.Path, help="--real: also save the trained model here")
    parser.add_argument("--takes", type=int, default=8, help="generated takes per mode")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per take (and per measured window)")
    args = parser.parse_args()

    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.real:
            folder = args.corpus or pathlib.Path(tmp)
            seconds = build(folder, seed=0)
            corpus = build_corpus(folder / "train")
            heldout = build_corpus(folder / "heldout", val_fraction=0.5)
            heldout_audio = heldout.train_audio + heldout.val_audio
            lines.append(f"real corpus: {seconds['train']:.0f} s of training files (of which {len(corpus.val_files)} "
                         f"files validate), {seconds['heldout']:.0f} s of held-out instrument phrases")
            if args.model:
                loaded = load_model(args.model)
                lines.append(f"model: {args.model}")
            else:
                started = time.perf_counter()
                loaded, _ = train_model(corpus, preset_name=args.preset, name="real corpus", measure_quality=False)
                lines.append(f"model: trained with preset {args.preset!r} in {time.perf_counter() - started:.0f} s "
                             f"on {torch.get_num_threads()} threads")
                if args.save:
                    save_model(loaded, args.save)
            corpus_audio = corpus.train_audio
        else:
            loaded = load_model(args.model) if args.model else load_default_model()
            corpus_audio = demo_corpus(seed=0).train_audio
            heldout_audio = demo_corpus(seed=1, seconds=60.0).train_audio
            lines.append(f"model: {args.model or 'bundled default'}; corpus: demo (seed 0), held out: demo (seed 1)")
        report = evaluate_model(loaded, corpus_audio, heldout_audio, takes=args.takes, take_seconds=args.seconds,
                                seed=7)
    lines += ["", report.summary(), ""]
    lines += [f"  {name:15s} " + " ".join(f"{feature} {value:.2f}" for feature, value in distances.items())
              for name, distances in report.distance.items()]
    if loaded.prior is not None:
        lines += [""] + prior_lines(loaded, heldout_audio, args.seconds, min(args.takes, 4))
    lines += target_lines(report)
    write_results("model_quality_real" if args.real else "model_quality", "\n".join(lines))


if __name__ == "__main__":
    main()
