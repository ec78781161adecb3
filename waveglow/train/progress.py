"""What the user sees while a run trains: the progress bar or log lines, the TensorBoard
scalars of each logging window, and `metrics.jsonl` (one line per validation).

Without a terminal, a progress line comes every `log_every` steps and also every
`interval_s` seconds of training, so that a slow run (a large model on a CPU) is never silent
for long. `SpeedCheck` warns once, after the first steps, when `train.device=auto` fell back to
the CPU and the run would take more than a day.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from waveglow.fileio import write_text_atomic
from waveglow.train.monitor import Monitor
from waveglow.train.state import LoopState
from waveglow.train.step import StepResult

log = logging.getLogger("waveglow")


def fmt_duration(seconds: float) -> str:
    """`1:02:03` (or `?` when unknown)."""
    if not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=int(seconds)))


class Window:
    """Running means of the steps since the last log line (time counts only training steps,
    not validation or checkpoint writes)."""

    def __init__(self) -> None:
        self.clear()
        self.sec_per_step = math.nan
        self.samples_per_sec = math.nan

    def clear(self) -> None:
        self.nll: list[float] = []
        self.norm: list[float] = []
        self.seconds = 0.0
        self.samples = 0
        self.steps = 0

    def add(self, out: StepResult, seconds: float, samples: int) -> None:
        if not out.skipped:
            self.nll.append(out.loss)
            self.norm.append(out.grad_norm)
        self.seconds += seconds
        self.samples += samples
        self.steps += 1
        if self.seconds > 0:
            rate = self.seconds / self.steps
            # Smoothed over windows so the ETA does not jump with each log line.
            self.sec_per_step = rate if not math.isfinite(self.sec_per_step) else 0.7 * self.sec_per_step + 0.3 * rate
            self.samples_per_sec = self.samples / self.seconds

    def summary(self) -> dict[str, float]:
        mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
        return {"nll": mean(self.nll), "grad_norm": mean(self.norm),
                "samples_per_sec": self.samples / self.seconds if self.seconds else math.nan,
                "sec_per_step": self.sec_per_step}


class Progress:
    """Per-step reporting of a run: a tqdm bar on an interactive terminal (rank 0), log lines
    otherwise, and the TensorBoard scalars of every `log_every` steps.

    Args:
        monitor: the run's TensorBoard writer (disabled on ranks other than 0).
        is_main: rank 0.
        start_step, max_steps: where the run starts and ends.
        sampling_rate: to express throughput as a multiple of real time.
        interval_s: also a log line after this many seconds without one (0: only every
            `log_every` steps); not used with a progress bar.
        bar: a tqdm bar on an interactive terminal (default: when stderr is one).
    """

    def __init__(self, monitor: Monitor, *, is_main: bool, start_step: int, max_steps: int,
                 sampling_rate: float, interval_s: float = 30.0, bar: bool | None = None) -> None:
        self.monitor = monitor
        self.is_main = is_main
        self.max_steps = max_steps
        self.sr = float(sampling_rate)
        self.interval_s = float(interval_s)
        self.window = Window()    # the TensorBoard window: every log_every steps
        self.console = Window()   # the log lines: every log_every steps or interval_s seconds
        self.last_line = time.monotonic()
        self.bar = None
        if is_main and (sys.stderr.isatty() if bar is None else bar):
            from tqdm import tqdm  # only on a terminal: tqdm is a slow import

            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def add(self, out: StepResult, seconds: float, samples: int) -> None:
        """Count one step (`samples` global audio samples in `seconds` of training)."""
        self.window.add(out, seconds, samples)
        self.console.add(out, seconds, samples)

    def update(self, state: LoopState, lr: float, log_every: int) -> None:
        """After a step: the scalars at every `log_every` steps (and the last), a log line then
        or when `interval_s` passed, the bar."""
        if state.step % log_every == 0 or state.step == self.max_steps:
            self._scalars(state, lr)
            self._line(state, lr)
        elif self.interval_s > 0 and time.monotonic() - self.last_line >= self.interval_s:
            self._line(state, lr)
        if self.bar is None:
            return
        self.bar.update(state.step - self.bar.n)
        nll = self.window.nll[-1] if self.window.nll else math.nan
        self.bar.set_postfix_str(f"NLL {nll:.3f} nats/sample, {self.window.samples_per_sec:,.0f} samples/s",
                                 refresh=False)

    def _scalars(self, s: LoopState, lr: float) -> None:
        values = self.window.summary()
        self.monitor.scalars(s.step, {
            "train/log_likelihood": -values["nll"], "train/nll": values["nll"], "train/lr": lr,
            "train/grad_norm": values["grad_norm"], "train/samples_per_sec": values["samples_per_sec"],
            "train/skipped_steps": s.skipped_steps})
        self.window.clear()

    def _line(self, s: LoopState, lr: float) -> None:
        values = self.console.summary()
        if self.is_main and not self.bar:
            eta = (self.max_steps - s.step) * values["sec_per_step"]
            log.info(f"step {s.step}/{self.max_steps} | train NLL {values['nll']:.4f} nats/sample | "
                     f"{values['samples_per_sec']:,.0f} samples/s "
                     f"({values['samples_per_sec'] / self.sr:.2f}× real time) | "
                     f"{values['sec_per_step']:.3g} s/step | lr {lr:.3g} | ETA {fmt_duration(eta)}")
        self.console.clear()
        self.last_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SpeedCheck:
    """Warns once when `train.device=auto` fell back to the CPU for a run that would take more
    than `limit_s`: the seconds per step measured on the second step (the first carries one-off
    costs), the ETA for the remaining steps, and what to do instead.

    Args:
        enabled: `train.device=auto` resolved to the CPU, on rank 0.
        start_step, max_steps: where the run starts and ends.
        n_params: the model's parameters (a smaller model is suggested above `big_model`).
        limit_s: the ETA that is worth a warning.
    """

    big_model = 20_000_000

    def __init__(self, *, enabled: bool, start_step: int, max_steps: int, n_params: int,
                 limit_s: float = 86400.0) -> None:
        self.enabled = enabled
        self.start_step = start_step
        self.max_steps = max_steps
        self.n_params = n_params
        self.limit_s = limit_s
        self.warned = False

    def after_step(self, step: int, seconds: float) -> None:
        """Called after each step with its training seconds."""
        if not self.enabled or self.warned or step < self.start_step + 2:
            return
        self.warned = True
        eta = (self.max_steps - step) * seconds
        if eta < self.limit_s:
            return
        instead = ("model=tiny or model=squeeze (minutes to hours on a CPU), or a machine with a CUDA GPU"
                   if self.n_params > self.big_model else "a machine with a CUDA GPU, or fewer train.max_steps")
        log.warning(f"training on the CPU (train.device=auto found no CUDA GPU): {seconds:.3g} s per step, "
                    f"ETA {fmt_duration(eta)} for train.max_steps={self.max_steps}; use {instead}")


def append_metric(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line (a log: appended, flushed; a torn last line is dropped on resume)."""
    with open(path, "a") as f:
        f.write(json.dumps(dict(record)) + "\n")
        f.flush()


def truncate_metrics(path: Path, step: int) -> None:
    """On resume from `step`, drop lines the interrupted process wrote after it (atomic rewrite)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash
    write_text_atomic(path, "".join(line + "\n" for line in kept))
