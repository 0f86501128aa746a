"""Sampling code sequences from a CodePrior.

`filter_logits` applies temperature, top-k, top-p and min-p with the semantics of the Hugging Face
transformers logits warpers (see DESIGN.md, "Sampling semantics"). `sample_codes` samples a batch of
sequences through the prior's KV cache; row b draws only from its own generator seeded seeds[b], with
its uniforms drawn up front and turned into codes by inverse CDF over the tokens in descending order
of probability (the order the filters already sort into), so a row's codes do not depend on the batch
it was sampled in.
"""

from __future__ import annotations

import math
import numbers
import secrets
from collections.abc import Callable, Sequence

import torch

from distill_nb import kernels
from distill_nb.checks import check_choice, check_int, check_positive, check_real
from distill_nb.prior import CodePrior

# logits_at(codes [B, seq_len], i) -> float32 logits [B, codebook_size] of codes[:, i] given codes[:, :i]
LogitsAt = Callable[[torch.Tensor, int], torch.Tensor]


# check_real's description and test for top_p and min_p; 0 turns either filter off.
_UNIT_RANGE = ("in [0, 1] (0 = off)", lambda v: 0.0 <= v <= 1.0)


def _temperature_divisor(temperature: float | torch.Tensor, logits: torch.Tensor) -> float | torch.Tensor:
    """A float, or a per-row tensor [B] / [B, 1] reshaped to broadcast over logits [B, V]."""
    if not isinstance(temperature, torch.Tensor):
        return check_positive("temperature", temperature)
    if temperature.is_complex() or temperature.dtype == torch.bool:
        raise TypeError(f"temperature must be a real tensor, got dtype {temperature.dtype}")
    if temperature.ndim > 0 and (logits.ndim != 2 or temperature.shape not in ((len(logits),), (len(logits), 1))):
        raise ValueError(
            f"a temperature tensor must have shape [B] or [B, 1] for logits [B, V], "
            f"got {tuple(temperature.shape)} for logits {tuple(logits.shape)}"
        )
    temperature = temperature.to(logits.device, torch.float32)
    if not bool(torch.all((temperature > 0) & torch.isfinite(temperature))):
        raise ValueError(f"temperature must be finite and > 0 in every row, got {temperature.flatten().tolist()}")
    return temperature.reshape(-1, 1) if temperature.ndim else temperature


def filter_logits(
    logits: torch.Tensor,
    temperature: float | torch.Tensor = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
    min_p: float = 0.0,
) -> torch.Tensor:
    """Scale and filter logits [..., V]; returns a new float32 tensor with removed tokens at -inf.

    In this order, on float32 (Hugging Face transformers' warpers):
      temperature: logits / temperature; a finite float > 0, or a per-row tensor [B] or [B, 1].
      top_k: keep every token whose logit is >= the k-th largest (ties kept); k is clamped to V; 0 = off.
      top_p: keep a token iff the probability mass of the tokens ranked above it is < top_p, so the
             smallest set whose mass is >= top_p survives and the most probable token always does;
             equal probabilities rank by token index. 0 or 1 = off.
      min_p: remove tokens whose probability is < min_p * the largest probability; 0 = off.
    `logits` itself is never modified. Logits may hold -inf, but NaN, +inf (also from a temperature
    so small that scaling overflows) or a row that is entirely -inf raise ValueError.
    """
    top_k = check_int("top_k", top_k, 0)
    top_p, min_p = check_real("top_p", top_p, *_UNIT_RANGE), check_real("min_p", min_p, *_UNIT_RANGE)
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point torch.Tensor [..., V], got {logits!r:.80}")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    scores = logits.float() / _temperature_divisor(temperature, logits)
    if not bool(_finite_rows(scores).all()):
        raise ValueError(_NON_FINITE)
    return _filter_scaled(scores, top_k, top_p, min_p)


_NON_FINITE = (
    "logits must be finite or -inf with a finite value in every row after temperature scaling; "
    "got NaN, +inf or an all -inf row (or a temperature so small that the scaled logits overflow)"
)


