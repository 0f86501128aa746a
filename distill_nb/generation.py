"""Generating audio from a trained model: sample codes, decode them, stitch the chunks.

One take of ``duration_s`` seconds is made of 1 s chunks:

    sample codes (CodePrior, KV cache)  ->  VQ-VAE decode -> mel  ->  Griffin-Lim  ->  stitch  ->  trim

All chunks of all takes are sampled together in one batch. Chunk ``i`` of a take with seed ``s``
draws from its own generator seeded ``s + i`` (see ``sampling.sample_codes``), so its codes do not
depend on how many chunks or takes share the batch, and one seed always gives the same audio.

Modes decide how chunks relate to each other:

- ``"independent"``: every chunk is sampled on its own; neighbouring chunks share
  ``overlap_samples`` samples, which the stitching blends.
- ``"continuation"``: every chunk after the first starts with the last ``context_columns`` time
  columns of the previous chunk's codes (a contiguous suffix of its time-major tokens) and only the
  rest is sampled, so long audio flows on instead of changing every second. The shared columns are
  where neighbouring chunks overlap in time, so chunk starts are ``(W - context_columns)`` columns
  apart and ``overlap_samples`` is not used: the overlap is ``chunk - (W - c) * 16 * hop`` samples
  (48000 - 4 * 16 * 512 = 15232, 0.32 s, for the defaults), a little less than ``c * 16 * hop``
  because the last column also covers the padding after the chunk's last mel frame.

Stitchings decide how overlapping chunks become one waveform:

- ``"crossfade"``: Griffin-Lim per chunk, then a waveform crossfade (``audio.crossfade_chunks``).
- ``"overlap_add"``: the decoded chunk mels are overlap-added (power domain, weighted by the fade
  curve) and the whole piece goes through one Griffin-Lim pass, so there are no phase jumps at the
  seams. Chunk starts are rounded to whole mel frames.

The stitched audio is trimmed to exactly ``round(duration_s * sample_rate)`` samples; when audio is
cut off, the last ``END_FADE_S`` seconds fade out so the take does not end with a click.
"""

from __future__ import annotations

import math
import numbers
import secrets
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import version
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from .inversion import DECODED_INVERSION
from .prior import flatten_codes, unflatten_codes
from .sampling import sample_codes
from .stitching import crossfade_chunks, overlap_add_mels

if TYPE_CHECKING:  # only for annotations: model_file imports the model modules, not this one
    from .model_file import LoadedVQModel

MAX_DURATION_S = 120.0
MODES = ("independent", "continuation")
STITCHES = ("crossfade", "overlap_add")
CROSSFADE_CURVES = ("equal_power", "linear", "hann")
SEED_LIMIT = 2**63  # seeds are ints in [0, SEED_LIMIT)
END_FADE_S = 0.01  # fade-out applied where the stitched audio is cut to the requested length
CODEC_BATCH = 64  # chunks per VQ-VAE encode/decode call, to bound memory on long takes

Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------- validation helpers


def _real(name: str, value: object, expected: str) -> float:
    """``value`` as a finite float; TypeError/ValueError naming ``name`` and ``expected``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def _integer(name: str, value: object, expected: str) -> int:
    """``value`` as an int (bools rejected); TypeError naming ``name`` and ``expected``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    return int(value)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _temperature(name: str, value: object) -> float:
    expected = "a finite number > 0"
    value = _real(name, value, expected)
    if value <= 0:
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_seed(seed: object, name: str = "seed") -> int:
    """Return ``seed`` as an int in [0, 2**63); TypeError/ValueError otherwise (bools rejected)."""
    expected = "an int in [0, 2**63)"
    seed = _integer(name, seed, expected)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"{name} must be {expected}, got {seed}")
    return seed


