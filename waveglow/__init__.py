"""WaveGlow: train and run mel-conditioned normalizing-flow vocoders with exact likelihoods.

Public API (imported lazily so that `import waveglow` stays fast for the CLIs):
    MelSpectrogram  log-mel frontend (Tacotron 2 / NVIDIA convention)
    WaveGlow        the flow: log_prob / encode / decode / infer
    load_model      a checkpoint of this project (or "pretrained:NAME", see waveglow.pretrained)
                    -> eval-mode WaveGlow
    Synthesizer     mel files -> WAV files, batched, chunked or streamed, on CPU or CUDA
    enhance         likelihood-guided repair of damaged stretches of a recording
    convert         encode with the input's own mel, change the mel or the latent, decode
    save_audio      write audio as the scripts do (integer PCM rounded to the nearest step, float kept)
    evaluate        objective metrics (PESQ, STOI, F0, MCD, ...) of checkpoints on clips, with baselines
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "MelSpectrogram": "waveglow.mel",
    "WaveGlow": "waveglow.model",
    "load_model": "waveglow.checkpoint",
    "Synthesizer": "waveglow.inference",
    "enhance": "waveglow.inference.enhance",
    "convert": "waveglow.inference.convert",
    "evaluate": "waveglow.eval",
    "UserError": "waveglow.errors",
    "save_audio": "waveglow.data.audio",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'waveglow' has no attribute {name!r}")
