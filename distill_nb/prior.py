"""CodePrior: a decoder-only causal transformer over flattened VQ-VAE codes.

The codes of a window of grid columns, time-major, are flattened to one sequence of tokens (index
p * levels + q, so a column is a contiguous block of ``column_tokens`` = rows * levels tokens) and
modelled autoregressively, in the spirit of nanoGPT's model.py. The prior is trained on windows of
``seq_len`` tokens cut anywhere from the corpus played as one stream, so a window may start mid-sound
and span the end of one file and the start of the next: continuing a take by priming a window with
its last columns is what training did.

Each input gets a token embedding plus the embeddings of the slot it predicts: its column in the
window and its place in the column (row and level), so the model always knows which residual
codebook it is choosing from. A learned start token is fed first. Sampling feeds only the new tokens
through a preallocated ``KVCache``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill_nb.checks import check_int, check_positive, check_real


# Bounds on the config, far above any prior this toolkit trains: a model file's config is untrusted input.
CONFIG_RANGES = {"codebook_size": (2, 65536), "levels": (1, 16), "column_tokens": (1, 4096), "seq_len": (1, 65536),
                 "d_model": (1, 4096), "n_layers": (1, 64), "n_heads": (1, 64)}


@dataclass(frozen=True)
class PriorConfig:
    """Shape of a CodePrior.

    Args:
        codebook_size: codes per residual level (the vocabulary).
        levels: residual levels.
        column_tokens: tokens per grid column, rows * levels.
        seq_len: tokens per window, a whole number of columns.
        d_model: width of the residual stream; a multiple of n_heads.
        n_layers: transformer blocks.
        n_heads: attention heads per block.
        Each int lies in its CONFIG_RANGES range.
        dropout: dropout probability in [0, 1) used while training.
    """

    codebook_size: int
    levels: int
    column_tokens: int
    seq_len: int
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    dropout: float = 0.1

    def __post_init__(self) -> None:
        for name, (minimum, maximum) in CONFIG_RANGES.items():
            check_int(f"PriorConfig.{name}", getattr(self, name), minimum, maximum)
        if self.column_tokens % self.levels:
            raise ValueError(f"PriorConfig.column_tokens must be a multiple of levels={self.levels}, "
                             f"got {self.column_tokens}")
        if self.seq_len % self.column_tokens:
            raise ValueError(f"PriorConfig.seq_len must be a multiple of column_tokens={self.column_tokens}, "
                             f"got {self.seq_len}")
        if self.d_model % self.n_heads:
            raise ValueError(f"PriorConfig.d_model must be a multiple of n_heads={self.n_heads}, got {self.d_model}")
        object.__setattr__(self, "dropout",
                           check_real("PriorConfig.dropout", self.dropout, "in [0, 1)", lambda v: 0 <= v < 1))

    @classmethod
    def for_vqvae(cls, geometry: Any, codebook_size: int, window_columns: int, **sizes: Any) -> PriorConfig:
        """The config whose windows hold ``window_columns`` columns of ``geometry`` (a ChunkGeometry)."""
        window_columns = check_int("window_columns", window_columns, 1)
        return cls(codebook_size=codebook_size, levels=geometry.levels, column_tokens=geometry.column_tokens,
                   seq_len=window_columns * geometry.column_tokens, **sizes)

    @property
    def window_columns(self) -> int:
        """Grid columns per window."""
        return self.seq_len // self.column_tokens

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PriorConfig:
        """Inverse of `to_dict`; ValueError on unknown or missing keys."""
        if not isinstance(d, dict):
            raise TypeError(f"PriorConfig.from_dict expects a dict, got {type(d).__name__}")
        fields = dataclasses.fields(cls)
        known = {field.name for field in fields}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"PriorConfig.from_dict: unknown keys {unknown}; expected a subset of {sorted(known)}")
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in d]
        if missing:
            raise ValueError(f"PriorConfig.from_dict: missing required keys {missing}")
        return cls(**d)


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding.

    keys, values: [n_layers, B, n_heads, seq_len, head_dim]. Position 0 holds the start token and
    position i > 0 the token at index i - 1, so seq_len slots suffice: the last token of a window is
    never fed, because nothing follows it. `length` is the number of filled positions.
    """

    def __init__(self, config: PriorConfig, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        head_dim = config.d_model // config.n_heads
        shape = (config.n_layers, batch_size, config.n_heads, config.seq_len, head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

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


class SelfAttention(nn.Module):
    """Multi-head causal self-attention, optionally reading and extending a KVCache."""

    def __init__(self, config: PriorConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads = config.n_heads
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
        # No dropout on the attention weights: it would make SDPA materialise [B, heads, T, T] masks (most of
        # a training step's time at T = 768); the residual and embedding dropouts regularise enough.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=cache is None)
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
    """Autoregressive prior over flat code windows [B, seq_len] with values in [0, codebook_size)."""

    def __init__(self, config: PriorConfig) -> None:
        super().__init__()
        if not isinstance(config, PriorConfig):
            raise TypeError(f"config must be a PriorConfig, got {type(config).__name__}")
        self.config = config
        self.token_embedding = nn.Embedding(config.codebook_size, config.d_model)
        self.column_embedding = nn.Embedding(config.window_columns, config.d_model)
        self.slot_embedding = nn.Embedding(config.column_tokens, config.d_model)
        self.start_token = nn.Parameter(torch.zeros(config.d_model))
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, layer) for layer in range(config.n_layers))
        self.final_norm = nn.LayerNorm(config.d_model)
        # Not tied to token_embedding: safetensors refuses tensors that share memory.
        self.head = nn.Linear(config.d_model, config.codebook_size)
        index = torch.arange(config.seq_len)
        # Column and slot of the token predicted at each position; derived from the config, so not saved.
        self.register_buffer("columns", index // config.column_tokens, persistent=False)
        self.register_buffer("slots", index % config.column_tokens, persistent=False)
        self.apply(self._init_weights)
        nn.init.normal_(self.start_token, std=0.02)
        # GPT-2: scale the projections that write into the residual stream by depth.
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * config.n_layers))

    def fold_temperature(self, temperature: float) -> None:
        """Divide every logit by ``temperature`` from now on, in the head's weights, so the reference path,
        the KV cache and the kernels all sample the calibrated distribution at temperature 1."""
        temperature = check_positive("temperature", temperature)
        with torch.no_grad():
            self.head.weight.div_(temperature)
            self.head.bias.div_(temperature)

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
    def levels(self) -> int:
        return self.config.levels

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
        x = x + self.column_embedding(self.columns[offset:end]) + self.slot_embedding(self.slots[offset:end])
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
        batch_size = check_int("batch_size", batch_size, 1)
        weight = self.head.weight
        return KVCache(self.config, batch_size, torch.device(device or weight.device), weight.dtype)

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
                f"the {self.seq_len - 1} that can precede a token of a seq_len={self.seq_len} window"
            )
        x = self._embed(tokens, offset, with_start=offset == 0)
        # A new position may see every cached one and the new ones up to itself.
        mask = None if t == 1 else torch.ones(t, offset + t, dtype=torch.bool, device=x.device).tril(offset)
        for block in self.blocks:
            x = block(x, cache, mask)
        cache.length = offset + t
        return self.head(self.final_norm(x[:, -1])).float()


def flatten_codes(codes: torch.Tensor) -> torch.Tensor:
    """codes [B, P, levels] -> flat tokens [B, P * levels], index p * levels + q (a position's levels adjacent)."""
    if not isinstance(codes, torch.Tensor) or codes.ndim != 3:
        raise ValueError(f"codes must be a tensor [B, P, levels], got {getattr(codes, 'shape', type(codes).__name__)}")
    return codes.reshape(codes.shape[0], -1)


def unflatten_codes(flat: torch.Tensor, levels: int) -> torch.Tensor:
    """flat tokens [B, P * levels] -> codes [B, P, levels]; the inverse of flatten_codes."""
    levels = check_int("levels", levels, 1)
    if not isinstance(flat, torch.Tensor) or flat.ndim != 2:
        raise ValueError(f"flat must be a tensor [B, P * levels], got {getattr(flat, 'shape', type(flat).__name__)}")
    if flat.shape[1] % levels:
        raise ValueError(f"flat has {flat.shape[1]} columns, not a multiple of levels={levels}")
    return flat.reshape(flat.shape[0], -1, levels)
