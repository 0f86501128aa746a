"""Hostile and broken model files and checkpoints, all written at test time from a tiny model.

Each one must end in the right error (ModelFileError or CheckpointError naming the cause), cost no more
memory than its own size, and give every CLI command one ``error:`` line and exit code 2, never a traceback.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import safetensors
import safetensors.torch
import soundfile as sf
import torch
from conftest import rewrite_safetensors, tiny_model

from distill_nb import cli
from distill_nb.corpus import build_corpus, write_demo_folder
from distill_nb.model_file import ModelFileError, load_model, read_safetensors, save_model
from distill_nb.stages import train_model
from distill_nb.training import CheckpointError, read_checkpoint

DEEP = 100_000  # JSON nesting far past Python's recursion limit


def rewrite(source, target, edit_header=None, edit_tensors=None):
    return rewrite_safetensors(source, target, metadata=edit_header, tensors=edit_tensors)


def set_json(key, *path_and_value):
    """An edit setting ``header[key]``'s JSON at ``path`` (a chain of keys) to ``value``."""
    *path, value = path_and_value

    def edit(header):
        data = json.loads(header[key])
        node = data
        for name in path[:-1]:
            node = node[name]
        node[path[-1]] = value
        header[key] = json.dumps(data)
    return edit


def set_fields(key, **fields):
    def edit(header):
        header[key] = json.dumps({**json.loads(header[key]), **fields})
    return edit


def nested(header, key):
    header[key] = "[" * DEEP + "]" * DEEP


# --- model files --------------------------------------------------------------------------------------

# Each config field at a value that would ask for gigabytes (or hours) if it were believed.
OVERSIZED_FIELDS = [
    ("spectrogram_config", "sample_rate", 10**9), ("spectrogram_config", "n_fft", 2**26),
    ("spectrogram_config", "n_mels", 10**6), ("vqvae_config", "n_mels", 10**6),
    ("vqvae_config", "channels", [10**6] * 4), ("vqvae_config", "strides", [[2, 2]] * 10**4),
    ("vqvae_config", "res_blocks", 10**6), ("vqvae_config", "code_dim", 10**7), ("vqvae_config", "levels", 10**4),
    ("vqvae_config", "codebook_size", 2**40), ("prior_config", "codebook_size", 2**40),
    ("prior_config", "levels", 10**4), ("prior_config", "column_tokens", 10**9), ("prior_config", "seq_len", 10**12),
    ("prior_config", "d_model", 16384), ("prior_config", "n_layers", 200_000), ("prior_config", "n_heads", 10**6),
]


def nan_in(name, value):
    def edit(tensors):
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = value
    return edit


def lying_shape(source, target):
    """A header that declares a billion-element tensor over the bytes of a small one."""
    data = source.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    header["prior.head.bias"]["shape"] = [10**9]
    text = json.dumps(header).encode()
    target.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])
    return target


