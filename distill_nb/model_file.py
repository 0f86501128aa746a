"""The single-file model format: VQ-VAE, prior and spectrogram settings in one safetensors file.

Layout of a ``.distill`` file (a plain safetensors file, so loading never unpickles anything):

    tensors   vqvae.<state_dict key>, prior.<state_dict key> (absent without a prior),
              stats.train_code_counts (long [levels, K], optional)
    metadata  format = "distill_nb.model", format_version = "2",
              spectrogram_config, vqvae_config, prior_config (absent without a prior): JSON of to_dict(),
              metadata: JSON of LoadedVQModel.metadata (name, training summary, dates, ...)

Every way a file can fail to be a model raises ModelFileError naming the file and the cause.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from distill_nb.atomic import write_bytes_atomically
from distill_nb.checks import check_device
from distill_nb.geometry import ChunkGeometry
from distill_nb.prior import CodePrior, PriorConfig
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig
from distill_nb.vqvae import ConvVQVAE, VQVAEConfig

FORMAT_NAME = "distill_nb.model"
FORMAT_VERSION = "2"  # 2: 2-D VQ-VAE with strides, levels, and a prior over windows of columns
DEFAULT_MODEL_PATH = Path(__file__).parent / "data" / "default.distill"

# safetensors itself refuses headers above 100 MB; a model's header is a few kB.
_MAX_HEADER_BYTES = 100_000_000
_COUNTS_KEY = "stats.train_code_counts"


class ModelFileError(Exception):
    """A file that is not a valid distill_nb model; the message names the file and what is wrong."""


@dataclass
class LoadedVQModel:
    """A VQ-VAE with its optional prior and the spectrogram it was trained on, ready to use.

    Attributes:
        vqvae: the VQ-VAE (eval mode after load_model).
        prior: the code prior, or None for a VQ-VAE alone.
        spectrogram: mel analysis and Griffin-Lim inverse matching the VQ-VAE's input.
        device: where model and prior live.
        metadata: JSON-serialisable facts about the model (name, training summary, dates, ...).
        train_code_counts: long [levels, codebook_size] histogram of the training codes, or None.
    """

    vqvae: ConvVQVAE
    prior: CodePrior | None
    spectrogram: Spectrogram
    device: torch.device
    metadata: dict
    train_code_counts: torch.Tensor | None = None

    @property
    def vqvae_config(self) -> VQVAEConfig:
        return self.vqvae.config

    @property
    def prior_config(self) -> PriorConfig | None:
        return None if self.prior is None else self.prior.config

    @property
    def spectrogram_config(self) -> SpectrogramConfig:
        return self.spectrogram.config

    @property
    def geometry(self) -> ChunkGeometry:
        """How samples, frames, grid columns and tokens line up for this model."""
        return ChunkGeometry.of(self.spectrogram.config, self.vqvae.config)

    @property
    def sample_rate(self) -> int:
        """Hz."""
        return self.spectrogram.config.sample_rate

    @property
    def chunk_samples(self) -> int:
        """Samples per chunk (1 s)."""
        return self.spectrogram.chunk_samples


def _check_consistent(spectrogram: SpectrogramConfig, vq: VQVAEConfig, prior: PriorConfig | None) -> None:
    """ValueError unless the configs fit together: mel bins, vocabulary, levels, tokens per column."""
    if spectrogram.n_mels != vq.n_mels:
        raise ValueError(f"spectrogram n_mels={spectrogram.n_mels} differs from the VQ-VAE's n_mels={vq.n_mels}")
    if prior is not None:
        geometry = ChunkGeometry.of(spectrogram, vq)
        expected = {"codebook_size": vq.codebook_size, "levels": vq.levels, "column_tokens": geometry.column_tokens}
        for name, value in expected.items():
            if getattr(prior, name) != value:
                raise ValueError(f"prior {name}={getattr(prior, name)} does not fit the VQ-VAE "
                                 f"(expected {value} for {geometry.rows} rows of {vq.levels} levels)")


def _check_counts(vq: VQVAEConfig, counts: torch.Tensor | None) -> None:
    """ValueError unless ``counts`` is None or a non-negative long [levels, codebook_size] histogram."""
    if counts is None:
        return
    shape = (vq.levels, vq.codebook_size)
    if not isinstance(counts, torch.Tensor) or counts.dtype != torch.long or tuple(counts.shape) != shape:
        raise ValueError(f"train_code_counts must be a torch.long tensor of shape {shape}, got "
                         f"{getattr(counts, 'dtype', type(counts).__name__)} {tuple(getattr(counts, 'shape', ()))}")
    if counts.numel() and int(counts.min()) < 0:
        raise ValueError("train_code_counts must be >= 0")


def _tensors(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    # Clones: safetensors refuses tensors that share memory, and wants them contiguous on the CPU.
    return {prefix + key: value.detach().to("cpu", copy=True).contiguous()
            for key, value in module.state_dict().items()}


def save_model(loaded: LoadedVQModel, path: str | os.PathLike) -> Path:
    """Write ``loaded`` to one safetensors file at ``path``, atomically.

    The file goes to a temporary file in the same folder, is fsynced and renamed into place, so a crash
    leaves either the previous file or the new one. ValueError if the parts do not fit together or
    ``loaded.metadata`` is not JSON-serialisable (nothing is written then).

    Returns:
        ``path`` as a ``pathlib.Path``.
    """
    if not isinstance(loaded, LoadedVQModel):
        raise TypeError(f"loaded must be a LoadedVQModel, got {type(loaded).__name__}")
    path = Path(path)
    _check_consistent(loaded.spectrogram_config, loaded.vqvae_config, loaded.prior_config)
    _check_counts(loaded.vqvae_config, loaded.train_code_counts)
    if not isinstance(loaded.metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(loaded.metadata).__name__}")
    try:
        metadata_json = json.dumps(loaded.metadata, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from error

    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "spectrogram_config": json.dumps(loaded.spectrogram_config.to_dict()),
        "vqvae_config": json.dumps(loaded.vqvae_config.to_dict()),
        "metadata": metadata_json,
    }
    tensors = _tensors(loaded.vqvae, "vqvae.")
    if loaded.prior is not None:
        header["prior_config"] = json.dumps(loaded.prior_config.to_dict())
        tensors.update(_tensors(loaded.prior, "prior."))
    if loaded.train_code_counts is not None:
        tensors[_COUNTS_KEY] = loaded.train_code_counts.detach().to("cpu", copy=True).contiguous()
    data = safetensors.torch.save(tensors, metadata=header)
    write_bytes_atomically(path, data)
    return path


def _check_header(path: Path) -> None:
    """Reject what is not a safetensors file before the parser sees it: u64 header length + JSON."""
    size = path.stat().st_size
    if size == 0:
        raise ModelFileError(f"{path}: not a distill_nb model file (it is empty, 0 bytes)")
    if size < 8:
        raise ModelFileError(f"{path}: not a distill_nb model file (only {size} bytes)")
    with path.open("rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        if not 2 <= header_length <= min(size - 8, _MAX_HEADER_BYTES) or f.read(1) != b"{":
            raise ModelFileError(f"{path}: not a distill_nb model file (not a safetensors file: its first bytes "
                                 f"are not a safetensors header)")


def _open_safetensors(path: Path) -> safetensors.safe_open:
    _check_header(path)
    try:
        return safetensors.safe_open(str(path), framework="pt", device="cpu")
    except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: not a valid safetensors file ({error})") from error


def read_safetensors_layout(path: Path) -> tuple[dict[str, str], dict[str, tuple[Any, tuple[int, ...]]]]:
    """Metadata and {tensor name: (torch dtype, or safetensors' name of another, shape)} of a safetensors file.

    Reads the header only, so a file's claims can be checked before any tensor is allocated.
    """
    with _open_safetensors(path) as f:
        try:
            slices = {key: f.get_slice(key) for key in f.keys()}
            layout = {key: (_DTYPES.get(part.get_dtype(), part.get_dtype()), tuple(part.get_shape()))
                      for key, part in slices.items()}
        except (safetensors.SafetensorError, ValueError, RuntimeError) as error:
            raise ModelFileError(f"{path}: not a valid safetensors file ({error})") from error
        return f.metadata() or {}, layout


def read_safetensors(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Metadata and tensors of a safetensors file, on the CPU (also used for training checkpoints).

    ModelFileError if it is not one; nothing in the file is ever executed.
    """
    with _open_safetensors(path) as f:
        try:
            return f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}
        except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as error:
            raise ModelFileError(f"{path}: not a valid safetensors file ({error})") from error


def _parse_json(path: Path, metadata: dict[str, str], key: str) -> Any:
    if key not in metadata:
        raise ModelFileError(f"{path}: the metadata has no {key}")
    try:
        return json.loads(metadata[key])
    except (ValueError, RecursionError) as error:  # RecursionError: JSON nested thousands deep
        cause = f"{type(error).__name__}: {str(error)[:200]}"
        raise ModelFileError(f"{path}: invalid {key}: not valid JSON ({cause})") from None


def _parse_config(path: Path, metadata: dict[str, str], key: str, cls: type) -> Any:
    try:
        return cls.from_dict(_parse_json(path, metadata, key))
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"{path}: invalid {key}: {error}") from error


