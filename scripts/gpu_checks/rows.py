"""A result row of `make gpu-check`, its failure texts and its goal."""

from __future__ import annotations

import math
from typing import Any

from gpu_checks.settings import GOAL_MODEL, GOALS

# Every row carries these keys (None where a figure does not apply), in this order.
ROW_KEYS = ("check", "model", "precision", "status", "khz", "samples_per_sec", "peak_mem_mib",
            "snr_db_vs_fp32", "skipped_steps", "val_ll_before", "val_ll_after", "goal", "goal_met",
            "wall_s", "detail", "log")


def row(**values: Any) -> dict[str, Any]:
    """A result row: every ROW_KEYS entry (None unless given), extra keys after them."""
    out: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    out.update(values)
    return out


def finite(value: Any) -> bool:
    """A real, finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def last_error(text: str) -> str:
    """The line of a command's output that says what went wrong (else its last line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or [""])[-1][:200]


def failure(rc: int | None, wall: float, text: str) -> str:
    """Why a command failed: its timeout, or its exit status and error line."""
    if rc is None:
        return f"timed out after {wall:.0f} s"
    return f"exit status {rc}: {last_error(text)}" if text.strip() else f"exit status {rc}"


def apply_goal(r: dict[str, Any]) -> dict[str, Any]:
    """Fill `goal` / `goal_met` for the figures that have one (waveglow_256 only)."""
    goal = GOALS.get((r.get("check"), r.get("precision")))
    if goal and r.get("model") == GOAL_MODEL:
        key, least, text = goal
        r["goal"] = text
        r["goal_met"] = bool(r[key] >= least) if finite(r.get(key)) else None
    return r
