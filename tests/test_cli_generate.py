"""`python -m distill_nb generate`, driven through cli.main with a tiny model file."""

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
from conftest import tiny_model

from distill_nb.audio import save_audio
from distill_nb.cli import main
from distill_nb.generation import GenerationSettings, generate
from distill_nb.model_file import load_model, save_model

SR = 8000  # tiny_model's geometry: 8 kHz, 1 s chunks
FAST = ["--griffin-lim-iters", "2"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_model(tiny_model(), tmp_path_factory.mktemp("model") / "tiny.distill")


def sidecar(path):
    return json.loads(path.with_suffix(".json").read_text())


def test_generate_writes_the_take_and_its_metadata(model_path, tmp_path, capsys):
    out = tmp_path / "take.wav"
    code = main(["generate", "--model", str(model_path), "-o", str(out), "--duration", "1.5", "--seed", "3",
                 "--top-k", "5", "--mode", "continuation", *FAST])
    assert code == 0
    audio, rate = sf.read(out, dtype="float32")
    assert rate == SR and audio.shape == (12000,)
    metadata = sidecar(out)
    assert metadata["seed"] == 3 and metadata["model_name"] == "tiny"
    expected = GenerationSettings(duration_s=1.5, top_k=5, mode="continuation", griffin_lim_iters=2)
    assert metadata["settings"] == expected.to_dict()
    # The same take as the library makes, up to 24-bit quantisation.
    take = generate(load_model(model_path), expected, seed=3)
    np.testing.assert_allclose(audio, np.clip(take.audio, -1, 1), atol=2**-22)
    assert str(out) in capsys.readouterr().out


def test_generate_normalises_the_level_and_records_the_gain(model_path, tmp_path):
    out = tmp_path / "rms.wav"
    assert main(["generate", "--model", str(model_path), "-o", str(out), "--duration", "1", "--seed", "4",
                 "--normalise", "rms", "--target-dbfs", "-24", *FAST]) == 0
    metadata = sidecar(out)
    assert metadata["settings"]["normalise"] == "rms" and metadata["settings"]["target_dbfs"] == -24.0
    raw = tmp_path / "raw.wav"
    assert main(["generate", "--model", str(model_path), "-o", str(raw), "--duration", "1", "--seed", "4",
                 "--normalise", "off", *FAST]) == 0
    assert sidecar(raw)["gain_db"] == 0.0
    normalised, _ = sf.read(out, dtype="float64")
    plain, _ = sf.read(raw, dtype="float64")
    gain = 10 ** (metadata["gain_db"] / 20)
    # The sidecar rounds the gain to 1e-3 dB: a relative 1.2e-4 at most.
    np.testing.assert_allclose(normalised, np.clip(plain * gain, -1, 1), rtol=1.2e-4, atol=1e-6 * max(gain, 1))
    default = tmp_path / "default.wav"
    assert main(["generate", "--model", str(model_path), "-o", str(default), "--duration", "1", "--seed", "4",
                 *FAST]) == 0
    peak_default = np.abs(sf.read(default, dtype="float64")[0]).max()
    assert 20 * np.log10(peak_default) == pytest.approx(-1.0, abs=1e-3)  # the default: a -1 dBFS peak


def test_several_seeds_give_one_file_per_take(model_path, tmp_path):
    out = tmp_path / "take.flac"
    assert main(["generate", "--model", str(model_path), "-o", str(out), "--duration", "1",
                 "--seed", "11", "500", *FAST]) == 0
    for seed in (11, 500):
        path = tmp_path / f"take-seed{seed}.flac"
        assert sf.info(path).frames == SR and sidecar(path)["seed"] == seed
    assert not out.exists()


def test_takes_draw_random_seeds(model_path, tmp_path):
    assert main(["generate", "--model", str(model_path), "-o", str(tmp_path / "t.wav"), "--duration", "0.5",
                 "--takes", "2", *FAST]) == 0
    files = sorted(tmp_path.glob("t-seed*.wav"))
    assert len(files) == 2
    seeds = {sidecar(path)["seed"] for path in files}
    assert len(seeds) == 2 and all(0 <= seed < 2**63 for seed in seeds)


def test_per_level_temperature_and_prompt(model_path, tmp_path):
    prompt = tmp_path / "prompt.wav"
    save_audio(prompt, 0.1 * np.sin(np.arange(SR, dtype=np.float32) / 5), SR)
    out = tmp_path / "continued.wav"
    assert main(["generate", "--model", str(model_path), "-o", str(out), "--duration", "1", "--seed", "1",
                 "--temperature", "0.5,1.5", "--prompt", str(prompt), "--include-prompt", *FAST]) == 0
    metadata = sidecar(out)
    assert metadata["settings"]["temperature"] == [0.5, 1.5]
    assert metadata["prompt_samples"] == SR and metadata["include_prompt"] is True
    assert sf.info(out).frames > SR


@pytest.mark.parametrize("arguments, message", [
    (["--temperature", "0"], "temperature"),
    (["--temperature", "1,1,1"], "temperature"),
    (["--duration", "500"], "duration_s"),
    (["--overlap", str(SR)], "overlap_samples"),
    (["--seed", "-1"], "seed"),
    (["--prompt", "missing.wav"], "missing.wav"),
    (["--takes", "0"], "--takes"),
])
def test_bad_input_exits_with_2_and_names_the_problem(model_path, tmp_path, capsys, arguments, message):
    out = tmp_path / "x.wav"
    assert main(["generate", "--model", str(model_path), "-o", str(out), *arguments, *FAST]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar, if it started
    assert error.startswith("error: ") and message in error
    assert not out.exists()


def test_argument_syntax_errors_exit_through_argparse(model_path, tmp_path):
    for arguments in (["--temperature", "hot"], ["--seed", "1", "--takes", "2"], ["--mode", "loop"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["generate", "--model", str(model_path), "-o", str(tmp_path / "x.wav"), *arguments])
        assert exit_info.value.code == 2


def test_an_output_that_cannot_be_written_is_refused_before_generating(model_path, tmp_path, capsys):
    assert main(["generate", "--model", str(model_path), "-o", str(tmp_path / "x.mp3")]) == 2
    assert ".wav or .flac" in capsys.readouterr().err
    assert main(["generate", "--model", str(model_path), "-o", str(tmp_path / "no" / "x.wav")]) == 2
    assert "folder" in capsys.readouterr().err


def test_models_that_cannot_generate_exit_with_2(model_path, tmp_path, capsys):
    assert main(["generate", "--model", str(tmp_path / "none.distill"), "-o", str(tmp_path / "x.wav")]) == 2
    assert "none.distill" in capsys.readouterr().err
    vqvae_only = save_model(replace(load_model(model_path), prior=None), tmp_path / "vqvae.distill")
    assert main(["generate", "--model", str(vqvae_only), "-o", str(tmp_path / "x.wav"), *FAST]) == 2
    assert "Model has no trained prior" in capsys.readouterr().err


def test_the_cli_runs_without_the_notebook_libraries(model_path, tmp_path):
    """ipywidgets, IPython and matplotlib are the [notebooks] extra: the CLI must not need them."""
    script = textwrap.dedent("""
        import sys
        for name in ("ipywidgets", "IPython", "matplotlib"):
            sys.modules[name] = None  # any import of them raises ImportError
        from distill_nb.cli import main
        assert main(["info", sys.argv[1]]) == 0
        assert main(["generate", "--model", sys.argv[1], "-o", sys.argv[2], "--seed", "1", "--duration", "1",
                     *sys.argv[3:]]) == 0
        loaded = [name for name in ("ipywidgets", "IPython", "matplotlib") if sys.modules[name] is not None]
        assert not loaded, loaded
        import distill_nb
        try:
            distill_nb.GeneratorPanel
        except ImportError as error:
            assert "pip install 'distill_nb[notebooks]'" in str(error), error
        else:
            raise AssertionError("GeneratorPanel imported without ipywidgets")
    """)
    out = tmp_path / "take.wav"
    done = subprocess.run([sys.executable, "-c", script, str(model_path), str(out), *FAST], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert sf.info(out).frames == 8000
