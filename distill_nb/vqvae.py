"""Convolutional VQ-VAE over log-mel spectrograms, quantised by a residual VQ.

    mel [B, n_mels, frames]
      -> normalise ((mel - input_mean) / input_std), zero-pad to whole grid cells
      -> encoder: 2-D conv stages, each residual blocks then a strided conv -> z [B, D, rows, columns]
      -> flatten TIME-MAJOR (p = column * rows + row) -> ResidualVQ -> codes [B, P, levels]
    codes -> sum of the per-level codebook vectors -> z_q [B, D, rows, columns]
      -> decoder (mirror of the encoder, linear output) -> crop -> de-normalise -> mel

The convolutions are 2-D so that what is learned about a partial at one pitch applies at every
pitch (a pitch shift moves the pattern along the mel axis); the frequency axis is downsampled less
than time, because partials need a fine frequency grid and a sound's envelope does not need a fine
time grid. Every part is convolutional in time, so any number of columns decodes in one call: a
long take decodes as one stream, without seams.

Padding is zero in normalised space, i.e. the corpus mean log-mel (``input_mean``), and is cropped
after decoding. The reconstruction loss is an L1 distance in normalised log-mel (every band counts)
plus the spectral convergence of the mel magnitudes (the loud partials must sit in the right bands).

Randomness: k-means init and dead-code replacement in vector-quantize-pytorch draw from the global RNG,
so training callers wrap training steps in ``torch.random.fork_rng()`` with their own seed. ``encode`` and
eval-mode ``forward`` never draw random numbers and never change the codebooks.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ

from distill_nb.checks import check_bool, check_int, check_real, config_from_dict
from distill_nb.spectrogram import MAX_MELS

# A code counts as used when its EMA cluster size reaches this, if dead-code replacement is off
# (dead_code_threshold == 0); otherwise the dead-code threshold itself decides.
MIN_CLUSTER_SIZE = 1e-3
# Bounds on the config, far above any model this toolkit trains: a model file's config is untrusted input.
MAX_STAGES = 8
MAX_WIDTH = 1024
MAX_RES_BLOCKS = 16
MAX_LEVELS = 16
MAX_CODEBOOK_SIZE = 65536
# Long mels are encoded and decoded this many columns at a time, each segment with MARGIN_COLUMNS of
# context on both sides (the receptive field), to bound memory on long takes.
SEGMENT_COLUMNS = 64
MARGIN_COLUMNS = 4
# exp() of a decoded log-mel above this would overflow the spectral loss; real mels stay far below.
_MAX_LOG_MEL = 30.0


@dataclass(frozen=True)
class VQVAEConfig:
    """Shape and training constants of a ConvVQVAE.

    Attributes:
        n_mels: mel bins of the input spectrogram, 1..MAX_MELS.
        channels: channels of each encoder stage (the decoder mirrors them), 1..MAX_STAGES stages of
            1..MAX_WIDTH channels.
        strides: (frequency, time) downsampling of each stage, each 1 or 2; one pair per stage.
        res_blocks: residual blocks per stage, 0..MAX_RES_BLOCKS.
        code_dim: D, dimension of the latent grid and of the codebook vectors, 1..MAX_WIDTH.
        levels: residual VQ levels (level 0 coarsest), 1..MAX_LEVELS.
        codebook_size: K, codes per level, 2..MAX_CODEBOOK_SIZE.
        commitment_weight: weight of the commitment loss (>= 0), applied once to the sum over levels.
        spectral_weight: weight of the spectral-convergence term of the reconstruction loss (>= 0).
        ema_decay: decay of the EMA codebook updates, in (0, 1).
        kmeans_init: initialise each codebook by k-means on its first training batch.
        dead_code_threshold: codes whose EMA cluster size (vectors per batch) falls below this are
            replaced by vectors of the current batch (>= 0; 0 = no replacement).
        input_mean, input_std: log-mel normalisation, set by training from the corpus (std > 0).
    """

    n_mels: int = 128
    channels: tuple[int, ...] = (16, 32, 64, 64)
    strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (1, 2), (1, 2))
    res_blocks: int = 2
    code_dim: int = 32
    levels: int = 2
    codebook_size: int = 256
    commitment_weight: float = 0.25
    spectral_weight: float = 1.0
    ema_decay: float = 0.99
    kmeans_init: bool = True
    dead_code_threshold: float = 2.0
    input_mean: float = 0.0
    input_std: float = 1.0

    def __post_init__(self) -> None:
        check_int("n_mels", self.n_mels, 1, MAX_MELS)
        channels = _int_sequence("channels", self.channels, 1, MAX_WIDTH)
        if not 1 <= len(channels) <= MAX_STAGES:
            raise ValueError(f"channels must hold one int per stage, 1 to {MAX_STAGES} stages, got {self.channels!r}")
        if isinstance(self.strides, (str, bytes)) or not isinstance(self.strides, (tuple, list)):
            raise TypeError(f"strides must be a sequence of (frequency, time) pairs, got {self.strides!r}")
        if len(self.strides) != len(channels):
            raise ValueError(f"strides must hold one (frequency, time) pair per stage ({len(channels)} channels), "
                             f"got {self.strides!r}")
        strides = tuple(_int_sequence(f"strides[{i}]", pair, 1, 2) for i, pair in enumerate(self.strides))
        if any(len(pair) != 2 or not set(pair) <= {1, 2} for pair in strides):
            raise ValueError(f"strides must be (frequency, time) pairs of 1 or 2, got {self.strides!r}")
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "strides", strides)
        check_int("res_blocks", self.res_blocks, 0, MAX_RES_BLOCKS)
        check_int("code_dim", self.code_dim, 1, MAX_WIDTH)
        check_int("levels", self.levels, 1, MAX_LEVELS)
        check_int("codebook_size", self.codebook_size, 2, MAX_CODEBOOK_SIZE)
        check_bool("kmeans_init", self.kmeans_init)
        ranges = {
            "commitment_weight": ("in [0, inf)", lambda v: v >= 0),
            "spectral_weight": ("in [0, inf)", lambda v: v >= 0),
            "ema_decay": ("in (0, 1)", lambda v: 0 < v < 1),
            "dead_code_threshold": ("in [0, inf)", lambda v: v >= 0),
            "input_mean": ("", lambda v: True),
            "input_std": ("in (0, inf)", lambda v: v > 0),
        }
        for name, (expected, ok) in ranges.items():
            object.__setattr__(self, name, check_real(name, getattr(self, name), expected, ok))

    @property
    def downsampling(self) -> tuple[int, int]:
        """(frequency, time): mel bins per grid row and mel frames per grid column."""
        return math.prod(f for f, _ in self.strides), math.prod(t for _, t in self.strides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (sequences as lists); ``from_dict`` restores an equal config."""
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = [list(pair) for pair in self.strides]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VQVAEConfig:
        """Build a config from ``to_dict`` output; ValueError on unknown keys or bad values."""
        return config_from_dict(cls, d)


