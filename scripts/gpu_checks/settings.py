"""What `make gpu-check` runs and where: its settings, one planned command, the goals."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENTRY = REPO / "scripts" / "gpu_check.py"  # the command; `--as-train` runs the trainer through it
BUDGET_S = 470.0  # the whole run: under 8 minutes, with a little left for writing the results
MIN_STEP_S = 20.0  # a check that would get less than this is skipped rather than started
PEAK_MARK = "gpu-check: peak_mem_mib="
GOAL_MODEL = "waveglow_256"
# Goals on an H100/H200-class GPU: (check, precision) -> (figure, at least, as printed).
GOALS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("synthesis", "fp16"): ("khz", 3000.0, ">= 3 MHz"),
    ("train", "fp16"): ("samples_per_sec", 300_000.0, ">= 300k samples/s"),
    ("train", "bf16"): ("samples_per_sec", 300_000.0, ">= 300k samples/s"),
}


@dataclass(frozen=True)
class Settings:
    """What the check runs and where (the defaults are the real GPU check)."""

    work: Path                      # temporary folder: feature cache, run dirs
    gpus: int = 1
    bf16: bool = True
    device: str = "cuda"
    model: str = GOAL_MODEL
    steps: int = 200
    batch: int = 8                  # per step, × data.segment_length (16000) samples
    train_precisions: tuple[str, ...] = ("fp16", "bf16")
    synth_seconds: float = 10.0     # audio per synthesis call (batch 1)
    ddp_model: str = "tiny"
    ddp_steps: int = 20
    invertible_precision: str = "fp16"  # train.memory=invertible: fp16 autocast + GradScaler
    checks: tuple[str, ...] = ()    # empty: every check (`checks.CHECK_NAMES`)
    train_overrides: tuple[str, ...] = ()  # appended to every waveglow-train command
    bench_overrides: tuple[str, ...] = ()  # appended to every waveglow-bench command
    python: str = sys.executable
    bin_dir: Path = BIN
    repo: Path = REPO


@dataclass(frozen=True)
class Step:
    """One command of the check and how to read its result."""

    name: str                       # file name of its log: logs/<name>.log
    kind: str                       # the check that planned it (`checks.CHECKS`), or prepare
    argv: tuple[str, ...]
    cap_s: float                    # its own time limit (the overall budget may cut it)
    model: str | None = None
    precision: str | None = None
    run_dir: Path | None = None
    expect: dict[str, Any] = field(default_factory=dict)
