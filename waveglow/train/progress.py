"""What the user sees while a run trains: the progress bar or log lines, the TensorBoard
scalars of each logging window, and `metrics.jsonl` (one line per validation).

Without a terminal, a progress line comes every `log_every` steps and also every
`interval_s` seconds of training, so that a slow run (a large model on a CPU) is never silent
for long. Throughput is reported as audio samples per second (global) and audio seconds per
second (samples/s ÷ sampling rate). `SpeedCheck` warns once, after the first steps, when
`train.device=auto` fell back to the CPU and the run would take more than a day;
`ThroughputCheck` warns once when the run is far slower than one thread of this machine would
be with the same model (threads fighting other work for the cores: set `train.threads`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn

from waveglow.fileio import write_text_atomic
from waveglow.runtime import autocast, one_thread_rate, slow_warning
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
        sampling_rate: to express throughput in audio seconds per second.
        interval_s: also a log line after this many seconds without one (0: only every
            `log_every` steps); not used with a progress bar.
        bar: a tqdm bar on an interactive terminal (default: when stderr is one).
        check: sees the samples/s of every log line (`ThroughputCheck`), or None.
    """

    def __init__(self, monitor: Monitor, *, is_main: bool, start_step: int, max_steps: int,
                 sampling_rate: float, interval_s: float = 30.0, bar: bool | None = None,
                 check: ThroughputCheck | None = None) -> None:
        self.monitor = monitor
        self.check = check
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
            "train/log_likelihood": -values["nll"], "zz_optim/nll": values["nll"], "zz_optim/lr": lr,
            "zz_optim/grad_norm": values["grad_norm"], "zz_optim/samples_per_sec": values["samples_per_sec"],
            "zz_optim/skipped_steps": s.skipped_steps})
        self.window.clear()

    def _line(self, s: LoopState, lr: float) -> None:
        values = self.console.summary()
        if self.is_main and not self.bar:
            eta = (self.max_steps - s.step) * values["sec_per_step"]
            log.info(f"step {s.step}/{self.max_steps} | train NLL {values['nll']:.4f} nats/sample | "
                     f"{values['samples_per_sec']:,.0f} samples/s, "
                     f"{values['samples_per_sec'] / self.sr:.2f} audio seconds per second | "
                     f"{values['sec_per_step']:.3g} s/step | lr {lr:.3g} | ETA {fmt_duration(eta)}")
        if self.check is not None:
            self.check.after_line(values["samples_per_sec"])
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


# A training step (forward, backward, Adam) costs about three forward passes: the bench's one-core
# figures for tiny fp32 are 314 kHz synthesis (one pass) and 107 kHz training.
STEP_COST_IN_FORWARDS = 3.0


class ThroughputCheck:
    """Warns once when training runs at under a quarter of what one thread of this machine
    reaches with the same model (`waveglow.runtime.slow_warning`): several threads fighting
    other processes for the cores, fixed by `train.threads`.

    It looks at the second log line (the first carries one-off costs) and only then measures
    the one-thread figure (`calibrate`, a fraction of a second for small models). Nothing is
    measured on one thread (a busy core can then at most time-slice the work) or when disabled.

    Args:
        enabled: rank 0 of a CPU run.
        threads: intra-op threads of each training process.
        calibrate: () -> one-thread training samples/s of one process (`one_thread_training_rate`).
        world: training processes (log lines carry the global samples/s).
    """

    def __init__(self, *, enabled: bool, threads: int, calibrate: Callable[[], float], world: int = 1) -> None:
        self.enabled = enabled and threads > 1
        self.threads = threads
        self.calibrate = calibrate
        self.world = max(1, world)
        self.lines = 0
        self.message: str | None = None

    def after_line(self, samples_per_sec: float) -> None:
        """Called with the global samples/s of each log line; warns at most once."""
        self.lines += 1
        if not self.enabled or self.lines != 2 or not math.isfinite(samples_per_sec):
            return
        self.message = slow_warning("training", samples_per_sec / self.world, self.calibrate(),
                                    "samples/s per process", self.threads, key="train.threads")
        if self.message:
            log.warning(self.message)


def one_thread_training_rate(model: nn.Module, *, n_mels: int, hop_length: int, samples: int,
                             device: torch.device, amp_dtype: torch.dtype | None) -> Callable[[], float]:
    """A `ThroughputCheck.calibrate` for `model`: one thread's training samples/s, estimated as
    its forward (log-likelihood) samples/s on one `samples`-long random item / `STEP_COST_IN_FORWARDS`.

    No gradient, optimizer or global RNG is touched, so the run is the same with or without the check.

    Args:
        model: the WaveGlow being trained (not its DDP wrapper).
        n_mels, hop_length: its features.
        samples: audio samples of the item (a multiple of the model's segment multiple).
        device, amp_dtype: where and in what precision the run trains.
    """

    def measure() -> float:
        gen = torch.Generator().manual_seed(0)
        audio = (0.1 * torch.randn(1, samples, generator=gen)).to(device)
        mel = torch.randn(1, n_mels, -(-samples // hop_length), generator=gen).to(device)

        def forward() -> None:
            with torch.no_grad(), autocast(device, amp_dtype):
                model(audio, mel)

        return one_thread_rate(forward, samples) / STEP_COST_IN_FORWARDS

    return measure


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
