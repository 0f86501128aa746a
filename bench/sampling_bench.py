"""Seconds to sample the codes of 10 one-second chunks: seed-style sampler vs ours, on the same weights.

    .venv/bin/python bench/sampling_bench.py [--repeats 3] [--threads N]

seed-style: a full forward pass every step, batch 1, chunk after chunk (sample_codes_full_forward).
ours:       all 10 chunks in one batch through the KV cache (sample_codes).
The prior is the bundled default model's if distill_nb/data/default.distill exists (and --random-init is
not given), else a randomly initialised default-sized one (codebook 128, d_model 256, 4 layers, 4 heads,
seq_len 144); eval mode either way.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

import distill_nb
from distill_nb.prior import CodePrior, PriorConfig
from distill_nb.sampling import sample_codes, sample_codes_full_forward

NUM_CHUNKS = 10
DEFAULT_MODEL_PATH = Path(distill_nb.__file__).parent / "data" / "default.distill"


def load_prior(random_init: bool) -> tuple[CodePrior, str]:
    if DEFAULT_MODEL_PATH.exists() and not random_init:
        from distill_nb.model_file import load_default_model  # noqa: PLC0415  (written by another module)

        prior = load_default_model().prior
        if prior is not None:
            return prior.eval(), f"bundled model {DEFAULT_MODEL_PATH.name}"
    with torch.random.fork_rng():  # nn.Module init draws from the global RNG: seed it, then restore it
        torch.manual_seed(0)
        return CodePrior(PriorConfig(codebook_size=128)).eval(), "random init"


def seconds(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


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

    prior, source = load_prior(args.random_init)
    seeds = list(range(NUM_CHUNKS))
    c = prior.config
    print(f"prior: {source}; codebook {c.codebook_size}, d_model {c.d_model}, {c.n_layers} layers, "
          f"{c.n_heads} heads, seq_len {c.seq_len}; torch {torch.__version__}, {torch.get_num_threads()} threads")

    def seed_style() -> None:
        for seed in seeds:
            sample_codes_full_forward(prior, 1, [seed])

    def ours() -> None:
        sample_codes(prior, NUM_CHUNKS, seeds)

    sample_codes_full_forward(prior, 1, [0])  # warm-up: first calls pay for allocations and kernel setup
    sample_codes(prior, NUM_CHUNKS, seeds)
    # Interleaved, so a change in machine load during the run hits both rows alike.
    times = [(seconds(seed_style), seconds(ours)) for _ in range(args.repeats)]
    seed_s = statistics.median(seed for seed, _ in times)
    ours_s = statistics.median(our for _, our in times)
    print(f"\n{'sampler (codes of 10 one-second chunks)':<52} {'median s':>9} {'speed-up':>9}")
    print(f"{'seed-style: full forward each step, batch 1':<52} {seed_s:>9.3f} {1.0:>8.1f}x")
    print(f"{'ours: KV cache, batch 10':<52} {ours_s:>9.3f} {seed_s / ours_s:>8.1f}x")


if __name__ == "__main__":
    main()
