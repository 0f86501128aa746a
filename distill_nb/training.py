"""The training loop both stages share: schedule, history, checkpoints, resume and data parallelism.

``fit`` runs AdamW with a cosine learning-rate schedule after a short linear warmup, gradient clipping,
validation after every epoch, and restores the best-validation weights at the end. An epoch is a fixed
number of steps; what a step trains on is the stage's business (``stages.py``).

Reproducibility: every random number of epoch ``e`` (window offsets, dropout, and the k-means init and
dead-code replacement that vector-quantize-pytorch draws from the global RNG) comes from seeds derived
from ``(seed, e, rank)``, with the global RNG forked so the caller's is left untouched. A run resumed
from an epoch-boundary checkpoint therefore ends with exactly the weights of an uninterrupted run.

Checkpoints are one safetensors file each (tensors: weights, best weights, optimizer state; JSON in the
metadata: the run settings, epoch, history), written to a temporary file and renamed into place, so a
crash leaves the previous checkpoint intact. They are written every ``checkpoint_every`` epochs, at the
end, and on KeyboardInterrupt (the last completed epoch; a resumed run repeats the interrupted epoch).

Data parallelism: launched under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), training runs
with DistributedDataParallel, one process per device (gloo on CPU, nccl on CUDA). ``batch_size`` is per
process, each rank draws its own windows, the codebooks are synchronised (vector-quantize-pytorch
all-reduces its EMA statistics; DDP broadcasts the buffers), and only rank 0 writes files or reports
progress.
"""

from __future__ import annotations

import atexit
import dataclasses
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
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill_nb.atomic import write_bytes_atomically
from distill_nb.checks import check_device, check_int, check_positive
from distill_nb.corpus import Corpus
from distill_nb.model_file import ModelFileError, read_safetensors
from distill_nb.progress import Progress
from distill_nb.vqvae import CodebookHealth

WEIGHT_DECAY = 0.01
WARMUP_FRACTION = 0.05  # of all steps, linear from 0
STAGE_NAMES = {"vqvae": "VQ-VAE", "prior": "prior"}  # as progress messages and summaries name them
MIN_LR_FRACTION = 0.1  # the cosine ends at this fraction of the peak learning rate
GRAD_CLIP_NORM = 1.0

