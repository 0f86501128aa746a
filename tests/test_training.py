"""Training: losses fall, runs are deterministic, checkpoints resume exactly and survive crashes, DDP, CLI."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile
import torch

from distill_nb import cli
from distill_nb.corpus import build_corpus, demo_corpus, write_demo_folder
from distill_nb.geometry import ChunkGeometry
from distill_nb.model_file import load_model, save_model
from distill_nb.prior import PriorConfig
from distill_nb.spectrogram import Spectrogram, SpectrogramConfig
from distill_nb.stages import (calibrate_prior, code_stream, estimate_training_seconds, file_mels,
                               memorisation_warning, random_mel_windows, random_token_windows, train_model, train_prior,
                               train_vqvae, validation_windows)
from distill_nb.training import CheckpointError, EpochRecord, TrainingHistory, learning_rate, read_checkpoint
from distill_nb.vqvae import VQVAEConfig

# A tiny world: 16 kHz, 16 mel bands, 63 frames -> a 2 x 4 grid (8x frequency, 16x time), 3 levels, 8 codes,
# 6 tokens per column; prior windows of 2 chunks (8 columns, 48 tokens).
SPEC = Spectrogram(SpectrogramConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=16))
VQ = VQVAEConfig(n_mels=16, channels=(4, 8, 8, 8), strides=((2, 2), (2, 2), (2, 2), (1, 2)), res_blocks=1,
                 code_dim=8, levels=3, codebook_size=8)
GEOMETRY = ChunkGeometry.of(SPEC.config, VQ)
PRIOR = PriorConfig.for_vqvae(GEOMETRY, 8, 2 * GEOMETRY.columns, d_model=16, n_layers=1, n_heads=2, dropout=0.1)
FAST = dict(spectrogram=SPEC, steps_per_epoch=4, batch_size=4)


@pytest.fixture(scope="module")
def corpus():
    return demo_corpus(seed=0, seconds=40.0, sample_rate=16000)  # 10 phrases, one held out


@pytest.fixture(scope="module")
def vqvae(corpus):
    model, _ = train_vqvae(corpus, VQ, epochs=2, **FAST)
    return model


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


class _InterruptAt:
    """A progress callback that raises KeyboardInterrupt at the first message containing ``text``."""

    def __init__(self, text):
        self.text = text

    def __call__(self, fraction, message):
        if self.text in message:
            raise KeyboardInterrupt


def test_vqvae_training_lowers_the_loss_and_leaves_the_global_rng_alone(corpus):
    rng_before = torch.get_rng_state()
    calls = []
    model, history = train_vqvae(corpus, VQ, epochs=4, lr=3e-3, progress=lambda f, m: calls.append((f, m)),
                                 **FAST)
    assert torch.equal(torch.get_rng_state(), rng_before)
    losses = [r.val_loss for r in history.epochs]
    assert len(losses) == 4 and min(losses[1:]) < losses[0]
    assert history.best_epoch == int(np.argmin(losses)) + 1
    assert not model.training
    assert model.config.input_mean < -1 and model.config.input_std > 0.5  # log-mel statistics, not defaults
    assert len(history.codebook_health) == 3 and len(history.epochs[0].codebook_utilisation) == 3
    assert all(0 < r.val_spectral_convergence < 10 for r in history.epochs)
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("VQ-VAE epoch 4/4" in m for _, m in calls)
    assert TrainingHistory.from_dict(history.to_dict()) == history


def test_prior_training_lowers_the_loss(corpus, vqvae):
    prior, history = train_prior(vqvae, corpus, PRIOR, epochs=3, lr=3e-3, **FAST)
    losses = [r.val_loss for r in history.epochs]
    assert min(losses[1:]) < losses[0]
    for record in history.epochs:
        assert record.val_perplexity == pytest.approx(math.exp(record.val_loss))
        assert record.train_perplexity == pytest.approx(math.exp(record.train_loss))
    assert not prior.training and history.stage == "prior"


def test_calibration_finds_the_temperature_of_least_validation_cross_entropy_and_folds_it(corpus, vqvae):
    prior, history = train_prior(vqvae, corpus, PRIOR, epochs=2, lr=3e-3, **FAST)
    assert history.calibrated_temperature is not None  # train_prior calibrates; calibrate again from here
    tokens = validation_windows(vqvae, corpus, SPEC, PRIOR)
    with torch.inference_mode():
        logits = prior(tokens).flatten(0, 1)
    targets = tokens.reshape(-1)
    grid = np.linspace(0.3, 3.0, 2701)  # the reference: the cross-entropy at every 0.001 of temperature
    losses = [float(torch.nn.functional.cross_entropy(logits / t, targets)) for t in grid]
    # An over-confident copy (logits x 3) must come out three times as hot: the fit is scale-equivariant.
    sharp = type(prior)(prior.config).eval()
    sharp.load_state_dict(prior.state_dict())
    sharp.fold_temperature(1 / 3)
    temperature, sharp_temperature = calibrate_prior(prior, tokens), calibrate_prior(sharp, tokens)
    assert temperature == pytest.approx(grid[int(np.argmin(losses))], abs=2e-3)
    assert sharp_temperature == pytest.approx(3 * temperature, rel=5e-3)  # float32 losses: a flat minimum
    with torch.inference_mode():
        torch.testing.assert_close(prior(tokens).flatten(0, 1), logits / temperature, rtol=1e-5, atol=1e-5)
    # Folded in, the calibrated prior is its own best temperature.
    assert calibrate_prior(prior, tokens) == pytest.approx(1.0, abs=5e-3)


def test_calibration_sees_the_prior_without_dropout_and_leaves_its_mode_alone(corpus, vqvae):
    prior, _ = train_prior(vqvae, corpus, PRIOR, epochs=1, **FAST)  # PRIOR has dropout 0.1
    tokens = validation_windows(vqvae, corpus, SPEC, PRIOR)
    copies = []
    for training in (False, True):
        copy = type(prior)(prior.config)
        copy.load_state_dict(prior.state_dict())
        copies.append(copy.train(training))
    in_eval, in_training = (calibrate_prior(copy, tokens) for copy in copies)
    assert in_training == pytest.approx(in_eval, rel=1e-6)
    assert [copy.training for copy in copies] == [False, True]


def test_histories_round_trip_the_calibrated_temperature_and_read_older_ones():
    history = TrainingHistory(stage="prior", calibrated_temperature=1.08)
    assert TrainingHistory.from_dict(history.to_dict()) == history
    older = history.to_dict()
    del older["calibrated_temperature"]
    assert TrainingHistory.from_dict(older).calibrated_temperature is None
    assert "calibrated temperature 1.080" in TrainingHistory(
        stage="prior", epochs=[EpochRecord(epoch=1, train_loss=1.0, val_loss=1.0, lr=1e-3, seconds=1.0)],
        best_epoch=1, calibrated_temperature=1.08).summary()


def test_another_seed_gives_other_weights(corpus, vqvae):
    # The same seed gives the same weights: see the resume tests, which compare separate runs.
    other, _ = train_vqvae(corpus, VQ, epochs=2, seed=4, **FAST)
    assert not torch.equal(vqvae.decoder[-1].weight, other.decoder[-1].weight)


def test_vqvae_interrupted_and_resumed_equals_uninterrupted(corpus, tmp_path):
    reference, reference_history = train_vqvae(corpus, VQ, epochs=3, seed=1, **FAST)
    path = tmp_path / "vq.ckpt"
    with pytest.raises(KeyboardInterrupt):  # in the middle of epoch 2: epoch 1 is saved
        train_vqvae(corpus, VQ, epochs=3, seed=1, checkpoint_path=path, progress=_InterruptAt("epoch 2/3 step 2/"),
                    **FAST)
    assert read_checkpoint(path).epoch == 1
    resumed, history = train_vqvae(corpus, VQ, epochs=3, seed=1, checkpoint_path=path, resume=path, **FAST)
    _assert_same_state(_state(reference), _state(resumed))
    assert [r.val_loss for r in history.epochs] == [r.val_loss for r in reference_history.epochs]
    assert read_checkpoint(path).epoch == 3


def test_prior_interrupted_at_an_epoch_end_and_resumed_equals_uninterrupted(corpus, vqvae, tmp_path):
    reference, _ = train_prior(vqvae, corpus, PRIOR, epochs=3, seed=2, **FAST)  # dropout draws random numbers
    path = tmp_path / "prior.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_prior(vqvae, corpus, PRIOR, epochs=3, seed=2, checkpoint_path=path, checkpoint_every=5,
                    progress=_InterruptAt("epoch 2/3: train"), **FAST)
    assert read_checkpoint(path).epoch == 2  # written on the interrupt although not due before epoch 5
    resumed, _ = train_prior(vqvae, corpus, PRIOR, seed=2, resume=path, **FAST)  # epochs: the checkpoint's
    _assert_same_state(_state(reference), _state(resumed))


def test_resume_refuses_another_run(corpus, vqvae, tmp_path):
    path = tmp_path / "vq.ckpt"
    train_vqvae(corpus, VQ, epochs=1, checkpoint_path=path, **FAST)
    with pytest.raises(ValueError, match="seed"):
        train_vqvae(corpus, VQ, epochs=1, seed=9, resume=path, **FAST)
    with pytest.raises(ValueError, match="vqvae checkpoint, not a prior"):
        train_prior(vqvae, corpus, PRIOR, resume=path, **FAST)
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        read_checkpoint(tmp_path / "junk.ckpt")


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(corpus, tmp_path, monkeypatch):
    path = tmp_path / "vq.ckpt"
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the checkpoint of epoch 2
            raise OSError("simulated crash while renaming")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OSError, match="simulated crash"):
        train_vqvae(corpus, VQ, epochs=3, seed=5, checkpoint_path=path, **FAST)
    monkeypatch.setattr(os, "replace", real_replace)
    assert read_checkpoint(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vq.ckpt"]  # no temporary file left behind
    _, history = train_vqvae(corpus, VQ, epochs=3, seed=5, checkpoint_path=path, resume=path, **FAST)
    assert [r.epoch for r in history.epochs] == [1, 2, 3]


def test_a_diverging_run_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    path = tmp_path / "vq.ckpt"
    # An infinite learning rate from epoch 2 on (4 steps an epoch) turns the weights, then the loss, into NaN.
    monkeypatch.setattr("distill_nb.training.learning_rate",
                        lambda step, total, peak: math.inf if step >= 4 else learning_rate(step, total, peak))
    with pytest.raises(ValueError, match=r"VQ-VAE training diverged in epoch 2 \(train loss nan.*still holds epoch 1"):
        train_vqvae(corpus, VQ, epochs=3, seed=5, checkpoint_path=path, **FAST)
    checkpoint = read_checkpoint(path)
    assert checkpoint.epoch == 1 and math.isfinite(checkpoint.history.epochs[0].train_loss)


def test_low_codebook_utilisation_warns(corpus):
    # 2 chunks x 8 positions = 16 vectors per batch for 64 codes: most codes stay below the dead threshold.
    big_codebook = dataclasses.replace(VQ, codebook_size=64)
    with pytest.warns(RuntimeWarning, match=r"codebook level \d uses only"):
        _, history = train_vqvae(corpus, big_codebook, epochs=1, spectrogram=SPEC, steps_per_epoch=3, batch_size=2)
    assert any("codebook level" in w for w in history.warnings)


def test_memorisation_warning_rule():
    def history(train_ppl, val_ppl):
        records = [EpochRecord(epoch=i + 1, train_loss=math.log(t), val_loss=math.log(v), lr=1e-3, seconds=1.0,
                               train_perplexity=t, val_perplexity=v)
                   for i, (t, v) in enumerate(zip(train_ppl, val_ppl))]
        return TrainingHistory(stage="prior", epochs=records, best_epoch=1)

    assert memorisation_warning(history([3.0, 2.0, 1.6], [3.5, 3.2, 3.4])) is None
    message = memorisation_warning(history([3.0, 1.8, 1.3], [3.5, 3.2, 4.1]))
    assert "epoch 3" in message and "1.30" in message and "4.10" in message


def test_train_model_fills_metadata_saves_and_resumes_in_the_prior_stage(corpus, tmp_path):
    settings = dict(vqvae_epochs=1, prior_epochs=2, name="tiny", measure_quality=False, **FAST)
    loaded, histories = train_model(corpus, VQ, PRIOR, **settings)
    assert set(histories) == {"vqvae", "prior"}
    meta = loaded.metadata
    assert meta["name"] == "tiny" and re.match(r"\d{4}-\d\d-\d\dT", meta["created"])
    assert meta["training"]["vqvae"]["epochs"][0]["epoch"] == 1
    assert meta["training"]["corpus"]["files"] == 10 and "quality" not in meta
    counts = loaded.train_code_counts
    frames = sum(1 + len(a) // 256 for a in corpus.train_audio)  # the training files as one stream
    assert counts.shape == (3, 8) and counts.dtype == torch.long
    assert torch.all(counts.sum(dim=1) == math.ceil(frames / 16) * 2)  # 2 rows per column, every level
    again = load_model(save_model(loaded, tmp_path / "tiny.distill"))
    assert again.metadata == meta and torch.equal(again.train_code_counts, counts)

    path = tmp_path / "run.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train_model(corpus, VQ, PRIOR, checkpoint_path=path, progress=_InterruptAt("prior epoch 2/2 step 1/"),
                    **settings)
    assert read_checkpoint(path).stage == "prior"
    resumed, resumed_histories = train_model(corpus, VQ, PRIOR, checkpoint_path=path, resume=path, **settings)
    _assert_same_state(_state(loaded.vqvae), _state(resumed.vqvae))
    _assert_same_state(_state(loaded.prior), _state(resumed.prior))
    assert resumed_histories["vqvae"].epochs[0].val_loss == histories["vqvae"].epochs[0].val_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = """
    import hashlib, sys
    import torch
    from distill_nb.spectrogram import Spectrogram, SpectrogramConfig
    from distill_nb.corpus import demo_corpus
    from distill_nb.model_file import save_model
    from distill_nb.prior import PriorConfig
    from distill_nb.stages import train_model
    from distill_nb.training import is_main_process
    from distill_nb.vqvae import VQVAEConfig

    out, digest_dir = sys.argv[1], sys.argv[2]
    spec = Spectrogram(SpectrogramConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=16))
    corpus = demo_corpus(seed=0, seconds=40.0, sample_rate=16000)
    loaded, _ = train_model(
        corpus, VQVAEConfig(n_mels=16, channels=(4, 8, 8, 8), strides=((2, 2), (2, 2), (2, 2), (1, 2)), res_blocks=1,
                            code_dim=8, levels=3, codebook_size=8),
        PriorConfig(codebook_size=8, levels=3, column_tokens=6, seq_len=48, d_model=16, n_layers=1, n_heads=2),
        vqvae_epochs=1, prior_epochs=1, spectrogram=spec, steps_per_epoch=3, batch_size=4,
        checkpoint_path=out + "/run.ckpt", measure_quality=False)
    digest = hashlib.sha256()
    for module in (loaded.vqvae, loaded.prior):
        for key, value in sorted(module.state_dict().items()):
            digest.update(key.encode() + value.numpy().tobytes())
    # A file per rank, not stdout: the ranks share torchrun's stdout, and a test that reads it once lost a line.
    with open(f"{digest_dir}/rank{torch.distributed.get_rank()}", "w") as f:
        f.write(digest.hexdigest())
    if is_main_process():
        save_model(loaded, out + "/model.distill")