def _audio_array(name: str, audio: object) -> np.ndarray:
    """``audio`` as a non-empty, finite, 1-D float32 array."""
    try:
        array = np.asarray(audio, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a 1-D float array of samples, got {type(audio).__name__}") from error
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D (mono) array, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must contain only finite samples")
    return array


# --------------------------------------------------------------------------- settings and result


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate one take. Every field is validated on construction.

    Args:
        temperature: softmax temperature > 0; one number, or one per residual level (a tuple of
            Q numbers, level 0 coarsest) to e.g. keep the coarse structure tight and the detail loose.
        top_k: keep the k most likely codes, an int >= 0 (0 = off).
        top_p: nucleus sampling mass in [0, 1] (0 or 1 = off).
        min_p: drop codes with probability < min_p * the top probability, in [0, 1] (0 = off).
        duration_s: length of the take in seconds, in (0, MAX_DURATION_S].
        overlap_samples: samples neighbouring chunks share in "independent" mode, an int in
            [0, chunk length); ignored in "continuation" mode, where the shared columns overlap.
        mode: "independent" or "continuation" (see the module docstring).
        stitch: "crossfade" or "overlap_add" (see the module docstring).
        crossfade_curve: "equal_power", "linear" or "hann"; the fade shape of either stitching.
        context_columns: time columns (of W per chunk) that prime a chunk from the previous chunk
            in "continuation" mode, or from the prompt; an int in [1, W). One column is 16 mel
            frames (~0.17 s with the default 512-sample hop).
        griffin_lim_iters: Griffin-Lim iterations, an int >= 1. From the phase-gradient start, 12
            relaxed iterations match the spectral convergence of 16 plain fast Griffin-Lim ones, which
            match 32 from a random start (bench/sampling_bench.py).
    """

    temperature: float | tuple[float, ...] = 1.0
    top_k: int = 0
    top_p: float = 0.9
    min_p: float = 0.0
    duration_s: float = 10.0
    overlap_samples: int = 2400
    # Defaults measured with bench/seam_bench.py --seeds 16 on the default model (10 s takes; flux / jump /
    # texture ratio at seams, 1.0 = seamless): continuation + crossfade 1.00 / 1.07 / 1.06, continuation +
    # overlap-add 1.00 / 1.08 / 1.03, independent + crossfade 2.54 / 5.02 / 1.88, independent + overlap-add
    # 2.03 / 4.27 / 1.86. The two continuation stitchings are both close to seamless and within the noise of
    # each other (an earlier Griffin-Lim gave 1.00 / 1.06 / 1.03 against 1.04 / 0.92 / 1.02); the jump, one
    # sample per seam, is the noisiest of the three. Crossfade stays the default stitching.
    mode: str = "continuation"
    stitch: str = "crossfade"
    crossfade_curve: str = "equal_power"
    context_columns: int = 2
    griffin_lim_iters: int = 12

    def __post_init__(self) -> None:
        if isinstance(self.temperature, (tuple, list)):
            if not self.temperature:
                raise ValueError("temperature must be a finite number > 0 or one per level, got ()")
            temperature = tuple(
                _temperature(f"temperature[{level}]", value) for level, value in enumerate(self.temperature)
            )
        else:
            temperature = _temperature("temperature", self.temperature)
        top_k = _integer("top_k", self.top_k, "an int >= 0")
        if top_k < 0:
            raise ValueError(f"top_k must be an int >= 0, got {top_k}")
        probabilities = {}
        for name in ("top_p", "min_p"):
            value = _real(name, getattr(self, name), "a number in [0, 1]")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value}")
            probabilities[name] = value
        duration_range = f"a number in (0, {MAX_DURATION_S}] seconds"
        duration_s = _real("duration_s", self.duration_s, duration_range)
        if not 0.0 < duration_s <= MAX_DURATION_S:
            raise ValueError(f"duration_s must be {duration_range}, got {duration_s}")
        overlap = _integer("overlap_samples", self.overlap_samples, "an int in [0, chunk length)")
        if overlap < 0:
            raise ValueError(f"overlap_samples must be an int in [0, chunk length), got {overlap}")
        context = _integer("context_columns", self.context_columns, "an int in [1, columns per chunk)")
        if context < 1:
            raise ValueError(f"context_columns must be an int in [1, columns per chunk), got {context}")
        iters = _integer("griffin_lim_iters", self.griffin_lim_iters, "an int >= 1")
        if iters < 1:
            raise ValueError(f"griffin_lim_iters must be an int >= 1, got {iters}")
        _choice("mode", self.mode, MODES)
        _choice("stitch", self.stitch, STITCHES)
        _choice("crossfade_curve", self.crossfade_curve, CROSSFADE_CURVES)
        # Store the normalised values (numpy scalars -> Python numbers, list -> tuple).
        normalised = dict(
            temperature=temperature, top_k=top_k, duration_s=duration_s, overlap_samples=overlap,
            context_columns=context, griffin_lim_iters=iters, **probabilities,
        )
        for name, value in normalised.items():
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict:
        """JSON-safe dict of every field (a per-level temperature becomes a list)."""
        settings = asdict(self)
        if isinstance(self.temperature, tuple):
            settings["temperature"] = list(self.temperature)
        return settings


@dataclass
class GenerationResult:
    """One generated take.

    Attributes:
        audio: float32 [n] mono waveform, n = round(duration_s * sample_rate) (plus the prompt's
            samples less the shared region when the prompt is included).
        sample_rate: Hz.
        codes: long [n_chunks, P, Q] sampled codes of each chunk (time-major positions), on the CPU.
        mels: float32 [n_chunks, n_mels, frames] the decoded log-mel of each chunk, on the CPU.
        seed: the take's seed; chunk i was sampled with seed + i.
        settings: the settings used.
        timings: seconds per stage: "sampling_s", "decoding_s" and "total_s" of the whole batch of
            takes this take was generated in, "griffin_lim_s" and "stitching_s" of this take.
        seam_samples: sample index of the centre of each region where two chunks (or the prompt and
            the first chunk) were blended, in ``audio``.
        model_name: name of the model from its metadata, if it has one.
        prompt_samples: length of the audio prompt in samples (0 without a prompt).
        include_prompt: whether ``audio`` starts with the prompt.
    """

    audio: np.ndarray
    sample_rate: int
    codes: torch.Tensor
    mels: torch.Tensor
    seed: int
    settings: GenerationSettings
    timings: dict[str, float]
    seam_samples: list[int]
    model_name: str | None = None
    prompt_samples: int = 0
    include_prompt: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def to_metadata(self) -> dict:
        """JSON-safe description of the take, for the sidecar written next to a saved file."""
        return {
            "generator": "distill_nb",
            "distill_nb_version": version("distill_nb"),
            "model_name": self.model_name,
            "seed": self.seed,
            "sample_rate": self.sample_rate,
            "duration_s": self.duration_s,
            "n_chunks": int(self.codes.shape[0]),
            "settings": self.settings.to_dict(),
            "prompt_samples": self.prompt_samples,
            "include_prompt": self.include_prompt,
            "seam_samples": [int(s) for s in self.seam_samples],
            "timings": {name: float(seconds) for name, seconds in self.timings.items()},
        }


# --------------------------------------------------------------------------- chunk geometry


@dataclass(frozen=True)
class _Geometry:
    """Sizes of one chunk for a model: samples, mel frames and the latent grid (H rows x W columns)."""

    chunk: int
    hop: int
    frames: int
    rows: int
    columns: int
    levels: int
    column_samples: int  # samples per latent time column: DOWNSAMPLE mel frames

    @classmethod
    def of(cls, loaded: LoadedVQModel) -> _Geometry:
        chunk = loaded.chunk_samples
        hop = loaded.spectrogram.config.hop_length
        _, frames = loaded.spectrogram.get_mel_shape(chunk)
        rows, columns = loaded.model.spatial_shape(frames)
        levels = loaded.model.config.num_quantizers
        return cls(chunk, hop, frames, rows, columns, levels, loaded.model.DOWNSAMPLE * hop)

    @property
    def column_tokens(self) -> int:
        """Flat tokens per time column (H * Q): the unit of priming."""
        return self.rows * self.levels


@dataclass(frozen=True)
class _Layout:
    """Where the chunks of one take sit: ``n_chunks`` chunks whose starts are ``step`` samples apart."""

    n_chunks: int
    step: int
    chunk: int

    @property
    def overlap(self) -> int:
        """Samples shared by neighbouring chunks."""
        return self.chunk - self.step

    @property
    def length(self) -> int:
        """Samples covered by all chunks, before trimming."""
        return (self.n_chunks - 1) * self.step + self.chunk

    def seams(self, total: int) -> list[int]:
        """Centres of the blended regions that lie inside the first ``total`` samples."""
        centres = (i * self.step + self.overlap // 2 for i in range(1, self.n_chunks))
        return [c for c in centres if c < total]


def _layout(settings: GenerationSettings, geometry: _Geometry, total: int) -> _Layout:
    """The fewest chunks that cover ``total`` samples, with their spacing for this mode and stitching."""
    if settings.mode == "continuation":
        # The last c columns of chunk i and the first c columns of chunk i+1 are the same codes,
        # so chunk i+1 starts where column W - c of chunk i starts.
        step = (geometry.columns - settings.context_columns) * geometry.column_samples
    else:
        step = geometry.chunk - settings.overlap_samples
    if settings.stitch == "overlap_add":
        # Mel overlap-add can only shift chunks by whole frames.
        step = max(1, round(step / geometry.hop)) * geometry.hop
    n_chunks = 1 + max(0, math.ceil((total - geometry.chunk) / step))
    return _Layout(n_chunks, step, geometry.chunk)


def _check_for_model(settings: GenerationSettings, geometry: _Geometry, loaded: LoadedVQModel) -> int:
    """Check the settings that depend on the model; return the take length in samples."""
    if loaded.prior is None:
        raise ValueError("Model has no trained prior")
    seq_len = geometry.rows * geometry.columns * geometry.levels
    if loaded.prior.seq_len != seq_len:
        raise ValueError(
            f"prior seq_len {loaded.prior.seq_len} does not match the VQ-VAE's "
            f"{geometry.rows}x{geometry.columns} grid x {geometry.levels} levels = {seq_len}"
        )
    if isinstance(settings.temperature, tuple) and len(settings.temperature) != geometry.levels:
        raise ValueError(
            f"temperature must be one number or one per level ({geometry.levels} levels), "
            f"got {len(settings.temperature)} values"
        )
    if settings.overlap_samples >= geometry.chunk:
        raise ValueError(
            f"overlap_samples must be an int in [0, {geometry.chunk}) (the chunk length), "
            f"got {settings.overlap_samples}"
        )
    if settings.context_columns >= geometry.columns:
        raise ValueError(
            f"context_columns must be an int in [1, {geometry.columns}) (columns per chunk), "
            f"got {settings.context_columns}"
        )
    total = round(settings.duration_s * loaded.sample_rate)
    if total < 1:
        raise ValueError(f"duration_s must give at least one sample, got {settings.duration_s}")
    return total


# --------------------------------------------------------------------------- encoding


def _encode_chunks(loaded: LoadedVQModel, chunks: torch.Tensor) -> torch.Tensor:
    """float32 [N, chunk] waveforms -> long [N, P, Q] codes on the CPU."""
    codes = []
    with torch.inference_mode():
        for part in chunks.split(CODEC_BATCH):
            mel = loaded.spectrogram.waveform_to_mel(part.to(loaded.device))
            codes.append(loaded.model.encode(mel).cpu())
    return torch.cat(codes)


def encode_audio(loaded: LoadedVQModel, audio: np.ndarray) -> torch.Tensor:
    """Encode mono audio at the model's sample rate to codes.

    Args:
        audio: float32 [n] waveform; it is cut into 1 s chunks, the last one zero-padded.

    Returns:
        long [n_chunks, P, Q] codes (time-major positions) on the CPU, n_chunks = ceil(n / chunk).
    """
    audio = _audio_array("audio", audio)
    chunk = loaded.chunk_samples
    n_chunks = math.ceil(len(audio) / chunk)
    padded = np.zeros(n_chunks * chunk, dtype=np.float32)
    padded[: len(audio)] = audio
    return _encode_chunks(loaded, torch.from_numpy(padded).view(n_chunks, chunk))


def _prompt_prefix(loaded: LoadedVQModel, prompt: np.ndarray, settings: GenerationSettings,
                   geometry: _Geometry) -> torch.Tensor:
    """Flat tokens [1, c*H*Q] of the last ``context_columns`` columns of the prompt's last second.

    The window is aligned to the prompt's end (zero-padded in front when the prompt is shorter than a
    chunk), so the primed columns are the sound the prompt ends with, not padding.
    """
    window = np.zeros(geometry.chunk, dtype=np.float32)
    tail = prompt[-geometry.chunk:]
    window[geometry.chunk - len(tail):] = tail
    codes = _encode_chunks(loaded, torch.from_numpy(window)[None])
    return flatten_codes(codes)[:, -settings.context_columns * geometry.column_tokens:]


# --------------------------------------------------------------------------- sampling


def _sample_takes(loaded: LoadedVQModel, settings: GenerationSettings, seeds: Sequence[int],
                  layout: _Layout, geometry: _Geometry, prompt_prefix: torch.Tensor | None,
                  report: Progress) -> torch.Tensor:
    """Sample the codes of every chunk of every take: long [takes, n_chunks, P, Q] on the CPU."""
    n = layout.n_chunks

    def sample(chunk_seeds: list[int], prefix: torch.Tensor | None) -> torch.Tensor:
        if prefix is not None:
            prefix = prefix.expand(len(chunk_seeds), -1)
        return sample_codes(
            loaded.prior, len(chunk_seeds), chunk_seeds, temperature=settings.temperature,
            top_k=settings.top_k, top_p=settings.top_p, min_p=settings.min_p, prefix=prefix,
        ).cpu()

    if settings.mode == "continuation":
        # Chunk i needs chunk i-1, so chunks go in sequence; the takes share each step's batch.
        flat, prefix = [], prompt_prefix
        for i in range(n):
            report(i / n, f"Generating chunk {i + 1}/{n}...")
            tokens = sample([seed + i for seed in seeds], prefix)
            flat.append(tokens)
            prefix = tokens[:, -settings.context_columns * geometry.column_tokens:]
        flat = torch.stack(flat, dim=1)  # [takes, n, P*Q]
    else:
        # All chunks of all takes advance together through the KV cache: one batch, one message.
        report(0.0, "Generating chunk 1/1..." if n == 1 else f"Generating chunks 1-{n}/{n} in one batch...")
        if prompt_prefix is None:
            flat = sample([seed + i for seed in seeds for i in range(n)], None).view(len(seeds), n, -1)
        else:
            # Only the first chunk of each take is primed; the rows of one batch share a prefix length.
            flat = sample(list(seeds), prompt_prefix)[:, None]
            if n > 1:
                rest = sample([seed + i for seed in seeds for i in range(1, n)], None)
                flat = torch.cat([flat, rest.view(len(seeds), n - 1, -1)], dim=1)
    return unflatten_codes(flat.reshape(len(seeds) * n, -1), geometry.levels).view(len(seeds), n, -1, geometry.levels)


# --------------------------------------------------------------------------- stitching


def _fade_out_end(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Fade the last END_FADE_S seconds of ``audio`` to silence (in place), so a cut does not click."""
    n = min(len(audio), max(1, round(END_FADE_S * sample_rate)))
    audio[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return audio


def _render_take(loaded: LoadedVQModel, settings: GenerationSettings, mels: torch.Tensor,
                 layout: _Layout, geometry: _Geometry) -> tuple[np.ndarray, float, float]:
    """Turn one take's chunk mels [n, n_mels, frames] into a waveform of ``layout.length`` samples.

    Griffin-Lim's random start phases come from mel_to_waveform's default seed, so the audio is a function
    of the codes. Returns (audio, griffin_lim seconds, stitching seconds).
    """
    start = time.perf_counter()
    inversion = replace(DECODED_INVERSION, griffin_lim_iters=settings.griffin_lim_iters)
    if settings.stitch == "overlap_add":
        whole = overlap_add_mels(mels, layout.step // geometry.hop, settings.crossfade_curve)
        stitched_at = time.perf_counter()
        audio = loaded.spectrogram.mel_to_waveform(whole[None], inversion, length=layout.length)[0].cpu().numpy()
        return audio, time.perf_counter() - stitched_at, stitched_at - start
    waves = loaded.spectrogram.mel_to_waveform(mels, inversion, length=geometry.chunk).cpu()
    synthesised_at = time.perf_counter()
    audio = crossfade_chunks(list(waves), layout.overlap, curve=settings.crossfade_curve)
    return audio, synthesised_at - start, time.perf_counter() - synthesised_at


# --------------------------------------------------------------------------- public entry points


def generate_takes(loaded: LoadedVQModel, settings: GenerationSettings | None, seeds: Sequence[int],
                   progress: Progress | None = None, *, prompt: np.ndarray | None = None,
                   include_prompt: bool = False) -> list[GenerationResult]:
    """Generate one take per seed, sampling all chunks of all takes in one batch.

    Take ``k`` is identical to ``generate(loaded, settings, seed=seeds[k], prompt=prompt)``. Seeds
    closer together than the number of chunks share chunks (chunk i of seed s is chunk i - 1 of seed
    s + 1 in "independent" mode), so takes meant to differ want seeds far apart, e.g. random ones.

    Args:
        loaded: a model with a trained prior.
        settings: GenerationSettings (None = defaults).
        seeds: one int in [0, 2**63) per take; chunk i of a take uses seed + i.
        progress: called with (fraction in [0, 1], message); the last call has fraction 1.0.
        prompt: optional float32 [n] audio at the model's sample rate. The last ``context_columns``
            columns of its last second prime the first chunk, so the take continues the prompt. The
            first chunk then starts ``shared`` samples before the prompt ends and re-renders them.
        include_prompt: when True the take's audio is the prompt followed by the generated audio,
            crossfaded over that shared region; when False (default) it holds only generated audio.

    Raises:
        ValueError: "Model has no trained prior" when ``loaded.prior`` is None, or a bad argument.
    """
    started = time.perf_counter()
    settings = GenerationSettings() if settings is None else settings
    if not isinstance(settings, GenerationSettings):
        raise TypeError(f"settings must be a GenerationSettings or None, got {type(settings).__name__}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty sequence of ints in [0, 2**63), got {seeds!r}")
    seeds = [check_seed(seed, f"seeds[{k}]") for k, seed in enumerate(seeds)]
    geometry = _Geometry.of(loaded)
    total = _check_for_model(settings, geometry, loaded)
    if prompt is not None:
        prompt = _audio_array("prompt", prompt)
    report: Progress = progress if progress is not None else (lambda fraction, message: None)
    layout = _layout(settings, geometry, total)

    prompt_prefix = None
    if prompt is not None:
        report(0.0, "Encoding prompt...")
        prompt_prefix = _prompt_prefix(loaded, prompt, settings, geometry)

    def sampling_progress(fraction: float, message: str) -> None:
        report(0.7 * fraction, message)  # sampling is most of the work

    codes = _sample_takes(loaded, settings, seeds, layout, geometry, prompt_prefix, sampling_progress)
    sampled_at = time.perf_counter()

    n = layout.n_chunks
    report(0.7, f"Decoding {n * len(seeds)} chunk{'s' if n * len(seeds) > 1 else ''}...")
    with torch.inference_mode():
        flat_codes = codes.view(len(seeds) * n, *codes.shape[2:])
        mels = torch.cat([
            loaded.model.decode_codes(part.to(loaded.device), geometry.frames)
            for part in flat_codes.split(CODEC_BATCH)
        ]).view(len(seeds), n, -1, geometry.frames)
    decoded_at = time.perf_counter()

    # The prompt's end and the first chunk's first columns are the same sound (see _prompt_prefix).
    prompt_overlap = 0 if prompt is None else min(
        len(prompt), total, geometry.chunk - (geometry.columns - settings.context_columns) * geometry.column_samples)
    results = []
    for k, seed in enumerate(seeds):
        take = f", take {k + 1}/{len(seeds)}" if len(seeds) > 1 else ""
        report(0.8 + 0.2 * k / len(seeds), f"Griffin-Lim and stitching{take}...")
        with torch.inference_mode():
            audio, griffin_lim_s, stitching_s = _render_take(loaded, settings, mels[k], layout, geometry)
        seams = layout.seams(total)
        if len(audio) > total:
            audio = _fade_out_end(audio[:total].copy(), loaded.sample_rate)
        if prompt is not None and include_prompt:
            offset = len(prompt) - prompt_overlap
            seams = [offset + prompt_overlap // 2] + [offset + seam for seam in seams]
            audio = crossfade_chunks([prompt, audio], prompt_overlap, curve=settings.crossfade_curve)
        results.append(GenerationResult(
            audio=np.ascontiguousarray(audio, dtype=np.float32),
            sample_rate=loaded.sample_rate,
            codes=codes[k].clone(),
            mels=mels[k].cpu().clone(),
            seed=seed,
            settings=settings,
            timings={
                "sampling_s": sampled_at - started,
                "decoding_s": decoded_at - sampled_at,
                "griffin_lim_s": griffin_lim_s,
                "stitching_s": stitching_s,
            },
            seam_samples=seams,
            model_name=loaded.metadata.get("name"),
            prompt_samples=0 if prompt is None else len(prompt),
            include_prompt=prompt is not None and include_prompt,
        ))
    total_s = time.perf_counter() - started
    for result in results:
        result.timings["total_s"] = total_s
    report(1.0, f"Done: {len(seeds)} take{'s' if len(seeds) > 1 else ''} of {settings.duration_s:g} s")
    return results


def generate(loaded: LoadedVQModel, settings: GenerationSettings | None = None, *, seed: int | None = None,
             progress: Progress | None = None, prompt: np.ndarray | None = None,
             include_prompt: bool = False) -> GenerationResult:
    """Generate one take; ``seed`` None draws a random seed (returned in the result).

    See ``generate_takes`` for the arguments; the same seed and settings always give the same
    codes and audio.
    """
    seed = secrets.randbits(63) if seed is None else seed
    return generate_takes(loaded, settings, [seed], progress, prompt=prompt, include_prompt=include_prompt)[0]


def generate_audio_from_prior(loaded: LoadedVQModel, temperature: float | tuple[float, ...] = 1.0,
                              top_k: int = 0, top_p: float = 0.9, duration_s: float = 10.0,
                              overlap_samples: int = 2400, seed: int | None = None,
                              progress_callback: Progress | None = None) -> tuple[np.ndarray, int]:
    """Generate ``duration_s`` seconds of independent chunks crossfaded over ``overlap_samples``.

    A thin wrapper over ``generate`` that keeps the original Distill API and behaviour (mode
    "independent", stitch "crossfade", whatever GenerationSettings' defaults are); ``seed`` None
    draws a random seed.

    Returns:
        (audio float32 [round(duration_s * sample_rate)], the seed used).
    """
    settings = GenerationSettings(temperature=temperature, top_k=top_k, top_p=top_p, duration_s=duration_s,
                                  overlap_samples=overlap_samples, mode="independent", stitch="crossfade")
    result = generate(loaded, settings, seed=seed, progress=progress_callback)
    return result.audio, result.seed
