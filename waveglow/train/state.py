"""What a run carries from step to step besides the weights: the loop counters, the learning
rate schedule, the RNG states, and the result and error types of `train`."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from waveglow.config import TrainConfig


class TrainingError(RuntimeError):
    """Training cannot go on: a checkpoint could not be written, or it diverged beyond recovery.

    The CLI prints it as one `error: ...` line and exits 1; the checkpoints on disk are intact.
    """


@dataclass
class TrainResult:
    """What `train` returns: where the run lives and how it ended.

    exit_code: 0 finished (or nothing left to do), 130 stopped by SIGINT, 143 by SIGTERM
        (a final last.pt was written in both cases; re-running resumes).
    """

    run_dir: Path
    step: int
    exit_code: int = 0
    best_val_log_likelihood: float | None = None
    val_log_likelihood: float | None = None
    skipped_steps: int = 0
    recoveries: int = 0


@dataclass
class LoopState:
    """Everything besides weights/optimizer that decides what the next step does.

    Saved in the checkpoint (`scheduler`, `sampler`, `metrics`) so a resume is exact.
    """

    step: int = 0
    epoch: int = 0
    position: int = 0            # batches consumed in the current epoch (per rank)
    lr_mult: float = 1.0         # product of the guard's lr reductions
    recoveries: int = 0
    skipped_steps: int = 0       # cumulative non-finite steps
    bad_streak: int = 0          # consecutive non-finite steps
    val_log_likelihood: float | None = None
    best_val_log_likelihood: float | None = None
    best_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def result(self, run_dir: Path, exit_code: int) -> TrainResult:
        return TrainResult(run_dir, self.step, exit_code, self.best_val_log_likelihood,
                           self.val_log_likelihood, self.skipped_steps, self.recoveries)


def lr_at(step: int, train_cfg: TrainConfig, lr_mult: float = 1.0) -> float:
    """Learning rate for optimizer step `step` (0-based): base × guard factor × warmup × decay."""
    lr = float(train_cfg.lr) * lr_mult
    warmup = int(train_cfg.warmup_steps or 0)
    if warmup > 0 and step < warmup:
        lr *= (step + 1) / warmup
    for milestone in train_cfg.lr_decay_steps or []:
        if step >= int(milestone):
            lr *= float(train_cfg.lr_decay_factor)
    return lr


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }
    if device.type == "cuda":
        state["cuda"] = [torch.cuda.get_rng_state(device)]
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(state["cuda"][0], device)
