"""The teacher of a distillation run: loading it and checking it against the student's settings.

Everything here runs before the run directory is touched, so a bad teacher writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from waveglow.bench.cost import count_macs
from waveglow.checkpoint import load_model
from waveglow.config import ModelConfig, from_dict, to_dict
from waveglow.errors import UserError
from waveglow.model import WaveGlow

log = logging.getLogger("waveglow")

# The feature settings a student must share with its teacher: one mel frame must mean the same.
AUDIO_KEYS = ("sampling_rate", "hop_length", "n_mels", "n_fft", "win_length", "fmin", "fmax", "log_clamp")


def load_teacher(path: str, audio: Mapping[str, Any]) -> WaveGlow:
    """The teacher WaveGlow (CPU, eval mode, frozen), checked against the run's audio settings.

    Args:
        path: `teacher=`: a checkpoint of this toolkit (or `pretrained:NAME`).
        audio: the run's `audio` settings (plain dict), which the student and the data use.

    Returns:
        The teacher, its parameters with requires_grad=False.

    Raises:
        UserError: not a loadable checkpoint, or other sample rate / mel settings (one line).
    """
    try:
        teacher = load_model(path, device="cpu")
    except UserError as e:
        raise UserError(f"teacher={path}: {e}") from None
    mismatched = mismatched_audio(teacher.config.get("audio") or {}, audio)
    if mismatched:
        key, theirs, ours = mismatched[0]
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise UserError(f"teacher={path}: trained with audio.{key}={theirs}, the student's audio.{key}={ours}"
                        f"{more}; teacher and student must share sample rate and mel settings (set "
                        f"audio.{key}={theirs}, or the audio= preset the teacher was trained with)")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def mismatched_audio(teacher: Mapping[str, Any], student: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, teacher's value, student's value) of each feature setting that differs."""
    out = []
    for key in AUDIO_KEYS:
        a, b = teacher.get(key), student.get(key)
        same = a == b or (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b))
        if not same:
            out.append((key, a, b))
    return out


def model_cost(model_cfg: Mapping[str, Any], audio: Mapping[str, Any]) -> float:
    """GMAC per second of audio of one synthesis pass (`waveglow.bench.cost.count_macs`)."""
    cfg = from_dict(ModelConfig, dict(model_cfg))
    macs = count_macs(cfg, n_mels=int(audio["n_mels"]), hop_length=int(audio["hop_length"]),
                      sampling_rate=int(audio["sampling_rate"]))
    return macs["total"] / 1e9


def warn_if_larger(teacher: WaveGlow, student: WaveGlow, audio: Mapping[str, Any]) -> bool:
    """Warn (not an error) when the student costs at least as much as the teacher: more
    parameters or more multiply-accumulates per second of audio. Returns whether it warned."""
    tp = sum(p.numel() for p in teacher.parameters())
    sp = sum(p.numel() for p in student.parameters())
    tc = model_cost(teacher.model_config, audio)
    sc = model_cost(to_dict(student.model_config), audio)
    if sp <= tp and sc < tc:
        log.info(f"distill: student {sp / 1e6:.3f}M parameters, {sc:.3f} GMAC per audio second; teacher "
                 f"{tp / 1e6:.3f}M, {tc:.3f} GMAC/s ({tc / max(sc, 1e-12):.1f}x the student's compute)")
        return False
    log.warning(f"distill: the student is not smaller than its teacher ({sp / 1e6:.3f}M parameters, "
                f"{sc:.3f} GMAC per audio second vs the teacher's {tp / 1e6:.3f}M, {tc:.3f} GMAC/s); "
                "distillation will not make synthesis cheaper")
    return True
