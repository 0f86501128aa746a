"""Convolutional VQ-VAE over log-mel spectrograms, quantised by a residual VQ.

    mel [B, n_mels, frames]
      -> normalise ((mel - input_mean) / input_std), zero-pad to multiples of 16 on both axes
      -> encoder: four stride-2 conv blocks (16x down) + 1x1 projection -> z [B, D, H, W]
      -> flatten TIME-MAJOR (p = w*H + h) -> ResidualVQ -> codes [B, P, Q]
    codes -> sum of the per-level codebook vectors -> z_q [B, D, H, W]
      -> decoder (mirror of the encoder, linear output) -> crop -> de-normalise -> mel

Padding is zero in normalised space, i.e. the corpus mean log-mel (``input_mean``): the neutral input
for the convolutions, and independent of the spectrogram's log floor. It is cropped away after decoding.

Randomness: k-means init and dead-code replacement in vector-quantize-pytorch draw from the global RNG,
so training callers wrap training steps in ``torch.random.fork_rng()`` with their own seed. ``encode`` and
eval-mode ``forward`` never draw random numbers and never change the codebooks.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import ResidualVQ

# A code counts as used when its EMA cluster size reaches this, if dead-code replacement is off
# (dead_code_threshold == 0); otherwise the dead-code threshold itself decides.
MIN_CLUSTER_SIZE = 1e-3


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")


def _check_real(name: str, value: Any, expected: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise TypeError(f"{name} must be a finite number {expected}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class VQVAEConfig:
    """Shape and training constants of a ConvVQVAE.

    Attributes:
        n_mels: mel bins of the input spectrogram (>= 1).
        channels: channels of the four stride-2 encoder blocks (the decoder mirrors them).
        code_dim: D, dimension of the latent grid and of the codebook vectors.
        num_quantizers: Q, residual levels (level 0 coarsest).
        codebook_size: K, codes per level (>= 2).
        commitment_weight: weight of the commitment loss (>= 0), applied once to the sum over levels.
        ema_decay: decay of the EMA codebook updates, in (0, 1).
        kmeans_init: initialise each codebook by k-means on its first training batch.
        dead_code_threshold: codes whose EMA cluster size (vectors per batch) falls below this are
            replaced by vectors of the current batch (>= 0; 0 = no replacement).
        input_mean, input_std: log-mel normalisation, set by training from the corpus (std > 0).
    """

    n_mels: int = 128
    channels: tuple[int, ...] = (32, 64, 128, 128)
    code_dim: int = 64
    num_quantizers: int = 3
    codebook_size: int = 128
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    kmeans_init: bool = True
    dead_code_threshold: float = 2.0
    input_mean: float = 0.0
    input_std: float = 1.0

    def __post_init__(self) -> None:
        _check_int("n_mels", self.n_mels, 1)
        if isinstance(self.channels, (str, bytes)) or not isinstance(self.channels, (tuple, list)):
            raise TypeError(f"channels must be a sequence of 4 ints >= 1, got {self.channels!r}")
        if len(self.channels) != 4:
            raise ValueError(f"channels must hold 4 ints >= 1 (one per stride-2 block), got {self.channels!r}")
        for i, c in enumerate(self.channels):
            _check_int(f"channels[{i}]", c, 1)
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        _check_int("code_dim", self.code_dim, 1)
        _check_int("num_quantizers", self.num_quantizers, 1)
        _check_int("codebook_size", self.codebook_size, 2)
        if not isinstance(self.kmeans_init, bool):
            raise TypeError(f"kmeans_init must be a bool, got {self.kmeans_init!r}")
        ranges = {
            "commitment_weight": ("in [0, inf)", lambda v: v >= 0),
            "ema_decay": ("in (0, 1)", lambda v: 0 < v < 1),
            "dead_code_threshold": ("in [0, inf)", lambda v: v >= 0),
            "input_mean": ("", lambda v: True),
            "input_std": ("in (0, inf)", lambda v: v > 0),
        }
        for name, (expected, ok) in ranges.items():
            value = _check_real(name, getattr(self, name), expected)
            if not ok(value):
                raise ValueError(f"{name} must be a finite number {expected}, got {value}")
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (channels as a list); ``from_dict`` restores an equal config."""
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VQVAEConfig:
        """Build a config from ``to_dict`` output; ValueError on unknown keys or bad values."""
        if not isinstance(d, Mapping):
            raise TypeError(f"VQVAEConfig.from_dict expects a mapping, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown VQVAEConfig keys: {unknown}")
        return cls(**d)


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
        codes: long [B, P, Q], time-major positions.
        commit_loss: scalar, commitment_weight * sum over levels of MSE(residual, its code vector).
        recon_loss: scalar, MSE between reconstruction and input in normalised space.
    """

    recon: torch.Tensor
    codes: torch.Tensor
    commit_loss: torch.Tensor
    recon_loss: torch.Tensor

    @property
    def loss(self) -> torch.Tensor:
        """The training objective: recon_loss + commit_loss."""
        return self.recon_loss + self.commit_loss


def _down_block(c_in: int, c_out: int) -> nn.Sequential:
    # kernel 4, stride 2, padding 1 halves an even size exactly, so 16 | size keeps the grid aligned.
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.SiLU(),
                         nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU())


def _up_block(c_in: int, c_out: int) -> nn.Sequential:
    # The mirror of _down_block: nearest 2x upsampling then convs (no checkerboard of transposed convs).
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1),
                         nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1), nn.SiLU())


def _init_conv_weights(module: nn.Module) -> None:
    """He init for the convs followed by SiLU, unit gain for the linear ones, zero biases.

    PyTorch's default conv init shrinks the variance about threefold per layer, which after nine layers
    leaves a nearly constant latent grid for the k-means init to cluster.
    """
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    for i, conv in enumerate(convs):
        is_linear = i == len(convs) - 1
        nn.init.kaiming_normal_(conv.weight, nonlinearity="linear" if is_linear else "relu")
        nn.init.zeros_(conv.bias)


def _to_positions(grid: torch.Tensor) -> torch.Tensor:
    """[B, D, H, W] -> [B, P, D] with p = w*H + h (time-major)."""
    b, d, h, w = grid.shape
    return grid.permute(0, 3, 2, 1).reshape(b, w * h, d)


def _to_grid(flat: torch.Tensor, spatial_shape: tuple[int, int]) -> torch.Tensor:
    """[B, P, D] time-major -> [B, D, H, W]; the inverse of _to_positions."""
    h, w = spatial_shape
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
    """2-D convolutional VQ-VAE: log-mel [B, n_mels, frames] <-> codes [B, P, Q] (time-major)."""

    DOWNSAMPLE = 16

    def __init__(self, config: VQVAEConfig | None = None) -> None:
        super().__init__()
        config = VQVAEConfig() if config is None else config
        if not isinstance(config, VQVAEConfig):
            raise TypeError(f"config must be a VQVAEConfig, got {type(config).__name__}")
        self.config = config
        c1, c2, c3, c4 = config.channels
        self.encoder = nn.Sequential(
            _down_block(1, c1), _down_block(c1, c2), _down_block(c2, c3), _down_block(c3, c4),
            nn.Conv2d(c4, config.code_dim, 1),
        )
        self.quantizer = ResidualVQ(
            dim=config.code_dim,
            num_quantizers=config.num_quantizers,
            codebook_size=config.codebook_size,
            decay=config.ema_decay,
            kmeans_init=config.kmeans_init,
            threshold_ema_dead_code=config.dead_code_threshold,
            commitment_weight=config.commitment_weight,
        )
        # The last conv is linear: the output is normalised log-mel, de-normalised in decode, so the
        # decoder can reach the whole log-mel range (no squashing activation).
        self.decoder = nn.Sequential(
            nn.Conv2d(config.code_dim, c4, 3, padding=1), nn.SiLU(),
            _up_block(c4, c3), _up_block(c3, c2), _up_block(c2, c1), _up_block(c1, c1),
            nn.Conv2d(c1, 1, 3, padding=1),
        )
        _init_conv_weights(self.encoder)
        _init_conv_weights(self.decoder)

    def spatial_shape(self, frames: int) -> tuple[int, int]:
        """Latent grid (H, W) = (ceil(n_mels / 16), ceil(frames / 16)) for a mel of ``frames`` frames."""
        _check_int("frames", frames, 1)
        return math.ceil(self.config.n_mels / self.DOWNSAMPLE), math.ceil(frames / self.DOWNSAMPLE)

    def _normalise_and_pad(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, frames] -> normalised, zero-padded [B, 1, 16H, 16W]."""
        if not isinstance(mel, torch.Tensor) or not mel.is_floating_point():
            raise TypeError(f"mel must be a float tensor [B, n_mels, frames], got {type(mel).__name__}"
                            + (f" of dtype {mel.dtype}" if isinstance(mel, torch.Tensor) else ""))
        if mel.dim() != 3 or mel.shape[1] != self.config.n_mels or mel.shape[0] == 0 or mel.shape[2] == 0:
            raise ValueError(f"mel must have shape [B >= 1, n_mels={self.config.n_mels}, frames >= 1], "
                             f"got {tuple(mel.shape)}")
        h, w = self.spatial_shape(mel.shape[2])
        x = (mel - self.config.input_mean) / self.config.input_std
        x = F.pad(x, (0, w * self.DOWNSAMPLE - mel.shape[2], 0, h * self.DOWNSAMPLE - mel.shape[1]))
        return x.unsqueeze(1)

    def encode_latent(self, mel: torch.Tensor) -> torch.Tensor:
        """Continuous encoder output before quantisation: mel [B, n_mels, frames] -> z [B, D, H, W]."""
        return self.encoder(self._normalise_and_pad(mel))

    def _commitment_loss(self, flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """commitment_weight * sum over levels of MSE(residual, code vector); flat [B, P, D]."""
        per_level = self.quantizer.get_codes_from_indices(codes)  # [Q, B, P, D]
        residual, total = flat, flat.new_zeros(())
        for vectors in per_level:
            total = total + F.mse_loss(residual, vectors)
            residual = residual - vectors
        return self.config.commitment_weight * total

    def forward(self, mel: torch.Tensor) -> VQVAEOutput:
        """Encode, quantise and decode a batch; in training mode this also updates the codebooks.

        mel [B, n_mels, frames] -> VQVAEOutput (recon same shape, codes [B, P, Q], scalar losses).
        """
        x = self._normalise_and_pad(mel)
        grid_shape = self.spatial_shape(mel.shape[2])
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
        target_shape = (mel.shape[1], mel.shape[2])
        recon_normalised = self._decode_normalised(_to_grid(quantized, grid_shape), target_shape)
        input_normalised = x[:, 0, : mel.shape[1], : mel.shape[2]]
        return VQVAEOutput(
            recon=self._denormalise(recon_normalised),
            codes=codes,
            commit_loss=commit_loss,
            recon_loss=F.mse_loss(recon_normalised, input_normalised),
        )

    @torch.no_grad()
    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, frames] -> codes long [B, P, Q], P = H*W time-major (p = w*H + h).

        Deterministic in any mode: never draws random numbers, never updates the codebooks.
        """
        flat = _to_positions(self.encode_latent(mel))
        with _frozen(self.quantizer):
            _, codes, _ = self.quantizer(flat)
        return codes

    def codes_to_embeddings(self, codes: torch.Tensor, spatial_shape: tuple[int, int]) -> torch.Tensor:
        """codes long [B, P, Q] (time-major) -> z [B, D, H, W], the sum of the per-level code vectors."""
        h, w = spatial_shape
        q, k = self.config.num_quantizers, self.config.codebook_size
        if not isinstance(codes, torch.Tensor) or codes.dtype != torch.long:
            raise TypeError(f"codes must be a torch.long tensor [B, P, Q], got "
                            f"{codes.dtype if isinstance(codes, torch.Tensor) else type(codes).__name__}")
        if codes.dim() != 3 or codes.shape[1] != h * w or codes.shape[2] != q:
            raise ValueError(f"codes must have shape [B, P={h * w} (H={h} x W={w}), Q={q}], "
                             f"got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise ValueError(f"codes must lie in [0, codebook_size={k}), "
                             f"got values in [{int(codes.min())}, {int(codes.max())}]")
        return _to_grid(self.quantizer.get_output_from_indices(codes), (h, w))

    def _decode_normalised(self, z: torch.Tensor, target_shape: tuple[int, int]) -> torch.Tensor:
        """z [B, D, H, W] -> normalised log-mel [B, n_mels, frames], cropped from the padded grid."""
        n_mels, frames = target_shape
        if n_mels != self.config.n_mels:
            raise ValueError(f"target_shape[0] must be n_mels={self.config.n_mels}, got {n_mels}")
        if z.dim() != 4 or z.shape[1] != self.config.code_dim or tuple(z.shape[2:]) != self.spatial_shape(frames):
            raise ValueError(f"z must have shape [B, D={self.config.code_dim}, H, W] with (H, W) = "
                             f"{self.spatial_shape(frames)} for {frames} frames, got {tuple(z.shape)}")
        # Channels-last activations: oneDNN's convolutions skip a layout reorder per layer, ~2x faster on CPU.
        return self.decoder(z.contiguous(memory_format=torch.channels_last))[:, 0, :n_mels, :frames]

    def _denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.config.input_std + self.config.input_mean

    def decode(self, z: torch.Tensor, target_shape: tuple[int, int]) -> torch.Tensor:
        """z [B, D, H, W] -> log-mel [B, n_mels, frames]; target_shape = (n_mels, frames)."""
        return self._denormalise(self._decode_normalised(z, target_shape))

    def decode_codes(self, codes: torch.Tensor, frames: int) -> torch.Tensor:
        """codes long [B, P, Q] -> log-mel [B, n_mels, frames]."""
        z = self.codes_to_embeddings(codes, self.spatial_shape(frames))
        return self.decode(z, (self.config.n_mels, frames))

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