CHECKPOINT_FORMAT = "distill_nb.checkpoint"
CHECKPOINT_VERSION = "1"

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
        val_spectral_convergence: VQ-VAE only: mean spectral convergence of the validation mel magnitudes.
        codebook_utilisation, codebook_perplexity: VQ-VAE only, one value per level (see CodebookHealth).
        train_perplexity, val_perplexity: prior only: exp of the cross-entropy losses (nats).
    """

    epoch: int
    train_loss: float
    val_loss: float
    lr: float
    seconds: float
    val_spectral_convergence: float | None = None
    codebook_utilisation: list[float] | None = None
    codebook_perplexity: list[float] | None = None
    train_perplexity: float | None = None
    val_perplexity: float | None = None


@dataclass
class TrainingHistory:
    """Per-epoch records of one stage ("vqvae" or "prior"), its warnings and the kept epoch.

    ``best_epoch`` is the epoch whose weights the trained model holds (lowest validation loss);
    ``codebook_health`` (VQ-VAE only) describes those weights; ``settings`` are the run's settings;
    ``calibrated_temperature`` (prior only) is the temperature folded into the prior's head after training.
    """

    stage: str
    epochs: list[EpochRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    best_epoch: int | None = None
    codebook_health: list[CodebookHealth] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)
    calibrated_temperature: float | None = None

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
            calibrated_temperature=d.get("calibrated_temperature"),  # absent from histories before it existed
        )

    def summary(self) -> str:
        """A few readable lines: the kept epoch, its losses, perplexity or codebook health, warnings."""
        best = self.best
        name = STAGE_NAMES.get(self.stage, self.stage)
        if best is None:
            return f"{name}: no epoch trained"
        line = (f"{name}: {len(self.epochs)} epochs in {self.seconds:.0f} s; kept epoch {best.epoch}: "
                f"train loss {best.train_loss:.4f}, val loss {best.val_loss:.4f}")
        if best.val_perplexity is not None:
            line += f", perplexity train {best.train_perplexity:.2f} / val {best.val_perplexity:.2f}"
        lines = [line]
        lines += [f"  codebook level {h.level}: {h.utilisation:.0%} of {h.codebook_size} codes used, "
                  f"perplexity {h.perplexity:.1f}" for h in self.codebook_health]
        if self.calibrated_temperature is not None:
            lines.append(f"  calibrated temperature {self.calibrated_temperature:.3f} (folded into the logits)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


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
    except (KeyError, TypeError, ValueError, AttributeError, RecursionError) as error:  # Recursion: absurdly nested
        cause = f"{type(error).__name__}: {str(error)[:200]}"
        raise CheckpointError(f"{path}: damaged checkpoint state ({cause})") from None


def _checkpoint_payload(
    model: nn.Module, best: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, epoch: int,
    run: dict[str, Any], history: TrainingHistory, extra_tensors: dict[str, torch.Tensor], extra: dict | None,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Everything needed to continue after ``epoch``, as (CPU tensors, safetensors metadata)."""
    tensors = state_tensors(model, "model.")
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
    try:
        model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in checkpoint.optimizer_groups]
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, TypeError, ValueError, RuntimeError) as error:  # the file's tensors or groups do not fit
        raise CheckpointError(f"{checkpoint.path}: damaged checkpoint, its weights do not fit this run "
                              f"({type(error).__name__}: {str(error)[:300]})") from None
    best = {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}
    if {k: v.shape for k, v in best.items()} != {k: v.shape for k, v in model.state_dict().items()}:
        raise CheckpointError(f"{checkpoint.path}: damaged checkpoint, its best weights do not fit this run")
    return best


def read_resume(resume: str | os.PathLike | None, stage: str) -> Checkpoint | None:
    if resume is None:
        return None
    checkpoint = read_checkpoint(resume)
    if checkpoint.stage != stage:
        raise ValueError(f"resume: {checkpoint.path} is a {checkpoint.stage} checkpoint, not a {stage} one")
    return checkpoint


def check_same_weights(checkpoint: Checkpoint, vqvae_tensors: dict[str, torch.Tensor]) -> None:
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


def distributed_context(device: str | torch.device) -> _Context:
    """Join the torchrun process group when launched by torchrun (once per process)."""
    device = check_device("device", device)
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


