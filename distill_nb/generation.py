"""Generating audio from a trained model: sample codes, decode them to mel, invert, normalise.

Modes decide how the seconds of a take relate to each other:

- ``"continuation"`` (default): a take is one stream of grid columns. The prior samples a first window
  (``seq_len`` tokens), then window after window, each primed by the last ``context_columns`` columns of
  the stream and adding the rest; window ``i`` of a take with seed ``s`` draws from seed ``s + i``. The
  prior was trained on windows cut anywhere from the corpus played as a stream, so this is what it
  learned. The whole stream decodes as one mel (the VQ-VAE is convolutional in time) and is inverted in
  one pass: the audio has no seams. ``seam_samples`` marks where each window's new columns begin, the
  only places where the prior's context was cut.
- ``"independent"``: every 1 s chunk is sampled on its own (chunk ``i`` from seed ``s + i``), all chunks
  of all takes in one batch. Neighbouring chunks share ``overlap_samples``, blended by the stitching:
  ``"crossfade"`` (Griffin-Lim per chunk, then a waveform crossfade) or ``"overlap_add"`` (the chunk mels
  are overlap-added and the piece goes through one Griffin-Lim pass; chunk starts rounded to frames).

A prompt primes the first window (or the first chunk) with its last ``context_columns`` columns; the take
then continues the prompt. The audio is trimmed to exactly ``round(duration_s * sample_rate)`` samples
(the last ``END_FADE_S`` fade out where it is cut) and normalised (``GenerationSettings.normalise``).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import asdict, dataclass, replace
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from distill_nb.checks import check_choice, check_int, check_positive, check_real
from distill_nb.geometry import ChunkGeometry
from distill_nb.inversion import DECODED_INVERSION
from distill_nb.loudness import NORMALISATIONS, normalise_level
from distill_nb.prior import unflatten_codes
from distill_nb.progress import Progress, silent
from distill_nb.sampling import sample_codes
from distill_nb.stitching import CURVES, crossfade_chunks, overlap_add_mels

if TYPE_CHECKING:  # only for annotations: model_file imports the model modules, not this one
    from distill_nb.model_file import LoadedVQModel

MAX_DURATION_S = 120.0
MODES = ("continuation", "independent")
STITCHES = ("crossfade", "overlap_add")
SEED_LIMIT = 2**63  # seeds are ints in [0, SEED_LIMIT)
END_FADE_S = 0.01  # fade-out applied where the audio is cut to the requested length
CODEC_BATCH = 64  # chunks per VQ-VAE decode call, to bound memory


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
        temperature: softmax temperature > 0; one number, or one per residual level (a tuple, level 0
            coarsest) to e.g. keep the coarse structure tight and the detail loose.
        top_k: keep the k most likely codes, an int >= 0 (0 = off).
        top_p: nucleus sampling mass in [0, 1] (0 or 1 = off).
        min_p: drop codes with probability < min_p * the top probability, in [0, 1] (0 = off).
        duration_s: length of the take in seconds, in (0, MAX_DURATION_S].
        mode: "continuation" or "independent" (see the module docstring).
        context_columns: grid columns of the stream (or of the prompt) that prime each window, an int in
            [1, window columns); None = all but one chunk of the prior's window, so each window adds one
            chunk of columns.
        stitch: "crossfade" or "overlap_add", how "independent" chunks are joined.
        overlap_samples: samples neighbouring "independent" chunks share, an int in [0, chunk length).
        crossfade_curve: "equal_power", "linear" or "hann"; the fade shape of either stitching.
        griffin_lim_iters: Griffin-Lim iterations, an int in [1, 512] (see inversion.DECODED_INVERSION).
        normalise: "peak" (the loudest sample at ``target_dbfs``), "rms" (the non-silent frames' RMS at
            ``target_dbfs``, the peak kept at or below -1 dBFS) or "off".
        target_dbfs: the level ``normalise`` reaches, <= 0; None = -1 dBFS peak or -20 dBFS RMS.
    """

    temperature: float | tuple[float, ...] = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    duration_s: float = 10.0
    mode: str = "continuation"
    context_columns: int | None = None
    stitch: str = "crossfade"
    overlap_samples: int = 2400
    crossfade_curve: str = "equal_power"
    griffin_lim_iters: int = 12
    normalise: str = "peak"
    target_dbfs: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.temperature, (tuple, list)):
            if not self.temperature:
                raise ValueError("temperature must be a finite number > 0 or one per level, got ()")
            temperature = tuple(check_positive(f"temperature[{level}]", v) for level, v in enumerate(self.temperature))
        else:
            temperature = check_positive("temperature", self.temperature)
        in_unit = ("in [0, 1]", lambda v: 0.0 <= v <= 1.0)
        normalised = dict(
            temperature=temperature,
            top_k=check_int("top_k", self.top_k, 0),
            top_p=check_real("top_p", self.top_p, *in_unit),
            min_p=check_real("min_p", self.min_p, *in_unit),
            duration_s=check_real("duration_s", self.duration_s, f"in (0, {MAX_DURATION_S:g}] seconds",
                                  lambda v: 0.0 < v <= MAX_DURATION_S),
            context_columns=None if self.context_columns is None else check_int("context_columns",
                                                                                  self.context_columns, 1),
            overlap_samples=check_int("overlap_samples", self.overlap_samples, 0),
            griffin_lim_iters=check_int("griffin_lim_iters", self.griffin_lim_iters, 1, 512),
            target_dbfs=None if self.target_dbfs is None else check_real("target_dbfs", self.target_dbfs, "<= 0",
                                                                         lambda v: v <= 0.0),
        )
        check_choice("mode", self.mode, MODES)
        check_choice("stitch", self.stitch, STITCHES)
        check_choice("crossfade_curve", self.crossfade_curve, CURVES)
        check_choice("normalise", self.normalise, NORMALISATIONS)
        for name, value in normalised.items():  # numpy scalars -> Python numbers, list -> tuple
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
        audio: float32 [n] mono waveform, n = round(duration_s * sample_rate) (plus the prompt's samples
            when the prompt is included).
        sample_rate: Hz.
        codes: long [pieces, P, levels] sampled codes, time-major, on the CPU: one piece per chunk in
            "independent" mode (P = rows * columns of a chunk), one piece holding the whole stream of new
            columns in "continuation" mode.
        mels: float32 [pieces, n_mels, frames] the decoded log-mel of each piece, on the CPU.
        seed: the take's seed; window or chunk i was sampled with seed + i.
        settings: the settings used.
        timings: seconds per stage: "sampling_s", "decoding_s" and "total_s" of the whole batch of takes
            this take was generated in, "griffin_lim_s" and "stitching_s" of this take.
        seam_samples: sample indices in ``audio`` of each join: the centre of a blend ("independent"), the
            start of a window's new columns ("continuation"), the prompt's end when it is included.
        gain_db: the gain the normalisation applied, dB.
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
    gain_db: float = 0.0
    model_name: str | None = None
    prompt_samples: int = 0
    include_prompt: bool = False

    @property
    def duration_s(self) -> float:
        return len(self.audio) / self.sample_rate

    def to_metadata(self) -> dict:
        """JSON-safe description of the take, for the sidecar written next to a saved file."""
        try:
            package_version = version("distill_nb")
        except PackageNotFoundError:  # an uninstalled source tree has no distribution metadata
            package_version = "unknown"
        return {
            "generator": "distill_nb",
            "distill_nb_version": package_version,
            "model_name": self.model_name,
            "seed": self.seed,
            "sample_rate": self.sample_rate,
            "duration_s": self.duration_s,
            "pieces": int(self.codes.shape[0]),
            "settings": self.settings.to_dict(),
            "gain_db": round(float(self.gain_db), 3),
            "prompt_samples": self.prompt_samples,
            "include_prompt": self.include_prompt,
            "seam_samples": [int(s) for s in self.seam_samples],
            "timings": {name: float(seconds) for name, seconds in self.timings.items()},
        }