def hostile_models(folder, good):
    """{case: (path, regex the ModelFileError must match)}: every hostile model file, written into ``folder``."""
    cases = {}
    for key, field, value in OVERSIZED_FIELDS:
        path = rewrite(good, folder / f"oversized-{key}-{field}.distill", set_json(key, field, value))
        cases[f"oversized {key}.{field}"] = (path, f"invalid {key}: .*{field}")
    # Within every bound, but far larger than the file: refused from the header before anything is built.
    cases["in-range prior far larger than the file"] = (rewrite(
        good, folder / "big-prior.distill", set_fields("prior_config", d_model=4096, n_layers=64, n_heads=64)),
        "missing tensor prior.blocks.1")
    cases["in-range VQ-VAE far larger than the file"] = (rewrite(
        good, folder / "big-vqvae.distill", set_json("vqvae_config", "channels", [1024] * 4)),
        "tensor vqvae.* has shape .* expected shape")
    cases["a shape the bytes do not hold"] = (lying_shape(good, folder / "lying.distill"), "not a valid safetensors")
    for key in ("metadata", "vqvae_config", "prior_config", "spectrogram_config"):
        cases[f"nested {key}"] = (rewrite(good, folder / f"nested-{key}.distill", lambda h, k=key: nested(h, k)),
                                  f"invalid {key}: not valid JSON \\(RecursionError")
    cases["NaN weight"] = (rewrite(good, folder / "nan.distill", edit_tensors=nan_in("prior.head.weight", np.nan)),
                           "prior.head.weight holds 1 NaN or infinite")
    vqvae_weight = next(key for key, value in read_safetensors(good)[1].items()
                        if key.startswith("vqvae.") and value.is_floating_point())
    cases["inf weight"] = (rewrite(good, folder / "inf.distill", edit_tensors=nan_in(vqvae_weight, np.inf)),
                           f"{vqvae_weight} holds 1 NaN or infinite")
    empty = folder / "empty.distill"
    empty.write_bytes(b"")
    cases["empty file"] = (empty, "not a distill_nb model file \\(it is empty")
    wav = folder / "take.wav"
    sf.write(wav, np.zeros(8000, dtype=np.float32), 8000)
    cases["a WAV file"] = (wav, "not a distill_nb model file")
    noise = folder / "noise.distill"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    cases["random bytes"] = (noise, "not a distill_nb model file")
    plain = folder / "plain.safetensors"
    safetensors.torch.save_file({"x": torch.zeros(3)}, str(plain))
    cases["safetensors of something else"] = (plain, "not a distill_nb model file")
    cases["a folder"] = (folder, "is a folder, not a model file")
    return cases


@pytest.fixture(scope="module")
def good_model(tmp_path_factory):
    return save_model(tiny_model(with_counts=True), tmp_path_factory.mktemp("good") / "tiny.distill")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, good_model):
    return hostile_models(tmp_path_factory.mktemp("hostile"), good_model)


def test_the_untouched_copy_loads(good_model, tmp_path):
    assert load_model(rewrite(good_model, tmp_path / "copy.distill")).prior is not None


CASES = [f"oversized {key}.{field}" for key, field, _ in OVERSIZED_FIELDS] + [
    "in-range prior far larger than the file", "in-range VQ-VAE far larger than the file",
    "a shape the bytes do not hold", "nested metadata", "nested vqvae_config", "nested prior_config",
    "nested spectrogram_config", "NaN weight", "inf weight", "empty file", "a WAV file", "random bytes",
    "safetensors of something else", "a folder"]


def test_the_case_list_names_every_hostile_file(hostile):
    assert sorted(hostile) == sorted(CASES)


@pytest.mark.parametrize("case", CASES)
def test_each_hostile_model_file_is_a_model_file_error_naming_the_cause(hostile, case):
    path, message = hostile[case]
    with pytest.raises(ModelFileError, match=message) as info:
        load_model(path)
    assert str(path) in str(info.value)


