"""Objective evaluation of vocoders: copy synthesis of held-out clips by one or more checkpoints,
next to baselines (ground truth, Griffin-Lim, noise), measured with the metrics papers report.

    metrics      what each metric is (unit, direction, library) and the per-clip measurement
    pitch        F0 and voicing (librosa pYIN): F0 RMSE in cents, V/UV error
    mcd          mel-cepstral distortion in dB with DTW
    sources      checkpoints (file, list, run directory) and clips (corpus split, input=), checked
    run          `evaluate`: synthesis, baselines, metrics in a process pool
    summary      mean ± 95% interval per system, best per metric, the table, metrics.csv, summary.json
    report       report.html with players and log-mel images
    tensorboard  eval/<metric> into a run's event files
"""

from __future__ import annotations

from waveglow.eval.metrics import METRICS, Metric
from waveglow.eval.run import BASELINES, EvalRecords, evaluate

__all__ = ["BASELINES", "METRICS", "EvalRecords", "Metric", "evaluate"]
