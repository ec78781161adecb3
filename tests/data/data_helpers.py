"""Helpers shared by the tests of waveglow.data: typed configs of a corpus, clips, tones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import compose

from waveglow.config import PreprocessApp

SR, HOP = 22050, 256


def make_cfg(root: Path, *overrides: str, data: str = "demo") -> PreprocessApp:
    return compose("waveglow_preprocess", f"data={data}", f"data.root={root}", "data.num_workers=1", *overrides)


def add_clip(root: Path, clip_id: str, audio: np.ndarray | None = None, rate: int = SR, raw: bytes | None = None,
             subtype: str = "PCM_16", suffix: str = ".wav") -> Path:
    """Add a file to an LJSpeech-layout corpus (and its metadata line)."""
    path = root / "wavs" / f"{clip_id}{suffix}"
    if raw is not None:
        path.write_bytes(raw)
    else:
        sf.write(path, audio, rate, subtype=subtype)
    with open(root / "metadata.csv", "a") as f:
        f.write(f"{clip_id}|text|text\n")
    return path


def tone(n: int, freq: float = 220.0, rate: int = SR) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)
