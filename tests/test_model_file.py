"""The .distill model file: bit-exact round trips, atomic writes, and refusing anything that is not a model."""
from __future__ import annotations

import json
import math
import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch

from conftest import rewrite_safetensors

from distill_nb import model_file
from distill_nb.model_file import (DEFAULT_MODEL_PATH, LoadedVQModel, ModelFileError, load_default_model, load_model,
                                   save_model)
from distill_nb.prior import CodePrior, PriorConfig
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig
from distill_nb.vqvae import ConvVQVAE, VQVAEConfig

TINY_VQ = VQVAEConfig(n_mels=32, channels=(8, 8, 16, 16), strides=((2, 2), (2, 2), (2, 2), (1, 2)), res_blocks=1,
                      code_dim=8, levels=3, codebook_size=16, input_mean=-6.0, input_std=4.0)
# 1 s at 48 kHz, hop 512 -> 94 frames -> a 4 x 6 grid of 3 levels: 12 tokens a column, windows of 2 chunks.
TINY_PRIOR = PriorConfig(codebook_size=16, levels=3, column_tokens=12, seq_len=144, d_model=16, n_layers=1, n_heads=2,
                         dropout=0.0)


def mels(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 32, 94, generator=g) * 3 - 6


@pytest.fixture(scope="module")
def loaded() -> LoadedVQModel:
    """A tiny model whose codebooks are initialised (k-means on one training batch), so codes vary."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ConvVQVAE(TINY_VQ)
        prior = CodePrior(TINY_PRIOR).eval()
        model.train()
        model(mels(8, seed=1))
    model.eval()
    counts = torch.randint(0, 100, (3, 16), generator=torch.Generator().manual_seed(2))
    return LoadedVQModel(vqvae=model, prior=prior, spectrogram=Spectrogram(SpectrogramConfig(n_mels=32)),
                         device=torch.device("cpu"),
                         metadata={"name": "tiny", "training": {"epochs": 1, "loss": 0.5}, "date": "2024-01-01"},
                         train_code_counts=counts)


@pytest.fixture(scope="module")
def saved(loaded, tmp_path_factory) -> Path:
    return save_model(loaded, tmp_path_factory.mktemp("model") / "tiny.distill")


def test_round_trip_is_bit_exact(loaded, saved):
    restored = load_model(saved)
    mel = mels(2, seed=3)
    codes = loaded.vqvae.encode(mel)
    assert len(codes.unique()) > 3
    assert torch.equal(restored.vqvae.encode(mel), codes)
    with torch.no_grad():
        assert torch.equal(restored.vqvae.decode_codes(codes, 94), loaded.vqvae.decode_codes(codes, 94))
        tokens = codes.reshape(2, -1)
        assert torch.equal(restored.prior(tokens), loaded.prior(tokens))
    assert torch.equal(restored.train_code_counts, loaded.train_code_counts)
    assert restored.train_code_counts.dtype == torch.long
    assert restored.metadata == loaded.metadata
    assert restored.vqvae_config == TINY_VQ and restored.prior_config == TINY_PRIOR
    assert restored.spectrogram_config == loaded.spectrogram_config
    assert (restored.sample_rate, restored.chunk_samples) == (48000, 48000)
    assert not restored.vqvae.training and not restored.prior.training
    for key, value in loaded.vqvae.state_dict().items():
        assert torch.equal(restored.vqvae.state_dict()[key], value), key


def test_file_is_plain_safetensors_with_the_documented_layout(saved):
    with safetensors.safe_open(str(saved), framework="pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "distill_nb.model" and meta["format_version"] == "2"
    assert json.loads(meta["vqvae_config"])["channels"] == [8, 8, 16, 16]
    assert json.loads(meta["prior_config"])["seq_len"] == 144
    assert json.loads(meta["spectrogram_config"])["n_mels"] == 32
    assert json.loads(meta["metadata"])["name"] == "tiny"
    assert "stats.train_code_counts" in keys
    assert all(k.startswith(("vqvae.", "prior.")) for k in keys - {"stats.train_code_counts"})


def test_saved_file_gets_ordinary_permissions(saved):
    # The temporary file comes from mkstemp (owner-only); the model file must be readable like any other.
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(saved.stat().st_mode) == 0o666 & ~umask


def test_model_without_prior_or_counts_round_trips(loaded, tmp_path):
    alone = LoadedVQModel(vqvae=loaded.vqvae, prior=None, spectrogram=loaded.spectrogram,
                          device=torch.device("cpu"), metadata={})
    restored = load_model(save_model(alone, tmp_path / "alone.distill"))
    assert restored.prior is None and restored.prior_config is None and restored.train_code_counts is None
    with safetensors.safe_open(str(tmp_path / "alone.distill"), framework="pt") as f:
        assert "prior_config" not in f.metadata()
    mel = mels(1, seed=4)
    assert torch.equal(restored.vqvae.encode(mel), loaded.vqvae.encode(mel))


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_device_argument(saved, device):
    restored = load_model(saved, device=device)
    assert restored.device == torch.device("cpu")
    assert all(p.device == torch.device("cpu") for p in restored.vqvae.parameters())
    assert all(p.device == torch.device("cpu") for p in restored.prior.parameters())


def test_load_leaves_the_global_rng_alone(saved):
    state = torch.get_rng_state()
    load_model(saved)
    assert torch.equal(torch.get_rng_state(), state)


def test_save_rejects_unserialisable_metadata(loaded, tmp_path):
    bad = LoadedVQModel(vqvae=loaded.vqvae, prior=None, spectrogram=loaded.spectrogram,
                        device=torch.device("cpu"), metadata={"when": object()})
    with pytest.raises(ValueError, match="metadata"):
        save_model(bad, tmp_path / "bad.distill")
    with pytest.raises(ValueError, match="metadata"):
        save_model(LoadedVQModel(loaded.vqvae, None, loaded.spectrogram, torch.device("cpu"), {"x": math.nan}),
                   tmp_path / "bad.distill")
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_parts_that_do_not_fit(loaded, tmp_path):
    prior = CodePrior(PriorConfig(codebook_size=16, levels=3, column_tokens=6, seq_len=48, d_model=16, n_layers=1,
                                  n_heads=2))
    with pytest.raises(ValueError, match="column_tokens"):
        save_model(LoadedVQModel(loaded.vqvae, prior, loaded.spectrogram, torch.device("cpu"), {}),
                   tmp_path / "bad.distill")
    with pytest.raises(ValueError, match="n_mels"):
        save_model(LoadedVQModel(loaded.vqvae, None, Spectrogram(SpectrogramConfig(n_mels=64)),
                                 torch.device("cpu"), {}),
                   tmp_path / "bad.distill")
    with pytest.raises(ValueError, match="train_code_counts"):
        save_model(LoadedVQModel(loaded.vqvae, None, loaded.spectrogram, torch.device("cpu"), {},
                                 train_code_counts=torch.zeros(3, 15, dtype=torch.long)),
                   tmp_path / "bad.distill")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("crash", ["serialise", "fsync", "replace"])
def test_crash_mid_write_keeps_the_previous_file(loaded, tmp_path, monkeypatch, crash):
    path = save_model(loaded, tmp_path / "model.distill")
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("simulated crash")

    target = {"serialise": (safetensors.torch, "save"), "fsync": (os, "fsync"), "replace": (os, "replace")}[crash]
    monkeypatch.setattr(*target, boom)
    changed = LoadedVQModel(loaded.vqvae, None, loaded.spectrogram, torch.device("cpu"), {"name": "new"})
    with pytest.raises(OSError, match="simulated crash"):
        save_model(changed, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.distill"]
    assert load_model(path).metadata["name"] == "tiny"


class _CreatesFileWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_hostile_pickle_is_never_unpickled(tmp_path):
    # The payload is live: unpickling it does create its marker file.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_CreatesFileWhenUnpickled(probe))).close()
    assert probe.exists()

    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.distill"
    path.write_bytes(pickle.dumps(_CreatesFileWhenUnpickled(marker)))
    with pytest.raises(ModelFileError, match="not a distill_nb model file") as info:
        load_model(path)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path):
    path = tmp_path / "torch.distill"
    torch.save({"vqvae.weight": torch.zeros(3)}, path)
    with pytest.raises(ModelFileError, match="not a distill_nb model file"):
        load_model(path)


@pytest.mark.parametrize("content", [
    b"",
    b"\x01\x02\x03",
    np.random.default_rng(0).bytes(4096),
    (10**6).to_bytes(8, "little") + b'{"a": 1}',  # header length beyond the file
    (0).to_bytes(8, "little") + b"{}",
    (2).to_bytes(8, "little") + b"[]",
], ids=["empty", "short", "random", "header-too-long", "header-zero", "header-not-object"])
def test_broken_bytes_are_refused(tmp_path, content):
    path = tmp_path / "broken.distill"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match="broken.distill"):
        load_model(path)


@pytest.mark.parametrize("keep", ["half", "header-only", "most"])
def test_truncated_file_is_refused(saved, tmp_path, keep):
    data = saved.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    cut = {"half": len(data) // 2, "header-only": header_end, "most": len(data) - 1}[keep]
    path = tmp_path / "truncated.distill"
    path.write_bytes(data[:cut])
    with pytest.raises(ModelFileError, match="truncated.distill"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nothing.distill")
    with pytest.raises(ModelFileError, match="is a folder, not a model file"):
        load_model(tmp_path)


def drop(key):
    return lambda d: d.pop(key)


def put(key, value):
    return lambda d: d.__setitem__(key, value)


@pytest.mark.parametrize("metadata, tensors, message", [
    (put("format", "someone.else"), None, "unknown format 'someone.else'"),
    (drop("format"), None, "unknown format None"),
    (put("format_version", "3"), None, "unsupported format_version '3'"),
    (put("format_version", "1"), None, "a format 1 model.*retrain"),
    (drop("vqvae_config"), None, "no vqvae_config"),
    (put("vqvae_config", "{not json"), None, "invalid vqvae_config"),
    (put("vqvae_config", json.dumps({**TINY_VQ.to_dict(), "code_dim": 0})), None, "invalid vqvae_config.*code_dim"),
    (put("spectrogram_config", json.dumps({"hop": 3})), None, "invalid spectrogram_config.*hop"),
    (put("prior_config", "[1, 2]"), None, "invalid prior_config"),
    (put("metadata", "[]"), None, "metadata must be a JSON object"),
    (put("metadata", "{"), None, "invalid metadata"),
    (None, drop("vqvae.encoder.0.weight"), "missing tensor vqvae.encoder.0.weight"),
    (None, put("prior.head.bias", torch.zeros(17)), r"prior.head.bias has shape \(17,\).*expected shape \(16,\)"),
    (None, put("prior.head.bias", torch.zeros(16).double()), "prior.head.bias.*float64"),
    (None, put("vqvae.extra", torch.zeros(1)), "unexpected tensors.*vqvae.extra"),
    (drop("prior_config"), None, r"unexpected tensors.*'prior\."),
    (None, put("stats.train_code_counts", torch.zeros(3, 16)), "train_code_counts"),
    (None, put("stats.train_code_counts", -torch.ones(3, 16, dtype=torch.long)), "train_code_counts must be >= 0"),
    # A prior over codes of one level cannot read the VQ-VAE's three (the tensors would still fit).
    (put("prior_config", json.dumps({**TINY_PRIOR.to_dict(), "levels": 1})), None, "prior levels=1"),
], ids=lambda v: "" if callable(v) or v is None else v[:40])
def test_edited_model_is_refused(saved, tmp_path, metadata, tensors, message):
    path = rewrite_safetensors(saved, tmp_path / "edited.distill", metadata=metadata, tensors=tensors)
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(path)
    assert "edited.distill" in str(info.value)


def test_safetensors_without_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.distill"
    safetensors.torch.save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ModelFileError, match="unknown format None"):
        load_model(path)


def test_default_model(saved, tmp_path, monkeypatch):
    assert DEFAULT_MODEL_PATH == Path(model_file.__file__).parent / "data" / "default.distill"
    monkeypatch.setattr(model_file, "DEFAULT_MODEL_PATH", tmp_path / "default.distill")
    with pytest.raises(ModelFileError, match="default.distill"):
        load_default_model()
    (tmp_path / "default.distill").write_bytes(saved.read_bytes())
    assert load_default_model(device="cpu").metadata["name"] == "tiny"
