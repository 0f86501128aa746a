"""ChunkGeometry: how samples, mel frames, grid columns and code tokens line up for one model.

    samples --(hop_length)--> mel frames --(column_frames)--> grid columns of `rows` positions
    --(levels)--> tokens; a column is a contiguous block of rows * levels tokens (time-major codes).

A chunk is 1 s of audio: `frames` mel frames, padded up to `columns` whole grid columns (the last
column also covers padding). Continuation and the prior's windows count in columns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from distill_nb.checks import check_int
from distill_nb.spectrogram import CHUNK_SECONDS, SpectrogramConfig
from distill_nb.vqvae import VQVAEConfig


@dataclass(frozen=True)
class ChunkGeometry:
    """Sizes of one chunk for a spectrogram and VQ-VAE configuration.

    Attributes:
        chunk_samples: samples per chunk (CHUNK_SECONDS at the sample rate).
        hop_length: samples per mel frame.
        frames: mel frames of one chunk, 1 + chunk_samples // hop_length.
        rows: grid rows (mel bins / frequency downsampling, rounded up).
        columns: grid columns of one chunk (frames / column_frames, rounded up).
        levels: residual VQ levels.
        column_frames: mel frames per grid column (the time downsampling).
    """

    chunk_samples: int
    hop_length: int
    frames: int
    rows: int
    columns: int
    levels: int
    column_frames: int

    @classmethod
    def of(cls, spectrogram: SpectrogramConfig, vqvae: VQVAEConfig) -> ChunkGeometry:
        chunk = round(CHUNK_SECONDS * spectrogram.sample_rate)
        frames = 1 + chunk // spectrogram.hop_length
        down_f, down_t = vqvae.downsampling
        return cls(chunk_samples=chunk, hop_length=spectrogram.hop_length, frames=frames,
                   rows=math.ceil(vqvae.n_mels / down_f), columns=math.ceil(frames / down_t),
                   levels=vqvae.levels, column_frames=down_t)

    @property
    def positions(self) -> int:
        """Grid positions of one chunk, rows * columns."""
        return self.rows * self.columns

    @property
    def column_samples(self) -> int:
        """Samples per grid column."""
        return self.column_frames * self.hop_length

    @property
    def column_tokens(self) -> int:
        """Flat tokens per grid column, rows * levels: the unit of priming and of the prior's windows."""
        return self.rows * self.levels

    @property
    def chunk_tokens(self) -> int:
        """Flat tokens of one chunk."""
        return self.columns * self.column_tokens

    def columns_for(self, samples: int) -> int:
        """Grid columns whose mel frames cover ``samples`` samples (1 + samples // hop frames)."""
        samples = check_int("samples", samples, 1)
        return math.ceil((1 + samples // self.hop_length) / self.column_frames)
