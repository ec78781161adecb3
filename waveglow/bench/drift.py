"""Reconstruction drift of invertible backprop: how far the inputs that the backward pass
rebuilds (`FlowPart.inverse_vjp`, from each part's output) are from the true ones.

    python -m waveglow.bench.drift waveglow_256 [fp32|bf16] [clip.wav ...]
    python -m waveglow.bench.drift run/checkpoints/best.pt

Prints one JSON line per part (walked backward, as the backward pass does) and a summary line.
A model named by config has its coupling output layers as built (zero: every coupling is the
identity at init) unless `--perturbed` is given (the benchmark's small random end layers).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from waveglow.bench.cases import check_model_spec, resolve_model
from waveglow.checkpoint import build_model
from waveglow.config import AudioConfig, to_dict
from waveglow.conv_paths import autograd_numerics
from waveglow.data.audio import load_audio
from waveglow.mel import MelSpectrogram
from waveglow.model import WaveGlow
from waveglow.runtime import autocast, resolve_precision


@torch.no_grad()
def _forward_inputs(model: WaveGlow, x: torch.Tensor, cond: torch.Tensor) -> list[torch.Tensor]:
    """Every part's input, then the final output, as the invertible walk computes them."""
    states = [x]
    with autograd_numerics():
        for part in model.parts():
            x = part(x, cond)[0]
            states.append(x)
    return states


def reconstruction_drift(model: WaveGlow, audio: torch.Tensor, mel: torch.Tensor,
                         precision: str = "fp32") -> list[dict[str, Any]]:
    """Rebuild every part's input from the final output, as invertible backprop does.

    Args:
        model: the flow.
        audio: [B, T] waveform (T a multiple of n_group).
        mel: [B, n_mels, F] its raw log-mel.
        precision: "fp32", or "bf16" / "fp16" (autocast, as a training step would run).

    Returns:
        One dict per part, last part first: `part`, `max_abs` (max |x_rebuilt - x| of its input,
        with the errors of every later part's reconstruction accumulated), `max_input` (max |x|).
    """
    device = audio.device
    with autocast(device, resolve_precision(precision, device)):
        cond = model.condition(mel, audio.shape[1]).detach()
        states = _forward_inputs(model, audio.to(model._dtype()), cond)
        y = states[-1]
        grad_y = torch.zeros_like(y)
        grad_logdet = y.new_zeros(y.shape[0])
        rows = []
        names = list(model.flows.keys())
        with autograd_numerics():
            for i in reversed(range(len(names))):
                part = model.flows[names[i]]
                y, grad_y, _, _ = part.inverse_vjp(y, cond, grad_y, grad_logdet)
                truth = states[i]
                rows.append({"part": names[i], "max_abs": (y - truth).abs().max().item(),
                             "max_input": truth.abs().max().item()})
    return rows


def _clips(paths: Sequence[str], audio_cfg: AudioConfig, n_group: int, seconds: float = 1.0) -> torch.Tensor:
    """[B, T]: the first `seconds` of each clip (the demo corpus's first two by default)."""
    if not paths:
        paths = [str(p) for p in sorted(Path("data/demo/wavs").glob("*.wav"))[:2]]
    length = int(seconds * audio_cfg.sampling_rate)
    length -= length % n_group
    clips = [torch.from_numpy(load_audio(p, audio_cfg.sampling_rate))[:length] for p in paths]
    length = min(c.shape[0] for c in clips) // n_group * n_group
    return torch.stack([c[:length] for c in clips])


def main(argv: Sequence[str]) -> int:
    """`python -m waveglow.bench.drift <model config | checkpoint> [precision] [--perturbed] [wav ...]`."""
    args = [a for a in argv if a != "--perturbed"]
    if not args:
        print(__doc__, file=sys.stderr)
        return 2
    spec, rest = args[0], args[1:]
    precision = rest.pop(0) if rest and rest[0] in ("fp32", "bf16", "fp16") else "fp32"
    torch.manual_seed(0)
    check_model_spec(spec)
    model, _, audio_cfg, weights = resolve_model(spec, AudioConfig())
    if weights == "random" and "--perturbed" not in argv:
        model = build_model({"model": to_dict(model.model_config), "audio": to_dict(audio_cfg)}).eval()
        weights = "init"
    audio = _clips(rest, audio_cfg, model.n_group)
    mel = MelSpectrogram.from_config(audio_cfg)(audio)
    rows = reconstruction_drift(model, audio, mel, precision)
    for row in rows:
        print(json.dumps(row))
    worst = max(rows, key=lambda r: r["max_abs"])
    print(json.dumps({"model": spec, "weights": weights, "precision": precision,
                      "batch": list(audio.shape), "max_abs_over_flow": worst["max_abs"],
                      "worst_part": worst["part"], "max_abs_audio": rows[-1]["max_abs"],
                      "max_audio": rows[-1]["max_input"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