def _finite_rows(scores: torch.Tensor) -> torch.Tensor:
    """bool [...]: the row's largest score is finite (it is NaN, +inf or -inf for a bad row)."""
    return torch.isfinite(scores.amax(dim=-1))


def _top_k(scores: torch.Tensor, top_k: int) -> torch.Tensor:
    if top_k == 0:
        return scores
    kth_largest = scores.topk(min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth_largest, -math.inf)


def _sorted_filtered(scores: torch.Tensor, top_p: float, min_p: float) -> tuple[torch.Tensor, ...]:
    """top-p then min-p on scaled scores [..., V], seen in descending order of probability.

    Returns (cdf, order, last): the cumulative probabilities in that order (equal ones by token
    index), the token at each sorted position, and long [..., 1] the sorted position of the last
    token that survives. Both filters keep a prefix of the order (the mass above a token only grows
    along it, the probability only falls), so one position says what survives. top-p keeps position
    j iff the mass above it, cdf[j - 1], is < top_p: every j up to the number of cdf values < top_p.
    min-p compares probabilities with the top one, a ratio that the renormalisation after top-p
    leaves unchanged.
    """
    probs, order = scores.softmax(dim=-1).sort(dim=-1, descending=True, stable=True)
    cdf = probs.cumsum(dim=-1)
    if 0.0 < top_p < 1.0:  # the number of cdf values < top_p (cdf never falls)
        last = (cdf < top_p).sum(dim=-1, keepdim=True).clamp_max_(cdf.shape[-1] - 1)
    else:
        last = torch.full_like(cdf[..., :1], cdf.shape[-1] - 1, dtype=torch.long)
    if min_p > 0.0:
        # At least the top token: a NaN row (rejected by the callers) must still index something.
        last = torch.minimum(last, (probs >= min_p * probs[..., :1]).sum(dim=-1, keepdim=True).sub_(1).clamp_min_(0))
    return cdf, order, last


def _filter_scaled(scores: torch.Tensor, top_k: int, top_p: float, min_p: float) -> torch.Tensor:
    """top-k, top-p and min-p of `filter_logits` on temperature-scaled, checked float32 scores."""
    scores = _top_k(scores, top_k)
    if not (0.0 < top_p < 1.0 or min_p > 0.0):
        return scores
    _, order, last = _sorted_filtered(scores, top_p, min_p)
    removed = torch.arange(scores.shape[-1], device=scores.device) > last  # in sorted order
    return scores.masked_fill(removed.scatter(-1, order, removed), -math.inf)


