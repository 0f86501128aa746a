"""Training recipes: the presets, the data each stage sees, and the two stages (VQ-VAE, then prior).

The corpus is played as a stream: files follow each other in a random order, so a training window may
start mid-sound and run from the end of one file into the start of the next. The VQ-VAE learns from
random 1 s windows of that stream's mel; the prior from random windows of its codes, several chunks
long, so that continuing a take from its last columns is exactly what the prior was trained on, and a
take falls silent only where the corpus does.

The shared loop (optimiser, schedule, checkpoints, resume, DDP) is ``training.fit``.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import pathlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from distill_nb.checks import check_device
from distill_nb.corpus import Corpus, demo_corpus
from distill_nb.geometry import ChunkGeometry
from distill_nb.model_file import LoadedVQModel, ModelFileError, check_layout, expected_layout, save_model
from distill_nb.prior import CodePrior, PriorConfig
from distill_nb.progress import Progress, scaled
from distill_nb.quality import evaluate_model
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig
from distill_nb.training import (Checkpoint, CheckpointError, TrainingHistory, check_same_weights, derive_seed,
                                 distributed_context, fit, is_main_process, read_checkpoint, read_resume, run_settings,
                                 state_tensors, warn, weighted_means)
from distill_nb.vqvae import ConvVQVAE, VQVAEConfig


@dataclass(frozen=True)
class Preset:
    """Model sizes and schedule of one training preset.

    Attributes:
        vqvae: VQVAEConfig fields (channels, strides, code_dim, levels, codebook_size, ...).
        prior: PriorConfig sizes (d_model, n_layers, n_heads).
        window_chunks: chunks per prior window: the context a continuation sees.
        vqvae_epochs, vqvae_steps_per_epoch, vqvae_batch, vqvae_lr: the VQ-VAE's schedule (batch in 1 s windows).
        prior_epochs, prior_steps_per_epoch, prior_batch, prior_lr: the prior's (batch in windows).
    """

    vqvae: dict[str, Any]
    prior: dict[str, Any]
    window_chunks: int
    vqvae_epochs: int
    vqvae_steps_per_epoch: int
    vqvae_batch: int
    vqvae_lr: float
    prior_epochs: int
    prior_steps_per_epoch: int
    prior_batch: int
    prior_lr: float


# 4x frequency and 16x time downsampling: 32 rows x 6 columns per second, 2 levels of 256 codes.
_CODEC = dict(channels=(16, 32, 64, 64), strides=((2, 2), (2, 2), (1, 2), (1, 2)), code_dim=32, levels=2,
              codebook_size=256)
_PRIOR = dict(d_model=128, n_layers=4, n_heads=4)
PRESETS: dict[str, Preset] = {
    # The default. Its time goes by steps, not by audio, so it is the same for any corpus (README: times).
    "standard": Preset(vqvae=_CODEC, prior=_PRIOR, window_chunks=2,
                       vqvae_epochs=9, vqvae_steps_per_epoch=100, vqvae_batch=16, vqvae_lr=2e-3,
                       prior_epochs=10, prior_steps_per_epoch=35, prior_batch=16, prior_lr=1e-3),
    # About half the time: fewer steps, the same sizes.
    "quick": Preset(vqvae=_CODEC, prior=_PRIOR, window_chunks=2,
                    vqvae_epochs=5, vqvae_steps_per_epoch=100, vqvae_batch=16, vqvae_lr=2e-3,
                    prior_epochs=5, prior_steps_per_epoch=35, prior_batch=16, prior_lr=1e-3),
    # A toy that trains in seconds: for tests and for a first look at the pipeline.
    "small": Preset(vqvae=dict(channels=(4, 8), strides=((2, 2), (2, 2)), res_blocks=1, code_dim=8, levels=2,
                               codebook_size=16),
                    prior=dict(d_model=32, n_layers=1, n_heads=2), window_chunks=2,
                    vqvae_epochs=2, vqvae_steps_per_epoch=10, vqvae_batch=4, vqvae_lr=2e-3,
                    prior_epochs=2, prior_steps_per_epoch=10, prior_batch=4, prior_lr=2e-3),
}
DEFAULT_PRESET = "standard"
# Prior dropout by minutes of training audio: small corpora are memorised quickly.
PRIOR_DROPOUT_BY_MINUTES = ((5.0, 0.3), (30.0, 0.2), (math.inf, 0.1))
STREAM_ORDERS = 4  # random file orders (each at another column alignment) the prior's code stream plays
MAX_VALIDATION_CHUNKS = 256
CALIBRATION_WINDOWS = 64  # validation windows the temperature is fitted on: plenty for one parameter
LOW_UTILISATION = 0.3  # warn when a codebook level uses less than this share of its codes
MEMORISATION_TRAIN_PERPLEXITY = 1.5
MEMORISATION_RATIO = 2.0  # ... and validation perplexity above this multiple of the training one

# The bundled default model: the standard preset on the procedural demo corpus.
DEFAULT_MODEL_SECONDS = 120.0
# Less usable audio than this cannot fill the prior's windows and a validation chunk; minutes train well.
MIN_CORPUS_SECONDS = 5.0


def check_corpus_duration(corpus: Corpus) -> None:
    """ValueError, saying how much is needed, when ``corpus`` is too short to train on."""
    if corpus.total_seconds < MIN_CORPUS_SECONDS:
        raise ValueError(f"the corpus {corpus.source or '(in memory)'} holds {corpus.total_seconds:.2f} s of usable "
                         f"audio; training needs at least {MIN_CORPUS_SECONDS:g} s (a few minutes trains well)")


@dataclass(frozen=True)
class StageOptions:
    """How a training stage runs (the keyword arguments of `train_vqvae` and `train_prior`).

    Attributes:
        epochs, steps_per_epoch, batch_size, lr: None = the preset's.
        seed: every random choice derives from it.
        device: "cpu" or "cuda" (under torchrun, the local rank's GPU).
        progress: called with (fraction in [0, 1], message) after each step and epoch.
        checkpoint_path: where to write checkpoints (None = none); every ``checkpoint_every`` epochs.
        resume: a checkpoint of this run to continue; the other arguments must match the run's
            (config, epochs and steps_per_epoch left None take the checkpoint's).
        checkpoint_metadata: JSON-safe data stored in each checkpoint (see ``read_checkpoint``).
        preset_name: a key of PRESETS.
    """

    epochs: int | None = None
    steps_per_epoch: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str | torch.device = "cpu"
    progress: Progress | None = None
    checkpoint_path: str | os.PathLike | None = None
    checkpoint_every: int = 1
    resume: str | os.PathLike | None = None
    checkpoint_metadata: dict | None = None
    preset_name: str = DEFAULT_PRESET

    def schedule(self) -> dict[str, Any]:
        """The schedule asked for (None = the preset's), as ``run_settings`` takes it."""
        return dict(epochs=self.epochs, steps_per_epoch=self.steps_per_epoch, batch_size=self.batch_size, lr=self.lr)


def preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {', '.join(map(repr, PRESETS))}, got {name!r}")
    return PRESETS[name]


def default_vqvae_config(corpus: Corpus, spectrogram: Spectrogram | None = None,
                         preset_name: str = DEFAULT_PRESET) -> VQVAEConfig:
    """VQ-VAE config of a preset for ``corpus``; ``input_mean``/``input_std`` are set by training."""
    n_mels = spectrogram_for(corpus, spectrogram).config.n_mels
    return VQVAEConfig(n_mels=n_mels, **preset(preset_name).vqvae)


def default_prior_config(vqvae_config: VQVAEConfig, corpus: Corpus, spectrogram: Spectrogram | None = None,
                         preset_name: str = DEFAULT_PRESET) -> PriorConfig:
    """Prior config of a preset that fits ``vqvae_config``: its windows hold ``window_chunks`` chunks of
    columns; dropout by minutes of training audio (< 5 min: 0.3, < 30 min: 0.2, else 0.1)."""
    chosen = preset(preset_name)
    geometry = ChunkGeometry.of(spectrogram_for(corpus, spectrogram).config, vqvae_config)
    minutes = corpus.split_seconds("train") / 60
    dropout = next(value for limit, value in PRIOR_DROPOUT_BY_MINUTES if minutes < limit)
    return PriorConfig.for_vqvae(geometry, vqvae_config.codebook_size, chosen.window_chunks * geometry.columns,
                                 dropout=dropout, **chosen.prior)


# --- the data of each stage ------------------------------------------------------------------------


def spectrogram_for(corpus: Corpus, spectrogram: Spectrogram | None) -> Spectrogram:
    """``spectrogram``, or the default one at the corpus rate; ValueError if the rates differ."""
    if spectrogram is None:
        return Spectrogram(SpectrogramConfig(sample_rate=corpus.sample_rate))
    if spectrogram.config.sample_rate != corpus.sample_rate:
        raise ValueError(f"spectrogram sample_rate={spectrogram.config.sample_rate} Hz must equal the corpus "
                         f"sample_rate={corpus.sample_rate} Hz")
    return spectrogram


def file_mels(corpus: Corpus, split: str, spectrogram: Spectrogram) -> list[torch.Tensor]:
    """The log-mel of every file of a split, [n_mels, frames_i] each, on the CPU.

    A file shorter than the STFT's reflect padding allows is zero-padded up to it first.
    """
    shortest = spectrogram.config.n_fft // 2 + 1
    mels = []
    for audio in corpus.split_audio(split):
        if len(audio) < shortest:
            audio = np.pad(audio, (0, shortest - len(audio)))
        mels.append(spectrogram.waveform_to_mel(torch.from_numpy(np.ascontiguousarray(audio)))[0])
    return mels


def random_mel_windows(mels: list[torch.Tensor], n: int, frames: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``frames`` frames from the corpus played as a stream -> [n, n_mels, frames].

    A window starts in a file drawn by length, at a uniform frame, and when the file ends before the
    window does it runs on into the start of other files drawn the same way.
    """
    lengths = torch.tensor([m.shape[1] for m in mels], dtype=torch.float64)
    windows = []
    for _ in range(n):
        index = int(torch.multinomial(lengths, 1, generator=generator))
        start = int(torch.randint(0, mels[index].shape[1], (1,), generator=generator))
        pieces, have = [mels[index][:, start:start + frames]], min(frames, mels[index].shape[1] - start)
        while have < frames:
            index = int(torch.multinomial(lengths, 1, generator=generator))
            pieces.append(mels[index][:, :frames - have])
            have += pieces[-1].shape[1]
        windows.append(torch.cat(pieces, dim=1))
    return torch.stack(windows)


def tiled_mel_chunks(mels: list[torch.Tensor], frames: int, limit: int = MAX_VALIDATION_CHUNKS) -> torch.Tensor:
    """The split's stream (files in order) cut into consecutive chunks of ``frames`` -> [N, n_mels, frames].

    At most ``limit`` chunks, evenly spaced; a last partial chunk is dropped unless it is the only one,
    which is then filled with the stream from its start.
    """
    stream = torch.cat(mels, dim=1)
    while stream.shape[1] < frames:
        stream = torch.cat([stream, stream], dim=1)
    chunks = stream[:, : stream.shape[1] // frames * frames].reshape(stream.shape[0], -1, frames).transpose(0, 1)
    if len(chunks) > limit:
        chunks = chunks[torch.linspace(0, len(chunks) - 1, limit).round().long()]
    return chunks.contiguous()


def code_stream(vqvae: ConvVQVAE, mels: list[torch.Tensor], seed: int, orders: int = STREAM_ORDERS) -> torch.Tensor:
    """Flat tokens [n] of the corpus played ``orders`` times: in its own order first, then in random file
    orders (from ``seed``), each at another alignment of the column grid, so the prior sees other boundaries
    and phases each time."""
    rng = np.random.default_rng(seed)
    column_frames = vqvae.config.downsampling[1]
    parts = []
    for order in range(orders):
        permutation = rng.permutation(len(mels)).tolist() if order else list(range(len(mels)))
        stream = torch.cat([mels[i] for i in permutation], dim=1)
        offset = min(order * column_frames // orders, stream.shape[1] - 1)
        parts.append(vqvae.encode_stream(stream[:, offset:]).reshape(-1))
    return torch.cat(parts)


def random_token_windows(stream: torch.Tensor, n: int, window: int, column_tokens: int,
                         generator: torch.Generator) -> torch.Tensor:
    """``n`` windows of ``window`` tokens starting at random column boundaries of ``stream`` -> [n, window].

    A stream shorter than a window is repeated.
    """
    while len(stream) < window:
        stream = torch.cat([stream, stream])
    starts = torch.randint(0, (len(stream) - window) // column_tokens + 1, (n,), generator=generator) * column_tokens
    return torch.stack([stream[s:s + window] for s in starts.tolist()])


# --- the two stages --------------------------------------------------------------------------------


def train_vqvae(corpus: Corpus, config: VQVAEConfig | None = None, spectrogram: Spectrogram | None = None,
                **options: Any) -> tuple[ConvVQVAE, TrainingHistory]:
    """Train a ConvVQVAE on ``corpus`` -> (model in eval mode with the best-validation weights, history).

    Args:
        corpus: training and validation audio.
        config: None = ``default_vqvae_config(corpus, preset_name=preset_name)``. Its ``input_mean``/``input_std``
            are replaced by the mean and standard deviation of the training log-mels.
        spectrogram: mel analysis; None = the default at the corpus sample rate.
        options: the fields of `StageOptions` (schedule, seed, device, progress, checkpoints, preset).
    """
    opts = StageOptions(**options)
    check_corpus_duration(corpus)
    chosen = preset(opts.preset_name)
    ctx = distributed_context(opts.device)  # before the model: the codebooks sync when distributed
    spectrogram = spectrogram_for(corpus, spectrogram)
    checkpoint = read_resume(opts.resume, "vqvae")
    if config is None:
        config = (VQVAEConfig.from_dict(checkpoint.settings["config"]) if checkpoint
                  else default_vqvae_config(corpus, spectrogram, opts.preset_name))
    if not isinstance(config, VQVAEConfig):
        raise TypeError(f"config must be a VQVAEConfig or None, got {type(config).__name__}")
    if config.n_mels != spectrogram.config.n_mels:
        raise ValueError(f"config.n_mels={config.n_mels} must equal the spectrogram's n_mels="
                         f"{spectrogram.config.n_mels}")
    train_mels = file_mels(corpus, "train", spectrogram)
    everything = torch.cat(train_mels, dim=1)
    config = dataclasses.replace(config, input_mean=float(everything.mean()),
                                 input_std=max(float(everything.std()), 1e-3))
    run = run_settings("vqvae", config.to_dict(), corpus, opts.schedule(),
                       dict(epochs=chosen.vqvae_epochs, steps_per_epoch=chosen.vqvae_steps_per_epoch,
                            batch_size=chosen.vqvae_batch, lr=chosen.vqvae_lr), opts.seed, checkpoint)
    geometry = ChunkGeometry.of(spectrogram.config, config)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(opts.seed, 0, 0))
        model = ConvVQVAE(config).to(ctx.device)
    val_mels = tiled_mel_chunks(file_mels(corpus, "val", spectrogram), geometry.frames).to(ctx.device)

    def batch_loss(module: nn.Module, generator: torch.Generator) -> torch.Tensor:
        mel = random_mel_windows(train_mels, run["batch_size"], geometry.frames, generator)
        return module(mel.to(ctx.device)).loss

    def evaluate(train_loss: float) -> dict[str, Any]:
        outputs = [(model(batch), len(batch)) for batch in val_mels.split(32)]
        val_loss, spectral = weighted_means([(out.loss, out.spectral_convergence, n) for out, n in outputs])
        health = model.codebook_health()
        return dict(val_loss=val_loss, val_spectral_convergence=spectral,
                    codebook_utilisation=[h.utilisation for h in health],
                    codebook_perplexity=[h.perplexity for h in health])

    history = fit(run, model, batch_loss, evaluate, ctx, opts.progress, opts.checkpoint_path, opts.checkpoint_every,
                  checkpoint, {}, opts.checkpoint_metadata)
    history.codebook_health = model.codebook_health()
    for h in history.codebook_health:
        if h.utilisation < LOW_UTILISATION:
            warn(history, ctx, f"VQ-VAE codebook level {h.level} uses only {h.utilisation:.0%} of its "
                               f"{h.codebook_size} codes (perplexity {h.perplexity:.1f}); a smaller codebook "
                               f"or more varied audio would use it better")
    return model, history


def train_prior(vqvae: ConvVQVAE, corpus: Corpus, config: PriorConfig | None = None,
                spectrogram: Spectrogram | None = None, **options: Any) -> tuple[CodePrior, TrainingHistory]:
    """Train a CodePrior on the codes of ``vqvae`` -> (prior in eval mode, best-validation weights; history).

    The training audio is encoded once as a stream (STREAM_ORDERS random file orders at shifted column
    alignments) and each step draws random windows of ``config.seq_len`` tokens from it; the loss is the
    cross-entropy of every token given those before it in its window. Validation windows tile the
    validation files in order. A memorisation warning is raised when the training perplexity falls below
    ``MEMORISATION_TRAIN_PERPLEXITY`` while validation perplexity is more than ``MEMORISATION_RATIO``
    times higher. Checkpoints hold the VQ-VAE too, so a resumed run can check it is the same.
    Arguments as in ``train_vqvae``; ``config`` None = ``default_prior_config``.
    """
    opts = StageOptions(**options)
    check_corpus_duration(corpus)
    chosen = preset(opts.preset_name)
    ctx = distributed_context(opts.device)
    spectrogram = spectrogram_for(corpus, spectrogram)
    checkpoint = read_resume(opts.resume, "prior")
    if config is None:
        config = (PriorConfig.from_dict(checkpoint.settings["config"]) if checkpoint
                  else default_prior_config(vqvae.config, corpus, spectrogram, opts.preset_name))
    if not isinstance(config, PriorConfig):
        raise TypeError(f"config must be a PriorConfig or None, got {type(config).__name__}")
    geometry = ChunkGeometry.of(spectrogram.config, vqvae.config)
    fits = {"codebook_size": vqvae.config.codebook_size, "levels": geometry.levels,
            "column_tokens": geometry.column_tokens}
    for name, value in fits.items():
        if getattr(config, name) != value:
            raise ValueError(f"config.{name}={getattr(config, name)} does not fit the VQ-VAE (expected {value})")
    vqvae_tensors = state_tensors(vqvae, "vqvae.")
    if checkpoint is not None:
        check_same_weights(checkpoint, vqvae_tensors)
    run = run_settings("prior", config.to_dict(), corpus, opts.schedule(),
                       dict(epochs=chosen.prior_epochs, steps_per_epoch=chosen.prior_steps_per_epoch,
                            batch_size=chosen.prior_batch, lr=chosen.prior_lr), opts.seed, checkpoint)
    vqvae.to(ctx.device).eval()
    train_stream = code_stream(vqvae, file_mels(corpus, "train", spectrogram), derive_seed(opts.seed, 0, 0, stream=2))
    val_tokens = validation_windows(vqvae, corpus, spectrogram, config).to(ctx.device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(opts.seed, 0, 0))
        prior = CodePrior(config).to(ctx.device)

    def cross_entropy(module: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        logits = module(tokens)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1))

    def batch_loss(module: nn.Module, generator: torch.Generator) -> torch.Tensor:
        tokens = random_token_windows(train_stream, run["batch_size"], config.seq_len, config.column_tokens, generator)
        return cross_entropy(module, tokens.to(ctx.device))

    def evaluate(train_loss: float) -> dict[str, Any]:
        (val_loss,) = weighted_means([(cross_entropy(prior, b), len(b)) for b in val_tokens.split(32)])
        return dict(val_loss=val_loss, train_perplexity=math.exp(min(train_loss, 50.0)),
                    val_perplexity=math.exp(min(val_loss, 50.0)))

    history = fit(run, prior, batch_loss, evaluate, ctx, opts.progress, opts.checkpoint_path, opts.checkpoint_every,
                  checkpoint, vqvae_tensors, opts.checkpoint_metadata)
    message = memorisation_warning(history)
    if message is not None:
        warn(history, ctx, message)
    history.calibrated_temperature = calibrate_prior(prior, val_tokens)
    return prior, history


def validation_windows(vqvae: ConvVQVAE, corpus: Corpus, spectrogram: Spectrogram,
                       config: PriorConfig) -> torch.Tensor:
    """The codes of the validation files in order, tiled into prior windows -> long [N, seq_len]."""
    stream = code_stream(vqvae, file_mels(corpus, "val", spectrogram), seed=0, orders=1)
    return _tiled_windows(stream, config.seq_len, config.column_tokens)


def calibrate_prior(prior: CodePrior, tokens: torch.Tensor) -> float:
    """Fit the temperature T that minimises the cross-entropy of ``tokens`` [N, window] under the prior's
    logits / T and fold it into the prior (temperature scaling, Guo et al. 2017) -> T.

    A prior trained for minutes on a small corpus is over-confident on audio it has not seen; sampled at
    hundreds of steps a second, that drifts takes into the commonest codes, silence among them.
    """
    tokens = tokens[:CALIBRATION_WINDOWS]
    if tokens.numel() == 0:
        return 1.0
    was_training = prior.training
    prior.eval()  # the temperature of the prior that samples: no dropout
    with torch.inference_mode():
        logits = torch.cat([prior(batch) for batch in tokens.split(16)]).flatten(0, 1).float()
    prior.train(was_training)
    targets = tokens.reshape(-1).to(logits.device)

    def loss(inverse: float) -> float:
        return float(F.cross_entropy(logits * inverse, targets))

    # The cross-entropy is convex in 1 / T: a golden-section search over 1 / T in [0.25, 4].
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = 0.25, 4.0
    left, right = high - ratio * (high - low), low + ratio * (high - low)
    left_loss, right_loss = loss(left), loss(right)
    for _ in range(30):  # the bracket shrinks to 0.618^30 of its width, ~1e-6; one new point a step
        if left_loss < right_loss:
            high, right, right_loss = right, left, left_loss
            left = high - ratio * (high - low)
            left_loss = loss(left)
        else:
            low, left, left_loss = left, right, right_loss
            right = low + ratio * (high - low)
            right_loss = loss(right)
    temperature = 2.0 / (low + high)
    prior.fold_temperature(temperature)
    return temperature


def _tiled_windows(stream: torch.Tensor, window: int, column_tokens: int) -> torch.Tensor:
    """Consecutive windows of ``stream`` -> [N, window], or one shorter window of whole columns if the
    stream holds less than a window."""
    if len(stream) < window:
        return stream[: len(stream) // column_tokens * column_tokens][None]
    count = min(len(stream) // window, MAX_VALIDATION_CHUNKS)
    return stream[: count * window].view(count, window)


def memorisation_warning(history: TrainingHistory) -> str | None:
    """The warning for the first epoch where the prior memorised: train perplexity collapsed below
    MEMORISATION_TRAIN_PERPLEXITY while validation perplexity stayed MEMORISATION_RATIO times higher."""
    for record in history.epochs:
        if (record.train_perplexity < MEMORISATION_TRAIN_PERPLEXITY
                and record.val_perplexity > MEMORISATION_RATIO * record.train_perplexity):
            return (f"the prior started to memorise the training codes at epoch {record.epoch} (perplexity "
                    f"train {record.train_perplexity:.2f}, val {record.val_perplexity:.2f}); the weights of "
                    f"epoch {history.best_epoch} are kept. More audio, more dropout or fewer epochs would help")
    return None


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
    batch_size: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    preset_name: str = DEFAULT_PRESET,
    measure_quality: bool = True,
) -> tuple[LoadedVQModel, dict[str, TrainingHistory]]:
    """Train the VQ-VAE, then the prior on its codes -> (model ready to save, {"vqvae": h, "prior": h}).

    Both stages checkpoint to the same ``checkpoint_path`` (the prior's checkpoints hold the trained
    VQ-VAE and its history), so ``resume`` continues from either stage. ``batch_size`` (None = the
    preset's) applies to both stages. The metadata holds the name, the creation date, the corpus, both
    histories and the seed, and with ``measure_quality`` a ``quality.QualityReport`` against the corpus (the
    validation files as held-out audio, a few generated takes: a minute or two more on a CPU); the last 5 %
    of the progress. ``train_code_counts`` [levels, K] counts the codes of the training audio.
    """
    chosen = preset(preset_name)
    spectrogram = spectrogram_for(corpus, spectrogram)
    checkpoint = read_checkpoint(resume) if resume is not None else None
    # The VQ-VAE's share of the progress bar: its steps take about a third of a prior step's time.
    vqvae_work = (vqvae_epochs or chosen.vqvae_epochs) * (steps_per_epoch or chosen.vqvae_steps_per_epoch)
    prior_work = 3 * (prior_epochs or chosen.prior_epochs) * (steps_per_epoch or chosen.prior_steps_per_epoch)
    vqvae_share = vqvae_work / (vqvae_work + prior_work) * 0.95
    common = dict(spectrogram=spectrogram, seed=seed, device=device, checkpoint_path=checkpoint_path,
                  steps_per_epoch=steps_per_epoch, batch_size=batch_size, preset_name=preset_name)

    if checkpoint is not None and checkpoint.stage == "prior":
        vqvae, vqvae_history = _vqvae_of(checkpoint)
    else:
        vqvae, vqvae_history = train_vqvae(corpus, vqvae_config, epochs=vqvae_epochs,
                                           progress=scaled(progress, 0.0, vqvae_share), resume=resume, **common)
    prior, prior_history = train_prior(
        vqvae, corpus, prior_config, epochs=prior_epochs, progress=scaled(progress, vqvae_share, 0.95),
        resume=resume if checkpoint is not None and checkpoint.stage == "prior" else None,
        checkpoint_metadata={"vqvae_config": vqvae.config.to_dict(), "vqvae_history": vqvae_history.to_dict()},
        **common)

    ctx = distributed_context(device)
    codes = code_stream(vqvae, file_mels(corpus, "train", spectrogram), seed=0, orders=1).view(-1, vqvae.config.levels)
    counts = torch.stack([torch.bincount(codes[:, q], minlength=vqvae.config.codebook_size)
                          for q in range(vqvae.config.levels)]).long()
    histories = {"vqvae": vqvae_history, "prior": prior_history}
    metadata = {
        "name": name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "training": {
            "seed": seed,
            "preset": preset_name,
            "device": str(ctx.device),
            "processes": ctx.world_size,
            "corpus": corpus_summary(corpus),
            "vqvae": vqvae_history.to_dict(),
            "prior": prior_history.to_dict(),
        },
    }
    loaded = LoadedVQModel(vqvae=vqvae.eval(), prior=prior.eval(), spectrogram=spectrogram, device=ctx.device,
                           metadata=metadata, train_code_counts=counts)
    if measure_quality and is_main_process():
        quality = evaluate_model(loaded, corpus.train_audio, corpus.val_audio, seed=seed,
                                 progress=scaled(progress, 0.95, 1.0))
        metadata["quality"] = quality.to_dict()
    return loaded, histories


def _vqvae_of(checkpoint: Checkpoint) -> tuple[ConvVQVAE, TrainingHistory]:
    """The trained VQ-VAE and its history stored in a prior-stage checkpoint."""
    tensors = {k: v for k, v in checkpoint.tensors.items() if k.startswith("vqvae.")}
    try:
        config = VQVAEConfig.from_dict(checkpoint.extra["vqvae_config"])
        history = TrainingHistory.from_dict(checkpoint.extra["vqvae_history"])
        # Checked before the VQ-VAE is built: the config is the file's, and could ask for any size.
        check_layout(checkpoint.path, {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()},
                     expected_layout(config, None))
    except (KeyError, TypeError, ValueError, AttributeError, ModelFileError) as error:
        raise CheckpointError(f"{checkpoint.path}: damaged checkpoint, its VQ-VAE cannot be restored "
                              f"({type(error).__name__}: {str(error)[:300]})") from None
    with torch.random.fork_rng(devices=[]):  # the init is overwritten at once: keep it off the global RNG
        vqvae = ConvVQVAE(config)
    vqvae.load_state_dict({k[len("vqvae."):]: v for k, v in tensors.items()})
    return vqvae, history


def estimate_training_seconds(corpus: Corpus, preset_name: str = DEFAULT_PRESET,
                              spectrogram: Spectrogram | None = None, device: str | torch.device = "cpu",
                              vqvae_epochs: int | None = None, prior_epochs: int | None = None,
                              steps_per_epoch: int | None = None, batch_size: int | None = None) -> float:
    """Seconds ``train_model`` will take, from timing a few steps of each stage on this machine.

    The steps run on throwaway models (the global RNG is left alone); reading and encoding the corpus and
    the validation after each epoch are not counted, so the real time is a little longer.
    """
    check_corpus_duration(corpus)
    chosen = preset(preset_name)
    spectrogram = spectrogram_for(corpus, spectrogram)
    vqvae_config = default_vqvae_config(corpus, spectrogram, preset_name)
    prior_config = default_prior_config(vqvae_config, corpus, spectrogram, preset_name)
    geometry = ChunkGeometry.of(spectrogram.config, vqvae_config)
    device = check_device("device", device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vqvae, prior = ConvVQVAE(vqvae_config).to(device), CodePrior(prior_config).to(device)
        mel = torch.full((batch_size or chosen.vqvae_batch, vqvae_config.n_mels, geometry.frames), -5.0, device=device)
        mel += torch.randn(mel.shape, device=device)
        tokens = torch.randint(0, prior_config.codebook_size, (batch_size or chosen.prior_batch, prior_config.seq_len),
                               device=device)
        vqvae_step = _step_seconds(vqvae, lambda: vqvae(mel).loss)
        prior_step = _step_seconds(prior, lambda: F.cross_entropy(prior(tokens).flatten(0, 1), tokens.flatten()))
    vqvae_steps = (vqvae_epochs or chosen.vqvae_epochs) * (steps_per_epoch or chosen.vqvae_steps_per_epoch)
    prior_steps = (prior_epochs or chosen.prior_epochs) * (steps_per_epoch or chosen.prior_steps_per_epoch)
    return vqvae_steps * vqvae_step + prior_steps * prior_step


def _step_seconds(model: nn.Module, loss: Any, steps: int = 2) -> float:
    """Median seconds of an optimiser step of ``model`` on ``loss()``, after one warm-up step."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return float(np.median(times[1:]))


def train_default_model(
    out_path: str | os.PathLike, seed: int = 0, progress: Progress | None = None
) -> tuple[pathlib.Path, dict[str, TrainingHistory]]:
    """Train the bundled default model from scratch on ``demo_corpus(seed)`` and save it to ``out_path``.

    The standard preset. Returns (the path, the histories); under torchrun only rank 0 writes.
    """
    corpus = demo_corpus(seed=seed, seconds=DEFAULT_MODEL_SECONDS)
    loaded, histories = train_model(corpus, seed=seed, progress=progress, name="distill_nb default (demo corpus)")
    path = pathlib.Path(out_path)
    if is_main_process():
        save_model(loaded, path)
    return path, histories


def corpus_summary(corpus: Corpus) -> dict[str, Any]:
    """JSON-safe facts about a corpus for a model's metadata."""
    return {"source": corpus.source, "seconds": round(corpus.total_seconds, 3),
            "train_seconds": round(corpus.split_seconds("train"), 3),
            "val_seconds": round(corpus.split_seconds("val"), 3),
            "files": len(set(corpus.train_files) | set(corpus.val_files)), "skipped": len(corpus.skipped),
            "noted": len(corpus.notes),
            "split": corpus.split_mode, "sample_rate": corpus.sample_rate}