def test_hostile_model_files_cost_no_more_memory_than_their_size(hostile, good_model):
    """Peak RSS of a fresh process while it loads every hostile file, against its peak after loading a good one."""
    paths = [str(path) for path, _ in hostile.values()]
    script = textwrap.dedent("""
        import json, resource, sys
        from distill_nb.model_file import ModelFileError, load_model
        load_model(sys.argv[1])  # warms up torch's lazy initialisation, so the baseline includes it
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        loaded = []
        for path in json.loads(sys.argv[2]):
            try:
                load_model(path)
                loaded.append(path)
            except ModelFileError:
                pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({"base_kb": base, "peak_kb": peak, "loaded": loaded}))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(good_model), json.dumps(paths)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    print(f"peak RSS {result['base_kb'] / 1024:.0f} MB after a good model, {result['peak_kb'] / 1024:.0f} MB after "
          f"{len(paths)} hostile files")
    assert result["loaded"] == []
    assert (result["peak_kb"] - result["base_kb"]) / 1024 < 500


METADATA_OF_ANY_SHAPE = [
    {"training": "oops"},
    {"training": {"corpus": {"seconds": "lots", "train_seconds": None}, "vqvae": "x", "prior": {"epochs": "x"}}},
    {"training": {"corpus": ["a"], "vqvae": {"epochs": [{"epoch": "one"}]}}},
    {"quality": [1, 2]},
    {"quality": {"reconstruction_sc": "good"}},
    {"name": ["a", "list"], "created": 5},
]


@pytest.mark.parametrize("metadata", METADATA_OF_ANY_SHAPE)
def test_info_reads_metadata_of_any_structure(good_model, tmp_path, capsys, metadata):
    path = rewrite(good_model, tmp_path / "odd.distill", lambda h: h.update(metadata=json.dumps(metadata)))
    assert cli.main(["info", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "codebook health" in printed
    if "training" in metadata and not isinstance(metadata["training"], dict):
        assert "training: a summary in an unknown format" in printed
    if "quality" in metadata:
        assert "quality: a report in an unknown format" in printed


def one_error_line(capsys, *names):
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "error" in line.lower()]  # the rest: progress bars
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    for name in names:
        assert name in lines[0]
    return lines[0]


def test_every_cli_command_answers_a_hostile_model_with_one_error_line(hostile, tmp_path, capsys):
    out = tmp_path / "take.wav"
    for case, (path, _) in hostile.items():
        assert cli.main(["info", str(path)]) == 2, case
        one_error_line(capsys, str(path))
        assert cli.main(["generate", "--model", str(path), "-o", str(out), "--duration", "1"]) == 2, case
        one_error_line(capsys, str(path))
        assert not out.exists()


# --- the generate command's own failures ------------------------------------------------------------------


@pytest.mark.parametrize("device, message", [("evil", "--device must be a torch device"),
                                             ("cuda:7", "--device='cuda:7', but")])
def test_generate_refuses_an_unavailable_device_before_generating(good_model, tmp_path, capsys, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    assert cli.main(["generate", "--model", str(good_model), "-o", str(tmp_path / "t.wav"), "--device", device]) == 2
    one_error_line(capsys, message)


def test_generate_refuses_an_output_that_is_a_folder_or_unwritable(good_model, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "take.wav"
    folder.mkdir()
    assert cli.main(["generate", "--model", str(good_model), "-o", str(folder)]) == 2
    one_error_line(capsys, "is a folder")

    def refuse(*args, **kwargs):  # what a read-only folder does to anyone but root
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", refuse)
    assert cli.main(["generate", "--model", str(good_model), "-o", str(tmp_path / "t.wav")]) == 2
    one_error_line(capsys, "cannot write into the output's folder", "Permission denied")


def test_a_take_that_cannot_be_saved_is_rescued_to_a_temporary_folder(good_model, tmp_path, capsys, monkeypatch):
    """The folder is fine when checked, and gone when the finished take is saved: the take is kept elsewhere."""
    folder = tmp_path / "out"
    folder.mkdir()
    real_save = cli.save_audio

    def save_after_folder_vanished(path, *args, **kwargs):
        if folder.exists():
            folder.rmdir()
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(cli, "save_audio", save_after_folder_vanished)
    code = cli.main(["generate", "--model", str(good_model), "-o", str(folder / "take.wav"), "--seed", "4",
                     "--duration", "1", "--griffin-lim-iters", "2"])
    captured = capsys.readouterr()
    assert code == 1
    errors = [line for line in captured.err.splitlines() if "error:" in line]  # the rest is the progress bar
    assert len(errors) == 1 and errors[0].startswith("error: cannot write"), captured.err
    rescued = pathlib.Path(errors[0].rsplit("saved it as ", 1)[1].removesuffix(" instead"))
    try:
        audio, rate = sf.read(rescued)
        assert rate == 8000 and len(audio) == 8000
        assert json.loads(rescued.with_suffix(".json").read_text())["seed"] == 4
        assert f"saved {rescued}" in captured.out
    finally:
        shutil.rmtree(rescued.parent)


# --- checkpoints and train --resume -----------------------------------------------------------------------

SCHEDULE = ["--preset", "small", "--epochs", "1", "--prior-epochs", "1", "--steps-per-epoch", "2",
            "--batch-size", "2"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A sound folder and the prior-stage checkpoint the CLI's train with SCHEDULE leaves for it."""
    root = tmp_path_factory.mktemp("run")
    write_demo_folder(root / "sounds", seed=2, seconds=6.0)
    corpus = build_corpus(root / "sounds", seed=0)
    train_model(corpus, preset_name="small", vqvae_epochs=1, prior_epochs=1, steps_per_epoch=2, batch_size=2,
                checkpoint_path=root / "run.ckpt", measure_quality=False)
    return root / "sounds", root / "run.ckpt"


def edit_state(*path_and_value):
    return set_json("state", *path_and_value)


def widen_vqvae(channels):
    """An edit giving every stage of the checkpoint's VQ-VAE config ``channels`` channels."""
    def edit(header):
        state = json.loads(header["state"])
        config = state["extra"]["vqvae_config"]
        config["channels"] = [channels] * len(config["channels"])
        header["state"] = json.dumps(state)
    return edit


def hostile_checkpoints(folder, good, model):
    """{case: (path, regex the CheckpointError must match)}."""
    def tensors_without(prefix):
        return lambda tensors: [tensors.pop(key) for key in [k for k in tensors if k.startswith(prefix)]]

    def reshaped(name):
        return lambda tensors: tensors.update({name: torch.zeros(3, 3)})

    cases = {
        "nested state": (rewrite(good, folder / "nested.ckpt", lambda h: nested(h, "state")),
                         "damaged checkpoint state \\(RecursionError"),
        "history of the wrong type": (rewrite(good, folder / "history.ckpt", edit_state("history", "oops")),
                                      "damaged checkpoint state"),
        "oversized VQ-VAE config": (rewrite(good, folder / "big-config.ckpt", widen_vqvae(10**6)),
                                    "its VQ-VAE cannot be restored .*channels"),
        "in-range VQ-VAE far larger than the file": (rewrite(good, folder / "big-vqvae.ckpt", widen_vqvae(1024)),
                                                     "its VQ-VAE cannot be restored .*expected shape"),
        "VQ-VAE tensors missing": (rewrite(good, folder / "no-vqvae.ckpt", edit_tensors=tensors_without("vqvae.")),
                                   "its VQ-VAE cannot be restored .*missing tensor"),
        "mis-shaped weights": (rewrite(good, folder / "shape.ckpt", edit_tensors=reshaped("model.head.weight")),
                               "its weights do not fit this run"),
        "best weights missing": (rewrite(good, folder / "no-best.ckpt", edit_tensors=tensors_without("best.")),
                                 "its best weights do not fit this run"),
        "a model file": (model, "not a distill_nb checkpoint"),
    }
    noise = folder / "noise.ckpt"
    noise.write_bytes(np.random.default_rng(1).bytes(4096))
    cases["random bytes"] = (noise, "not a distill_nb checkpoint")
    return cases


@pytest.fixture(scope="module")
def hostile_ckpts(tmp_path_factory, run, good_model):
    return hostile_checkpoints(tmp_path_factory.mktemp("ckpts"), run[1], good_model)


def test_the_checkpoint_fixture_is_a_prior_checkpoint_with_what_the_cases_edit(run):
    checkpoint = read_checkpoint(run[1])
    assert checkpoint.stage == "prior" and "vqvae_config" in checkpoint.extra
    assert "model.head.weight" in checkpoint.tensors


def test_every_hostile_checkpoint_is_refused_by_train_resume_with_one_error_line(run, hostile_ckpts, tmp_path, capsys):
    sounds, _ = run
    for case, (path, message) in hostile_ckpts.items():
        code = cli.main(["train", str(sounds), "-o", str(tmp_path / "m.distill"), "--resume", str(path), *SCHEDULE])
        assert code == 2, case
        line = one_error_line(capsys)
        assert str(path) in line, (case, line)
        with pytest.raises(CheckpointError, match=message):
            resume_in_library(sounds, path)
        assert not (tmp_path / "m.distill").exists()


def resume_in_library(sounds, path):
    train_model(build_corpus(sounds, seed=0), preset_name="small", vqvae_epochs=1, prior_epochs=1,
                steps_per_epoch=2, batch_size=2, resume=path, measure_quality=False)
