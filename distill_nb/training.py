"""Training the VQ-VAE and the prior: schedules, history, checkpoints, resume and data parallelism.

Both stages share one loop (``_fit``): AdamW, a cosine learning-rate schedule after a short linear
warmup, gradient clipping, validation after every epoch, and the best-validation weights restored at
the end. An epoch is a fixed number of batches of random-offset 1 s chunks (``Corpus.random_chunks``),
so the models also see contexts that start mid-sound; the offsets are drawn anew every epoch.

Reproducibility: every random number of epoch ``e`` (chunk offsets, dropout, and the k-means init and
dead-code replacement that vector-quantize-pytorch draws from the global RNG) comes from seeds derived
from ``(seed, e, rank)``, with the global RNG forked so the caller's is left untouched. A run resumed
from an epoch-boundary checkpoint therefore ends with exactly the weights of an uninterrupted run.

Checkpoints are one safetensors file each (tensors: weights, best weights, optimizer state; JSON in the
metadata: the run settings, epoch, history), written to a temporary file and renamed into place, so a
crash leaves the previous checkpoint intact. They are written every ``checkpoint_every`` epochs, at the
end, and on KeyboardInterrupt (the last completed epoch; a resumed run repeats the interrupted epoch).

Data parallelism: launched under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), training runs
with DistributedDataParallel, one process per device (gloo on CPU, nccl on CUDA). ``batch_size`` is per
process, each rank draws its own chunks, the codebooks are synchronised (vector-quantize-pytorch
all-reduces its EMA statistics; DDP broadcasts the buffers), and only rank 0 writes files or reports
progress.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import math
import os
import pathlib
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill_nb.atomic import write_bytes_atomically
from distill_nb.corpus import Corpus, demo_corpus
from distill_nb.model_file import LoadedVQModel, ModelFileError, read_safetensors, save_model
from distill_nb.prior import CodePrior, PriorConfig, extract_code_sequences, flatten_codes
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig
from distill_nb.vqvae import CodebookHealth, ConvVQVAE, VQVAEConfig

Progress = Callable[[float, str], None]

# Codebook size by minutes of training audio: fewer codes for small corpora, so that every code is
# seen often enough to be learned (DESIGN.md: 64/128/256 by corpus size).
CODEBOOK_SIZE_BY_MINUTES = ((5.0, 64), (30.0, 128), (math.inf, 256))
# Prior dropout by minutes of training audio: small corpora are memorised quickly.
PRIOR_DROPOUT_BY_MINUTES = ((5.0, 0.3), (30.0, 0.2), (math.inf, 0.1))
DEFAULT_EPOCHS = 20
VQVAE_LR = 1e-3
PRIOR_LR = 5e-4
WEIGHT_DECAY = 0.01
WARMUP_FRACTION = 0.05  # of all steps, linear from 0
MIN_LR_FRACTION = 0.1  # the cosine ends at this fraction of the peak learning rate
GRAD_CLIP_NORM = 1.0
MAX_STAT_CHUNKS = 256  # chunks used for the input statistics and for validation, evenly spaced
LOW_UTILISATION = 0.3  # warn when a codebook level uses less than this share of its codes
MEMORISATION_TRAIN_PERPLEXITY = 1.5
MEMORISATION_RATIO = 2.0  # ... and validation perplexity above this multiple of the training one

CHECKPOINT_FORMAT = "distill_nb.checkpoint"
CHECKPOINT_VERSION = "1"

# The bundled default model (train_default_model): a VQ-VAE that reconstructs well matters more for the
# sound than a large prior, so the budget (< 10 min on a 2-core CPU) goes mostly to the VQ-VAE.
# Measured on the demo corpus (validation reconstruction MSE in normalised log-mel, equal CPU time):
# this half-width VQ-VAE for 1500 steps 0.060 vs the full-width default for 600 steps 0.071; at lr 2e-3
# it reaches 0.054 in 1200 steps. The prior at lr 2e-3 beats 1e-3 (val perplexity 22.7 vs 23.6 in 500 steps).
DEFAULT_MODEL_SECONDS = 120.0
DEFAULT_MODEL_VQVAE = dict(channels=(16, 32, 64, 64), code_dim=32, codebook_size=64)
DEFAULT_MODEL_PRIOR = dict(d_model=128, n_layers=3, n_heads=4, dropout=0.1)
DEFAULT_MODEL_SCHEDULE = dict(vqvae_epochs=24, prior_epochs=14, steps_per_epoch=50, batch_size=8,
                              vqvae_lr=2e-3, prior_lr=2e-3)

# "small": a toy size that trains in seconds, for tests and quick looks at the pipeline.
SMALL_VQVAE = dict(channels=(8, 16, 16, 16), code_dim=16, codebook_size=16)
SMALL_PRIOR = dict(d_model=32, n_layers=1, n_heads=2, dropout=0.1)


class CheckpointError(ValueError):
    """A file that is not a usable training checkpoint; the message names the file and the cause."""


# --- history -----------------------------------------------------------------------------------------


@dataclass
class EpochRecord:
    """What one epoch did.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: mean training loss over the epoch's batches (over all processes under DDP).
        val_loss: validation loss after the epoch (eval mode, no dropout).
        lr: learning rate of the epoch's last step.
        seconds: wall-clock time of the epoch, validation included.
        val_recon_loss: VQ-VAE only: reconstruction MSE in normalised log-mel units.
        codebook_utilisation, codebook_perplexity: VQ-VAE only, one value per level (see CodebookHealth).
        train_perplexity, val_perplexity: prior only: exp of the cross-entropy losses (nats).
    """

    epoch: int
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    val_recon_loss: float | None = None
    codebook_utilisation: list[float] | None = None
    codebook_perplexity: list[float] | None = None
    train_perplexity: float | None = None
    val_perplexity: float | None = None


@dataclass
class TrainingHistory:
    """Per-epoch records of one stage ("vqvae" or "prior"), its warnings and the kept epoch.

    ``best_epoch`` is the epoch whose weights the trained model holds (lowest validation loss);
    ``codebook_health`` (VQ-VAE only) describes those weights; ``settings`` are the run's settings.
    """

    stage: str
    epochs: list[EpochRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    best_epoch: int | None = None
    codebook_health: list[CodebookHealth] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> EpochRecord | None:
        """The record of ``best_epoch``."""
        return next((r for r in self.epochs if r.epoch == self.best_epoch), None)

    @property
    def seconds(self) -> float:
        """Training time of all epochs (of the interrupted runs too, when resumed)."""
        return sum(r.seconds for r in self.epochs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict; ``from_dict`` restores an equal history."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingHistory:
        return cls(
            stage=d["stage"],
            epochs=[EpochRecord(**r) for r in d["epochs"]],
            warnings=list(d["warnings"]),
            best_epoch=d["best_epoch"],
            codebook_health=[CodebookHealth(**h) for h in d["codebook_health"]],
            settings=dict(d["settings"]),
        )

    def summary(self) -> str:
        """A few readable lines: the kept epoch, its losses, perplexity or codebook health, warnings."""
        best = self.best
        name = {"vqvae": "VQ-VAE", "prior": "prior"}.get(self.stage, self.stage)
        if best is None:
            return f"{name}: no epoch trained"
        line = (f"{name}: {len(self.epochs)} epochs in {self.seconds:.0f} s; kept epoch {best.epoch}: "
                f"train loss {best.train_loss:.4f}, val loss {best.val_loss:.4f}")
        if best.val_perplexity is not None:
            line += f", perplexity train {best.train_perplexity:.2f} / val {best.val_perplexity:.2f}"
        lines = [line]
        lines += [f"  codebook level {h.level}: {h.utilisation:.0%} of {h.codebook_size} codes used, "
                  f"perplexity {h.perplexity:.1f}" for h in self.codebook_health]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


# --- default sizes -----------------------------------------------------------------------------------


def _by_minutes(table: tuple[tuple[float, Any], ...], corpus: Corpus) -> Any:
    minutes = corpus.split_seconds("train") / 60
    return next(value for limit, value in table if minutes < limit)


def default_vqvae_config(corpus: Corpus, spectrogram: Spectrogram | None = None, size: str = "auto") -> VQVAEConfig:
    """VQ-VAE config for ``corpus``: ``size="auto"`` picks the codebook by minutes of training audio
    (< 5 min: 64, < 30 min: 128, else 256; see ``CODEBOOK_SIZE_BY_MINUTES``); ``"small"`` is a toy model
    that trains in seconds. ``input_mean``/``input_std`` are set by training."""
    n_mels = _spectrogram_for(corpus, spectrogram).config.n_mels
    if size == "auto":
        return VQVAEConfig(n_mels=n_mels, codebook_size=_by_minutes(CODEBOOK_SIZE_BY_MINUTES, corpus))
    if size == "small":
        return VQVAEConfig(n_mels=n_mels, **SMALL_VQVAE)
    raise ValueError(f"size must be 'auto' or 'small', got {size!r}")


def default_prior_config(
    vqvae_config: VQVAEConfig, corpus: Corpus, spectrogram: Spectrogram | None = None, size: str = "auto"
) -> PriorConfig:
    """Prior config that fits ``vqvae_config`` (vocabulary, levels, sequence length of one chunk).

    ``size="auto"``: d_model 256, 4 layers, 4 heads, dropout by minutes of training audio (< 5 min: 0.3,
    < 30 min: 0.2, else 0.1); ``"small"``: a toy prior that trains in seconds.
    """
    spectrogram = _spectrogram_for(corpus, spectrogram)
    frames = spectrogram.get_mel_shape(spectrogram.chunk_samples)[1]
    h, w = math.ceil(vqvae_config.n_mels / ConvVQVAE.DOWNSAMPLE), math.ceil(frames / ConvVQVAE.DOWNSAMPLE)
    shape = dict(codebook_size=vqvae_config.codebook_size, num_quantizers=vqvae_config.num_quantizers,
                 seq_len=h * w * vqvae_config.num_quantizers)
    if size == "auto":
        return PriorConfig(**shape, dropout=_by_minutes(PRIOR_DROPOUT_BY_MINUTES, corpus))
    if size == "small":
        return PriorConfig(**shape, **SMALL_PRIOR)
    raise ValueError(f"size must be 'auto' or 'small', got {size!r}")


def default_steps_per_epoch(corpus: Corpus, batch_size: int) -> int:
    """Batches per epoch: about as many chunks as the training audio holds seconds, within [50, 400]."""
    return int(min(400, max(50, round(corpus.split_seconds("train") / batch_size))))


# --- the two stages ----------------------------------------------------------------------------------


def train_vqvae(
    corpus: Corpus,
    config: VQVAEConfig | None = None,
    spectrogram: Spectrogram | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int = 16,
    lr: float = VQVAE_LR,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: str | os.PathLike | None = None,
    checkpoint_metadata: dict | None = None,
) -> tuple[ConvVQVAE, TrainingHistory]:
    """Train a ConvVQVAE on ``corpus`` -> (model in eval mode with the best-validation weights, history).

    Args:
        corpus: training and validation audio.
        config: None = ``default_vqvae_config(corpus)``. Its ``input_mean``/``input_std`` are replaced
            by the mean and standard deviation of the training log-mels.
        spectrogram: mel analysis; None = the default at the corpus sample rate.
        epochs: None = ``DEFAULT_EPOCHS``. steps_per_epoch: None = ``default_steps_per_epoch``.
        batch_size: chunks per step (per process under torchrun). lr: peak learning rate.
        seed: every random choice derives from it. device: "cpu" or "cuda" (under torchrun, the local rank's GPU).
        progress: called with (fraction in [0, 1], message) after each step and epoch.
        checkpoint_path: where to write checkpoints (None = none); every ``checkpoint_every`` epochs.
        resume: a checkpoint of this run to continue; the other arguments must match the run's
            (config, epochs and steps_per_epoch left None take the checkpoint's).
        checkpoint_metadata: JSON-safe data stored in each checkpoint (see ``read_checkpoint``).
    """
    ctx = _distributed_context(device)  # before the model: the codebooks sync when distributed
    spectrogram = _spectrogram_for(corpus, spectrogram)
    checkpoint = _read_resume(resume, "vqvae")
    if config is None:
        config = (VQVAEConfig.from_dict(checkpoint.settings["config"]) if checkpoint
                  else default_vqvae_config(corpus, spectrogram))
    if not isinstance(config, VQVAEConfig):
        raise TypeError(f"config must be a VQVAEConfig or None, got {type(config).__name__}")
    if config.n_mels != spectrogram.config.n_mels:
        raise ValueError(f"config.n_mels={config.n_mels} must equal the spectrogram's n_mels="
                         f"{spectrogram.config.n_mels}")
    train_mels = _mels(spectrogram, _spaced(corpus.fixed_chunks("train")), ctx.device)
    mean, std = float(train_mels.mean()), float(train_mels.std())
    config = dataclasses.replace(config, input_mean=mean, input_std=max(std, 1e-3))
    run = _run_settings("vqvae", config.to_dict(), corpus, epochs, steps_per_epoch, batch_size, lr, seed, checkpoint)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive_seed(seed, 0, 0))
        model = ConvVQVAE(config).to(ctx.device)
    val_mels = _mels(spectrogram, _spaced(corpus.fixed_chunks("val")), ctx.device)

    def batch_loss(module: nn.Module, generator: torch.Generator) -> torch.Tensor:
        audio = corpus.random_chunks(batch_size, generator).to(ctx.device)
        return module(spectrogram.waveform_to_mel(audio)).loss

    def evaluate(train_loss: float) -> dict[str, Any]:
        outputs = [(model(batch), len(batch)) for batch in val_mels.split(32)]
        val_loss, recon = _weighted_means([(out.loss, out.recon_loss, n) for out, n in outputs])
        health = model.codebook_health()
        return dict(val_loss=val_loss, val_recon_loss=recon,
                    codebook_utilisation=[h.utilisation for h in health],
                    codebook_perplexity=[h.perplexity for h in health])

    history = _fit(run, model, batch_loss, evaluate, ctx, progress, checkpoint_path, checkpoint_every,
                   checkpoint, {}, checkpoint_metadata)
    history.codebook_health = model.codebook_health()
    for h in history.codebook_health:
        if h.utilisation < LOW_UTILISATION:
            _warn(history, ctx, f"VQ-VAE codebook level {h.level} uses only {h.utilisation:.0%} of its "
                               f"{h.codebook_size} codes (perplexity {h.perplexity:.1f}); a smaller codebook "
                               f"or more varied audio would use it better")
    return model, history


def train_prior(
    vqvae: ConvVQVAE,
    corpus: Corpus,
    config: PriorConfig | None = None,
    spectrogram: Spectrogram | None = None,
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int = 32,
    lr: float = PRIOR_LR,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: str | os.PathLike | None = None,
    checkpoint_metadata: dict | None = None,
) -> tuple[CodePrior, TrainingHistory]:
    """Train a CodePrior on the codes of ``vqvae`` -> (prior in eval mode, best-validation weights; history).

    Each step encodes freshly drawn random-offset chunks with ``vqvae`` (moved to ``device``, eval mode)
    and minimises the cross-entropy of ``prior(tokens)`` against ``tokens``. Validation perplexity is
    recorded per epoch; a memorisation warning is raised when the training perplexity falls below
    ``MEMORISATION_TRAIN_PERPLEXITY`` while validation perplexity is more than ``MEMORISATION_RATIO``
    times higher. Checkpoints hold the VQ-VAE too, so a resumed run can check it is the same.
    Arguments as in ``train_vqvae``; ``config`` None = ``default_prior_config``.
    """
    ctx = _distributed_context(device)
    spectrogram = _spectrogram_for(corpus, spectrogram)
    checkpoint = _read_resume(resume, "prior")
    if config is None:
        config = (PriorConfig.from_dict(checkpoint.settings["config"]) if checkpoint
                  else default_prior_config(vqvae.config, corpus, spectrogram))
    if not isinstance(config, PriorConfig):
        raise TypeError(f"config must be a PriorConfig or None, got {type(config).__name__}")
    expected = default_prior_config(vqvae.config, corpus, spectrogram)
    for name in ("codebook_size", "num_quantizers", "seq_len"):
        if getattr(config, name) != getattr(expected, name):
            raise ValueError(f"config.{name}={getattr(config, name)} does not fit the VQ-VAE "
                             f"(expected {getattr(expected, name)})")
    vqvae_tensors = _state_tensors(vqvae, "vqvae.")
    if checkpoint is not None:
        _check_same_vqvae(checkpoint, vqvae_tensors)
    run = _run_settings("prior", config.to_dict(), corpus, epochs, steps_per_epoch, batch_size, lr, seed, checkpoint)
    vqvae.to(ctx.device).eval()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_derive_seed(seed, 0, 0))
        prior = CodePrior(config).to(ctx.device)
    val_tokens = extract_code_sequences(
        vqvae, _mels(spectrogram, _spaced(corpus.fixed_chunks("val")), ctx.device)).to(ctx.device)

    def cross_entropy(module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        logits = module(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    def batch_loss(module: nn.Module, generator: torch.Generator) -> torch.Tensor:
        audio = corpus.random_chunks(batch_size, generator).to(ctx.device)
        tokens = flatten_codes(vqvae.encode(spectrogram.waveform_to_mel(audio)))
        return cross_entropy(module, tokens)

    def evaluate(train_loss: float) -> dict[str, Any]:
        (val_loss,) = _weighted_means([(cross_entropy(prior, b), len(b)) for b in val_tokens.split(64)])
        return dict(val_loss=val_loss, train_perplexity=math.exp(min(train_loss, 50.0)),
                    val_perplexity=math.exp(min(val_loss, 50.0)))

    history = _fit(run, prior, batch_loss, evaluate, ctx, progress, checkpoint_path, checkpoint_every,
                   checkpoint, vqvae_tensors, checkpoint_metadata)
    message = _memorisation_warning(history)
    if message is not None:
        _warn(history, ctx, message)
    return prior, history


def train_model(
    corpus: Corpus,
    vqvae_config: VQVAEConfig | None = None,
    prior_config: PriorConfig | None = None,
    vqvae_epochs: int | None = None,
    prior_epochs: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Progress | None = None,
    name: str = "untitled",
    spectrogram: Spectrogram | None = None,
    steps_per_epoch: int | None = None,
    batch_size: int = 16,
    vqvae_lr: float = VQVAE_LR,
    prior_lr: float = PRIOR_LR,
    checkpoint_path: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
) -> tuple[LoadedVQModel, dict[str, TrainingHistory]]:
    """Train the VQ-VAE, then the prior on its codes -> (model ready to save, {"vqvae": h, "prior": h}).

    Both stages checkpoint to the same ``checkpoint_path`` (the prior's checkpoints hold the trained
    VQ-VAE and its history), so ``resume`` continues from either stage. ``batch_size`` is the VQ-VAE's;
    the prior trains on twice as many chunks per step (token sequences are cheaper than mels).
    The metadata holds the name, the creation date, the corpus, both histories and the seed;
    ``train_code_counts`` [Q, K] counts the codes of the tiled training audio.
    """
    spectrogram = _spectrogram_for(corpus, spectrogram)
    checkpoint = read_checkpoint(resume) if resume is not None else None
    prior_steps = steps_per_epoch or default_steps_per_epoch(corpus, 2 * batch_size)
    vqvae_steps = steps_per_epoch or default_steps_per_epoch(corpus, batch_size)
    vqvae_share = (vqvae_epochs or DEFAULT_EPOCHS) * vqvae_steps / (
        (vqvae_epochs or DEFAULT_EPOCHS) * vqvae_steps + (prior_epochs or DEFAULT_EPOCHS) * prior_steps)
    common = dict(spectrogram=spectrogram, seed=seed, device=device, checkpoint_path=checkpoint_path)

    if checkpoint is not None and checkpoint.stage == "prior":
        with torch.random.fork_rng(devices=[]):  # the init is overwritten at once: keep it off the global RNG
            vqvae = ConvVQVAE(VQVAEConfig.from_dict(checkpoint.extra["vqvae_config"]))
        vqvae.load_state_dict({k[len("vqvae."):]: v for k, v in checkpoint.tensors.items() if k.startswith("vqvae.")})
        vqvae_history = TrainingHistory.from_dict(checkpoint.extra["vqvae_history"])
    else:
        vqvae, vqvae_history = train_vqvae(
            corpus, vqvae_config, epochs=vqvae_epochs, steps_per_epoch=vqvae_steps, batch_size=batch_size,
            lr=vqvae_lr, progress=_scaled(progress, 0.0, vqvae_share), resume=resume, **common)
    prior, prior_history = train_prior(
        vqvae, corpus, prior_config, epochs=prior_epochs, steps_per_epoch=prior_steps, batch_size=2 * batch_size,
        lr=prior_lr, progress=_scaled(progress, vqvae_share, 1.0),
        resume=resume if checkpoint is not None and checkpoint.stage == "prior" else None,
        checkpoint_metadata={"vqvae_config": vqvae.config.to_dict(), "vqvae_history": vqvae_history.to_dict()},
        **common)

    ctx = _distributed_context(device)
    train_tokens = extract_code_sequences(vqvae, _mels(spectrogram, corpus.fixed_chunks("train"), ctx.device))
    codes = train_tokens.reshape(len(train_tokens), -1, vqvae.config.num_quantizers)
    counts = torch.stack([torch.bincount(codes[..., q].reshape(-1), minlength=vqvae.config.codebook_size)
                          for q in range(vqvae.config.num_quantizers)]).long()
    histories = {"vqvae": vqvae_history, "prior": prior_history}
    metadata = {
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "training": {
            "seed": seed,
            "device": str(ctx.device),
            "processes": ctx.world_size,
            "corpus": _corpus_summary(corpus),
            "vqvae": vqvae_history.to_dict(),
            "prior": prior_history.to_dict(),
        },
    }
    loaded = LoadedVQModel(model=vqvae.eval(), prior=prior.eval(), spectrogram=spectrogram, device=ctx.device,
                           metadata=metadata, train_code_counts=counts)
    return loaded, histories


def train_default_model(
    out_path: str | os.PathLike, seed: int = 0, progress: Progress | None = None
) -> tuple[pathlib.Path, dict[str, TrainingHistory]]:
    """Train the bundled default model from scratch on ``demo_corpus(seed)`` and save it to ``out_path``.

    Settings: ``DEFAULT_MODEL_*`` (a compact VQ-VAE and prior that train in a few minutes on a 2-core
    CPU). Returns (the path, the histories); under torchrun only rank 0 writes.
    """
    corpus = demo_corpus(seed=seed, seconds=DEFAULT_MODEL_SECONDS)
    spectrogram = Spectrogram(SpectrogramConfig(sample_rate=corpus.sample_rate))
    vqvae_config = VQVAEConfig(n_mels=spectrogram.config.n_mels, **DEFAULT_MODEL_VQVAE)
    prior_config = dataclasses.replace(default_prior_config(vqvae_config, corpus, spectrogram),
                                       **DEFAULT_MODEL_PRIOR)
    loaded, histories = train_model(
        corpus, vqvae_config, prior_config, seed=seed, progress=progress, name="distill_nb default (demo corpus)",
        spectrogram=spectrogram, **DEFAULT_MODEL_SCHEDULE)
    path = pathlib.Path(out_path)
    if is_main_process():
        save_model(loaded, path)
    return path, histories


def _memorisation_warning(history: TrainingHistory) -> str | None:
    """The warning for the first epoch where the prior memorised: train perplexity collapsed below
    MEMORISATION_TRAIN_PERPLEXITY while validation perplexity stayed MEMORISATION_RATIO times higher."""
    for record in history.epochs:
        if (record.train_perplexity < MEMORISATION_TRAIN_PERPLEXITY
                and record.val_perplexity > MEMORISATION_RATIO * record.train_perplexity):
            return (f"the prior started to memorise the training codes at epoch {record.epoch} (perplexity "
                    f"train {record.train_perplexity:.2f}, val {record.val_perplexity:.2f}); the weights of "
                    f"epoch {history.best_epoch} are kept. More audio, more dropout or fewer epochs would help")
    return None


# --- checkpoints -------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A training checkpoint read back: the run settings, completed epochs, history and tensors.

    ``tensors`` holds ``model.*`` (weights at the end of ``epoch``), ``best.*`` (the best-validation
    weights so far), ``optimizer.*`` and, for a prior, ``vqvae.*``; ``extra`` is the caller's
    ``checkpoint_metadata``.
    """

    path: pathlib.Path
    stage: str
    epoch: int
    settings: dict[str, Any]
    history: TrainingHistory
    tensors: dict[str, torch.Tensor]
    optimizer_groups: list[dict[str, Any]]
    extra: dict[str, Any]


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint written by training; CheckpointError if it is missing or not a checkpoint."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        header, tensors = read_safetensors(path)
    except ModelFileError as error:
        raise CheckpointError(f"not a distill_nb checkpoint: {error}") from error
    if header.get("format") != CHECKPOINT_FORMAT or header.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: not a distill_nb checkpoint (format {header.get('format')!r}, "
                              f"version {header.get('format_version')!r})")
    try:
        state = json.loads(header["state"])
        return Checkpoint(path=path, stage=state["settings"]["stage"], epoch=state["epoch"],
                          settings=state["settings"], history=TrainingHistory.from_dict(state["history"]),
                          tensors=tensors, optimizer_groups=state["optimizer_groups"], extra=state["extra"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: damaged checkpoint state ({error!r})") from error


def _checkpoint_payload(
    model: nn.Module, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, epoch: int,
    run: dict[str, Any], history: TrainingHistory, extra_tensors: dict[str, torch.Tensor], extra: dict | None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Everything needed to continue after ``epoch``, as (CPU tensors, safetensors metadata)."""
    tensors = _state_tensors(model, "model.")
    tensors.update({"best." + k: v for k, v in best.items()})
    optimizer_state = optimizer.state_dict()
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().to("cpu", copy=True).contiguous()
    tensors.update(extra_tensors)
    state = {"epoch": epoch, "settings": run, "history": history.to_dict(),
             "optimizer_groups": optimizer_state["param_groups"], "extra": extra or {},
             # Randomness needs no state: every epoch reseeds from (seed, epoch, rank).
             "rng": "reseeded per epoch from (seed, epoch, rank)"}
    return tensors, {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
                     "state": json.dumps(state, allow_nan=False)}


def _write_checkpoint(path: pathlib.Path, payload: tuple[dict[str, torch.Tensor], dict[str, str]]) -> None:
    write_bytes_atomically(path, safetensors.torch.save(*payload))


def _restore(checkpoint: Checkpoint, run: dict[str, Any], model: nn.Module,
             optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Load the checkpoint's model and optimizer state after checking it is this run -> best weights."""
    differences = [f"{key}={run[key]!r} (checkpoint: {checkpoint.settings.get(key)!r})"
                   for key in run if checkpoint.settings.get(key) != run[key]]
    if differences:
        raise ValueError(f"resume: {checkpoint.path} is from a different run; differing settings: "
                         + "; ".join(differences))
    tensors = checkpoint.tensors
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in checkpoint.optimizer_groups]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}


def _read_resume(resume: str | os.PathLike | None, stage: str) -> Checkpoint | None:
    if resume is None:
        return None
    checkpoint = read_checkpoint(resume)
    if checkpoint.stage != stage:
        raise ValueError(f"resume: {checkpoint.path} is a {checkpoint.stage} checkpoint, not a {stage} one")
    return checkpoint


def _check_same_vqvae(checkpoint: Checkpoint, vqvae_tensors: dict[str, torch.Tensor]) -> None:
    saved = {k: v for k, v in checkpoint.tensors.items() if k.startswith("vqvae.")}
    if saved.keys() != vqvae_tensors.keys() or not all(torch.equal(saved[k], vqvae_tensors[k]) for k in saved):
        raise ValueError(f"resume: {checkpoint.path} was trained on the codes of a different VQ-VAE")


# --- the shared training loop ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    """Where this process trains: its rank among ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    device: torch.device


def _distributed_context(device: str | torch.device) -> _Context:
    """Join the torchrun process group when launched by torchrun (once per process)."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Context(0, 1, device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return _Context(dist.get_rank(), dist.get_world_size(), device)


def is_main_process() -> bool:
    """True unless this is a torchrun process of rank > 0 (the only ones that must not write files)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _fit(
    run: dict[str, Any],
    model: nn.Module,
    batch_loss: Callable[[nn.Module, torch.Generator], torch.Tensor],
    evaluate: Callable[[float], dict[str, Any]],
    ctx: _Context,
    progress: Progress | None,
    checkpoint_path: str | os.PathLike | None,
    checkpoint_every: int,
    checkpoint: Checkpoint | None,
    extra_tensors: dict[str, torch.Tensor],
    extra: dict | None,
) -> TrainingHistory:
    """Train ``model`` for the epochs of ``run`` (resuming ``checkpoint``) and keep its best weights."""
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an int >= 1 (epochs), got {checkpoint_every!r}")
    path = pathlib.Path(checkpoint_path) if checkpoint_path is not None else None
    report = progress if ctx.rank == 0 else None
    stage_name = {"vqvae": "VQ-VAE", "prior": "prior"}[run["stage"]]
    epochs, steps = run["epochs"], run["steps_per_epoch"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=WEIGHT_DECAY)
    history = TrainingHistory(stage=run["stage"], settings=run)
    best = _state_tensors(model, "")
    start_epoch = 0
    if checkpoint is not None:
        best = _restore(checkpoint, run, model, optimizer)
        history, start_epoch = checkpoint.history, checkpoint.epoch
    trainable = model
    if ctx.world_size > 1:
        trainable = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    fork_devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []

    def payload(epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return _checkpoint_payload(model, best, optimizer, epoch, run, history, extra_tensors, extra)

    boundary = payload(start_epoch) if path is not None else None
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            started = time.perf_counter()
            model.train()
            loss_sum, lr = torch.zeros((), dtype=torch.float64), run["lr"]
            with torch.random.fork_rng(devices=fork_devices):
                torch.manual_seed(_derive_seed(run["seed"], epoch, ctx.rank, stream=0))
                generator = torch.Generator().manual_seed(_derive_seed(run["seed"], epoch, ctx.rank, stream=1))
                for step in range(steps):
                    lr = _learning_rate((epoch - 1) * steps + step, epochs * steps, run["lr"])
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    loss = batch_loss(trainable, generator)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP_NORM)
                    optimizer.step()
                    loss_sum += loss.item()
                    if report is not None:
                        report(((epoch - 1) * steps + step + 1) / (epochs * steps),
                               f"{stage_name} epoch {epoch}/{epochs} step {step + 1}/{steps} loss {loss.item():.4f}")
            if ctx.world_size > 1:
                dist.all_reduce(loss_sum)
            train_loss = float(loss_sum) / (steps * ctx.world_size)
            model.eval()
            with torch.no_grad():
                metrics = evaluate(train_loss)
            record = EpochRecord(epoch=epoch, train_loss=train_loss, lr=lr,
                                 seconds=time.perf_counter() - started, **metrics)
            history.epochs.append(record)
            if history.best is None or record.val_loss < history.best.val_loss:
                history.best_epoch, best = epoch, _state_tensors(model, "")
            if path is not None:
                boundary = payload(epoch)
                if (epoch % checkpoint_every == 0 or epoch == epochs) and ctx.rank == 0:
                    _write_checkpoint(path, boundary)
            if report is not None:
                report(epoch / epochs, f"{stage_name} epoch {epoch}/{epochs}: train loss {train_loss:.4f}, "
                                       f"val loss {record.val_loss:.4f}")
    except KeyboardInterrupt:
        if boundary is not None and ctx.rank == 0:
            _write_checkpoint(path, boundary)
        raise
    model.load_state_dict(best)
    model.eval()
    return history


def _learning_rate(step: int, total_steps: int, peak: float) -> float:
    """Linear warmup over WARMUP_FRACTION of the steps, then a cosine down to MIN_LR_FRACTION * peak."""
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def _derive_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed for (seed, epoch, rank, stream), well mixed so neighbouring seeds do not correlate."""
    words = np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


# --- small helpers -----------------------------------------------------------------------------------


def _run_settings(stage: str, config: dict, corpus: Corpus, epochs: int | None, steps_per_epoch: int | None,
                  batch_size: int, lr: float, seed: int, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """The JSON-safe settings that define a run, validated; a resumed run must match them.

    epochs and steps_per_epoch left None take the resumed checkpoint's values, else the defaults.
    """
    if epochs is None:
        epochs = checkpoint.settings["epochs"] if checkpoint is not None else DEFAULT_EPOCHS
    if steps_per_epoch is None and checkpoint is not None:
        steps_per_epoch = checkpoint.settings["steps_per_epoch"]
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if steps_per_epoch is None:
        steps_per_epoch = default_steps_per_epoch(corpus, batch_size)
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be an int >= 1, got {steps_per_epoch!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not corpus.val_audio:
        raise ValueError("the corpus has no validation audio; build it with build_corpus or demo_corpus")
    return {"stage": stage, "config": config, "epochs": epochs, "steps_per_epoch": steps_per_epoch,
            "batch_size": batch_size, "lr": float(lr), "seed": seed}


def _spectrogram_for(corpus: Corpus, spectrogram: Spectrogram | None) -> Spectrogram:
    if spectrogram is None:
        return Spectrogram(SpectrogramConfig(sample_rate=corpus.sample_rate))
    if spectrogram.config.sample_rate != corpus.sample_rate:
        raise ValueError(f"spectrogram sample_rate={spectrogram.config.sample_rate} Hz must equal the corpus "
                         f"sample_rate={corpus.sample_rate} Hz")
    return spectrogram


def _spaced(chunks: torch.Tensor, limit: int = MAX_STAT_CHUNKS) -> torch.Tensor:
    """At most ``limit`` chunks [N, n], evenly spaced over the tiling (deterministic)."""
    if len(chunks) <= limit:
        return chunks
    return chunks[torch.linspace(0, len(chunks) - 1, limit).round().long()]


def _mels(spectrogram: Spectrogram, chunks: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Chunks [N, n] -> mels [N, n_mels, frames] on ``device``, 64 chunks at a time."""
    return torch.cat([spectrogram.waveform_to_mel(batch.to(device)) for batch in chunks.split(64)])


def _weighted_means(rows: list[tuple]) -> tuple[float, ...]:
    """rows of (value, ..., weight) -> the weighted mean of each value column."""
    total = sum(row[-1] for row in rows)
    return tuple(sum(float(row[i]) * row[-1] for row in rows) / total for i in range(len(rows[0]) - 1))


def _state_tensors(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """CPU copies of a module's state (weights and buffers); copies never share memory."""
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def _warn(history: TrainingHistory, ctx: _Context, message: str) -> None:
    history.warnings.append(message)
    if ctx.rank == 0:
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _scaled(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A progress callback that maps [0, 1] onto [start, end] of ``progress``."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + fraction * (end - start), message)


def _corpus_summary(corpus: Corpus) -> dict[str, Any]:
    return {"source": corpus.source, "seconds": round(corpus.total_seconds, 3),
            "train_seconds": round(corpus.split_seconds("train"), 3),
            "val_seconds": round(corpus.split_seconds("val"), 3),
            "files": len(set(corpus.train_files) | set(corpus.val_files)), "skipped": len(corpus.skipped),
            "split": corpus.split_mode, "sample_rate": corpus.sample_rate}