# safetensors' names of the dtypes a model may hold.
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "BOOL": torch.bool}


def expected_layout(vqvae_config: VQVAEConfig, prior_config: PriorConfig | None) -> dict[str, tuple[Any, tuple]]:
    """{tensor name: (dtype, shape)} of the models these configs describe (prefixes "vqvae." and "prior."),
    from models built on the meta device: nothing is allocated, so a config can be checked against a file first."""
    with torch.device("meta"):
        modules = {"vqvae.": ConvVQVAE(vqvae_config)}
        if prior_config is not None:
            modules["prior."] = CodePrior(prior_config)
    return {prefix + key: (value.dtype, tuple(value.shape))
            for prefix, module in modules.items() for key, value in module.state_dict().items()}


def check_layout(path: Path, found: dict[str, tuple[Any, tuple]], expected: dict[str, tuple[Any, tuple]]) -> None:
    """ModelFileError unless the file holds exactly the expected tensors, with their shapes and dtypes."""
    missing = sorted(set(expected) - set(found))
    if missing:
        raise ModelFileError(f"{path}: missing tensor {missing[0]}"
                             + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    unexpected = sorted(set(found) - set(expected))
    if unexpected:
        raise ModelFileError(f"{path}: unexpected tensors {unexpected[:5]}"
                             + (f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""))
    for name, (dtype, shape) in expected.items():
        if found[name] != (dtype, shape):
            raise ModelFileError(f"{path}: tensor {name} has shape {found[name][1]} and dtype {found[name][0]}, "
                                 f"expected shape {shape} and dtype {dtype} (from the file's configs)")


def _check_finite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelFileError(f"{path}: tensor {name} holds {bad} NaN or infinite value(s); the model cannot "
                                 f"generate (did its training diverge?)")


def _check_format(path: Path, metadata: dict[str, str]) -> None:
    if metadata.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path}: not a distill_nb model file (unknown format {metadata.get('format')!r}, "
                             f"expected {FORMAT_NAME!r})")
    if metadata.get("format_version") == "1":
        raise ModelFileError(f"{path}: a format 1 model (the 16x-downsampled VQ-VAE of distill_nb 0.1, which lost "
                             f"pitch); this version reads format {FORMAT_VERSION!r}: retrain it with "
                             f"`python -m distill_nb train`")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{path}: unsupported format_version {metadata.get('format_version')!r}, "
                             f"this version of distill_nb reads {FORMAT_VERSION!r}")


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedVQModel:
    """Read a model file written by ``save_model``; model and prior in eval mode on ``device``.

    The file is untrusted input: its configs are bounded (see the config classes) and the tensor shapes
    its header declares are checked against them before anything is allocated, so a hostile file costs
    no more memory than its own size.

    Raises:
        ModelFileError: the file is missing, a folder, or not a valid model (not safetensors, unknown
            format or version, invalid or out-of-range configs, missing, unexpected or mis-shaped
            tensors, NaN or infinite weights, ...).
        ValueError: ``device`` is unknown or not available here.
    """
    path = Path(path)
    device = check_device("device", device)
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder, not a model file")
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    metadata, layout = read_safetensors_layout(path)
    _check_format(path, metadata)
    spectrogram_config = _parse_config(path, metadata, "spectrogram_config", SpectrogramConfig)
    vqvae_config = _parse_config(path, metadata, "vqvae_config", VQVAEConfig)
    prior_config = (_parse_config(path, metadata, "prior_config", PriorConfig)
                    if "prior_config" in metadata else None)
    user_metadata = _parse_json(path, metadata, "metadata")
    if not isinstance(user_metadata, dict):
        raise ModelFileError(f"{path}: metadata must be a JSON object, got {type(user_metadata).__name__}")
    try:
        _check_consistent(spectrogram_config, vqvae_config, prior_config)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from error
    expected = expected_layout(vqvae_config, prior_config)
    if _COUNTS_KEY in layout:
        expected[_COUNTS_KEY] = (torch.int64, (vqvae_config.levels, vqvae_config.codebook_size))
    check_layout(path, layout, expected)

    _, tensors = read_safetensors(path)
    _check_finite(path, tensors)
    # The weights are overwritten right away: keep their random init off the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        model = ConvVQVAE(vqvae_config)
        prior = CodePrior(prior_config) if prior_config is not None else None
    spectrogram = Spectrogram(spectrogram_config)
    model.load_state_dict({key.removeprefix("vqvae."): value for key, value in tensors.items()
                           if key.startswith("vqvae.")})
    if prior is not None:
        prior.load_state_dict({key.removeprefix("prior."): value for key, value in tensors.items()
                               if key.startswith("prior.")})
    counts = tensors.get(_COUNTS_KEY)
    try:
        _check_counts(vqvae_config, counts)
    except ValueError as error:
        raise ModelFileError(f"{path}: {error}") from error

    model.to(device).eval()
    if prior is not None:
        prior.to(device).eval()
    return LoadedVQModel(vqvae=model, prior=prior, spectrogram=spectrogram, device=device,
                         metadata=user_metadata, train_code_counts=counts)


def load_default_model(device: str | torch.device = "cpu") -> LoadedVQModel:
    """Load the model bundled at DEFAULT_MODEL_PATH; ModelFileError if it has not been produced yet."""
    if not DEFAULT_MODEL_PATH.is_file():
        raise ModelFileError(f"{DEFAULT_MODEL_PATH}: the default model file is missing; train a model and "
                             f"save it there with save_model, or load another file with load_model(path)")
    return load_model(DEFAULT_MODEL_PATH, device=device)
