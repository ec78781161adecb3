"""`eval/<metric>` scalars in a training run's TensorBoard, at each checkpoint's step.

The evaluation of a run directory adds its own event file to the run's folder (TensorBoard reads
every event file of a folder as one run), so the curves sit beside the training likelihood; the
custom-scalars layout written with them (`waveglow.train.monitor.LAYOUT`) has an evaluation
section. Only checkpoints with a step are written, one point per step (best.pt repeats a step).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from waveglow.eval.summary import REFERENCE_LINES


def write_run_scalars(summary: dict[str, dict[str, dict[str, float]]], steps: dict[str, int],
                      run_dirs: dict[str, Path], metrics: list[str]) -> list[Path]:
    """Write each checkpoint's mean metrics as `eval/<metric>` at its step into its run folder.

    Args:
        summary: system -> metric -> {"mean", ...} (`summary.summarize`).
        steps: checkpoint label -> training step.
        run_dirs: checkpoint label -> its run directory (checkpoints outside one are not written).
        metrics: the metric names.

    Returns:
        The run directories written to.
    """
    from waveglow.train.monitor import Monitor

    by_run: dict[Path, dict[int, str]] = {}
    for label, run_dir in run_dirs.items():
        if label in summary and label not in REFERENCE_LINES and label in steps:
            by_run.setdefault(Path(run_dir), {}).setdefault(steps[label], label)
    for run_dir, points in by_run.items():
        monitor = Monitor(run_dir)
        try:
            monitor.layout()
            for step, label in sorted(points.items()):
                values: dict[str, Any] = {f"eval/{m}": summary[label][m]["mean"] for m in metrics
                                          if math.isfinite(summary[label][m]["mean"])}
                monitor.scalars(step, values)
        finally:
            monitor.close()
    return list(by_run)
