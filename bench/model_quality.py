"""How good a model is, in numbers: reconstruction, prior perplexity and generated-code statistics.

    .venv/bin/python bench/model_quality.py [--model PATH] [--seconds 30] [--n-iter 32]

Held-out audio is a fresh procedural demo corpus (seed 1; the default model trains on seed 0), cut into
1 s chunks. For each chunk x, with the same Griffin-Lim settings and seeds:

- ceiling: mel(x) -> Griffin-Lim, the best any model can do through this mel front end;
- model:   mel(x) -> encode -> codes -> decode -> Griffin-Lim.

Spectral convergence (SC) is ||S(x)| - |S(y)||_F / ||S(x)||_F on the linear STFT magnitude; log-spectral
distance (LSD) is the per-frame RMS of the dB difference, averaged over frames (silence floored at
-100 dB). The prior's perplexity is exp(cross-entropy) on the held-out codes; the Jensen-Shannon divergence
(bits, per level) compares codes sampled with the default settings against the training-code histogram.
Writes bench/results/model_quality.md.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from common import write_results

from distill_nb.analysis import code_histograms, js_divergence
from distill_nb.corpus import demo_corpus
from distill_nb.generation import GenerationSettings
from distill_nb.inversion import InversionSettings
from distill_nb.model_file import LoadedVQModel, load_default_model, load_model
from distill_nb.prior import flatten_codes
from distill_nb.sampling import sample_codes


def magnitudes(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft)
    return torch.stft(audio, n_fft, hop, window=window, return_complex=True).abs()


def spectral_convergence(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    return float(torch.linalg.norm(reference - estimate) / torch.linalg.norm(reference))


def log_spectral_distance(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    db = lambda m: 20 * torch.log10(m.clamp_min(1e-5))  # noqa: E731  (-100 dB floor)
    per_frame = (db(reference) - db(estimate)).pow(2).mean(dim=-2).sqrt()  # [B, frames]
    return float(per_frame.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .distill file (default: the bundled default model)")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds of held-out demo audio")
    parser.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations")
    parser.add_argument("--samples", type=int, default=64, help="sampled sequences for the histograms")
    args = parser.parse_args()

    loaded = load_model(args.model) if args.model else load_default_model()
    spectrogram, vqvae, prior = loaded.spectrogram, loaded.model, loaded.prior
    held_out = demo_corpus(seed=1, seconds=args.seconds, sample_rate=loaded.sample_rate)
    chunks = torch.cat([held_out.fixed_chunks("train"), held_out.fixed_chunks("val")])
    n_fft, hop = spectrogram.config.n_fft, spectrogram.config.hop_length

    with torch.inference_mode():
        mel = spectrogram.waveform_to_mel(chunks)
        codes = vqvae.encode(mel)
        decoded = vqvae.decode_codes(codes, mel.shape[-1])
        n = chunks.shape[-1]
        inversion = InversionSettings(griffin_lim_iters=args.n_iter)
        ceiling = spectrogram.mel_to_waveform(mel, inversion, length=n, generator=torch.Generator().manual_seed(0))
        model = spectrogram.mel_to_waveform(decoded, inversion, length=n, generator=torch.Generator().manual_seed(0))
        reference = magnitudes(chunks, n_fft, hop)
        rows = [("mel -> Griffin-Lim (ceiling)", magnitudes(ceiling, n_fft, hop)),
                ("VQ-VAE codes -> Griffin-Lim", magnitudes(model, n_fft, hop))]
        mel_rmse = float((decoded - mel).pow(2).mean().sqrt())

    lines = [f"model: {loaded.metadata.get('name', '?')}; held-out: {len(chunks)} chunks of 1 s "
             f"(demo corpus seed 1), Griffin-Lim n_iter={args.n_iter}", f"{'path':32s} {'SC':>7s} {'LSD dB':>8s}"]
    lines += [f"{name:32s} {spectral_convergence(reference, estimate):7.3f} "
              f"{log_spectral_distance(reference, estimate):8.2f}" for name, estimate in rows]
    lines.append(f"log-mel RMSE of decode(encode(x)) vs mel(x): {mel_rmse:.3f} (natural-log units)")
    if prior is not None:
        lines += prior_lines(loaded, codes, args.samples)
    write_results("model_quality", "\n".join(lines))


def prior_lines(loaded: LoadedVQModel, codes: torch.Tensor, samples: int) -> list[str]:
    """The prior's perplexity on the held-out codes, and the divergence of its samples from the training codes."""
    prior = loaded.prior
    with torch.inference_mode():
        tokens = flatten_codes(codes)
        loss = F.cross_entropy(prior(tokens).flatten(0, 1), tokens.flatten())
        settings = GenerationSettings()
        sampled = sample_codes(prior, samples, list(range(samples)), settings.temperature,
                               settings.top_k, settings.top_p, settings.min_p)
    lines = [f"prior perplexity on held-out codes: {math.exp(float(loss)):.1f} (codebook {prior.codebook_size})"]
    if loaded.train_code_counts is not None:
        generated = code_histograms(sampled, prior.codebook_size, num_quantizers=prior.num_quantizers)
        jsd = js_divergence(generated, loaded.train_code_counts)
        lines.append(f"JS divergence, {samples} sampled sequences (top_p {settings.top_p}) vs training codes, "
                     f"per level (bits): " + ", ".join(f"{float(v):.3f}" for v in jsd))
    return lines


if __name__ == "__main__":
    main()
