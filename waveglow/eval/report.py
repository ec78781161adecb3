"""report.html: a page to listen to and look at every clip from every system, with the table.

Self-contained for a browser opened on the file (`file://`, no server, no network): the CSS is
inline, the images are PNG files in `images/` beside the page and the players point at the WAVs
in `wavs/`, all by relative links. Images are drawn with matplotlib's Agg backend (no display).
For each clip, one image holds the log-mels of the ground truth, each system and Griffin-Lim
side by side on the ground truth's colour scale; with checkpoints from a run directory, one
plot per metric shows it against the training step.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from waveglow.eval.metrics import METRICS
from waveglow.eval.summary import table
from waveglow.fileio import write_text_atomic

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.best{font-weight:bold;background:#e8f5e9}.systems{display:flex;flex-wrap:wrap;gap:1em}
.system{border:1px solid #ddd;padding:.5em;border-radius:4px;max-width:280px}.system h3{margin:.2em 0;font-size:1em}
audio{width:260px}img{max-width:100%}.note{color:#666;font-size:.9em}
"""


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def _mel_images(out_dir: Path, clips: Sequence[str], systems: Sequence[str], audio: dict[tuple[str, str], np.ndarray],
                mel_fn: Any) -> dict[str, Path]:
    """One PNG per clip: the log-mel of every system side by side on the ground truth's scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: dict[str, Path] = {}
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    for clip in clips:
        present = [s for s in systems if (clip, s) in audio]
        mels = {}
        with torch.inference_mode():
            for s in present:
                mels[s] = mel_fn(torch.from_numpy(np.ascontiguousarray(audio[(clip, s)], dtype=np.float32))).numpy()
        scale = mels.get("ground_truth", next(iter(mels.values())))
        vmin, vmax = float(scale.min()), float(scale.max())
        cols = min(len(present), 4)
        rows = math.ceil(len(present) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False, constrained_layout=True)
        for ax in axes.flat[len(present):]:
            ax.axis("off")
        im = None
        for ax, s in zip(axes.flat, present):
            im = ax.imshow(mels[s], origin="lower", aspect="auto", vmin=vmin, vmax=vmax, cmap="magma",
                           interpolation="nearest")
            ax.set_title(s, fontsize=9)
            ax.set_xlabel("frame", fontsize=8)
            ax.set_ylabel("mel band", fontsize=8)
            ax.tick_params(labelsize=7)
        if im is not None:
            fig.colorbar(im, ax=axes, shrink=0.8, label="log-mel (ln)")
        path = img_dir / f"mel_{_safe(clip)}.png"
        fig.savefig(path, dpi=72)
        plt.close(fig)
        paths[clip] = path
    return paths


def _step_plots(out_dir: Path, summary: dict[str, Any], steps: dict[str, int], metrics: Sequence[str],
                baselines: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """One PNG per metric: the checkpoints' means (± 95% interval) against the training step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = sorted((step, label) for label, step in steps.items() if label in summary)
    if len(points) < 2:
        return {}
    paths = {}
    for m in metrics:
        xs = [st for st, lb in points if math.isfinite(summary[lb][m]["mean"])]
        if not xs:
            continue
        ys = [summary[lb][m]["mean"] for st, lb in points if math.isfinite(summary[lb][m]["mean"])]
        es = [summary[lb][m]["ci95"] for st, lb in points if math.isfinite(summary[lb][m]["mean"])]
        fig, ax = plt.subplots(figsize=(4.2, 2.8), constrained_layout=True)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label="checkpoints")
        for name, vals in baselines.items():
            v = vals.get(m, {}).get("mean", math.nan)
            if math.isfinite(v):
                ax.axhline(v, linestyle="--", linewidth=1, color="gray" if name == "griffin_lim" else "green")
                ax.annotate(name, (xs[0], v), fontsize=7, color="gray")
        ax.set_xlabel("training step")
        ax.set_title(METRICS[m].label, fontsize=8)
        path = out_dir / "images" / f"steps_{m}.png"
        fig.savefig(path, dpi=72)
        plt.close(fig)
        paths[m] = path
    return paths


