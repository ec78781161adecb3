"""Regression guard: compare a run's result rows with a saved results file (`baseline=`).

A baseline is any earlier `waveglow-bench` output: the JSON lines it prints on stdout or the
`bench.jsonl` it writes under `output_dir`. Rows are matched by the case's identity (task,
model, engine, device, precision, memory, batch, threads, audio seconds); the comparison is
the ratio of speeds (new / baseline: > 1 is faster) and of peak memory (new / baseline: < 1 is
smaller). Figures are only comparable on the same machine under the same load: keep one
baseline per machine (docs/performance.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from waveglow.errors import UserError

# The fields that say which case a row measured (`audio_seconds` is rounded to the millisecond).
IDENTITY_KEYS = ("task", "model", "engine", "device", "precision", "memory", "batch", "threads",
                 "audio_seconds")
# Identity fields a row must carry to be matched at all.
REQUIRED_KEYS = ("task", "model", "device", "precision", "batch")


def case_identity(row: Mapping[str, Any]) -> tuple:
    """The identity of the case a result row measured (see IDENTITY_KEYS)."""
    values = []
    for key in IDENTITY_KEYS:
        v = row.get(key)
        if key == "audio_seconds" and isinstance(v, (int, float)):
            v = round(float(v), 3)
        if key == "memory" and row.get("task") != "train":
            v = None  # only training rows have a memory mode
        values.append(v)
    return tuple(values)


def speed(row: Mapping[str, Any]) -> float | None:
    """The row's speed in its task's unit: samples/s (training) or kHz (synthesis, mel)."""
    v = row.get("samples_per_sec") if row.get("task") == "train" else row.get("khz")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def load_baseline(path: str | Path) -> dict[tuple, dict[str, Any]]:
    """Read a saved results file into {case identity: row}.

    Args:
        path: a JSON-lines file of result rows (lines not starting with "{" are skipped, so a
            captured stdout with other lines works too).

    Returns:
        The rows by `case_identity` (the last one wins for repeated cases; failed rows skipped).

    Raises:
        UserError: missing or unreadable file, a line that is not a JSON object, a row
            without the identity fields, or no result row at all.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"baseline={path}: cannot read the results file ({e.__class__.__name__}: "
                        f"{getattr(e, 'strerror', None) or e})") from None
    rows: dict[tuple, dict[str, Any]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"baseline={path}: line {n} is not valid JSON ({e.msg}); expected the "
                            "JSON lines of an earlier waveglow-bench run") from None
        if not isinstance(row, dict) or any(k not in row for k in REQUIRED_KEYS):
            raise UserError(f"baseline={path}: line {n} is not a waveglow-bench result row (needs "
                            f"{', '.join(REQUIRED_KEYS)})")
        if row.get("error"):
            continue
        rows[case_identity(row)] = row
    if not rows:
        raise UserError(f"baseline={path}: no result rows; expected the JSON lines (bench.jsonl) of an "
                        "earlier waveglow-bench run")
    return rows


def compare(rows: Sequence[Mapping[str, Any]], baseline: Mapping[tuple, Mapping[str, Any]]
            ) -> list[dict[str, Any]]:
    """One comparison per row: its identity, speeds and the new/baseline ratios.

    Returns:
        Dicts with task, model, precision, memory, batch, `speed`, `baseline_speed`,
        `speed_ratio` (new / baseline, None without a match or a speed), `peak_mem_mib`,
        `baseline_peak_mem_mib`, `mem_ratio`, and `matched`.
    """
    out = []
    for row in rows:
        base = baseline.get(case_identity(row))
        new_speed = speed(row)
        old_speed = speed(base) if base else None
        mem = row.get("peak_mem_mib")
        old_mem = base.get("peak_mem_mib") if base else None
        out.append({
            "task": row.get("task"), "model": row.get("model"), "precision": row.get("precision"),
            "memory": row.get("memory") if row.get("task") == "train" else None,
            "batch": row.get("batch"), "matched": base is not None,
            "speed": new_speed, "baseline_speed": old_speed,
            "speed_ratio": new_speed / old_speed if new_speed and old_speed else None,
            "peak_mem_mib": mem, "baseline_peak_mem_mib": old_mem,
            "mem_ratio": mem / old_mem if isinstance(mem, (int, float)) and isinstance(old_mem, (int, float))
            and old_mem > 0 else None,
        })
    return out


def format_comparison(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table: one line per case with its speed, the baseline's and the ratios
    (speed in samples/s for training, kHz otherwise; "no match" where the baseline lacks it)."""

    def fmt(v: Any, digits: int) -> str:
        return "-" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    head = ["task", "model", "prec", "memory", "B", "speed", "baseline", "speed ratio", "peak MiB",
            "baseline MiB", "mem ratio"]
    cells = [head]
    for c in comparisons:
        left = [fmt(c["task"], 0), fmt(c["model"], 0), fmt(c["precision"], 0), fmt(c["memory"], 0),
                fmt(c["batch"], 0)]
        if not c["matched"]:
            cells.append(left + ["no match in the baseline"])
            continue
        cells.append(left + [fmt(c["speed"], 2), fmt(c["baseline_speed"], 2), fmt(c["speed_ratio"], 3),
                             fmt(c["peak_mem_mib"], 0), fmt(c["baseline_peak_mem_mib"], 0),
                             fmt(c["mem_ratio"], 3)])
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(head))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.rjust(widths[i]) if i >= 5 else c.ljust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if len(lines) == 1:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)
