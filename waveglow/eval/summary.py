"""Per-system summaries of the records: mean ± 95% interval per metric, the best system per
metric, the printed table, metrics.csv and summary.json.

The interval is the half-width of a Student-t 95% confidence interval of the mean over clips
(scipy's t quantile, n − 1 degrees of freedom; 0 for one clip). "Best" is the best mean among
the checkpoints and Griffin-Lim: the ground truth's ceilings and the noise floor are reference
lines, not competitors.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from waveglow.eval.metrics import METRICS
from waveglow.fileio import write_text_atomic

REFERENCE_LINES = ("ground_truth", "noise")
# Column heads of the printed table (units in the legend below it).
SHORT = {"log_likelihood": "nats/sample", "mel_l1": "mel L1", "mr_stft": "MR-STFT", "pesq": "PESQ", "stoi": "STOI",
         "estoi": "ESTOI", "f0_rmse": "F0 cents", "vuv_error": "V/UV %", "mcd": "MCD dB", "rtf": "RTF"}


def mean_ci95(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, 95% half-width, n) of the finite values (NaN mean when there are none)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(xs) / n
    if n == 1:
        return mean, 0.0, 1
    from scipy.stats import t

    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n), n


def summarize(records: Sequence[dict[str, Any]], systems: Sequence[str], metrics: Sequence[str]
              ) -> dict[str, dict[str, dict[str, float]]]:
    """system -> metric -> {"mean", "ci95", "n"} over the clips."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for s in systems:
        rows = [r for r in records if r["system"] == s]
        out[s] = {}
        for m in metrics:
            mean, ci, n = mean_ci95([r.get(m) for r in rows])
            out[s][m] = {"mean": mean, "ci95": ci, "n": n}
    return out


def best_systems(summary: dict[str, dict[str, dict[str, float]]], metrics: Sequence[str]) -> dict[str, str]:
    """metric -> the competing system with the best mean (reference lines excluded)."""
    best: dict[str, str] = {}
    for m in metrics:
        sign = 1.0 if METRICS[m].higher_is_better else -1.0
        candidates = [(sign * v[m]["mean"], s) for s, v in summary.items()
                      if s not in REFERENCE_LINES and math.isfinite(v[m]["mean"])]
        if candidates:
            best[m] = max(candidates)[1]
    return best


def _fmt(value: float, metric: str) -> str:
    if not math.isfinite(value):
        return "-"
    digits = {"f0_rmse": 1, "vuv_error": 1, "mcd": 2, "rtf": 2, "mr_stft": 2}.get(metric, 3)
    return f"{value:.{digits}f}"


def table(summary: dict[str, dict[str, dict[str, float]]], metrics: Sequence[str], *, markdown: bool = False
          ) -> str:
    """The summary as a text (or Markdown) table: mean ± 95% interval, best per column marked *."""
    best = best_systems(summary, metrics)
    head = ["system", *[f"{SHORT.get(m, m)} {'↑' if METRICS[m].higher_is_better else '↓'}" for m in metrics]]
    rows = []
    for s, vals in summary.items():
        cells = [s]
        for m in metrics:
            v = vals[m]
            text = _fmt(v["mean"], m)
            if math.isfinite(v["mean"]) and v["n"] > 1:
                text += f" ± {_fmt(v['ci95'], m)}"
            if best.get(m) == s:
                text += " *"
            cells.append(text)
        rows.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, records: Sequence[dict[str, Any]], metrics: Sequence[str]) -> Path:
    """metrics.csv: one row per clip × system (empty cell: undefined or not computed)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["clip", "system", "step", "seconds", *metrics, "notes"])
    for r in records:
        w.writerow([r["clip"], r["system"], "" if r["step"] is None else r["step"], f"{r['seconds']:.4f}",
                    *("" if r.get(m) is None else f"{r[m]:.6g}" for m in metrics), r.get("notes", "")])
    return write_text_atomic(path, buf.getvalue())


def write_json(path: Path, summary: dict[str, Any], metrics: Sequence[str], meta: dict[str, Any]) -> Path:
    """summary.json: the metric descriptions, per-system means and intervals, and `meta`."""
    doc = {
        **meta,
        "metrics": {m: {"title": METRICS[m].title, "unit": METRICS[m].unit,
                        "higher_is_better": METRICS[m].higher_is_better, "source": METRICS[m].source}
                    for m in metrics},
        "systems": {s: {m: {k: (None if isinstance(x, float) and not math.isfinite(x) else x)
                            for k, x in v.items()} for m, v in vals.items()} for s, vals in summary.items()},
        "best": best_systems(summary, metrics),
    }
    return write_text_atomic(path, json.dumps(doc, indent=1))
