"""Command line: ``python -m distill_nb <command> ...`` (or ``distill-nb <command> ...``).

Commands (one small function each, ``cmd_<name>``):

    train FOLDER -o OUT.distill   train a model on a folder of sounds (checkpoints to OUT.ckpt, removed at the end)
    generate -o OUT.wav           generate takes with a model (the bundled default unless --model)
    info MODEL.distill            configs, sizes, training summary, sound quality and codebook health
    train-default [-o PATH]       retrain the bundled default model on the procedural demo corpus

``train`` also runs data-parallel under ``torchrun --nproc_per_node N -m distill_nb train ...``.
"""

from __future__ import annotations

import argparse
import pathlib
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from distill_nb.audio import MAX_SECONDS, AudioFileError, load_audio, save_audio
from distill_nb.checks import check_device
from distill_nb.corpus import build_corpus
from distill_nb.generation import MODES, STITCHES, GenerationSettings, generate_takes
from distill_nb.loudness import NORMALISATIONS
from distill_nb.model_file import DEFAULT_MODEL_PATH, ModelFileError, load_default_model, load_model, save_model
from distill_nb.quality import QualityReport
from distill_nb.stages import DEFAULT_PRESET, PRESETS, estimate_training_seconds, train_default_model, train_model
from distill_nb.stitching import CURVES
from distill_nb.training import CheckpointError, TrainingHistory, is_main_process

THREADS_HELP = ("CPU threads for torch (default: torch's choice, one per core); 1 is often fastest when "
                "other programs keep the cores busy")


