"""CodePrior: a decoder-only causal transformer over flattened VQ-VAE codes.

The codes of a chunk, [P, Q] in time-major order, are flattened to one sequence of P*Q tokens
(index p*Q + q) and modelled autoregressively, in the spirit of nanoGPT's model.py. Each input
position gets a token, a position and a level embedding; the level (q = i mod Q) is that of the
token being predicted, so the model always knows which residual codebook it is choosing from.
A learned start token is fed first, so the prior has its own first-token distribution.

Sampling uses `next_logits` over a preallocated `KVCache`: each step feeds only the new tokens.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

_SQRT_HALF = math.sqrt(0.5)


@dataclass(frozen=True)
class PriorConfig:
    """Shape of a CodePrior.

    Args:
        codebook_size: codes per residual level (the vocabulary), >= 2.
        num_quantizers: residual levels Q, >= 1.
        seq_len: tokens per chunk, P * Q (144 for an 8 x 6 grid and 3 levels); a multiple of Q.
        d_model: width of the residual stream; a multiple of n_heads.
        n_layers: transformer blocks, >= 1.
        n_heads: attention heads per block, >= 1.
        dropout: dropout probability in [0, 1) used while training.
    """

    codebook_size: int
    num_quantizers: int = 3
    seq_len: int = 144
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        minimums = {"codebook_size": 2, "num_quantizers": 1, "seq_len": 1, "d_model": 1, "n_layers": 1, "n_heads": 1}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool):
                raise TypeError(f"PriorConfig.{name} must be an int >= {minimum}, got {value!r}")
            if value < minimum:
                raise ValueError(f"PriorConfig.{name} must be an int >= {minimum}, got {value}")
        if self.seq_len % self.num_quantizers:
            raise ValueError(
                f"PriorConfig.seq_len must be a multiple of num_quantizers={self.num_quantizers}, got {self.seq_len}"
            )
        if self.d_model % self.n_heads:
            raise ValueError(f"PriorConfig.d_model must be a multiple of n_heads={self.n_heads}, got {self.d_model}")
        if not isinstance(self.dropout, numbers.Real) or isinstance(self.dropout, bool):
            raise TypeError(f"PriorConfig.dropout must be a float in [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PriorConfig.dropout must be a float in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorConfig:
        """Inverse of `to_dict`; ValueError on unknown keys or a missing codebook_size."""
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"PriorConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(known)}")
        if "codebook_size" not in d:
            raise ValueError("PriorConfig.from_dict: missing required key 'codebook_size'")
        return cls(**d)


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding.

    keys, values: [n_layers, B, n_heads, seq_len, head_dim], views of one buffer [n_layers, 2, B,
    n_heads, seq_len, head_dim] so that a step writes a layer's key and value in one copy. Position 0
    holds the start token and position i > 0 the token at index i - 1, so seq_len slots suffice: the
    last token of a sequence is never fed, because nothing follows it. `length` is the number of
    filled positions.
    """

    def __init__(self, config: PriorConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        head_dim = config.d_model // config.n_heads
        shape = (config.n_layers, 2, batch_size, config.n_heads, config.seq_len, head_dim)
        self.keys_values = torch.zeros(shape, device=device, dtype=dtype)
        self.keys, self.values = self.keys_values[:, 0], self.keys_values[:, 1]
        # Per layer (keys and values [2, B, n_heads, seq_len, head_dim], keys, values), for CodePrior.step:
        # a method call on a stored view costs less than indexing the 6-d buffer anew every step.
        self.layer_views = list(zip(self.keys_values.unbind(0), self.keys.unbind(0), self.values.unbind(0)))
        self.length = 0
        self.step_weights: _StepWeights | None = None  # filled by CodePrior.step

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @property
    def capacity(self) -> int:
        return self.keys.shape[3]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, n_heads, t, head_dim] after the filled positions of `layer`.

        Returns the keys and values of all positions so far, [B, n_heads, length + t, head_dim].
        `length` itself is advanced by CodePrior.next_logits once every layer has written.
        """
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]


@dataclass(frozen=True)
class _StepWeights:
    """What CodePrior.step reads, gathered once per cache: attribute lookups on modules cost more than
    the small operations of a step.

    The linear weights are transposed to [in, out] once, so that a step is `addmm` without a transpose
    and a residual add folds into the product. The MLP's exact GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2,
    is computed on g = x / sqrt 2 as g (1 + erf(g)) / sqrt 2: the 1 / sqrt 2 scales fold into the weights
    of the two MLP linears, which leaves three element-wise operations instead of five.
    """

    blocks: list[tuple]  # per block: norm1 (weight, bias, eps), qkv, proj, norm2 (weight, bias, eps), fc, out
    token_embedding: torch.Tensor  # [codebook_size, d_model]
    position_and_level: torch.Tensor  # [seq_len, d_model]: the position plus the level embedding
    final_norm: tuple[torch.Tensor, torch.Tensor, float]
    head: tuple[torch.Tensor, torch.Tensor]  # weight [d_model, codebook_size], bias

    @classmethod
    def of(cls, prior: CodePrior) -> _StepWeights:
        def transposed(linear: nn.Linear, scale: float = 1.0) -> torch.Tensor:
            return (linear.weight * scale).t().contiguous()

        return cls(
            blocks=[
                (b.norm1.weight, b.norm1.bias, b.norm1.eps, transposed(b.attn.qkv), b.attn.qkv.bias,
                 transposed(b.attn.proj), b.attn.proj.bias, b.norm2.weight, b.norm2.bias, b.norm2.eps,
                 transposed(b.mlp[0], _SQRT_HALF), b.mlp[0].bias * _SQRT_HALF, transposed(b.mlp[2], _SQRT_HALF),
                 b.mlp[2].bias)
                for b in prior.blocks
            ],
            token_embedding=prior.token_embedding.weight,
            position_and_level=prior.position_embedding.weight + prior.level_embedding(prior.levels),
            final_norm=(prior.final_norm.weight, prior.final_norm.bias, prior.final_norm.eps),
            head=(transposed(prior.head), prior.head.bias),
        )


class SelfAttention(nn.Module):
    """Multi-head causal self-attention, optionally reading and extending a KVCache."""

    def __init__(self, config: PriorConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x [B, t, d_model] -> [B, t, d_model].

        Without a cache x is the whole sequence (causal). With one, x holds the t newest positions
        and `mask` [t, length + t] (None when t == 1) keeps each from seeing the ones after it.
        """
        B, t, C = x.shape
        q, k, v = self.qkv(x).view(B, t, 3, self.n_heads, C // self.n_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=cache is None, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(B, t, C)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: PriorConfig, layer: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.d_model)
        self.attn = SelfAttention(config, layer)
        self.norm2 = nn.LayerNorm(config.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(config.d_model, 4 * config.d_model),
            nn.GELU(),
            nn.Linear(4 * config.d_model, config.d_model),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), cache, mask)
        return x + self.mlp(self.norm2(x))


