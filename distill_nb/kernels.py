"""Hand-tuned equivalents of reference code, each selected by a setting and tested against its reference.

- the NNLS and Griffin-Lim of ``inversion.py`` (`InversionSettings.fast_kernels`);
- the prior's one-token step, ``CodePrior.next_logits`` on a KV cache (`sampling.sample_codes(step="kernel")`).

Each gives its reference's result to float rounding (tests/test_kernels.py) and is here because it is
measurably faster (bench/sampling_bench.py, bench/inversion_bench.py).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # inversion.py and sampling.py import this module
    from distill_nb.inversion import InversionBases, NNLSStop
    from distill_nb.prior import CodePrior, KVCache

_SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def nnls_shrinking_batch(power_mel: torch.Tensor, start: torch.Tensor, bases: InversionBases,
                         stop: NNLSStop) -> torch.Tensor:
    """`inversion.nnls`, [B, frames, n_mels] -> [B, frames, bins], with a batch that shrinks as chunks stop.

    A stopped chunk leaves the batch instead of being carried along, which pays when chunks stop far
    apart (the mel of real audio: from ~40 steps to the cap), and the updates write into buffers: a fresh
    multi-megabyte tensor per operation costs more than the arithmetic.
    """
    filterbank, step = bases.filterbank, bases.step
    scale = torch.linalg.vector_norm(power_mel, dim=(1, 2)).clamp_min(_SMALLEST_NORMAL)
    result = None  # made when the first chunk stops
    rows = torch.arange(len(power_mel), device=power_mel.device)  # the chunks still iterating
    target, x, y, t = power_mel, start.clone(), start.clone(), 1.0
    x_next, gradient = torch.empty_like(x), torch.empty_like(x)
    previous_residual = torch.full_like(scale, math.inf)
    for iteration in range(1, stop.max_steps + 1):
        error = torch.matmul(y, filterbank.T).sub_(target)
        if iteration % stop.check_every == 0:
            residual = torch.linalg.vector_norm(error, dim=(1, 2)) / scale[rows]
            going = stop.keeps_going(residual, previous_residual)
            if not bool(going.all()):
                if result is None:
                    result = torch.empty_like(x)
                result[rows] = x  # the stopped chunks keep their x; the others are rewritten later
                rows, target, error = rows[going], target[going], error[going]
                x, y = x[going], y[going]
                x_next, gradient = torch.empty_like(x), torch.empty_like(x)
                if len(rows) == 0:
                    return result
            previous_residual = residual[going]
        torch.matmul(error, filterbank, out=gradient)
        torch.addcmul(y, step, gradient, value=-1.0, out=x_next).clamp_min_(0.0)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        # y = x_next + (t - 1) / t_next * (x_next - x), as a lerp from x_next away from x.
        torch.lerp(x_next, x, -(t - 1.0) / t_next, out=y)
        x, x_next, t = x_next, x, t_next
    if result is None:
        return x
    result[rows] = x
    return result


def griffin_lim_frame_major(magnitude: torch.Tensor, angles: torch.Tensor, griffin_lim_iters: int, length: int,
                            window: torch.Tensor, hop: int, relaxation: float, momentum: float) -> torch.Tensor:
    """`inversion.griffin_lim` for a hop that divides n_fft: [B, frames, bins] -> float32 [B, length].

    The STFT is framed by hand, frame-major as the rfft of the frames gives it, into buffers allocated
    once where torch allows it (FFT outputs are fresh): multi-megabyte temporaries every iteration cost
    more than the arithmetic. Complex element-wise kernels are slow on the CPU, so the relaxation and
    momentum run on float views, and the magnitude projection c |X| / |c| is float operations and one
    complex multiply instead of `torch.sgn`.
    """
    n_fft = window.numel()
    if n_fft % hop:
        raise ValueError(f"hop must divide n_fft = {n_fft} for the frame-major Griffin-Lim, got {hop}")
    batch, frames, bins = magnitude.shape
    device, real = magnitude.device, torch.view_as_real
    spectrum = torch.mul(magnitude, angles).contiguous()  # |X| e^(i phase), rewritten by every projection
    estimate, previous = None, None
    windowed = torch.empty(batch, frames, n_fft, device=device)
    padded = torch.empty(batch, length + n_fft, device=device)  # the reflect-padded waveform
    squares = torch.empty(batch, frames, bins, 2, device=device)  # re^2, im^2 of c
    gain = torch.empty_like(magnitude)  # |X| / |c|
    complex_gain = torch.empty_like(spectrum)  # the same as a complex tensor: complex x complex is fast
    half = n_fft // 2
    inverse_envelope = _inverse_envelope(window, hop, frames, length)
    for _ in range(griffin_lim_iters):
        _overlap_add(spectrum, window, hop, inverse_envelope, windowed, out=padded[:, half : half + length])
        # Reflect padding as torch.stft(center=True, pad_mode="reflect") does it.
        padded[:, :half] = padded[:, half + 1 : 2 * half + 1].flip(-1)
        padded[:, half + length :] = padded[:, length - 1 : half + length - 1].flip(-1)
        rebuilt = torch.fft.rfft(torch.mul(padded.unfold(-1, n_fft, hop), window, out=windowed))  # y, fresh
        if previous is None:  # the first estimate is the projection itself
            estimate = rebuilt
        else:
            # t = c + relaxation (y - c), written over y; then c = t + momentum (t - t_prev), over the old c
            # (at the second iteration c is t_prev itself: each element is read before it is written).
            if relaxation != 1.0:
                torch.lerp(real(estimate), real(rebuilt), relaxation, out=real(rebuilt))
            torch.lerp(real(rebuilt), real(previous), -momentum, out=real(estimate))
        # X = c |X| / |c|. |c| is floored at the smallest normal float, so c = 0 gives X = 0 as torch.sgn
        # does; only a |c| below ~1e-19, whose square underflows, would come out too quiet.
        torch.mul(real(estimate), real(estimate), out=squares)
        torch.add(squares[..., 0], squares[..., 1], out=gain)
        gain.clamp_min_(_SMALLEST_NORMAL).rsqrt_().mul_(magnitude)
        torch.mul(estimate, complex_gain.copy_(gain), out=spectrum)
        previous = rebuilt
    out = torch.empty(batch, length, device=device)
    return _overlap_add(spectrum, window, hop, inverse_envelope, windowed, out=out)


def _overlap_add(spectrum: torch.Tensor, window: torch.Tensor, hop: int, inverse_envelope: torch.Tensor,
                 windowed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """torch.istft(center=True) of a frame-major spectrum [B, frames, bins] into out [B, length], with
    ``inverse_envelope`` [length] from `_inverse_envelope` (torch.istft's general fold is most of its time)."""
    n_fft = window.numel()
    start = n_fft // 2  # center=True: frame j is centred on sample j * hop
    samples = _shifted_add(torch.fft.irfft(spectrum, n=n_fft).mul_(window), hop)
    return torch.mul(samples[..., start : start + out.shape[-1]], inverse_envelope, out=out)


def _shifted_add(frames: torch.Tensor, hop: int) -> torch.Tensor:
    """Overlap-add [..., n_frames, n_fft] frames hop apart into [..., (n_frames - 1) * hop + n_fft].

    With hop | n_fft, piece r (of n_fft / hop) of frame j lands in output block j + r: n_fft / hop adds.
    """
    *batch, n_frames, n_fft = frames.shape
    overlap = n_fft // hop
    pieces = frames.reshape(*batch, n_frames, overlap, hop)
    blocks = frames.new_zeros(*batch, n_frames + overlap - 1, hop)
    for r in range(overlap):
        blocks[..., r : r + n_frames, :] += pieces[..., r, :]
    return blocks.flatten(-2)


def _inverse_envelope(window: torch.Tensor, hop: int, frames: int, length: int) -> torch.Tensor:
    """1 / the overlap-added squared window over the output samples, [length] (what torch.istft divides by).
    Positive: a SpectrogramConfig keeps hop_length <= n_fft // 2."""
    start = window.numel() // 2
    return 1.0 / _shifted_add((window * window).expand(frames, -1), hop)[start : start + length]


_SQRT_HALF = math.sqrt(0.5)


class PriorStep:
    """``prior.next_logits(tokens[:, None], cache)`` for one new token per row, in eval mode, unchecked.

    At the small batches of sampling a step costs its number of calls more than its arithmetic, so the
    step is written as functional calls on weights gathered once: the linear weights transposed to
    [in, out] (``addmm`` without a transpose, the residual adds folded into it) and the exact GELU
    x Phi(x) = g (1 + erf(g)) / sqrt 2 on g = x / sqrt 2, the scales folded into the MLP weights.
    The cache must already hold the start token (feed the prefix with ``next_logits`` first).
    """

    def __init__(self, prior: CodePrior) -> None:
        def transposed(linear: torch.nn.Linear, scale: float = 1.0) -> torch.Tensor:
            return (linear.weight * scale).t().contiguous()

        self.heads = prior.config.n_heads
        self.blocks = [
            (b.norm1.weight, b.norm1.bias, b.norm1.eps, transposed(b.attn.qkv), b.attn.qkv.bias,
             transposed(b.attn.proj), b.attn.proj.bias, b.norm2.weight, b.norm2.bias, b.norm2.eps,
             transposed(b.mlp[0], _SQRT_HALF), b.mlp[0].bias * _SQRT_HALF, transposed(b.mlp[2], _SQRT_HALF),
             b.mlp[2].bias)
            for b in prior.blocks
        ]
        self.token_embedding = prior.token_embedding.weight
        self.slot = prior.column_embedding(prior.columns) + prior.slot_embedding(prior.slots)  # [seq_len, d_model]
        self.final_norm = (prior.final_norm.weight, prior.final_norm.bias, prior.final_norm.eps)
        self.head = (transposed(prior.head), prior.head.bias)

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens long [B] -> float32 logits [B, codebook_size] of the token after them."""
        position = cache.length
        x = self.token_embedding.index_select(0, tokens).add_(self.slot[position])
        batch, width = x.shape
        for layer, (n1w, n1b, n1eps, qkv_w, qkv_b, proj_w, proj_b, n2w, n2b, n2eps, fc_w, fc_b, out_w,
                    out_b) in enumerate(self.blocks):
            qkv = torch.addmm(qkv_b, torch.layer_norm(x, (width,), n1w, n1b, n1eps), qkv_w)
            q, k, v = qkv.view(batch, 3, self.heads, 1, -1).unbind(1)
            cache.keys[layer].narrow(2, position, 1).copy_(k)
            cache.values[layer].narrow(2, position, 1).copy_(v)
            y = torch.nn.functional.scaled_dot_product_attention(
                q, cache.keys[layer].narrow(2, 0, position + 1), cache.values[layer].narrow(2, 0, position + 1))
            x.addmm_(y.reshape(batch, width), proj_w).add_(proj_b)  # in place: x is this step's own tensor
            g = torch.addmm(fc_b, torch.layer_norm(x, (width,), n2w, n2b, n2eps), fc_w)  # the MLP's input / sqrt 2
            x.addmm_(torch.erf(g).add_(1.0).mul_(g), out_w).add_(out_b)  # out_w holds the 1 / sqrt 2
        cache.length = position + 1
        return torch.addmm(self.head[1], torch.layer_norm(x, (width,), *self.final_norm), self.head[0]).float()

