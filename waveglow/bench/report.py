"""Result rows: their keys, the speed and peak figures filled in, the table, the machine line."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

# Keys every result line carries (null where a figure does not apply).
RESULT_KEYS = (
    "task", "model", "device", "precision", "memory", "batch", "audio_seconds", "khz", "rtf",
    "samples_per_sec", "median_s", "min_s", "repeats", "warmup", "peak_mem_mib",
    "gmac_per_audio_second", "achieved_gmacs", "machine_matmul_gmacs", "machine_conv_gmacs",
    "machine_matmul_n", "machine_conv_length", "machine_peak_gmacs", "pct_of_peak",
    "pct_of_conv_peak", "params_m", "threads", "loader_workers",
    "clock", "loadavg_1m",
)


def empty_row(**values: Any) -> dict[str, Any]:
    """A row with every RESULT_KEYS entry (None) and `values` set."""
    row: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    row.update(values)
    return row


def fill_speed(row: dict[str, Any], times: Sequence[float], samples: float, sampling_rate: int,
               macs_per_audio_second: float | None) -> None:
    """Median/min seconds, kHz, RTF and (given the cost) achieved GMAC/s of `samples` per run."""
    median = statistics.median(times)
    row["median_s"] = median
    row["min_s"] = min(times)
    row["samples_per_sec"] = samples / median
    row["khz"] = samples / median / 1000.0
    row["rtf"] = samples / sampling_rate / median
    row["audio_seconds"] = samples / sampling_rate
    if macs_per_audio_second is not None:
        row["gmac_per_audio_second"] = macs_per_audio_second / 1e9
        row["achieved_gmacs"] = macs_per_audio_second * row["rtf"] / 1e9


def fill_peak(row: dict[str, Any], peak: Mapping[str, float] | None) -> None:
    """The machine's peak (from `measure_machine_peak`) and the row's share of it."""
    if not peak:
        return
    row["machine_matmul_gmacs"] = peak["matmul_gmacs"]
    row["machine_conv_gmacs"] = peak["conv_gmacs"]
    # The kernels' sizes: smaller than configured where a full-size run would be too slow.
    row["machine_matmul_n"] = int(peak["matmul_n"])
    row["machine_conv_length"] = int(peak["conv_length"])
    # The best dense throughput this process reached in this dtype is the machine's peak here.
    row["machine_peak_gmacs"] = max(peak["matmul_gmacs"], peak["conv_gmacs"])
    if row.get("achieved_gmacs") is not None:
        row["pct_of_peak"] = 100.0 * row["achieved_gmacs"] / row["machine_peak_gmacs"]
        row["pct_of_conv_peak"] = 100.0 * row["achieved_gmacs"] / peak["conv_gmacs"]


# The table's first N_LEFT columns (the case's identity) are left-aligned, the figures right.
N_LEFT = 6


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def _in_its_unit(row: Mapping[str, Any]) -> dict[str, Any]:
    """The row with its speed in the unit of its task: samples/s for training (audio samples
    trained on per second), kHz for synthesis and mel extraction (samples produced per second)."""
    out = dict(row)
    if out.get("task") == "train":
        out["khz"] = None
    else:
        out["samples_per_sec"] = None
    return out


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of result rows (one line per case); training speed is in its own
    samples/s column, synthesis and preprocessing speed under kHz."""
    cols = [
        ("task", "task", 0), ("model", "model", 0), ("engine", "engine", 0), ("dev", "device", 0),
        ("prec", "precision", 0), ("memory", "memory", 0), ("B", "batch", 0), ("audio s", "audio_seconds", 2),
        ("kHz", "khz", 2), ("samples/s", "samples_per_sec", 0), ("RTF", "rtf", 3),
        ("median s", "median_s", 3), ("min s", "min_s", 3), ("peak MiB", "peak_mem_mib", 0),
        ("GMAC/audio s", "gmac_per_audio_second", 2), ("GMAC/s", "achieved_gmacs", 1),
        ("peak GMAC/s", "machine_peak_gmacs", 1), ("% peak", "pct_of_peak", 1),
        ("% conv", "pct_of_conv_peak", 1), ("SNR dB", "snr_db_vs_fp32", 1),
    ]
    cells = [[h for h, _, _ in cols]]
    for row in map(_in_its_unit, rows):
        if row.get("error"):
            cells.append([_fmt(row.get(k), d) for _, k, d in cols[:N_LEFT + 1]] + [f"ERROR: {row['error']}"])
            continue
        cells.append([_fmt(row.get(k), d) for _, k, d in cols])
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cols))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.rjust(widths[i]) if i >= N_LEFT else c.ljust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if len(lines) == 1:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def machine_description(threads: int | None = None) -> str:
    """One line: CPU model, cores, torch version, its CPU capability, and the cases' threads."""
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cap = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({cap}), "
            f"{threads or torch.get_num_threads()} threads")


def json_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    """Non-finite floats -> None, so every line is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