class _ProgressBar:
    """A tqdm.auto bar driven by a ``progress(fraction, message)`` callback (only on the main process)."""

    STEPS = 1000

    def __init__(self, description: str) -> None:
        self.bar = tqdm(total=self.STEPS, desc=description, disable=not is_main_process(), leave=True,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.update(max(0, round(fraction * self.STEPS) - self.bar.n))
        self.bar.set_postfix_str(message)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.bar.close()


def cmd_train(args: argparse.Namespace) -> int:
    """Build the corpus (reporting skipped files), train both stages, save, print a summary."""
    started = time.perf_counter()
    _set_threads(args.threads)
    output = pathlib.Path(args.output)
    checkpoint = pathlib.Path(args.checkpoint) if args.checkpoint else output.with_suffix(".ckpt")
    output.parent.mkdir(parents=True, exist_ok=True)  # fail now, not after training
    _check_writable(output)
    check_device("--device", args.device)
    with _ProgressBar("corpus") as bar:
        corpus = build_corpus(args.folder, seed=args.seed, progress=bar, max_seconds=args.max_file_seconds)
    _print(corpus.report())
    schedule = dict(vqvae_epochs=args.epochs, prior_epochs=args.prior_epochs, steps_per_epoch=args.steps_per_epoch,
                    batch_size=args.batch_size)
    if args.resume is None:
        estimate = estimate_training_seconds(corpus, args.preset, device=args.device, **schedule)
        _print(f"preset {args.preset!r} on {torch.get_num_threads()} threads: training takes about "
               f"{estimate / 60:.0f} min (measured from a few steps), then a few minutes of quality checks")
    try:
        with _ProgressBar("training") as bar:
            loaded, histories = train_model(
                corpus, seed=args.seed, device=args.device, progress=bar, name=args.name or output.stem,
                checkpoint_path=checkpoint, resume=args.resume, preset_name=args.preset, **schedule)
    except KeyboardInterrupt:
        _print(f"interrupted; continue with: --resume {checkpoint}")
        return 130
    if not is_main_process():
        return 0
    saved = _save_or_rescue(lambda target: save_model(loaded, target), output)
    _print(f"saved {saved} ({saved.stat().st_size / 1e6:.1f} MB)")
    if args.keep_checkpoint or saved != output:
        _print(f"checkpoint kept: {checkpoint}")
    else:  # the model holds everything the checkpoint did, apart from the optimizer state
        checkpoint.unlink(missing_ok=True)
    _print(f"VQ-VAE {_parameters(loaded.vqvae):,} parameters, prior {_parameters(loaded.prior):,} parameters")
    for history in histories.values():
        _print(history.summary())
    if "quality" in loaded.metadata:
        _print(QualityReport.from_dict(loaded.metadata["quality"]).summary())
    _print(f"total time {time.perf_counter() - started:.0f} s")
    return 1 if saved != output else 0


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a model file; a file that is not a model gives a one-line error and exit code 2."""
    _set_threads(args.threads)
    path = pathlib.Path(args.model)
    loaded = load_model(path)
    metadata = loaded.metadata  # written by whoever made the file: every entry may have any JSON type
    print(f"{path}: {path.stat().st_size / 1e6:.2f} MB, name {metadata.get('name', '?')!r}, "
          f"created {metadata.get('created', '?')}")
    print(f"spectrogram: {_fields(loaded.spectrogram_config.to_dict())}")
    print(f"VQ-VAE ({_parameters(loaded.vqvae):,} parameters): {_fields(loaded.vqvae_config.to_dict())}")
    if loaded.prior is None:
        print("prior: none")
    else:
        print(f"prior ({_parameters(loaded.prior):,} parameters): {_fields(loaded.prior_config.to_dict())}")
    training = metadata.get("training", {})
    if not isinstance(training, dict):
        print("training: a summary in an unknown format")
        training = {}
    corpus = training.get("corpus")
    if isinstance(corpus, dict):
        print(f"corpus: {corpus.get('source', '?')}, {_number(corpus.get('seconds'), '.0f')} s "
              f"({_number(corpus.get('train_seconds'), '.0f')} s training), {corpus.get('files', '?')} files, "
              f"{corpus.get('skipped', 0)} skipped; seed {training.get('seed', '?')}")
    for stage in ("vqvae", "prior"):
        if stage in training:
            print(_summary(TrainingHistory, training[stage], f"{stage}: training summary in an unknown format"))
    if "quality" in metadata:
        print(_summary(QualityReport, metadata["quality"], "quality: a report in an unknown format"))
    else:
        print("quality: not measured (trained before distill_nb measured it)")
    print("codebook health (from the EMA usage of training):")
    for health in loaded.vqvae.codebook_health():
        print(f"  level {health.level}: {health.utilisation:.0%} of {health.codebook_size} codes used, "
              f"perplexity {health.perplexity:.1f}, {health.dead_codes} dead")
    return 0


# The generate options that map one to one onto GenerationSettings fields (option dest -> field).
_SETTING_OPTIONS = {"temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "min_p": "min_p",
                    "duration": "duration_s", "overlap": "overlap_samples", "mode": "mode", "stitch": "stitch",
                    "curve": "crossfade_curve", "context_columns": "context_columns",
                    "griffin_lim_iters": "griffin_lim_iters", "normalise": "normalise", "target_dbfs": "target_dbfs"}


def cmd_generate(args: argparse.Namespace) -> int:
    """Generate one take per seed in one batch; save each as audio with a JSON sidecar of its metadata."""
    _set_threads(args.threads)
    output = pathlib.Path(args.output)
    # Everything that can be checked is checked before minutes of generation, not after.
    if output.suffix.lower() not in (".wav", ".flac"):
        raise ValueError(f"the output must end in .wav or .flac, got '{output.name}'")
    _check_writable(output)
    if args.takes < 1:
        raise ValueError(f"--takes must be an int >= 1, got {args.takes}")
    device = check_device("--device", args.device)
    seeds = args.seed or [secrets.randbits(63) for _ in range(args.takes)]
    # Options left out keep GenerationSettings' defaults, so the library owns them.
    settings = GenerationSettings(**{field: getattr(args, option) for option, field in _SETTING_OPTIONS.items()
                                     if getattr(args, option) is not None})
    loaded = load_model(args.model, device=device) if args.model else load_default_model(device=device)
    prompt = None if args.prompt is None else load_audio(args.prompt, loaded.sample_rate)
    with _ProgressBar("generating") as bar:
        takes = generate_takes(loaded, settings, seeds, bar, prompt=prompt, include_prompt=args.include_prompt)
    failed = 0
    for take in takes:
        path = output if len(takes) == 1 else output.with_name(f"{output.stem}-seed{take.seed}{output.suffix}")
        saved = _save_or_rescue(lambda target: save_audio(target, take.audio, take.sample_rate,
                                                          metadata=take.to_metadata()), path)
        failed += saved != path
        print(f"saved {saved}: {take.duration_s:.2f} s, seed {take.seed}")
    print(f"generated {len(takes)} take{'s' if len(takes) > 1 else ''} in {takes[0].timings['total_s']:.1f} s")
    return 1 if failed else 0


def _check_writable(output: pathlib.Path) -> None:
    """ValueError unless ``output`` can be written: not a folder, and its folder exists and takes a new file."""
    if output.is_dir():
        raise ValueError(f"the output '{output}' is a folder; give a file name")
    if not output.parent.is_dir():
        raise ValueError(f"the output's folder '{output.parent}' does not exist")
    try:
        with tempfile.TemporaryFile(dir=output.parent):
            pass
    except OSError as error:
        raise ValueError(f"cannot write into the output's folder '{output.parent}': {error.strerror}") from None


def _save_or_rescue(save: Callable[[pathlib.Path], object], path: pathlib.Path) -> pathlib.Path:
    """``save(path)``; if that fails (disk full, folder gone), save into a new temporary folder instead
    and say so on stderr, so that finished work is never lost -> the path written."""
    try:
        save(path)
        return path
    except OSError as error:
        rescue = pathlib.Path(tempfile.mkdtemp(prefix="distill_nb-rescued-")) / path.name
        save(rescue)
        print(f"error: cannot write {path} ({error.strerror or error}); saved it as {rescue} instead", file=sys.stderr)
        return rescue


def _temperature(text: str) -> float | tuple[float, ...]:
    """'0.9' -> 0.9; '0.5,1,1.5' -> one temperature per level (checked against the model later)."""
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or one number per level separated by commas, "
                                         f"got {text!r}") from None
    return values[0] if len(values) == 1 else values


def cmd_train_default(args: argparse.Namespace) -> int:
    """Retrain the bundled default model on the demo corpus and save it."""
    started = time.perf_counter()
    _set_threads(args.threads)
    with _ProgressBar("default model") as bar:
        path, histories = train_default_model(args.output, seed=args.seed, progress=bar)
    if is_main_process():
        _print(f"saved {path} ({path.stat().st_size / 1e6:.1f} MB)")
        for history in histories.values():
            _print(history.summary())
        _print(QualityReport.from_dict(load_model(path).metadata["quality"]).summary())
        _print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one subcommand per ``cmd_*`` function (long: one flat declaration per option)."""
    parser = argparse.ArgumentParser(prog="python -m distill_nb",
                                     description="Generative audio from a small corpus: train, inspect, generate.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model on a folder of sounds",
                                description="Train a VQ-VAE and its prior on every audio file under FOLDER.")
    train.add_argument("folder", help="folder of sounds (searched recursively)")
    train.add_argument("-o", "--output", required=True, help="model file to write (.distill)")
    train.add_argument("--preset", choices=tuple(PRESETS), default=DEFAULT_PRESET,
                       help="sizes and schedule: 'standard' (default, ~16 min on 2 CPU cores), 'quick' (about half), "
                            "'small' (a toy that trains in seconds)")
    train.add_argument("--epochs", type=_positive_int, help="VQ-VAE epochs (default: the preset's)")
    train.add_argument("--prior-epochs", type=_positive_int, help="prior epochs (default: the preset's)")
    train.add_argument("--steps-per-epoch", type=_positive_int, help="steps per epoch of both stages "
                       "(default: the preset's)")
    train.add_argument("--batch-size", type=_positive_int,
                       help="windows per step of both stages (default: the preset's)")
    train.add_argument("--seed", type=int, default=0, help="seed of the split and of training (default 0)")
    train.add_argument("--max-file-seconds", type=float, default=MAX_SECONDS, metavar="SECONDS",
                       help=f"longer files are skipped and reported (default {MAX_SECONDS:g}: it bounds the memory "
                            f"one file takes)")
    train.add_argument("--checkpoint", help="checkpoint file (default: OUTPUT with the suffix .ckpt)")
    train.add_argument("--resume", metavar="CKPT", help="continue the run saved in this checkpoint")
    train.add_argument("--keep-checkpoint", action="store_true",
                       help="keep the checkpoint after the model is saved (default: remove it)")
    train.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    train.add_argument("--name", help="model name stored in the file (default: OUTPUT's stem)")
    train.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
    train.set_defaults(handler=cmd_train)

    info = commands.add_parser("info", help="describe a model file")
    info.add_argument("model", help="a .distill model file")
    info.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
    info.set_defaults(handler=cmd_info)

    defaults = GenerationSettings()
    generate = commands.add_parser(
        "generate", help="generate audio with a trained model",
        description="Generate takes with a model's prior and save each as audio plus a JSON sidecar. "
                    "Options left out take the library's defaults.")
    generate.add_argument("-o", "--output", required=True,
                          help="audio file to write (.wav or .flac); several takes add -seedN to the name")
    generate.add_argument("--model", help="a .distill model file (default: the bundled default model)")
    takes = generate.add_mutually_exclusive_group()
    takes.add_argument("--seed", type=int, nargs="+", metavar="N",
                       help="one take per seed, ints in [0, 2**63); pick seeds far apart, since seed s and "
                            "s + 1 share windows (window or chunk i uses seed + i)")
    takes.add_argument("--takes", type=int, default=1, help="number of takes with random seeds (default 1)")
    generate.add_argument("--duration", type=float, help=f"seconds per take (default {defaults.duration_s:g})")
    generate.add_argument("--temperature", type=_temperature,
                          help=f"a number > 0, or one per level as 0.5,1,1.5 (default {defaults.temperature})")
    generate.add_argument("--top-k", type=int, help=f"0 = off (default {defaults.top_k})")
    generate.add_argument("--top-p", type=float, help=f"in [0, 1], 0 or 1 = off (default {defaults.top_p})")
    generate.add_argument("--min-p", type=float, help=f"in [0, 1], 0 = off (default {defaults.min_p})")
    generate.add_argument("--overlap", type=int, metavar="SAMPLES",
                          help=f"samples shared by neighbouring chunks in independent mode "
                               f"(default {defaults.overlap_samples})")
    generate.add_argument("--mode", choices=MODES, help=f"default {defaults.mode}")
    generate.add_argument("--stitch", choices=STITCHES, help=f"default {defaults.stitch}")
    generate.add_argument("--curve", choices=CURVES, help=f"fade shape (default {defaults.crossfade_curve})")
    generate.add_argument("--context-columns", type=int,
                          help="grid columns that prime each window in continuation mode, or the first from "
                               "--prompt (default: all but one chunk of the prior's window)")
    generate.add_argument("--normalise", choices=NORMALISATIONS,
                          help=f"level normalisation of each take (default {defaults.normalise})")
    generate.add_argument("--target-dbfs", type=float,
                          help="the level --normalise reaches, <= 0 (default -1 dBFS peak, -20 dBFS rms)")
    generate.add_argument("--griffin-lim-iters", type=int, help=f"default {defaults.griffin_lim_iters}")
    generate.add_argument("--prompt", help="an audio file the take continues from")
    generate.add_argument("--include-prompt", action="store_true",
                          help="start the output with the prompt (default: generated audio only)")
    generate.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    generate.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
    generate.set_defaults(handler=cmd_generate)

    default = commands.add_parser("train-default", help="retrain the bundled default model (~16 min on 2 CPU cores)")
    default.add_argument("-o", "--output", default=str(DEFAULT_MODEL_PATH), help=f"default {DEFAULT_MODEL_PATH}")
    default.add_argument("--seed", type=int, default=0)
    default.add_argument("--threads", type=_positive_int, help=THREADS_HELP)
    default.set_defaults(handler=cmd_train_default)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command -> exit code (0 ok, 1 output saved elsewhere, 2 bad input, 130 interrupted).

    Bad input of any kind (a file that is not a model, a broken checkpoint or audio file, an argument out of
    range, an unavailable device) ends in one ``error:`` line on stderr, never a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ModelFileError, AudioFileError, CheckpointError, ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except MemoryError:
        print(f"error: out of memory in {args.command}; try a shorter duration, fewer takes or a smaller preset",
              file=sys.stderr)
        return 2


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def _print(text: str) -> None:
    if is_main_process():
        print(text)


def _parameters(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _number(value: object, spec: str) -> str:
    """``value`` formatted with ``spec`` if it is a number, else '?' (metadata entries may hold anything)."""
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "?"


def _summary(cls: type, data: object, unknown: str) -> str:
    """``cls.from_dict(data).summary()``, or ``unknown`` when ``data`` does not have the expected structure."""
    try:
        return cls.from_dict(data).summary()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError):
        return unknown


def _fields(d: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in d.items())