class CodePrior(nn.Module):
    """Autoregressive prior over flat code sequences [B, seq_len] with values in [0, codebook_size)."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        if not isinstance(config, PriorConfig):
            raise TypeError(f"config must be a PriorConfig, got {type(config).__name__}")
        self.config = config
        self.token_embedding = nn.Embedding(config.codebook_size, config.d_model)
        self.position_embedding = nn.Embedding(config.seq_len, config.d_model)
        self.level_embedding = nn.Embedding(config.num_quantizers, config.d_model)
        self.start_token = nn.Parameter(torch.zeros(config.d_model))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        # Not tied to token_embedding: safetensors refuses tensors that share memory.
        self.head = nn.Linear(config.d_model, config.codebook_size)
        # Level of the token predicted at each position; derived from the config, so not saved.
        self.register_buffer("levels", torch.arange(config.seq_len) % config.num_quantizers, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.start_token, std=0.02)
        # GPT-2: scale the projections that write into the residual stream by depth.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)

    @property
    def seq_len(self) -> int:
        return self.config.seq_len

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def num_quantizers(self) -> int:
        return self.config.num_quantizers

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer torch.Tensor [B, T], got {tokens!r:.80}")
        if tokens.ndim != 2:
            raise ValueError(f"tokens must have shape [B, T], got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.codebook_size):
            raise ValueError(
                f"tokens must lie in [0, codebook_size={self.codebook_size}), "
                f"got values in [{int(tokens.min())}, {int(tokens.max())}]"
            )

    def _embed(self, tokens: torch.Tensor, offset: int, with_start: bool) -> torch.Tensor:
        """Input embeddings [B, n, d_model] for positions offset .. offset + n - 1.

        tokens [B, t] are the inputs at those positions; with_start puts the start token first (n = t + 1).
        """
        x = self.token_embedding(tokens)
        if with_start:
            x = torch.cat([self.start_token.expand(len(tokens), 1, -1), x], dim=1)
        end = offset + x.shape[1]
        x = x + self.position_embedding.weight[offset:end] + self.level_embedding(self.levels[offset:end])
        return self.drop(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] (1 <= T <= seq_len) -> logits [B, T, codebook_size].

        logits[:, i] is the distribution of tokens[:, i] given tokens[:, :i]: the start token is fed
        first and tokens[:, -1] is never an input, so logits[:, 0] is the prior's first-token distribution.
        """
        self._check_tokens(tokens)
        if not 1 <= tokens.shape[1] <= self.seq_len:
            raise ValueError(f"tokens must have between 1 and seq_len={self.seq_len} columns, got {tokens.shape[1]}")
        x = self._embed(tokens[:, :-1], offset=0, with_start=True)
        for block in self.blocks:
            x = block(x)
        return self.head(self.final_norm(x))

    def new_cache(self, batch_size: int, device: torch.device | str | None = None) -> KVCache:
        """An empty KVCache for `batch_size` sequences, on `device` (default: the prior's)."""
        if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        weight = self.head.weight
        return KVCache(self.config, int(batch_size), torch.device(device or weight.device), weight.dtype)

    def next_logits(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Feed tokens [B, t] (t >= 0) after those in `cache`; float32 logits [B, codebook_size] of the next token.

        On an empty cache the start token goes first, so next_logits(tokens[:, :0], cache) gives the
        first-token distribution and a prefix of any length can be fed in one call.
        """
        self._check_tokens(tokens)
        if tokens.shape[0] != cache.batch_size:
            raise ValueError(f"tokens has {tokens.shape[0]} rows but the cache was made for {cache.batch_size}")
        offset = cache.length
        t = tokens.shape[1] + (offset == 0)  # new positions, the start token included
        if t == 0:
            raise ValueError("next_logits needs at least one new token once the cache holds the start token")
        if offset + t > cache.capacity:
            raise ValueError(
                f"cache holds {max(offset - 1, 0)} tokens; feeding {tokens.shape[1]} more exceeds "
                f"the {self.seq_len - 1} that can precede a token of a seq_len={self.seq_len} sequence"
            )
        x = self._embed(tokens, offset, with_start=offset == 0)
        # A new position may see every cached one and the new ones up to itself.
        mask = None if t == 1 else torch.ones(t, offset + t, dtype=torch.bool, device=x.device).tril(offset)
        for block in self.blocks:
            x = block(x, cache, mask)
        cache.length = offset + t
        return self.head(self.final_norm(x[:, -1])).float()

    def step(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """`next_logits` for exactly one new token per row, tokens long [B], in eval mode, unchecked.

        The sampling loop's inner step: the computation of `Block.forward` with a cache, written as
        functional calls on the same weights (see `_StepWeights`), because at the small batches of sampling
        the number of calls costs as much as the arithmetic. The cache must already hold the start token
        (feed the prefix with `next_logits` first) and the tokens must be valid codes.
        """
        if cache.step_weights is None:
            cache.step_weights = _StepWeights.of(self)
        weights = cache.step_weights
        position = cache.length
        x = weights.token_embedding.index_select(0, tokens).add_(weights.position_and_level[position])
        B, C = x.shape
        heads = self.config.n_heads
        # torch.layer_norm is what F.layer_norm calls, without its Python-side checks.
        for (keys_values, keys, values), (n1w, n1b, n1eps, qkv_w, qkv_b, proj_w, proj_b, n2w, n2b, n2eps, fc_w, fc_b,
                                          out_w, out_b) in zip(cache.layer_views, weights.blocks):
            qkv = torch.addmm(qkv_b, torch.layer_norm(x, (C,), n1w, n1b, n1eps), qkv_w).view(B, 3, heads, 1, -1)
            # k and v, [2, B, heads, 1, head_dim], into the cache at this position
            keys_values.narrow(3, position, 1).copy_(qkv.narrow(1, 1, 2).transpose(0, 1))
            y = F.scaled_dot_product_attention(
                qkv.select(1, 0), keys.narrow(2, 0, position + 1), values.narrow(2, 0, position + 1))
            x.addmm_(y.reshape(B, C), proj_w).add_(proj_b)  # in place: x is this step's own tensor
            g = torch.addmm(fc_b, torch.layer_norm(x, (C,), n2w, n2b, n2eps), fc_w)  # the MLP's input / sqrt 2
            x.addmm_(torch.erf(g).add_(1.0).mul_(g), out_w).add_(out_b)  # out_w holds the 1 / sqrt 2
        cache.length = position + 1
        return torch.addmm(weights.head[1], torch.layer_norm(x, (C,), *weights.final_norm), weights.head[0]).float()


def flatten_codes(codes: torch.Tensor) -> torch.Tensor:
    """codes [B, P, Q] -> flat tokens [B, P*Q], index p*Q + q (a position's levels are adjacent)."""
    if not isinstance(codes, torch.Tensor) or codes.ndim != 3:
        raise ValueError(f"codes must be a tensor [B, P, Q], got {getattr(codes, 'shape', type(codes).__name__)}")
    return codes.reshape(codes.shape[0], -1)


def unflatten_codes(flat: torch.Tensor, num_quantizers: int) -> torch.Tensor:
    """flat tokens [B, P*Q] -> codes [B, P, Q]; the inverse of flatten_codes."""
    if not isinstance(num_quantizers, numbers.Integral) or isinstance(num_quantizers, bool) or num_quantizers < 1:
        raise ValueError(f"num_quantizers must be an int >= 1, got {num_quantizers!r}")
    if not isinstance(flat, torch.Tensor) or flat.ndim != 2:
        raise ValueError(f"flat must be a tensor [B, P*Q], got {getattr(flat, 'shape', type(flat).__name__)}")
    if flat.shape[1] % num_quantizers:
        raise ValueError(f"flat has {flat.shape[1]} columns, not a multiple of num_quantizers={num_quantizers}")
    return flat.reshape(flat.shape[0], -1, num_quantizers)


def extract_code_sequences(vqvae: nn.Module, mels: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Encode mels [N, n_mels, frames] with vqvae.encode into flat tokens long [N, P*Q], on the CPU.

    Runs in eval mode without gradients, `batch_size` mels at a time on the VQ-VAE's device;
    the VQ-VAE's training mode is restored afterwards.
    """
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(mels, torch.Tensor) or mels.ndim != 3 or len(mels) == 0:
        raise ValueError(
            f"mels must be a non-empty tensor [N, n_mels, frames], got {getattr(mels, 'shape', type(mels).__name__)}"
        )
    device = next(vqvae.parameters()).device
    was_training = vqvae.training
    vqvae.eval()
    try:
        with torch.no_grad():
            codes = [vqvae.encode(batch.to(device)).cpu() for batch in mels.split(batch_size)]
    finally:
        vqvae.train(was_training)
    return flatten_codes(torch.cat(codes)).long()