def write_report(out_dir: Path, records: Any, summary: dict[str, Any], mel_fn: Any, title: str = "") -> Path:
    """Write `<out_dir>/report.html` (and its images) for `records` (`EvalRecords` with wavs).

    Args:
        out_dir: the evaluation's output folder (holds wavs/).
        records: the evaluation's records (with `.systems`, `.metrics`, `.wavs`, `.steps`).
        summary: `summary.summarize(...)`.
        mel_fn: audio [T] -> log-mel [n_mels, F] (the checkpoint's frontend).
        title: the page's heading.

    Returns:
        The page's path.
    """
    import soundfile as sf

    systems, metrics = list(records.systems), list(records.metrics)
    clips = list(dict.fromkeys(r["clip"] for r in records))
    audio = {}
    for (clip, system), path in records.wavs.items():
        audio[(clip, system)] = sf.read(path, dtype="float32")[0]
    shown = [s for s in systems if s == "ground_truth"] + [s for s in systems if s != "ground_truth"]
    images = _mel_images(out_dir, clips, shown, audio, mel_fn)
    baselines = {b: summary[b] for b in ("griffin_lim", "ground_truth") if b in summary}
    plots = _step_plots(out_dir, summary, records.steps, metrics, baselines)

    def rel(p: Path) -> str:
        return html.escape(p.relative_to(out_dir).as_posix(), quote=True)

    parts = ["<!DOCTYPE html>", "<html lang='en'><head><meta charset='utf-8'>",
             f"<title>{html.escape(title or 'waveglow-eval report')}</title>", f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title or 'waveglow-eval report')}</h1>",
             f"<p class='note'>{len(clips)} clips, {len(systems)} systems; mean ± 95% interval over clips; "
             "best checkpoint or Griffin-Lim per column in bold (ground truth and noise are reference lines). "
             "Metrics per clip: metrics.csv; figures: summary.json.</p>"]
    parts.append(_html_table(summary, metrics))
    if plots:
        parts.append("<h2>Metrics against the training step</h2><div class='systems'>")
        parts += [f"<img src='{rel(p)}' alt='{html.escape(m)} against the training step'>" for m, p in plots.items()]
        parts.append("</div>")
    parts.append("<h2>Clips</h2>")
    by_clip: dict[str, dict[str, dict[str, Any]]] = {}
    for r in records:
        by_clip.setdefault(r["clip"], {})[r["system"]] = r
    for clip in clips:
        parts.append(f"<h3>{html.escape(clip)}</h3><div class='systems'>")
        for s in shown:
            if (clip, s) not in records.wavs:
                continue
            r = by_clip[clip].get(s, {})
            figures = ", ".join(f"{METRICS[m].title} {r[m]:.3g}" for m in metrics
                                if r.get(m) is not None and s != "ground_truth")
            parts.append(f"<div class='system'><h3>{html.escape(s)}</h3>"
                         f"<audio controls preload='none' src='{rel(records.wavs[(clip, s)])}'></audio>"
                         f"<div class='note'>{html.escape(figures)}</div></div>")
        parts.append("</div>")
        if clip in images:
            parts.append(f"<img src='{rel(images[clip])}' alt='log-mel spectrograms of {html.escape(clip)}'>")
    if records.skipped:
        parts.append("<h2>Skipped</h2><ul>")
        parts += [f"<li>{html.escape(reason)}</li>" for _, reason in records.skipped]
        parts.append("</ul>")
    parts.append("</body></html>")
    path = out_dir / "report.html"
    write_text_atomic(path, "\n".join(parts) + "\n")
    return path


def _html_table(summary: dict[str, Any], metrics: Sequence[str]) -> str:
    from waveglow.eval.summary import _fmt, best_systems

    best = best_systems(summary, metrics)
    head = "".join(f"<th>{html.escape(METRICS[m].title)}<br><small>{html.escape(METRICS[m].unit)}, "
                   f"{'↑' if METRICS[m].higher_is_better else '↓'}</small></th>" for m in metrics)
    rows = []
    for s, vals in summary.items():
        cells = []
        for m in metrics:
            v = vals[m]
            text = _fmt(v["mean"], m) + (f" ± {_fmt(v['ci95'], m)}" if v["n"] > 1 and math.isfinite(v["mean"]) else "")
            cls = " class='best'" if best.get(m) == s else ""
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        rows.append(f"<tr><td>{html.escape(s)}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>system</th>{head}</tr>{''.join(rows)}</table>"


__all__ = ["write_report", "table"]
