"""distill_nb: train a small generative model on your own sounds and explore it in Jupyter.

The public API, re-exported from the modules. The notebook layer (widgets, plots) is imported lazily on
first use, so `import distill_nb` (and the CLI) does not pull in ipywidgets or matplotlib.
"""
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

from distill_nb.analysis import (SILENT_DB, AudioFeatures, LevelStats, SeamReport, audio_features, code_histograms,
                                 compare_to_training, feature_distance, js_divergence, level_statistics,
                                 seam_discontinuity, spectral_convergence)
from distill_nb.audio import AudioFileError, TruncatedAudioWarning, load_audio, read_sidecar, save_audio
from distill_nb.corpus import Corpus, FileNote, SkippedFile, build_corpus, demo_corpus, write_demo_folder
from distill_nb.generation import (MAX_DURATION_S, GenerationResult, GenerationSettings, encode_audio, generate,
                                   generate_audio_from_prior, generate_takes)
from distill_nb.geometry import ChunkGeometry
from distill_nb.inversion import InversionSettings
from distill_nb.loudness import normalise_level
from distill_nb.model_file import (DEFAULT_MODEL_PATH, LoadedVQModel, ModelFileError, load_default_model, load_model,
                                   save_model)
from distill_nb.prior import CodePrior, PriorConfig, flatten_codes, unflatten_codes
from distill_nb.quality import QualityReport, evaluate_model
from distill_nb.sampling import filter_logits, sample_code_sequence, sample_codes
from distill_nb.spectrogram import CHUNK_SECONDS, Spectrogram, SpectrogramConfig
from distill_nb.stages import PRESETS, StageOptions, train_default_model, train_model, train_prior, train_vqvae
from distill_nb.stitching import crossfade_chunks
from distill_nb.training import TrainingHistory
from distill_nb.vqvae import CodebookHealth, ConvVQVAE, VQVAEConfig

try:
    __version__ = version("distill_nb")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

_LAZY = {
    "GeneratorPanel": "distill_nb.widgets",
    "CompareGrid": "distill_nb.widgets",
    "Player": "distill_nb.widgets",
    "display_with_fallback": "distill_nb.widgets",
    "plot_code_histograms": "distill_nb.plots",
    "plot_spectrogram": "distill_nb.plots",
    "plot_seam_zoom": "distill_nb.plots",
    "plot_training_curves": "distill_nb.plots",
    "plot_filter_demo": "distill_nb.plots",
}


_NOTEBOOK_LIBRARIES = {"ipywidgets", "IPython", "matplotlib"}  # the [notebooks] extra


def __getattr__(name: str):
    if name in _LAZY:
        try:
            module = import_module(_LAZY[name])
        except ModuleNotFoundError as error:
            if error.name not in _NOTEBOOK_LIBRARIES:
                raise
            raise ImportError(f"distill_nb.{name} needs the notebook libraries ({error.name} is missing): "
                              f"pip install 'distill_nb[notebooks]'") from error
        return getattr(module, name)
    raise AttributeError(f"module 'distill_nb' has no attribute {name!r}")


__all__ = [
    "AudioFeatures", "AudioFileError", "CHUNK_SECONDS", "ChunkGeometry", "CodePrior", "CodebookHealth", "CompareGrid",
    "ConvVQVAE", "Corpus", "DEFAULT_MODEL_PATH", "FileNote", "GenerationResult", "GenerationSettings", "GeneratorPanel",
    "InversionSettings", "LevelStats", "LoadedVQModel", "MAX_DURATION_S", "ModelFileError", "PRESETS", "Player",
    "PriorConfig", "QualityReport", "SILENT_DB", "SeamReport", "SkippedFile", "Spectrogram", "SpectrogramConfig",
    "StageOptions", "TrainingHistory", "TruncatedAudioWarning", "VQVAEConfig", "audio_features", "build_corpus",
    "code_histograms", "compare_to_training", "crossfade_chunks", "demo_corpus", "display_with_fallback",
    "encode_audio", "evaluate_model", "feature_distance", "filter_logits", "flatten_codes", "generate",
    "generate_audio_from_prior", "generate_takes", "js_divergence", "level_statistics", "load_audio",
    "load_default_model", "load_model", "normalise_level", "plot_code_histograms", "plot_filter_demo", "plot_seam_zoom",
    "plot_spectrogram", "plot_training_curves", "read_sidecar", "sample_code_sequence", "sample_codes", "save_audio",
    "save_model", "seam_discontinuity", "spectral_convergence", "train_default_model", "train_model", "train_prior",
    "train_vqvae", "unflatten_codes", "write_demo_folder",
]
