import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import TINY_H, TINY_K, TINY_Q, TINY_SR, TINY_W, tiny_model

from distill_nb.generation import (MAX_DURATION_S, GenerationResult, GenerationSettings, encode_audio, generate,
                                   generate_audio_from_prior, generate_takes)
from distill_nb.prior import flatten_codes, unflatten_codes
from distill_nb.sampling import sample_codes

SR, CHUNK = TINY_SR, TINY_SR
H, W, Q, K = TINY_H, TINY_W, TINY_Q, TINY_K
WINDOW = 2 * W  # the tiny prior's window, in columns
COLUMN = 16 * 64  # samples per grid column
FAST = dict(griffin_lim_iters=2, mode="independent")  # most tests are about independent chunks


@pytest.fixture(scope="module")
def loaded():
    return tiny_model()


def settings(**kwargs):
    return GenerationSettings(**{**FAST, **kwargs})


def noise(seconds, seed=0):
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal(round(seconds * SR))).astype(np.float32)


def stream_columns(total):
    """New columns a continuation take holds: those whose frames cover it, and one more."""
    return math.ceil((1 + total // 64) / 16) + 1


# --- shapes and lengths ----------------------------------------------------------------------------

def test_independent_codes_mels_and_audio_have_the_documented_shapes(loaded):
    result = generate(loaded, settings(duration_s=2.5), seed=1)
    assert isinstance(result, GenerationResult)
    n_chunks = 4  # 3 * 8000 - 2 * 2400 = 19200 < 20000 samples: 3 chunks do not cover 2.5 s
    assert result.codes.shape == (n_chunks, H * W, Q) and result.codes.dtype == torch.long
    assert 0 <= int(result.codes.min()) and int(result.codes.max()) < K
    assert result.mels.shape == (n_chunks, 32, 126) and result.mels.dtype == torch.float32
    assert result.audio.dtype == np.float32 and result.audio.shape == (20000,)
    assert np.isfinite(result.audio).all()
    assert result.sample_rate == SR and result.duration_s == 2.5 and result.seed == 1


def test_a_continuation_take_is_one_stream_of_columns(loaded):
    result = generate(loaded, settings(duration_s=2.5, mode="continuation"), seed=1)
    columns = stream_columns(20000)
    assert result.codes.shape == (1, H * columns, Q)
    assert result.mels.shape == (1, 32, 16 * columns)
    assert result.audio.shape == (20000,)
    # The stream decodes as one piece: its mel is the VQ-VAE's decoding of all its columns at once.
    with torch.inference_mode():
        whole = loaded.vqvae.decode_codes(result.codes, 16 * columns)
    torch.testing.assert_close(result.mels, whole, rtol=1e-5, atol=1e-5)


LENGTH_CASES = [(d, o) for d in (0.5, 1, 2.5, 10, 30) for o in (0, 1, 2400)] + [
    (0.5, CHUNK - 1), (1, CHUNK - 1), ((CHUNK + 3) / SR, CHUNK - 1),  # one step of 1 sample: 4 chunks
]


@pytest.mark.parametrize("duration_s, overlap", LENGTH_CASES)
def test_output_has_exactly_the_requested_samples(loaded, duration_s, overlap):
    result = generate(loaded, settings(duration_s=duration_s, overlap_samples=overlap), seed=0)
    total = round(duration_s * SR)
    assert result.audio.shape == (total,)
    # The fewest chunks that cover the duration.
    n = result.codes.shape[0]
    assert n * CHUNK - (n - 1) * overlap >= total
    assert n == 1 or (n - 1) * CHUNK - (n - 2) * overlap < total


@pytest.mark.parametrize("mode", ["independent", "continuation"])
@pytest.mark.parametrize("stitch", ["crossfade", "overlap_add"])
@pytest.mark.parametrize("duration_s", [0.01, 0.5, 2.5, 10])
def test_every_mode_and_stitching_gives_exact_lengths(loaded, mode, stitch, duration_s):
    result = generate(loaded, settings(duration_s=duration_s, mode=mode, stitch=stitch), seed=2)
    assert result.audio.shape == (round(duration_s * SR),)
    assert np.isfinite(result.audio).all()


@pytest.mark.parametrize("mode", ["independent", "continuation"])
def test_trimmed_audio_fades_out_to_silence(loaded, mode):
    result = generate(loaded, settings(duration_s=2.5, mode=mode), seed=0)  # more audio is rendered than kept
    assert result.audio[-1] == 0.0
    assert np.abs(result.audio[-SR // 1000:]).max() < np.abs(result.audio).max()


def test_independent_seams_sit_at_the_centre_of_each_crossfade(loaded):
    result = generate(loaded, settings(duration_s=2.5, overlap_samples=2400), seed=0)
    step = CHUNK - 2400
    assert result.seam_samples == [i * step + 1200 for i in range(1, 4)]


@pytest.mark.parametrize("context", [None, 1, WINDOW - 1])
def test_continuation_seams_sit_where_each_window_starts_its_new_columns(loaded, context):
    result = generate(loaded, settings(duration_s=10, mode="continuation", context_columns=context), seed=0)
    added = WINDOW - (WINDOW - W if context is None else context)  # new columns per window after the first
    expected = list(range(WINDOW * COLUMN, 10 * SR, added * COLUMN))
    assert result.seam_samples == expected


# --- progress ---------------------------------------------------------------------------------------

def test_progress_reports_each_window_in_continuation_and_ends_at_one(loaded):
    calls = []
    generate(loaded, settings(duration_s=2.5, mode="continuation"), seed=0,
             progress=lambda fraction, message: calls.append((fraction, message)))
    n = 1 + math.ceil((stream_columns(20000) - WINDOW) / W)
    window_messages = [m for _, m in calls if m.startswith("Sampling window")]
    assert window_messages == [f"Sampling window {i}/{n}..." for i in range(1, n + 1)]
    fractions = [f for f, _ in calls]
    assert fractions == sorted(fractions) and 0.0 <= fractions[0] and fractions[-1] == 1.0


def test_progress_in_independent_mode_names_the_batch(loaded):
    calls = []
    generate(loaded, settings(duration_s=2.5), seed=0, progress=lambda f, m: calls.append((f, m)))
    assert any(re.fullmatch(r"Sampling chunks 1-4/4 in one batch\.\.\.", m) for _, m in calls)
    assert calls[-1][0] == 1.0
    one = []
    generate(loaded, settings(duration_s=1), seed=0, progress=lambda f, m: one.append(m))
    assert "Sampling chunk 1/1..." in one


# --- seeds ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["independent", "continuation"])
@pytest.mark.parametrize("stitch", ["crossfade", "overlap_add"])
def test_same_seed_gives_identical_codes_and_audio(loaded, mode, stitch):
    s = settings(duration_s=2.5, mode=mode, stitch=stitch)
    first, second = generate(loaded, s, seed=123), generate(loaded, s, seed=123)
    assert torch.equal(first.codes, second.codes)
    np.testing.assert_array_equal(first.audio, second.audio)
    other = generate(loaded, s, seed=124)
    assert not torch.equal(first.codes, other.codes)


def test_chunk_i_codes_equal_a_separate_run_with_seed_plus_i(loaded):
    long = generate(loaded, settings(duration_s=2.5), seed=1000)
    for i in range(long.codes.shape[0]):
        alone = generate(loaded, settings(duration_s=1), seed=1000 + i)
        assert torch.equal(long.codes[i], alone.codes[0])
        direct = unflatten_codes(sample_codes(loaded.prior, 1, [1000 + i], top_p=1.0, length=H * W * Q), Q)[0]
        assert torch.equal(long.codes[i], direct)


@pytest.mark.parametrize("context", [None, 3])
def test_continuation_window_i_is_sampled_with_seed_plus_i_after_the_last_columns(loaded, context):
    result = generate(loaded, settings(duration_s=6, mode="continuation", context_columns=context), seed=40)
    c = WINDOW - W if context is None else context
    tokens = flatten_codes(result.codes)[0]
    column = H * Q
    expected = sample_codes(loaded.prior, 1, [40], top_p=1.0)[0]  # the first window: all its columns
    window = 1
    while len(expected) < len(tokens):
        prefix = expected[-c * column:][None]
        new = min(WINDOW - c, (len(tokens) - len(expected)) // column)
        tokens_i = sample_codes(loaded.prior, 1, [40 + window], top_p=1.0, prefix=prefix, length=(c + new) * column)
        expected = torch.cat([expected, tokens_i[0, c * column:]])
        window += 1
    assert torch.equal(tokens, expected)


def test_the_largest_seed_works_for_many_chunks(loaded):
    # seed + i passes 2**63 here; the sampler takes seeds below 2**64.
    result = generate(loaded, settings(duration_s=2.5), seed=2**63 - 1)
    assert result.seed == 2**63 - 1 and result.codes.shape[0] == 4


@pytest.mark.parametrize("mode", ["independent", "continuation"])
def test_takes_in_one_batch_equal_separate_generations(loaded, mode):
    s = settings(duration_s=2.5, mode=mode)
    takes = generate_takes(loaded, s, [5, 9])
    for take, seed in zip(takes, [5, 9]):
        alone = generate(loaded, s, seed=seed)
        assert take.seed == seed
        assert torch.equal(take.codes, alone.codes)
        np.testing.assert_array_equal(take.audio, alone.audio)


def test_a_missing_seed_is_drawn_and_returned(loaded):
    audio, seed = generate_audio_from_prior(loaded, duration_s=1, seed=None)
    assert isinstance(seed, int) and 0 <= seed < 2**63
    again, same_seed = generate_audio_from_prior(loaded, duration_s=1, seed=seed)
    assert same_seed == seed
    np.testing.assert_array_equal(audio, again)
    assert audio.dtype == np.float32 and audio.shape == (SR,)


def test_generate_audio_from_prior_reports_progress_and_exact_length(loaded):
    calls = []
    audio, seed = generate_audio_from_prior(loaded, temperature=0.8, top_k=5, top_p=0.95, duration_s=1.5,
                                            overlap_samples=400, seed=7,
                                            progress_callback=lambda f, m: calls.append((f, m)))
    assert audio.shape == (12000,) and seed == 7
    assert calls[-1][0] == 1.0


# --- encoding and prompts ---------------------------------------------------------------------------

def test_encode_audio_gives_the_codes_of_one_stream(loaded):
    audio = noise(2.5)
    codes = encode_audio(loaded, audio)
    columns = math.ceil((1 + len(audio) // 64) / 16)
    assert codes.shape == (1, H * columns, Q) and codes.dtype == torch.long
    mel = loaded.spectrogram.waveform_to_mel(audio)
    assert torch.equal(codes, loaded.vqvae.encode(mel))
    assert torch.equal(encode_audio(loaded, audio), codes)


def prompt_columns(loaded, prompt, c):
    """The prompt's last c columns, as the mel trimmed at its start to whole columns encodes them."""
    mel = loaded.spectrogram.waveform_to_mel(prompt)
    frames = mel.shape[-1]
    return loaded.vqvae.encode(mel[..., frames % 16:]).reshape(1, -1)[:, -c * H * Q:]


@pytest.mark.parametrize("mode", ["independent", "continuation"])
def test_a_prompt_primes_the_first_window_with_its_last_columns(loaded, mode):
    c = 3
    prompt = noise(2.0, seed=3)
    s = settings(duration_s=2, mode=mode, context_columns=c)
    primed = generate(loaded, s, seed=8, prompt=prompt)
    prefix = prompt_columns(loaded, prompt, c)
    length = c * H * Q + (H * W * Q if mode == "independent" else (WINDOW - c) * H * Q)
    direct = sample_codes(loaded.prior, 1, [8], top_p=1.0, prefix=prefix, length=length)[0, c * H * Q:]
    first = flatten_codes(primed.codes[:1])[0, : len(direct)]
    assert torch.equal(first, direct)
    unprimed = generate(loaded, s, seed=8)
    assert not torch.equal(flatten_codes(unprimed.codes[:1])[0, : len(direct)], direct)
    assert primed.audio.shape == unprimed.audio.shape and primed.prompt_samples == len(prompt)


def test_a_prompt_shorter_than_the_context_primes_with_what_it_has(loaded):
    prompt = noise(0.3, seed=4)  # 38 frames: 2 whole columns
    result = generate(loaded, settings(duration_s=1, mode="continuation", context_columns=6), seed=8, prompt=prompt)
    prefix = prompt_columns(loaded, prompt, 2)
    direct = sample_codes(loaded.prior, 1, [8], top_p=1.0, prefix=prefix)[0, prefix.shape[1]:]
    tokens = flatten_codes(result.codes)[0]
    assert len(tokens) < len(direct) and torch.equal(tokens, direct[: len(tokens)])


@pytest.mark.parametrize("mode", ["independent", "continuation"])
def test_include_prompt_puts_the_prompt_first_and_the_take_right_after_it(loaded, mode):
    prompt = noise(1.5, seed=5)
    s = settings(duration_s=2, mode=mode, context_columns=2, normalise="off")
    alone = generate(loaded, s, seed=8, prompt=prompt)
    joined = generate(loaded, s, seed=8, prompt=prompt, include_prompt=True)
    assert joined.audio.shape == (len(prompt) + 2 * SR,)
    overlap = len(prompt) - joined.seam_samples[0]
    overlap = 2 * overlap  # the seam is the crossfade's centre
    assert 0 < overlap <= 2 * COLUMN
    np.testing.assert_array_equal(joined.audio[: len(prompt) - overlap], prompt[: len(prompt) - overlap])
    np.testing.assert_array_equal(joined.audio[len(prompt):], alone.audio)
    assert joined.include_prompt and joined.to_metadata()["include_prompt"] is True


def test_independent_mode_with_a_prompt_needs_room_for_a_chunk_in_the_window(loaded):
    with pytest.raises(ValueError, match="context_columns"):
        generate(loaded, settings(duration_s=1, context_columns=W + 1), seed=0, prompt=noise(2.0))


# --- controls reach the sampler ---------------------------------------------------------------------

def test_per_level_temperature_and_filters_reach_the_sampler(loaded):
    s = settings(duration_s=1, temperature=(0.05, 3.0), top_k=6, top_p=0.8, min_p=0.05)
    result = generate(loaded, s, seed=21)
    direct = sample_codes(loaded.prior, 1, [21], temperature=(0.05, 3.0), top_k=6, top_p=0.8, min_p=0.05,
                          length=H * W * Q)
    assert torch.equal(flatten_codes(result.codes), direct)
    plain = generate(loaded, settings(duration_s=1), seed=21)
    assert not torch.equal(result.codes, plain.codes)


# --- level normalisation ----------------------------------------------------------------------------

def test_peak_normalisation_puts_the_loudest_sample_at_the_target(loaded):
    for target in (None, -6.0):
        result = generate(loaded, settings(duration_s=2, target_dbfs=target), seed=3)
        peak_db = 20 * np.log10(np.abs(result.audio).max())
        assert peak_db == pytest.approx(-1.0 if target is None else target, abs=1e-4)
    raw = generate(loaded, settings(duration_s=2, normalise="off"), seed=3)
    normalised = generate(loaded, settings(duration_s=2), seed=3)
    assert raw.gain_db == 0.0
    np.testing.assert_allclose(normalised.audio, raw.audio * 10 ** (normalised.gain_db / 20), rtol=1e-5, atol=1e-7)
    assert normalised.to_metadata()["gain_db"] == pytest.approx(normalised.gain_db, abs=1e-3)


# --- metadata ---------------------------------------------------------------------------------------

def test_metadata_is_json_safe_and_complete(loaded):
    s = settings(duration_s=1.5, temperature=(0.9, 1.1), mode="continuation")
    metadata = generate(loaded, s, seed=3).to_metadata()
    assert json.loads(json.dumps(metadata)) == metadata
    assert metadata["settings"] == {**s.to_dict(), "temperature": [0.9, 1.1]}
    assert metadata["settings"]["normalise"] == "peak" and metadata["settings"]["target_dbfs"] is None
    assert metadata["seed"] == 3 and metadata["model_name"] == "tiny" and metadata["sample_rate"] == SR
    assert metadata["duration_s"] == 1.5 and metadata["distill_nb_version"] and metadata["pieces"] == 1
    assert {"sampling_s", "decoding_s", "griffin_lim_s", "stitching_s", "total_s"} <= set(metadata["timings"])


# --- bad input --------------------------------------------------------------------------------------

BAD_SETTINGS = [
    ("temperature", 0.0, ValueError), ("temperature", -1.0, ValueError), ("temperature", math.inf, ValueError),
    ("temperature", math.nan, ValueError), ("temperature", "1", TypeError), ("temperature", True, TypeError),
    ("temperature", (1.0, 0.0), ValueError), ("temperature", (), ValueError), ("temperature", (1.0, None), TypeError),
    ("top_k", -1, ValueError), ("top_k", 1.5, TypeError), ("top_k", True, TypeError),
    ("top_p", -0.1, ValueError), ("top_p", 1.1, ValueError), ("top_p", math.nan, ValueError),
    ("top_p", "0.9", TypeError), ("min_p", 1.5, ValueError), ("min_p", -0.5, ValueError),
    ("duration_s", 0.0, ValueError), ("duration_s", -1.0, ValueError), ("duration_s", MAX_DURATION_S + 1, ValueError),
    ("duration_s", math.inf, ValueError), ("duration_s", None, TypeError),
    ("overlap_samples", -1, ValueError), ("overlap_samples", 10.0, TypeError), ("overlap_samples", False, TypeError),
    ("mode", "sequential", ValueError), ("stitch", "glue", ValueError), ("crossfade_curve", "cubic", ValueError),
    ("context_columns", 0, ValueError), ("context_columns", 1.0, TypeError),
    ("griffin_lim_iters", 0, ValueError), ("griffin_lim_iters", 513, ValueError),
    ("griffin_lim_iters", "32", TypeError),
    ("normalise", "loud", ValueError), ("target_dbfs", 1.0, ValueError), ("target_dbfs", math.nan, ValueError),
    ("target_dbfs", "-1", TypeError),
]


@pytest.mark.parametrize("name, value, error", BAD_SETTINGS)
def test_bad_settings_raise_naming_the_parameter(name, value, error):
    with pytest.raises(error, match=re.escape(name.split("[")[0])):
        GenerationSettings(**{name: value})


@pytest.mark.parametrize("name, value, expected", [
    ("temperature", (1.0, 1.0, 1.0), "2 levels"),
    ("overlap_samples", CHUNK, f"[0, {CHUNK})"),
    ("context_columns", WINDOW, f"[1, {WINDOW})"),
])
def test_settings_that_do_not_fit_the_model_raise(loaded, name, value, expected):
    with pytest.raises(ValueError, match=re.escape(name)) as error:
        generate(loaded, settings(**{name: value}), seed=0)
    assert expected in str(error.value)


@pytest.mark.parametrize("seed, error", [(-1, ValueError), (2**63, ValueError), (True, TypeError),
                                         (1.0, TypeError), ("3", TypeError)])
def test_bad_seeds_raise(loaded, seed, error):
    with pytest.raises(error, match=r"seed.*\[0, 9223372036854775807\]"):
        generate(loaded, settings(duration_s=1), seed=seed)


def test_bad_take_lists_raise(loaded):
    with pytest.raises(ValueError, match="seeds"):
        generate_takes(loaded, settings(), [])
    with pytest.raises(TypeError, match=r"seeds\[1\]"):
        generate_takes(loaded, settings(), [1, 2.0])
    with pytest.raises(TypeError, match="settings"):
        generate(loaded, {"duration_s": 1.0}, seed=0)


@pytest.mark.parametrize("prompt", [np.zeros((2, 100), np.float32), np.zeros(0, np.float32),
                                    np.full(100, np.nan, np.float32)])
def test_bad_prompts_raise(loaded, prompt):
    with pytest.raises(ValueError, match="prompt"):
        generate(loaded, settings(duration_s=1), seed=0, prompt=prompt)


def test_a_prompt_that_is_not_samples_raises(loaded):
    with pytest.raises(TypeError, match="prompt"):
        generate(loaded, settings(duration_s=1), seed=0, prompt="take.wav")


def test_a_model_without_prior_cannot_generate(loaded):
    with pytest.raises(ValueError, match="^Model has no trained prior$"):
        generate(replace(loaded, prior=None), settings(duration_s=1), seed=0)
    with pytest.raises(ValueError, match="^Model has no trained prior$"):
        generate_audio_from_prior(replace(loaded, prior=None), duration_s=1)


def test_settings_normalise_and_serialise_their_values():
    s = GenerationSettings(temperature=[np.float32(0.5), 2], top_k=np.int64(3), duration_s=np.float64(2.0))
    assert s.temperature == (0.5, 2.0) and type(s.top_k) is int and type(s.duration_s) is float
    assert json.loads(json.dumps(s.to_dict()))["temperature"] == [0.5, 2.0]
    assert GenerationSettings(**{**s.to_dict(), "temperature": tuple(s.to_dict()["temperature"])}) == s