def _int_sequence(name: str, values: Any, minimum: int, maximum: int) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)):
        raise TypeError(f"{name} must be a sequence of ints in [{minimum}, {maximum}], got {values!r}")
    for i, value in enumerate(values):
        check_int(f"{name}[{i}]", value, minimum, maximum)
    return tuple(int(v) for v in values)


@dataclass
class CodebookHealth:
    """How one residual level uses its codebook, from the EMA cluster sizes of training.

    Attributes:
        level: residual level q (0 = coarsest).
        codebook_size: K.
        utilisation: share of codes in use, in [0, 1]: EMA cluster size >= dead_code_threshold (the
            library's own rule for a live code), or >= MIN_CLUSTER_SIZE when replacement is off.
        perplexity: exp(entropy) of the EMA usage distribution, in [1, K]; K = all codes used equally.
        dead_codes: K minus the codes in use.
    """

    level: int
    codebook_size: int
    utilisation: float
    perplexity: float
    dead_codes: int


@dataclass
class VQVAEOutput:
    """Result of ``ConvVQVAE.forward``.

    Attributes:
        recon: reconstructed log-mel [B, n_mels, frames].
        codes: long [B, P, levels], time-major positions.
        commit_loss: scalar, commitment_weight * sum over levels of MSE(residual, its code vector).
        l1_loss: scalar, mean absolute error between reconstruction and input in normalised log-mel.
        spectral_convergence: scalar, mean over the batch of ||A - A_hat||_F / ||A||_F, with A the mel
            magnitude exp(mel / 2) of each item.
        spectral_weight: the config's weight of spectral_convergence in ``recon_loss``.
    """

    recon: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    l1_loss: torch.Tensor
    spectral_convergence: torch.Tensor
    spectral_weight: float

    @property
    def recon_loss(self) -> torch.Tensor:
        """l1_loss + spectral_weight * spectral_convergence."""
        return self.l1_loss + self.spectral_weight * self.spectral_convergence

    @property
    def loss(self) -> torch.Tensor:
        """The training objective: recon_loss + commit_loss."""
        return self.recon_loss + self.commit_loss


