"""Copy synthesis: WAV -> log-mel (the checkpoint's frontend) -> WAV, measured against the input."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from waveglow.data.audio import AUDIO_SUFFIXES, load_audio, warn_once_per_rate
from waveglow.data.inputs import resolve_inputs
from waveglow.errors import UserError, naming
from waveglow.fileio import write_text_atomic
from waveglow.inference.jobs import FileJob, Inputs, SynthesisReport
from waveglow.inference.metrics import mel_l1, multi_resolution_stft_distance
from waveglow.inference.synthesizer import Synthesizer

METRICS = ("mel_l1", "mrstft", "spectral_convergence", "log_magnitude_l1")


@dataclass
class ResynthesisResult:
    """Copy-synthesis outcome: the synthesis report and the per-file / mean distances."""

    report: SynthesisReport
    rows: list[dict[str, Any]]
    mean: dict[str, float]
    metrics_csv: Path
    metrics_json: Path


def resynthesize(synth: Synthesizer, inputs: Inputs, output_dir: str | os.PathLike, sigma: float = 0.6,
                 seed: int = 0, batch_size: int = 8, denoiser_strength: float = 0.0, denoiser_mel: str = "mean",
                 subtype: str = "PCM_16", on_error: str = "fail", progress: bool = True) -> ResynthesisResult:
    """Copy synthesis: WAV -> log-mel (the checkpoint's frontend) -> WAV of the input's length.

    Each output is compared with its input: mel L1 (mean |Δ log-mel|) and the multi-resolution
    STFT distance (`metrics`), per file and as the mean over files, written to
    `<output_dir>/metrics.csv` (last row: mean) and `metrics.json`. Arguments as `to_files`;
    `inputs` are .wav/.flac files.

    Returns:
        A `ResynthesisResult`.
    """
    mel_fn = synth.frontend()
    job = FileJob(synth, output_dir, sigma, seed, batch_size, denoiser_strength, denoiser_mel, subtype,
                  on_error, progress, label="resynthesize")
    references: dict[int, Tensor] = {}
    warn = warn_once_per_rate(set())

    def load(i: int, path: Path) -> Tensor:
        # The input is read again when its batch comes (memory holds only what is in flight)
        # and kept until its output has been measured.
        audio = torch.from_numpy(load_audio(path, synth.sampling_rate, warn=lambda *a: None))
        references[i] = audio
        with torch.inference_mode():
            return mel_fn(audio)

    for inp in resolve_inputs(inputs, AUDIO_SUFFIXES, kind="audio"):
        path = inp.path
        try:
            audio = torch.from_numpy(load_audio(path, synth.sampling_rate, warn=warn))
            with torch.inference_mode():
                n_frames = mel_fn(audio).shape[-1]  # also rejects audio too short for one frame
            n_samples = audio.numel()
        except UserError as e:
            job.bad(path, str(naming(path, e)))
            continue
        i = len(job.inputs)
        job.add(inp, n_frames, lambda i=i, path=path: load(i, path), length=n_samples)
    rows: list[dict[str, Any]] = []

    def measure(i: int, audio: Tensor, path: Path) -> None:
        ref = references.pop(i)
        with torch.inference_mode():
            mr = multi_resolution_stft_distance(ref, audio)
            rows.append({"file": str(path), "seconds": ref.numel() / synth.sampling_rate,
                         "mel_l1": mel_l1(ref, audio, mel_fn), "mrstft": mr["distance"],
                         "spectral_convergence": mr["spectral_convergence"],
                         "log_magnitude_l1": mr["log_magnitude_l1"]})

    report = job.run(on_written=measure)
    rows.sort(key=lambda r: r["file"])
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in METRICS}
    metrics_csv, metrics_json = write_metrics(Path(output_dir), rows, mean, report.failed)
    return ResynthesisResult(report, rows, mean, metrics_csv, metrics_json)


def write_metrics(out_dir: Path, rows: list[dict[str, Any]], mean: dict[str, float],
                  failed: list[tuple[str, str]]) -> tuple[Path, Path]:
    """`<out_dir>/metrics.csv` (one row per file, last row: mean) and `metrics.json`, atomically."""
    lines = [",".join(["file", "seconds", *METRICS])]
    lines += [",".join([_csv_cell(r["file"]), f"{r['seconds']:.4f}", *(f"{r[k]:.6f}" for k in METRICS)])
              for r in rows]
    lines.append(",".join(["mean", f"{sum(r['seconds'] for r in rows):.4f}", *(f"{mean[k]:.6f}" for k in METRICS)]))
    metrics_csv, metrics_json = out_dir / "metrics.csv", out_dir / "metrics.json"
    write_text_atomic(metrics_csv, "\n".join(lines) + "\n")
    write_text_atomic(metrics_json, json.dumps({"files": rows, "mean": mean, "failed": [
        {"file": f, "error": e} for f, e in failed]}, indent=1))
    return metrics_csv, metrics_json


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