"""


@pytest.mark.slow
def test_two_process_ddp_on_cpu_trains_identical_replicas_and_writes_once(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    out, digest_dir = tmp_path / "out", tmp_path / "digests"
    out.mkdir()
    digest_dir.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(script), str(out), str(digest_dir)],
        capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = {p.name: p.read_text() for p in digest_dir.iterdir()}
    assert set(digests) == {"rank0", "rank1"}, (sorted(digests), result.stdout[-2000:], result.stderr[-2000:])
    assert digests["rank0"] == digests["rank1"]
    assert sorted(p.name for p in out.iterdir()) == ["model.distill", "run.ckpt"]
    assert load_model(out / "model.distill").metadata["training"]["processes"] == 2


@pytest.fixture
def sound_folder(tmp_path):
    folder = tmp_path / "sounds"
    write_demo_folder(folder, seed=2, seconds=10.0)
    (folder / "broken.wav").write_text("not audio")
    soundfile.write(folder / "quiet.wav", np.zeros(4800, dtype=np.float32), 48000)
    return folder


def test_a_folder_of_good_and_bad_files_trains_on_the_good_ones(tmp_path):
    write_demo_folder(tmp_path, seed=3, seconds=12.0, sample_rate=16000)
    tone = 0.5 * np.sin(np.linspace(0, 2000, 24000)).astype(np.float32)
    soundfile.write(tmp_path / "stereo.wav", np.stack([tone, 0.5 * tone], axis=1), 16000)
    soundfile.write(tmp_path / "low_rate.wav", tone, 22050)
    soundfile.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    soundfile.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    (tmp_path / "corrupt.flac").write_bytes(b"fLaC" + bytes(100))
    (tmp_path / "text.wav").write_text("a text file renamed to .wav")
    corpus = build_corpus(tmp_path, sample_rate=16000)
    assert sorted(set(corpus.train_files + corpus.val_files)) == [
        "low_rate.wav", "phrase_000.wav", "phrase_001.wav", "phrase_002.wav", "stereo.wav"]
    assert sorted(item.path for item in corpus.skipped) == ["corrupt.flac", "empty.wav", "silent.wav", "text.wav"]
    loaded, histories = train_model(corpus, VQ, PRIOR, vqvae_epochs=1, prior_epochs=1, measure_quality=False, **FAST)
    assert math.isfinite(histories["prior"].epochs[0].val_loss)
    assert loaded.metadata["training"]["corpus"]["skipped"] == 4


def test_cli_train_then_info(sound_folder, tmp_path, capsys):
    out = tmp_path / "model.distill"
    code = cli.main(["train", str(sound_folder), "-o", str(out), "--preset", "small", "--epochs", "1",
                     "--prior-epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "broken.wav: could not be read" in printed and "quiet.wav: silent" in printed
    assert re.search(r"preset 'small' on \d+ threads: training takes about \d+ min", printed)
    assert "VQ-VAE" in printed and "perplexity" in printed and "codebook level 0" in printed
    assert "spectral convergence" in printed and "feature distance to the corpus" in printed
    assert out.is_file() and not (tmp_path / "model.ckpt").exists()  # removed once the model is saved

    assert cli.main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "model.distill" in info and "parameters" in info and "codebook_size=16" in info
    assert "level 1:" in info and "prior:" in info
    assert re.search(r"reconstruction of held-out audio: spectral convergence \d\.\d{3} "
                     r"\(Griffin-Lim ceiling \d\.\d{3}\)", info)
    assert "silent share" in info and "pitchiness" in info


def test_cli_train_keeps_the_checkpoint_when_asked_and_refuses_a_too_short_corpus(tmp_path, capsys):
    write_demo_folder(tmp_path / "short", seed=2, seconds=2.0)
    assert cli.main(["train", str(tmp_path / "short"), "-o", str(tmp_path / "short.distill")]) == 2
    assert "holds 2.00 s of usable audio; training needs at least 5 s" in capsys.readouterr().err
    write_demo_folder(tmp_path / "sounds", seed=2, seconds=6.0)  # phrases of 4 s and 2 s
    assert cli.main(["train", str(tmp_path / "sounds"), "-o", str(tmp_path / "x.distill"),
                     "--max-file-seconds", "1"]) == 2
    assert "lasts 4.0 s, above the limit of 1.0 s per file" in capsys.readouterr().err
    out = tmp_path / "kept.distill"
    assert cli.main(["train", str(tmp_path / "sounds"), "-o", str(out), "--preset", "small", "--epochs", "1",
                     "--prior-epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--keep-checkpoint"]) == 0
    assert f"checkpoint kept: {tmp_path / 'kept.ckpt'}" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "kept.ckpt").stage == "prior" and out.is_file()


def test_cli_info_on_a_bad_file_is_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.distill"
    bad.write_bytes(b"\x00" * 64)
    assert cli.main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad.distill" in err


def test_cli_train_on_a_folder_without_audio_fails_cleanly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", str(tmp_path / "empty"), "-o", str(tmp_path / "m.distill")]) == 2
    assert "no audio files" in capsys.readouterr().err


# --- the data the stages see -----------------------------------------------------------------------------


def test_mel_windows_run_on_from_one_file_into_the_next():
    mels = [torch.full((2, 5), 1.0), torch.full((2, 3), 2.0), torch.full((2, 30), 3.0)]
    windows = random_mel_windows(mels, 64, 8, torch.Generator().manual_seed(0))
    assert windows.shape == (64, 2, 8)
    values = set()
    for window in windows:
        row = window[0]
        assert torch.equal(window[0], window[1])
        values.add(tuple(row.tolist()))
        # Each window is pieces of files: a file's frames are contiguous runs of its value, the first
        # piece starts anywhere in its file and later pieces start at a file's first frame.
        changes = [i for i in range(1, 8) if row[i] != row[i - 1]]
        for start in changes:
            run = row[start:].tolist()
            value = run[0]
            length = {1.0: 5, 2.0: 3, 3.0: 30}[value]
            assert all(v == value for v in run[: min(length, len(run))])
    assert any(len(set(v)) > 1 for v in values), "some windows cross from one file into another"
    again = random_mel_windows(mels, 64, 8, torch.Generator().manual_seed(0))
    assert torch.equal(again, windows)


def test_token_windows_start_on_column_boundaries_and_repeat_a_short_stream():
    stream = torch.arange(60)
    windows = random_token_windows(stream, 32, 12, 6, torch.Generator().manual_seed(1))
    assert windows.shape == (32, 12)
    assert all(int(w[0]) % 6 == 0 and torch.equal(w, torch.arange(int(w[0]), int(w[0]) + 12)) for w in windows)
    short = random_token_windows(torch.arange(6), 4, 12, 6, torch.Generator().manual_seed(1))
    assert torch.equal(short[0], torch.cat([torch.arange(6), torch.arange(6)]))


def test_the_code_stream_plays_the_corpus_in_several_orders(corpus, vqvae):
    mels = file_mels(corpus, "train", SPEC)
    once = code_stream(vqvae, mels, seed=0, orders=1)
    frames = sum(m.shape[1] for m in mels)
    assert once.shape == (math.ceil(frames / 16) * GEOMETRY.column_tokens,)
    assert torch.equal(once, vqvae.encode_stream(torch.cat(mels, dim=1)).reshape(-1))  # the files in order
    several = code_stream(vqvae, mels, seed=0, orders=3)
    assert len(several) >= 3 * len(once) - 3 * GEOMETRY.column_tokens
    assert torch.equal(code_stream(vqvae, mels, seed=0, orders=3), several)
    assert not torch.equal(code_stream(vqvae, mels, seed=1, orders=3), several)


def test_the_training_time_estimate_scales_with_the_steps(corpus):
    state = torch.get_rng_state()
    one = estimate_training_seconds(corpus, "small", spectrogram=SPEC, vqvae_epochs=1, prior_epochs=1)
    ten = estimate_training_seconds(corpus, "small", spectrogram=SPEC, vqvae_epochs=10, prior_epochs=10)
    assert 0 < one < ten and torch.equal(torch.get_rng_state(), state)