def _draw(
    scores: torch.Tensor, top_k: int, top_p: float, min_p: float, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token per row of scaled scores [B, V], drawn from what `filter_logits` keeps, by inverse CDF.

    The tokens are laid out in descending order of probability and row b takes the one whose
    interval of the kept mass holds uniforms[b, 0] in [0, 1): token j with probability p_j / kept mass,
    never a removed token. Returns (tokens long [B], the kept mass [B, 1], NaN for a bad row).
    """
    cdf, order, last = _sorted_filtered(_top_k(scores, top_k), top_p, min_p)
    mass = cdf.gather(-1, last)
    position = torch.searchsorted(cdf, uniforms * mass, right=True)
    # u * mass < mass, so position <= last, except when rounding lands u * mass on the last boundary.
    return order.gather(-1, torch.minimum(position, last)).squeeze(-1), mass


def _cached_logits(prior: CodePrior, batch_size: int, device: torch.device, fast_step: bool = False) -> LogitsAt:
    cache = prior.new_cache(batch_size, device)
    step = kernels.PriorStep(prior) if fast_step else None

    def logits_at(codes: torch.Tensor, i: int) -> torch.Tensor:
        # The first call feeds the start token and the whole prefix; every later one the code sampled last.
        if cache.length == 0:
            return prior.next_logits(codes[:, :i], cache)
        if step is not None:
            return step(codes.select(1, i - 1), cache)
        return prior.next_logits(codes[:, i - 1 : i], cache)

    return logits_at


def _fast_cached_logits(prior: CodePrior, batch_size: int, device: torch.device) -> LogitsAt:
    return _cached_logits(prior, batch_size, device, fast_step=True)


def _full_forward_logits(prior: CodePrior, batch_size: int, device: torch.device) -> LogitsAt:
    # codes[:, i] is not sampled yet, but logits[:, i] never sees it (causal), so it can ride along.
    return lambda codes, i: prior(codes[:, : i + 1])[:, -1].float()


# How a sampling step computes its logits (see `sample_codes`).
_STEPS: dict[str, Callable[[CodePrior, int, torch.device], LogitsAt]] = {
    "kernel": _fast_cached_logits, "cache": _cached_logits, "full": _full_forward_logits}


def _level_temperatures(temperature: float | Sequence[float], levels: int) -> list[float]:
    if isinstance(temperature, numbers.Real):  # a bool too: check_positive names and rejects it
        return [check_positive("temperature", temperature)] * levels
    if not isinstance(temperature, Sequence) or isinstance(temperature, str):
        raise TypeError(f"temperature must be a float or a sequence of {levels} floats, got {temperature!r}")
    if len(temperature) != levels:
        raise ValueError(
            f"temperature must have one value per level ({levels}), got {len(temperature)}: {temperature!r}"
        )
    return [check_positive(f"temperature[{level}]", value) for level, value in enumerate(temperature)]


def _check_prefix(prefix: torch.Tensor, prior: CodePrior, num_sequences: int) -> None:
    if not isinstance(prefix, torch.Tensor) or prefix.is_floating_point() or prefix.dtype == torch.bool:
        raise TypeError(f"prefix must be an integer torch.Tensor [B, k], got {prefix!r:.80}")
    if prefix.ndim != 2 or len(prefix) != num_sequences or prefix.shape[1] > prior.seq_len:
        raise ValueError(
            f"prefix must have shape [num_sequences={num_sequences}, k] with k <= seq_len={prior.seq_len}, "
            f"got {tuple(prefix.shape)}"
        )
    if prefix.numel() and (prefix.min() < 0 or prefix.max() >= prior.codebook_size):
        raise ValueError(f"prefix codes must lie in [0, codebook_size={prior.codebook_size})")


def _sample(
    make_logits_at: Callable[[CodePrior, int, torch.device], LogitsAt],
    prior: CodePrior,
    num_sequences: int,
    seeds: Sequence[int],
    temperature: float | Sequence[float],
    top_k: int,
    top_p: float,
    min_p: float,
    prefix: torch.Tensor | None,
    device: torch.device | str | None,
    length: int | None,
) -> torch.Tensor:
    """The sampling loop of sample_codes, whichever way its steps compute their logits: filter, sample, append."""
    top_k = check_int("top_k", top_k, 0)
    top_p, min_p = check_real("top_p", top_p, *_UNIT_RANGE), check_real("min_p", min_p, *_UNIT_RANGE)
    temperatures = _level_temperatures(temperature, prior.levels)
    num_sequences = check_int("num_sequences", num_sequences, 1)
    if not isinstance(seeds, Sequence) or isinstance(seeds, str) or len(seeds) != num_sequences:
        raise ValueError(f"seeds must be a sequence of num_sequences={num_sequences} ints, got {seeds!r:.80}")
    # torch.Generator.manual_seed takes any 64-bit unsigned seed.
    seeds = [check_int(f"seeds[{b}]", seed, 0, 2**64 - 1) for b, seed in enumerate(seeds)]
    prior_device = next(prior.parameters()).device
    if device is not None and torch.empty(0, device=device).device != prior_device:
        raise ValueError(f"device must be the prior's device ({prior_device}) or None, got {device}")
    if prefix is not None:
        _check_prefix(prefix, prior, num_sequences)
    start = 0 if prefix is None else prefix.shape[1]
    length = prior.seq_len if length is None else check_int("length", length, max(start, 1), prior.seq_len)
    codes = torch.zeros(num_sequences, length, dtype=torch.long, device=prior_device)
    if prefix is not None:
        codes[:, :start] = prefix
    # Row b's uniform for position i comes from its own generator, whatever the batch or the prefix.
    # uniforms[i] is [B, 1], the shape the draw scales by the kept mass.
    uniforms = torch.stack(
        [torch.rand(prior.seq_len, generator=torch.Generator().manual_seed(seed)) for seed in seeds], dim=1
    ).unsqueeze(-1).to(prior_device)

    was_training = prior.training
    prior.eval()
    try:
        with torch.inference_mode():
            logits_at = make_logits_at(prior, num_sequences, prior_device)
            # filter_logits' filters without its per-call checks (the settings were checked above): a step
            # costs its number of calls. A bad row makes its kept mass NaN, which sticks in the sum; it is
            # reported once at the end instead of with a sync every step.
            mass_sum = torch.zeros(num_sequences, 1, device=prior_device)
            for i in range(start, length):
                scores = logits_at(codes, i)  # of codes[:, i] given codes[:, :i]
                temperature = temperatures[i % prior.levels]
                if temperature != 1.0:  # (x / 1 is x: skipping it saves an operation per step)
                    scores = scores / temperature
                tokens, mass = _draw(scores, top_k, top_p, min_p, uniforms[i])
                codes.select(1, i).copy_(tokens)  # codes[:, i] = tokens, without the index-tuple parsing
                mass_sum += mass
            if not bool(torch.isfinite(mass_sum).all()):
                raise ValueError(f"the prior produced non-finite logits: {_NON_FINITE}")
    finally:
        prior.train(was_training)
    return codes


def sample_codes(
    prior: CodePrior,
    num_sequences: int,
    seeds: Sequence[int],
    temperature: float | Sequence[float] = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    prefix: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    length: int | None = None,
    step: str = "kernel",
) -> torch.Tensor:
    """Sample num_sequences flat code sequences, long [B, length], all in one batch through the KV cache.

    Args:
        prior: the CodePrior; sampled in eval mode (its mode is restored afterwards).
        num_sequences: B, >= 1.
        seeds: B ints in [0, 2**64); row b draws only from a torch.Generator seeded seeds[b], so
            its codes do not depend on which other rows are sampled with it.
        temperature: a float > 0, or one per residual level (Q floats; token i has level i mod Q).
        top_k, top_p, min_p: filters, as in `filter_logits`.
        prefix: long [B, k], k <= seq_len: codes fed rather than sampled (continuation); they
            appear unchanged at the front of the output.
        device: None or the prior's device (the prior is not moved); the output lives there.
        length: tokens per sequence, prefix included, in [max(k, 1), seq_len]; None = seq_len. Token i
            of a row does not depend on the length (the row's uniforms are drawn for the whole window).
        step: how each step's logits are computed, the same to float rounding (same uniforms, so the
            same codes): "kernel" feeds the sampled token through ``kernels.PriorStep`` on the KV cache
            (fewest calls); "cache" through the reference ``CodePrior.next_logits``; "full" recomputes the
            whole forward pass every step, without a cache (the reference for the cache, and the
            seed-style baseline of bench/sampling_bench.py).
    """
    logits = _STEPS[check_choice("step", step, tuple(_STEPS))]
    return _sample(logits, prior, num_sequences, seeds, temperature, top_k, top_p, min_p, prefix, device, length)


def sample_code_sequence(
    prior: CodePrior,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    device: torch.device | str = torch.device("cpu"),
) -> torch.Tensor:
    """One flat code sequence, long [1, seq_len]; the first code comes from the prior's start token.

    seed None draws a fresh 63-bit seed from the operating system (secrets, i.e. os.urandom), so the
    result cannot be repeated; pass a seed to repeat it. `device` must be the prior's device.
    """
    if seed is None:
        seed = secrets.randbits(63)
    return sample_codes(prior, 1, [seed], temperature, top_k, top_p, device=device)