# --------------------------------------------------------------------------- the plan of a take


@dataclass(frozen=True)
class _Plan:
    """What to sample and render for the takes of one call."""

    geometry: ChunkGeometry
    total: int  # samples per take
    context: int  # columns that prime a window
    window: int  # columns per prior window
    n_chunks: int  # "independent": chunks per take
    step: int  # "independent": samples between chunk starts
    stream_columns: int  # "continuation": new columns per take

    @property
    def overlap(self) -> int:
        return self.geometry.chunk_samples - self.step

    def chunk_seams(self) -> list[int]:
        """Centres of the blends between independent chunks that lie inside the take."""
        centres = (i * self.step + self.overlap // 2 for i in range(1, self.n_chunks))
        return [c for c in centres if c < self.total]


def _plan(loaded: LoadedVQModel, settings: GenerationSettings) -> _Plan:
    """Check the settings against the model and lay out the takes."""
    if loaded.prior is None:
        raise ValueError("Model has no trained prior")
    geometry = loaded.geometry
    window = loaded.prior.config.window_columns
    if isinstance(settings.temperature, tuple) and len(settings.temperature) != geometry.levels:
        raise ValueError(f"temperature must be one number or one per level ({geometry.levels} levels), "
                         f"got {len(settings.temperature)} values")
    if settings.overlap_samples >= geometry.chunk_samples:
        raise ValueError(f"overlap_samples must be an int in [0, {geometry.chunk_samples}) (the chunk length), "
                         f"got {settings.overlap_samples}")
    context = max(1, window - geometry.columns) if settings.context_columns is None else settings.context_columns
    if context >= window:
        raise ValueError(f"context_columns must be an int in [1, {window}) (the prior's window columns), "
                         f"got {context}")
    total = round(settings.duration_s * loaded.sample_rate)
    if total < 1:
        raise ValueError(f"duration_s must give at least one sample, got {settings.duration_s}")
    step = geometry.chunk_samples - settings.overlap_samples
    if settings.stitch == "overlap_add":  # mel overlap-add can only shift chunks by whole frames
        step = max(1, round(step / geometry.hop_length)) * geometry.hop_length
    n_chunks = 1 + max(0, math.ceil((total - geometry.chunk_samples) / step))
    # One column more than the frames of `total` samples need, so the inversion never runs short.
    return _Plan(geometry, total, context, window, n_chunks, step, geometry.columns_for(total) + 1)


# --------------------------------------------------------------------------- encoding


def encode_audio(loaded: LoadedVQModel, audio: np.ndarray) -> torch.Tensor:
    """Encode mono audio at the model's sample rate to the codes of one stream.

    Args:
        audio: float32 [n] waveform.

    Returns:
        long [1, P, levels] codes (time-major positions, P = rows * columns) on the CPU; the columns
        cover the mel frames of the audio (1 + n // hop), the last one padded.
    """
    audio = _audio_array("audio", audio)
    with torch.inference_mode():
        mel = loaded.spectrogram.waveform_to_mel(_at_least_a_frame(loaded, audio))[0]
        return loaded.vqvae.encode_stream(mel.to(loaded.device))[None]


def _at_least_a_frame(loaded: LoadedVQModel, audio: np.ndarray) -> torch.Tensor:
    shortest = loaded.spectrogram.config.n_fft // 2 + 1
    return torch.from_numpy(np.pad(audio, (shortest - len(audio), 0)) if len(audio) < shortest else audio)


def _prompt_context(loaded: LoadedVQModel, prompt: np.ndarray, plan: _Plan) -> tuple[torch.Tensor, int]:
    """The prompt's last columns that prime the take -> (flat tokens [1, c * column_tokens], samples from
    the start of those columns to the prompt's end).

    The prompt's mel loses up to a column of frames at its start so that its last column ends on its last
    frame: the primed columns are the sound the prompt ends with, not padding.
    """
    geometry = plan.geometry
    with torch.inference_mode():
        mel = loaded.spectrogram.waveform_to_mel(_at_least_a_frame(loaded, prompt))[0]
    frames = mel.shape[1]
    columns = max(1, frames // geometry.column_frames)
    used = min(plan.context, columns)
    mel = mel[:, max(0, frames - columns * geometry.column_frames):]
    with torch.inference_mode():
        codes = loaded.vqvae.encode_stream(mel.to(loaded.device))
    tokens = codes.reshape(1, -1)[:, -used * geometry.column_tokens:]
    # Frame j is centred on sample j * hop: the first primed column starts at frame frames - used * column_frames.
    shared = len(prompt) - max(0, frames - used * geometry.column_frames) * geometry.hop_length
    return tokens, max(0, shared)


# --------------------------------------------------------------------------- sampling


def _sample_streams(loaded: LoadedVQModel, settings: GenerationSettings, seeds: list[int], plan: _Plan,
                    prompt_tokens: torch.Tensor | None, report: Progress) -> tuple[torch.Tensor, list[int]]:
    """Sample the column stream of every take, window after window -> (flat tokens [takes, c0 + new columns
    of tokens], the column index of each window's first new column after the first window).

    c0 is the number of primed prompt columns (0 without a prompt); all takes advance together.
    """
    column_tokens = plan.geometry.column_tokens
    stream = (torch.zeros(len(seeds), 0, dtype=torch.long) if prompt_tokens is None
              else prompt_tokens.expand(len(seeds), -1).clone())
    first_new = stream.shape[1] // column_tokens
    target = first_new + plan.stream_columns
    starts, window = [], 0
    windows = 1 + max(0, math.ceil((plan.stream_columns - (plan.window - first_new)) / (plan.window - plan.context)))
    while stream.shape[1] // column_tokens < target:
        report(window / windows, f"Sampling window {window + 1}/{windows}...")
        prefix = stream[:, -plan.context * column_tokens:] if stream.shape[1] else None
        have = 0 if prefix is None else prefix.shape[1] // column_tokens
        new = min(plan.window - have, target - stream.shape[1] // column_tokens)
        tokens = sample_codes(loaded.prior, len(seeds), [seed + window for seed in seeds], settings.temperature,
                              settings.top_k, settings.top_p, settings.min_p, prefix=prefix,
                              length=(have + new) * column_tokens).cpu()
        if window > 0 or prefix is not None:
            starts.append(stream.shape[1] // column_tokens)
        stream = torch.cat([stream, tokens[:, have * column_tokens:]], dim=1)
        window += 1
    return stream, starts


def _sample_chunks(loaded: LoadedVQModel, settings: GenerationSettings, seeds: list[int], plan: _Plan,
                   prompt_tokens: torch.Tensor | None, report: Progress) -> torch.Tensor:
    """Sample every independent chunk of every take -> flat tokens [takes, n_chunks, (c0 +) chunk tokens].

    Without a prompt all chunks share one batch. With one, the first chunk of each take is primed by the
    prompt's columns, which stay in front of its tokens (c0 columns) until rendering; the other chunks are
    batched on their own, as the rows of one batch share a prefix length.
    """
    n, chunk_tokens = plan.n_chunks, plan.geometry.chunk_tokens
    report(0.0, "Sampling chunk 1/1..." if n == 1 else f"Sampling chunks 1-{n}/{n} in one batch...")

    def sample(chunk_seeds: list[int], prefix: torch.Tensor | None) -> torch.Tensor:
        have = 0 if prefix is None else prefix.shape[1]
        return sample_codes(loaded.prior, len(chunk_seeds), chunk_seeds, settings.temperature, settings.top_k,
                            settings.top_p, settings.min_p, prefix=prefix, length=have + chunk_tokens).cpu()

    if prompt_tokens is None:
        return sample([seed + i for seed in seeds for i in range(n)], None).view(len(seeds), n, -1)
    if prompt_tokens.shape[1] + chunk_tokens > loaded.prior.seq_len:
        raise ValueError(f"context_columns={plan.context} leaves no room for a chunk in the prior's window of "
                         f"{plan.window} columns; use at most {plan.window - plan.geometry.columns} in independent "
                         f"mode with a prompt")
    first = sample(list(seeds), prompt_tokens.expand(len(seeds), -1))[:, None]
    if n == 1:
        return first
    rest = sample([seed + i for seed in seeds for i in range(1, n)], None).view(len(seeds), n - 1, -1)
    context = torch.zeros(len(seeds), n - 1, prompt_tokens.shape[1], dtype=torch.long)  # placeholders, dropped
    return torch.cat([first, torch.cat([context, rest], dim=2)], dim=1)


# --------------------------------------------------------------------------- rendering


def _invert(loaded: LoadedVQModel, settings: GenerationSettings, mels: torch.Tensor, length: int) -> torch.Tensor:
    inversion = replace(DECODED_INVERSION, griffin_lim_iters=settings.griffin_lim_iters)
    return loaded.spectrogram.mel_to_waveform(mels, inversion, length=length).cpu()


def _fade_out_end(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Fade the last END_FADE_S seconds of ``audio`` to silence (in place), so a cut does not click."""
    n = min(len(audio), max(1, round(END_FADE_S * sample_rate)))
    audio[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
    return audio


@dataclass
class _Rendered:
    """One take's audio before trimming: new audio starts at ``start``; before it lies the re-rendered
    prompt context (if any)."""

    audio: np.ndarray
    start: int
    codes: torch.Tensor  # [pieces, P, levels] of the new columns
    mels: torch.Tensor  # [pieces, n_mels, frames]
    griffin_lim_s: float
    stitching_s: float


def _render_stream(loaded: LoadedVQModel, settings: GenerationSettings, plan: _Plan, tokens: torch.Tensor,
                   primed: int) -> _Rendered:
    """One take's stream, flat tokens [(primed + new) columns of tokens], as one mel and one inversion."""
    geometry = plan.geometry
    frames = tokens.shape[0] // geometry.column_tokens * geometry.column_frames
    codes = unflatten_codes(tokens[None], geometry.levels)[0]
    with torch.inference_mode():
        mel = loaded.vqvae.decode_stream(codes.to(loaded.device), frames)
    start = primed * geometry.column_samples
    started = time.perf_counter()
    audio = _invert(loaded, settings, mel[None], (frames - 1) * geometry.hop_length)[0].numpy()
    primed_positions = primed * geometry.rows
    return _Rendered(audio, start, codes[None, primed_positions:].clone(),
                     mel[None, :, primed * geometry.column_frames:].cpu(), time.perf_counter() - started, 0.0)


def _render_chunks(loaded: LoadedVQModel, settings: GenerationSettings, plan: _Plan, tokens: torch.Tensor,
                   primed: int) -> _Rendered:
    """One take's independent chunks, flat tokens [n_chunks, (primed columns +) chunk tokens], stitched."""
    geometry = plan.geometry
    primed_tokens = primed * geometry.column_tokens
    codes = unflatten_codes(tokens[:, primed_tokens:], geometry.levels)
    with torch.inference_mode():
        mels = torch.cat([loaded.vqvae.decode_codes(part.to(loaded.device), geometry.frames)
                          for part in codes.split(CODEC_BATCH)])
        context_mel = None
        if primed:  # the first chunk decodes after its prompt columns, as the prior sampled it
            first = unflatten_codes(tokens[:1], geometry.levels)[0]
            frames = (primed + geometry.columns) * geometry.column_frames
            stream = loaded.vqvae.decode_stream(first.to(loaded.device), frames)
            context_mel = stream[:, : primed * geometry.column_frames]
            mels[0] = stream[:, primed * geometry.column_frames:][:, : geometry.frames]
    start = 0 if context_mel is None else context_mel.shape[1] * geometry.hop_length
    started = time.perf_counter()
    if settings.stitch == "overlap_add":
        whole = overlap_add_mels(mels, plan.step // geometry.hop_length, settings.crossfade_curve)
        if context_mel is not None:
            whole = torch.cat([context_mel, whole], dim=1)
        stitched_at = time.perf_counter()
        length = start + (plan.n_chunks - 1) * plan.step + geometry.chunk_samples
        audio = _invert(loaded, settings, whole[None], length)[0].numpy()
        return _Rendered(audio, start, codes, mels.cpu(), time.perf_counter() - stitched_at, stitched_at - started)
    if context_mel is not None:
        first = torch.cat([context_mel, mels[0]], dim=1)
        head = _invert(loaded, settings, first[None], start + geometry.chunk_samples)[0]
    waves = list(_invert(loaded, settings, mels, geometry.chunk_samples))
    synthesised_at = time.perf_counter()
    if context_mel is not None:
        waves[0] = head[start:]
    audio = crossfade_chunks(waves, plan.overlap, curve=settings.crossfade_curve)
    if context_mel is not None:
        audio = np.concatenate([head[:start].numpy(), audio])
    return _Rendered(audio, start, codes, mels.cpu(), synthesised_at - started, time.perf_counter() - synthesised_at)


def _trim(loaded: LoadedVQModel, settings: GenerationSettings, plan: _Plan, rendered: _Rendered, begin: int,
          seams: list[int], prompt: np.ndarray | None) -> tuple[np.ndarray, list[int]]:
    """The take's ``plan.total`` samples from ``begin`` of its render (the end faded where it is cut), after
    ``prompt`` (crossfaded where the render repeats the prompt's end) when given -> (audio, seam samples)."""
    audio = rendered.audio[begin: begin + plan.total].copy()
    if len(rendered.audio) - begin > plan.total:
        audio = _fade_out_end(audio, loaded.sample_rate)
    if prompt is None:
        return audio, list(seams)
    overlap = min(begin, len(prompt))
    joined = rendered.audio[begin - overlap: begin + plan.total].copy()
    joined[overlap:] = audio
    take_seams = [len(prompt) - overlap + overlap // 2] + [len(prompt) + s for s in seams]
    return crossfade_chunks([prompt, joined], overlap, curve=settings.crossfade_curve), take_seams


# --------------------------------------------------------------------------- public entry points


def generate_takes(loaded: LoadedVQModel, settings: GenerationSettings | None, seeds: Sequence[int],
                   progress: Progress | None = None, *, prompt: np.ndarray | None = None,
                   include_prompt: bool = False) -> list[GenerationResult]:
    """Generate one take per seed; the takes share each sampling batch.

    Take ``k`` is identical to ``generate(loaded, settings, seed=seeds[k], prompt=prompt)``. Seeds closer
    together than the number of windows or chunks share them (window i of seed s is window i - 1 of seed
    s + 1), so takes meant to differ want seeds far apart, e.g. random ones.

    Args:
        loaded: a model with a trained prior.
        settings: GenerationSettings (None = defaults).
        seeds: one int in [0, 2**63) per take.
        progress: called with (fraction in [0, 1], message); the last call has fraction 1.0.
        prompt: optional float32 [n] audio at the model's sample rate; its last ``context_columns``
            columns prime the first window (or chunk), so the take continues the prompt.
        include_prompt: when True the take's audio is the prompt followed by the generated audio,
            crossfaded where the primed columns re-render the prompt's end; when False (default) it holds
            only generated audio, starting where the prompt ends.

    Raises:
        ValueError: "Model has no trained prior" when ``loaded.prior`` is None, or a bad argument.
    """
    # Long: the stages of a take in order (check, sample, render, trim, normalise), each a helper's call.
    started = time.perf_counter()
    settings = GenerationSettings() if settings is None else settings
    if not isinstance(settings, GenerationSettings):
        raise TypeError(f"settings must be a GenerationSettings or None, got {type(settings).__name__}")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or len(seeds) == 0:
        raise ValueError(f"seeds must be a non-empty sequence of ints in [0, 2**63), got {seeds!r}")
    seeds = [check_int(f"seeds[{k}]", seed, 0, SEED_LIMIT - 1) for k, seed in enumerate(seeds)]
    plan = _plan(loaded, settings)
    if prompt is not None:
        prompt = _audio_array("prompt", prompt)
    report: Progress = progress if progress is not None else silent

    prompt_tokens, shared = None, 0
    if prompt is not None:
        report(0.0, "Encoding prompt...")
        prompt_tokens, shared = _prompt_context(loaded, prompt, plan)
    primed = 0 if prompt_tokens is None else prompt_tokens.shape[1] // plan.geometry.column_tokens

    def sampling_progress(fraction: float, message: str) -> None:
        report(0.7 * fraction, message)  # sampling is most of the work

    if settings.mode == "continuation":
        tokens, window_starts = _sample_streams(loaded, settings, seeds, plan, prompt_tokens, sampling_progress)
        window_seams = [(column - primed) * plan.geometry.column_samples for column in window_starts]
        seams = [s for s in window_seams if 0 < s < plan.total]
    else:
        tokens = _sample_chunks(loaded, settings, seeds, plan, prompt_tokens, sampling_progress)
        seams = plan.chunk_seams()
    sampled_at = time.perf_counter()

    report(0.7, "Decoding and inverting...")
    renders = []
    for k in range(len(seeds)):
        take = f", take {k + 1}/{len(seeds)}" if len(seeds) > 1 else ""
        report(0.7 + 0.3 * k / len(seeds), f"Decoding, Griffin-Lim and stitching{take}...")
        render = _render_stream if settings.mode == "continuation" else _render_chunks
        renders.append(render(loaded, settings, plan, tokens[k], primed))
    rendered_at = time.perf_counter()

    results = []
    for seed, rendered in zip(seeds, renders):
        # With a prompt, new audio begins where the prompt ends: at most a frame before the primed columns end.
        begin = shared if primed else rendered.start
        audio, take_seams = _trim(loaded, settings, plan, rendered, begin, seams,
                                  prompt if include_prompt else None)
        audio, gain_db = normalise_level(audio, settings.normalise, settings.target_dbfs)
        results.append(GenerationResult(
            audio=np.ascontiguousarray(audio, dtype=np.float32),
            sample_rate=loaded.sample_rate,
            codes=rendered.codes,
            mels=rendered.mels,
            seed=seed,
            settings=settings,
            timings={"sampling_s": sampled_at - started, "decoding_s": rendered_at - sampled_at,
                     "griffin_lim_s": rendered.griffin_lim_s, "stitching_s": rendered.stitching_s},
            seam_samples=take_seams,
            gain_db=gain_db,
            model_name=loaded.metadata.get("name") if isinstance(loaded.metadata, dict) else None,
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
    "independent", stitch "crossfade", peak normalisation); ``seed`` None draws a random seed.

    Returns:
        (audio float32 [round(duration_s * sample_rate)], the seed used).
    """
    settings = GenerationSettings(temperature=temperature, top_k=top_k, top_p=top_p, duration_s=duration_s,
                                  overlap_samples=overlap_samples, mode="independent", stitch="crossfade")
    result = generate(loaded, settings, seed=seed, progress=progress_callback)
    return result.audio, result.seed