def fit(
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
    check_int("checkpoint_every", checkpoint_every, 1)
    path = pathlib.Path(checkpoint_path) if checkpoint_path is not None else None
    report = progress if ctx.rank == 0 else None
    stage_name, epochs = STAGE_NAMES[run["stage"]], run["epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=run["lr"], weight_decay=WEIGHT_DECAY)
    history = TrainingHistory(stage=run["stage"], settings=run)
    best = state_tensors(model, "")
    start_epoch = 0
    if checkpoint is not None:
        best = _restore(checkpoint, run, model, optimizer)
        history, start_epoch = checkpoint.history, checkpoint.epoch
    trainable = model
    if ctx.world_size > 1:
        trainable = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)

    def payload(epoch: int) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return _checkpoint_payload(model, best, optimizer, epoch, run, history, extra_tensors, extra)

    boundary = payload(start_epoch) if path is not None else None
    try:
        for epoch in range(start_epoch + 1, epochs + 1):
            started = time.perf_counter()
            train_loss, lr = _train_epoch(run, epoch, model, trainable, optimizer, batch_loss, ctx, report)
            model.eval()
            with torch.no_grad():
                metrics = evaluate(train_loss)
            record = EpochRecord(epoch=epoch, train_loss=train_loss, lr=lr,
                                 seconds=time.perf_counter() - started, **metrics)
            if not (math.isfinite(record.train_loss) and math.isfinite(record.val_loss)):
                # Stop before the broken weights overwrite the last good checkpoint.
                kept = f"; {path} still holds epoch {epoch - 1}" if path is not None and epoch > 1 else ""
                raise ValueError(f"{stage_name} training diverged in epoch {epoch} (train loss {record.train_loss}, "
                                 f"val loss {record.val_loss}): check the corpus for extreme samples or lower the "
                                 f"learning rate{kept}")
            history.epochs.append(record)
            if history.best is None or record.val_loss < history.best.val_loss:
                history.best_epoch, best = epoch, state_tensors(model, "")
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


def _train_epoch(run: dict[str, Any], epoch: int, model: nn.Module, trainable: nn.Module,
                 optimizer: torch.optim.Optimizer, batch_loss: Callable[[nn.Module, torch.Generator], torch.Tensor],
                 ctx: _Context, report: Progress | None) -> tuple[float, float]:
    """The optimizer steps of one epoch, seeded by (run seed, epoch, rank) -> (mean training loss over all
    processes, the last step's learning rate)."""
    epochs, steps, stage_name = run["epochs"], run["steps_per_epoch"], STAGE_NAMES[run["stage"]]
    model.train()
    loss_sum, lr = torch.zeros((), dtype=torch.float64), run["lr"]
    fork_devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(derive_seed(run["seed"], epoch, ctx.rank, stream=0))
        generator = torch.Generator().manual_seed(derive_seed(run["seed"], epoch, ctx.rank, stream=1))
        for step in range(steps):
            lr = learning_rate((epoch - 1) * steps + step, epochs * steps, run["lr"])
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
    return float(loss_sum) / (steps * ctx.world_size), lr


def learning_rate(step: int, total_steps: int, peak: float) -> float:
    """Linear warmup over WARMUP_FRACTION of the steps, then a cosine down to MIN_LR_FRACTION * peak."""
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return peak * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress)))


def derive_seed(seed: int, epoch: int, rank: int, stream: int = 0) -> int:
    """A 63-bit seed for (seed, epoch, rank, stream), well mixed so neighbouring seeds do not correlate."""
    words = np.random.SeedSequence([seed, epoch, rank, stream]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


# --- small helpers -----------------------------------------------------------------------------------


def run_settings(stage: str, config: dict, corpus: Corpus, requested: dict[str, Any], defaults: dict[str, Any],
                 seed: int, checkpoint: Checkpoint | None) -> dict[str, Any]:
    """The JSON-safe settings that define a run, validated; a resumed run must match them.

    ``requested`` and ``defaults`` map epochs, steps_per_epoch, batch_size and lr to values; a requested
    None takes the resumed checkpoint's value, else the default.
    """
    settings: dict[str, Any] = {"stage": stage, "config": config}
    for name in ("epochs", "steps_per_epoch", "batch_size", "lr"):
        value = requested.get(name)
        if value is None:
            value = checkpoint.settings[name] if checkpoint is not None else defaults[name]
        if name == "lr":
            value = check_positive("lr", value)
        else:
            value = check_int(name, value, 1)
        settings[name] = value
    settings["seed"] = check_int("seed", seed, 0)
    if not corpus.val_audio:
        raise ValueError("the corpus has no validation audio; build it with build_corpus or demo_corpus")
    return settings


def weighted_means(rows: list[tuple]) -> tuple[float, ...]:
    """rows of (value, ..., weight) -> the weighted mean of each value column."""
    total = sum(row[-1] for row in rows)
    return tuple(sum(float(row[i]) * row[-1] for row in rows) / total for i in range(len(rows[0]) - 1))


def state_tensors(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """CPU copies of a module's state (weights and buffers); copies never share memory."""
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in module.state_dict().items()}


def warn(history: TrainingHistory, ctx: _Context, message: str) -> None:
    history.warnings.append(message)
    if ctx.rank == 0:
        warnings.warn(message, RuntimeWarning, stacklevel=3)
