"""Shared synthesis-test helpers: a tiny model with random end layers, random mels, bad mel files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import compose

from waveglow.checkpoint import build_model
from waveglow.config import to_dict

HOP = 256


def tiny_config() -> dict:
    """The resolved config of a `tiny` model with the default audio settings (plain dicts, as a
    checkpoint stores them)."""
    cfg = compose("waveglow_train", "model=tiny", "data=demo")
    return {"audio": to_dict(cfg.audio), "model": to_dict(cfg.model)}


def active_model(seed: int = 0):
    """A tiny WaveGlow whose couplings are not the identity (random end layers), with
    non-trivial mel statistics: every path of the conditioning and the WN stacks is exercised.
    """
    torch.manual_seed(seed)
    cfg = tiny_config()
    model = build_model(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".end." in name:
                p.normal_(0.0, 0.02)
    model.set_mel_stats(torch.full((80,), -6.0), torch.full((80,), 2.0))
    return model.eval(), cfg


def random_mel(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(80, frames, generator=g) * 2.0 - 6.0


def write_bad_inputs(d: Path) -> dict[str, Path]:
    """One file per kind of bad mel input, plus the path of a missing one."""
    d.mkdir(parents=True, exist_ok=True)
    torch.save(torch.randn(80, 12), d / "good.pt")
    torch.save(torch.randn(40, 12), d / "wrong_n_mels.pt")
    torch.save(torch.full((80, 12), float("inf")), d / "inf.pt")
    nan = np.random.randn(80, 12).astype(np.float32)
    nan[3, 4] = np.nan
    np.save(d / "nan.npy", nan)
    torch.save(torch.zeros(80, 0), d / "empty.pt")
    torch.save(torch.randn(80), d / "one_d.pt")
    torch.save({"mel": torch.randn(80, 12)}, d / "not_a_tensor.pt")
    full = (d / "good.pt").read_bytes()
    (d / "truncated.pt").write_bytes(full[: len(full) // 2])
    return {p.stem: p for p in d.iterdir()} | {"missing": d / "missing.pt"}
