"""How close a model's sound is to its corpus: reconstruction of held-out audio and features of generated takes.

    reconstruction: held-out audio -> mel -> codes -> mel  vs  the mel itself   (spectral convergence)
    ceiling:        held-out audio -> mel -> Griffin-Lim -> mel  vs  the mel    (what the mel front end allows)
    features:       loudness, centroid, flatness, pitchiness and silent share of reconstructed audio and of
                    generated takes in each mode, as distances to the corpus's (analysis.feature_distance)

Training stores a QualityReport in the model's metadata (``info`` prints it); bench/model_quality.py
computes one on other held-out audio.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from distill_nb.analysis import AudioFeatures, audio_features, feature_distance, spectral_convergence
from distill_nb.generation import MODES, GenerationSettings, generate_takes
from distill_nb.inversion import DECODED_INVERSION, InversionSettings
from distill_nb.progress import Progress, silent

if TYPE_CHECKING:
    from distill_nb.model_file import LoadedVQModel

# Real audio's mel is consistent: its NNLS may run to a tight fit, unlike a decoded mel's.
_REAL_INVERSION = InversionSettings(griffin_lim_iters=DECODED_INVERSION.griffin_lim_iters)
FEATURE_FRAME = 2048  # samples per analysis.audio_features frame
REFERENCE_ORDERS = 3  # file orders of the corpus stream the features are compared with


@dataclass
class QualityReport:
    """Sound quality of a model against its corpus.

    Attributes:
        reconstruction_sc: spectral convergence ||A - A_hat|| / ||A|| of the mel magnitudes of the held-out
            audio and of its codes decoded, pooled over all frames (0 = exact; 1 = as far as silence).
        ceiling_sc: the same for the held-out mel inverted by Griffin-Lim and analysed again: the floor any
            codec reaches through this mel front end.
        pitchiness: mean pitchiness (analysis.AudioFeatures) of the non-silent frames of "corpus",
            "heldout", "reconstruction" and each generation mode, each measured in take-sized windows
            (``stream_windows``).
        silent_share: share of silent frames of the same sets (frames more than analysis.SILENT_DB below
            the loudest frame of their window or take).
        distance: analysis.feature_distance of "reconstruction" (the held-out audio through the codec and
            Griffin-Lim) and of each generation mode, to the corpus; each a dict of the five features and
            "mean" (0 = the corpus's distributions; 1 = one corpus standard deviation apart).
        takes: generated takes per mode; take_seconds: their length.
    """

    reconstruction_sc: float
    ceiling_sc: float
    pitchiness: dict[str, float]
    silent_share: dict[str, float]
    distance: dict[str, dict[str, float]]
    takes: int
    take_seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (NaN, which JSON lacks, becomes None); ``from_dict`` restores the report."""
        return _json_safe(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QualityReport:
        """The report of ``to_dict``; KeyError or TypeError for another structure."""
        def number(value: Any) -> float:
            return float("nan") if value is None else float(value)

        return cls(reconstruction_sc=number(d["reconstruction_sc"]), ceiling_sc=number(d["ceiling_sc"]),
                   pitchiness={str(k): number(v) for k, v in d["pitchiness"].items()},
                   silent_share={str(k): number(v) for k, v in d["silent_share"].items()},
                   distance={str(k): {str(f): number(x) for f, x in v.items()} for k, v in d["distance"].items()},
                   takes=int(d["takes"]), take_seconds=number(d["take_seconds"]))

    def summary(self) -> str:
        """A few readable lines."""
        order = ("corpus", "heldout", "reconstruction", *MODES)  # JSON round trips may sort the keys
        sets = [name for name in order if name in self.pitchiness]
        lines = [f"reconstruction of held-out audio: spectral convergence {self.reconstruction_sc:.3f} "
                 f"(Griffin-Lim ceiling {self.ceiling_sc:.3f})",
                 f"{'':16s}" + "".join(f"{name:>15s}" for name in sets),
                 f"{'pitchiness':16s}" + "".join(f"{self.pitchiness[n]:>15.2f}" for n in sets),
                 f"{'silent share':16s}" + "".join(f"{self.silent_share[n]:>15.0%}" for n in sets),
                 f"feature distance to the corpus (mean of 5; {self.takes} takes of {self.take_seconds:g} s per mode): "
                 + ", ".join(f"{name} {self.distance[name]['mean']:.2f}" for name in order if name in self.distance)]
        return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def reconstruct(loaded: LoadedVQModel, audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Audio through the codec as one stream -> (its mel [n_mels, frames], the decoded mel, the decoded mel
    inverted to as many samples)."""
    with torch.inference_mode():
        mel = loaded.spectrogram.waveform_to_mel(torch.from_numpy(np.ascontiguousarray(audio)))[0]
        codes = loaded.vqvae.encode_stream(mel.to(loaded.device))
        decoded = loaded.vqvae.decode_stream(codes.to(loaded.device), mel.shape[1]).cpu()
        audio_out = loaded.spectrogram.mel_to_waveform(decoded[None], DECODED_INVERSION, length=len(audio))[0]
    return mel, decoded, audio_out.numpy()


def stream_windows(files: Sequence[np.ndarray], seconds: float, sample_rate: int, orders: int = 1,
                   seed: int = 0) -> list[np.ndarray]:
    """The files played as a stream, cut into windows of ``seconds``: what a take is compared with.

    A take is measured against its own loudest frame and holds several sounds at their own levels, so the
    corpus is measured the same way: its files back to back (in their order, then ``orders - 1`` random
    orders from ``seed``), cut into take-sized windows (the stream whole when it is shorter than one).
    """
    rng = np.random.default_rng(seed)
    size = max(FEATURE_FRAME, round(seconds * sample_rate))
    windows = []
    for order in range(orders):
        permutation = rng.permutation(len(files)) if order else range(len(files))
        stream = np.concatenate([np.asarray(files[i], dtype=np.float32) for i in permutation])
        starts = range(0, max(len(stream) - size, 0) + 1, size)
        windows += [stream[start:start + size] for start in starts]
    return windows


def evaluate_model(loaded: LoadedVQModel, corpus_audio: Sequence[np.ndarray], heldout_audio: Sequence[np.ndarray],
                   takes: int = 2, take_seconds: float = 10.0, seed: int = 0,
                   progress: Progress | None = None) -> QualityReport:
    """Measure ``loaded`` against its corpus (``corpus_audio``, the reference for the features) and audio it
    did not train on (``heldout_audio``), generating ``takes`` takes of ``take_seconds`` per mode from seeds
    spaced far apart, starting at ``seed``.

    Every set is measured in take-sized windows of a stream (see ``stream_windows``): the corpus in
    REFERENCE_ORDERS orders, the held-out audio in its order, which is also what is reconstructed.
    """
    report = progress or silent
    sample_rate = loaded.sample_rate
    for name, files in (("corpus_audio", corpus_audio), ("heldout_audio", heldout_audio)):
        if not files or sum(len(a) for a in files) < FEATURE_FRAME:
            raise ValueError(f"{name} must hold at least {FEATURE_FRAME} samples of audio")
    reference = audio_features(stream_windows(corpus_audio, take_seconds, sample_rate, REFERENCE_ORDERS, seed),
                               sample_rate, FEATURE_FRAME)
    heldout = stream_windows(heldout_audio, take_seconds, sample_rate)
    sets: dict[str, AudioFeatures] = {"corpus": reference,
                                      "heldout": audio_features(heldout, sample_rate, FEATURE_FRAME)}

    report(0.0, "Reconstructing held-out audio...")
    target, decoded, ceiling, reconstructed = [], [], [], []
    for audio in heldout:
        mel, decoded_mel, audio_out = reconstruct(loaded, audio)
        target.append(mel)
        decoded.append(decoded_mel)
        reconstructed.append(audio_out)
        with torch.inference_mode():
            inverted = loaded.spectrogram.mel_to_waveform(mel[None], _REAL_INVERSION, length=len(audio))
            ceiling.append(loaded.spectrogram.waveform_to_mel(inverted)[0])
    sets["reconstruction"] = audio_features(reconstructed, sample_rate, FEATURE_FRAME)
    magnitude = torch.exp(0.5 * torch.cat(target, dim=1))
    reconstruction_sc = spectral_convergence(magnitude, torch.exp(0.5 * torch.cat(decoded, dim=1)))
    ceiling_sc = spectral_convergence(magnitude, torch.exp(0.5 * torch.cat(ceiling, dim=1)))

    seeds = [seed + 1_000_003 * k for k in range(takes)]
    for index, mode in enumerate(MODES):
        report(0.3 + 0.7 * index / len(MODES), f"Generating {takes} {mode} takes...")
        results = generate_takes(loaded, GenerationSettings(duration_s=take_seconds, mode=mode), seeds)
        sets[mode] = audio_features([r.audio for r in results], sample_rate, FEATURE_FRAME)
    report(1.0, "Quality measured")
    return QualityReport(
        reconstruction_sc=reconstruction_sc,
        ceiling_sc=ceiling_sc,
        pitchiness={name: float(np.mean(f.pitchiness)) if f.pitchiness.size else float("nan")
                    for name, f in sets.items()},
        silent_share={name: f.silent_share for name, f in sets.items()},
        distance={name: feature_distance(sets[name], reference) for name in ("reconstruction", *MODES)},
        takes=takes,
        take_seconds=take_seconds,
    )