class _ResidualBlock(nn.Module):
    """x + 1x1(SiLU(3x3(SiLU(x)))): local context without changing the grid."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.mix = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(F.silu(self.conv(F.silu(x))))


def _down(c_in: int, c_out: int, stride: tuple[int, int]) -> nn.Conv2d:
    # Kernel 4, stride 2, padding 1 halves an even size exactly; stride 1 keeps it with kernel 3.
    kernel = tuple(4 if s == 2 else 3 for s in stride)
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1)


def _up(c_in: int, c_out: int, stride: tuple[int, int]) -> nn.Sequential:
    # Nearest upsampling then a conv: no checkerboard of transposed convs.
    return nn.Sequential(nn.Upsample(scale_factor=stride, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1))


def _to_positions(grid: torch.Tensor) -> torch.Tensor:
    """[B, D, rows, columns] -> [B, P, D] with p = column * rows + row (time-major)."""
    b, d, h, w = grid.shape
    return grid.permute(0, 3, 2, 1).reshape(b, w * h, d)


def _to_grid(flat: torch.Tensor, grid_shape: tuple[int, int]) -> torch.Tensor:
    """[B, P, D] time-major -> [B, D, rows, columns]; the inverse of _to_positions."""
    h, w = grid_shape
    return flat.reshape(flat.shape[0], w, h, flat.shape[-1]).permute(0, 3, 2, 1)


@contextmanager
def _frozen(quantizer: ResidualVQ) -> Iterator[None]:
    """Run the quantiser as a pure function of its buffers.

    Eval mode stops EMA updates and dead-code replacement; marking the codebooks initialised stops the
    k-means init, which would otherwise change them and draw from the global RNG on an untrained model.
    An uninitialised codebook is all zeros, so there every vector maps to code 0.
    """
    was_training = quantizer.training
    flags = [layer._codebook.initted for layer in quantizer.layers]
    saved = [flag.clone() for flag in flags]
    quantizer.eval()
    for flag in flags:
        flag.fill_(True)
    try:
        yield
    finally:
        for flag, value in zip(flags, saved):
            flag.copy_(value)
        quantizer.train(was_training)


class ConvVQVAE(nn.Module):
    """2-D convolutional VQ-VAE: log-mel [B, n_mels, frames] <-> codes [B, P, levels] (time-major)."""

    def __init__(self, config: VQVAEConfig | None = None) -> None:
        super().__init__()
        config = VQVAEConfig() if config is None else config
        if not isinstance(config, VQVAEConfig):
            raise TypeError(f"config must be a VQVAEConfig, got {type(config).__name__}")
        self.config = config
        channels, blocks = config.channels, config.res_blocks
        encoder: list[nn.Module] = [nn.Conv2d(1, channels[0], 3, padding=1)]
        c_in = channels[0]
        for c_out, stride in zip(channels, config.strides):
            encoder += [_ResidualBlock(c_in) for _ in range(blocks)] + [_down(c_in, c_out, stride)]
            c_in = c_out
        encoder += [_ResidualBlock(c_in) for _ in range(blocks)] + [nn.SiLU(), nn.Conv2d(c_in, config.code_dim, 1)]
        self.encoder = nn.Sequential(*encoder)
        self.quantizer = ResidualVQ(
            dim=config.code_dim,
            num_quantizers=config.levels,
            codebook_size=config.codebook_size,
            decay=config.ema_decay,
            kmeans_init=config.kmeans_init,
            threshold_ema_dead_code=config.dead_code_threshold,
            commitment_weight=config.commitment_weight,
        )
        decoder: list[nn.Module] = [nn.Conv2d(config.code_dim, c_in, 3, padding=1)]
        decoder += [_ResidualBlock(c_in) for _ in range(blocks)]
        # Stage i of the decoder undoes encoder stage n-1-i and ends with that stage's input channels.
        stage_inputs = (channels[0],) + channels[:-1]
        for c_out, stride in zip(reversed(stage_inputs), reversed(config.strides)):
            decoder += [_up(c_in, c_out, stride)] + [_ResidualBlock(c_out) for _ in range(blocks)]
            c_in = c_out
        # Linear output: normalised log-mel, de-normalised in decode, so any log-mel level is reachable.
        decoder += [nn.SiLU(), nn.Conv2d(c_in, 1, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    def grid_shape(self, frames: int) -> tuple[int, int]:
        """Latent grid (rows, columns) for a mel of ``frames`` frames: whole cells of the downsampling."""
        check_int("frames", frames, 1)
        down_f, down_t = self.config.downsampling
        return math.ceil(self.config.n_mels / down_f), math.ceil(frames / down_t)

    def _normalise_and_pad(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, frames] -> normalised, zero-padded [B, 1, rows * down_f, columns * down_t]."""
        if not isinstance(mel, torch.Tensor) or not mel.is_floating_point():
            raise TypeError(f"mel must be a float tensor [B, n_mels, frames], got {type(mel).__name__}"
                            + (f" of dtype {mel.dtype}" if isinstance(mel, torch.Tensor) else ""))
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels or mel.shape[0] == 0 or mel.shape[2] == 0:
            raise ValueError(f"mel must have shape [B >= 1, n_mels={self.config.n_mels}, frames >= 1], "
                             f"got {tuple(mel.shape)}")
        (rows, columns), (down_f, down_t) = self.grid_shape(mel.shape[2]), self.config.downsampling
        x = (mel - self.config.input_mean) / self.config.input_std
        x = F.pad(x, (0, columns * down_t - mel.shape[2], 0, rows * down_f - mel.shape[1]))
        return x.unsqueeze(1)

    def encode_latent(self, mel: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output before quantisation: mel [B, n_mels, frames] -> z [B, D, rows, columns]."""
        return self.encoder(self._normalise_and_pad(mel))

    def _commitment_loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """commitment_weight * sum over levels of MSE(residual, code vector); flat [B, P, D]."""
        per_level = self.quantizer.get_codes_from_indices(codes)  # [levels, B, P, D]
        residual, total = flat, flat.new_zeros(())
        for vectors in per_level:
            total = total + F.mse_loss(residual, vectors)
            residual = residual - vectors
        return self.config.commitment_weight * total

    def forward(self, mel: torch.Tensor) -> VQVAEOutput:
        """Encode, quantise and decode a batch; in training mode this also updates the codebooks.

        mel [B, n_mels, frames] -> VQVAEOutput (recon same shape, codes [B, P, levels], scalar losses).
        """
        x = self._normalise_and_pad(mel)
        flat = _to_positions(self.encoder(x))
        if self.training:
            quantized, codes, losses = self.quantizer(flat)
            # losses[q] already is commitment_weight * MSE of level q (VectorQuantize weights it):
            # summing, not weighting again, applies the weight once.
            commit_loss = losses.sum()
        else:
            with _frozen(self.quantizer):
                quantized, codes, _ = self.quantizer(flat)
            commit_loss = self._commitment_loss(flat, codes)
        frames = mel.shape[2]
        recon_normalised = self._decode_normalised(_to_grid(quantized, self.grid_shape(frames)), frames)
        recon = self._denormalise(recon_normalised)
        return VQVAEOutput(
            recon=recon,
            codes=codes,
            commit_loss=commit_loss,
            l1_loss=F.l1_loss(recon_normalised, x[:, 0, : mel.shape[1], :frames]),
            spectral_convergence=mel_spectral_convergence(mel, recon).mean(),
            spectral_weight=self.config.spectral_weight,
        )

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, frames] -> codes long [B, P, levels], P = rows * columns, time-major.

        Deterministic in any mode: never draws random numbers, never updates the codebooks.
        """
        flat = _to_positions(self.encode_latent(mel))
        with _frozen(self.quantizer):
            _, codes, _ = self.quantizer(flat)
        return codes

    def codes_to_embeddings(self, codes: torch.Tensor, grid_shape: tuple[int, int]) -> torch.Tensor:
        """codes long [B, P, levels] (time-major) -> z [B, D, rows, columns], the sum of the level vectors."""
        h, w = grid_shape
        q, k = self.config.levels, self.config.codebook_size
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long:
            raise TypeError(f"codes must be a torch.long tensor [B, P, levels], got "
                            f"{codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__}")
        if codes.dim() != 3 or codes.shape[1] != h * w or codes.shape[2] != q:
            raise ValueError(f"codes must have shape [B, P={h * w} ({h} rows x {w} columns), levels={q}], "
                             f"got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"codes must lie in [0, codebook_size={k}), "
                             f"got values in [{int(codes.min())}, {int(codes.max())}]")
        return _to_grid(self.quantizer.get_output_from_indices(codes), (h, w))

    def _decode_normalised(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        """z [B, D, rows, columns] -> normalised log-mel [B, n_mels, frames], cropped from the padded grid."""
        if z.dim() != 4 or z.shape[1] != self.config.code_dim or tuple(z.shape[2:]) != self.grid_shape(frames):
            raise ValueError(f"z must have shape [B, D={self.config.code_dim}, rows, columns] with (rows, columns) "
                             f"= {self.grid_shape(frames)} for {frames} frames, got {tuple(z.shape)}")
        # Channels-last activations: oneDNN's convolutions skip a layout reorder per layer on the CPU.
        out = self.decoder(z.contiguous(memory_format=torch.channels_last))
        return out[:, 0, : self.config.n_mels, :frames]

    def _denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.config.input_std + self.config.input_mean

    def decode(self, z: torch.Tensor, frames: int) -> torch.Tensor:
        """z [B, D, rows, columns] -> log-mel [B, n_mels, frames]."""
        return self._denormalise(self._decode_normalised(z, frames))

    def decode_codes(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        """codes long [B, P, levels] -> log-mel [B, n_mels, frames]; any number of columns (P / rows)."""
        return self.decode(self.codes_to_embeddings(codes, self.grid_shape(frames)), frames)

    def encode_stream(self, mel: torch.Tensor) -> torch.Tensor:
        """Codes of one long log-mel [n_mels, frames] -> long [columns * rows, levels] (time-major), on the CPU.

        Encoded SEGMENT_COLUMNS columns at a time with MARGIN_COLUMNS of context on each side.
        """
        rows, columns = self.grid_shape(mel.shape[-1])
        column_frames = self.config.downsampling[1]
        device = next(self.parameters()).device
        codes = []
        for first, low, high in _segments(columns):
            piece = self.encode(mel[None, :, low * column_frames: high * column_frames].to(device))[0]
            kept = min(SEGMENT_COLUMNS, columns - first)
            codes.append(piece[(first - low) * rows: (first - low + kept) * rows].cpu())
        return torch.cat(codes)

    @torch.no_grad()
    def decode_stream(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        """codes long [columns * rows, levels] (time-major) -> log-mel [n_mels, frames], on the codes' device.

        Decoded SEGMENT_COLUMNS columns at a time with MARGIN_COLUMNS of context on each side; ``frames``
        must fit the columns (grid_shape(frames) gives as many columns as the codes hold).
        """
        rows, columns = self.grid_shape(frames)
        if codes.dim() != 2 or codes.shape[0] != rows * columns:
            raise ValueError(f"codes must have shape [P={rows * columns} ({rows} rows x {columns} columns for "
                             f"{frames} frames), levels], got {tuple(codes.shape)}")
        column_frames = self.config.downsampling[1]
        pieces = []
        for first, low, high in _segments(columns):
            mel = self.decode_codes(codes[None, low * rows: high * rows], (high - low) * column_frames)[0]
            kept = min(SEGMENT_COLUMNS, columns - first)
            pieces.append(mel[:, (first - low) * column_frames: (first - low + kept) * column_frames])
        return torch.cat(pieces, dim=1)[:, :frames]

    def codebook_health(self) -> list[CodebookHealth]:
        """Per-level usage of the codebooks, from the EMA cluster sizes kept by training."""
        k = self.config.codebook_size
        threshold = self.config.dead_code_threshold or MIN_CLUSTER_SIZE
        health = []
        for level, layer in enumerate(self.quantizer.layers):
            sizes = layer._codebook.cluster_size.detach().reshape(-1).double().clamp_min(0).cpu()
            used = int((sizes >= threshold).sum())
            p = sizes / sizes.sum().clamp_min(1e-12)
            entropy = -(p * p.clamp_min(1e-300).log()).sum()
            health.append(CodebookHealth(
                level=level,
                codebook_size=k,
                utilisation=used / k,
                perplexity=min(max(math.exp(float(entropy)), 1.0), float(k)),
                dead_codes=k - used,
            ))
        return health


def _segments(columns: int) -> list[tuple[int, int, int]]:
    """(first kept column, first column with context, end column with context) of each stream segment."""
    return [(first, max(0, first - MARGIN_COLUMNS), min(columns, first + SEGMENT_COLUMNS + MARGIN_COLUMNS))
            for first in range(0, columns, SEGMENT_COLUMNS)]


def mel_spectral_convergence(mel: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Per-item ||A - A_hat||_F / ||A||_F of mel magnitudes A = exp(log-mel / 2): [B, n_mels, frames] -> [B].

    The log floor of silence makes ||A|| > 0 for any mel; decoded values are capped before exp().
    """
    magnitude = torch.exp(0.5 * mel)
    error = magnitude - torch.exp(0.5 * estimate.clamp(max=_MAX_LOG_MEL))
    return torch.linalg.vector_norm(error, dim=(1, 2)) / torch.linalg.vector_norm(magnitude, dim=(1, 2))
