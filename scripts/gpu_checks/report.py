"""The report of `make gpu-check`: the fixed-width table, strict JSON lines, the summary line."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 1, thousands: bool = False) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"
    return str(value)


def _val(r: Mapping[str, Any]) -> str:
    before, after = r.get("val_ll_before"), r.get("val_ll_after")
    return "-" if before is None and after is None else f"{_fmt(before, 3)} -> {_fmt(after, 3)}"


def _goal(r: Mapping[str, Any]) -> str:
    if not r.get("goal"):
        return "-"
    met = {True: "met", False: "MISSED", None: "?"}.get(r.get("goal_met"), "?")
    return f"{r['goal']} {met}"


TABLE = (  # header, cell(row), right-aligned
    # A training row in a memory mode other than the standard one says which (bench-train/invertible).
    ("check", lambda r: _fmt(r.get("check")) + (f"/{r['memory']}" if r.get("memory") not in (None, "standard")
                                                else ""), False),
    ("model", lambda r: _fmt(r.get("model")), False),
    ("prec", lambda r: _fmt(r.get("precision")), False),
    ("status", lambda r: _fmt(r.get("status")), False),
    ("kHz", lambda r: _fmt(r.get("khz"), 0, True), True),
    ("samples/s", lambda r: _fmt(r.get("samples_per_sec"), 0, True), True),
    ("peak MiB", lambda r: _fmt(r.get("peak_mem_mib"), 0, True), True),
    ("SNR dB", lambda r: _fmt(r.get("snr_db_vs_fp32"), 1), True),
    ("skipped", lambda r: _fmt(r.get("skipped_steps"), 0), True),
    ("val LL nats/sample", _val, True),
    ("goal (H100/H200)", _goal, False),
    ("wall s", lambda r: _fmt(r.get("wall_s"), 0), True),
    ("detail", lambda r: _fmt(r.get("detail")), False),
)


def format_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The fixed-width table of result rows (the `machine` row becomes the title line)."""
    rows = list(rows)
    title = next((str(r.get("detail")) for r in rows if r.get("check") == "machine"), "")
    cells = [[h for h, _, _ in TABLE]]
    cells += [[cell(r) for _, cell, _ in TABLE] for r in rows if r.get("check") != "machine"]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.rjust(w) if right else v.ljust(w)
                               for v, w, (_, _, right) in zip(c, widths, TABLE)).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(([title] if title else []) + lines)


def json_lines(rows: Iterable[Mapping[str, Any]]) -> str:
    """One strict-JSON object per row, newline-terminated: NaN/inf -> null, other objects -> str."""
    def safe(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)

    return "".join(json.dumps({str(k): safe(v) for k, v in r.items()}, allow_nan=False) + "\n" for r in rows)


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The closing line: failures and goals."""
    failed = [r for r in rows if r.get("status") == "failed"]
    missed = [r for r in rows if r.get("goal_met") is False]
    parts = [f"{len(failed)} of {len([r for r in rows if r.get('check') != 'machine'])} checks failed"
             if failed else "every check passed"]
    if missed:
        parts.append("goals missed: " + ", ".join(f"{r['check']} {r['precision']}" for r in missed))
    return "gpu-check: " + "; ".join(parts)


def write_results(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """results.jsonl and table.txt in `out_dir`, each written atomically."""
    # The package is imported only after the CUDA check (see the entry's main).
    from waveglow.fileio import write_text_atomic

    write_text_atomic(out_dir / "results.jsonl", json_lines(rows))
    write_text_atomic(out_dir / "table.txt", format_table(rows) + "\n" + summary(rows) + "\n")
