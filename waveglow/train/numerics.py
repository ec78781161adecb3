"""The process-wide numeric switches a run sets (threads, deterministic mode, cuDNN, TF32), and
putting them back when the run ends (`Trainer.close`), so that training in a notebook or a test
leaves the process as it found it."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from waveglow.config import TrainConfig
from waveglow.runtime import (
    Threads,
    configure_threads,
    restore_tf32,
    set_deterministic,
    set_tf32,
    tf32_state,
)

log = logging.getLogger("waveglow")


@dataclass(frozen=True)
class NumericsState:
    """A snapshot of the global switches `configure` changes.

    TF32 is read and put back through `waveglow.runtime` (torch's `fp32_precision` API where it
    exists): reading the legacy `allow_tf32` flags after the new API has set them raises on
    torch >= 2.9 ("mix of the legacy and new APIs").
    """

    deterministic: bool
    threads: int
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    tf32: tuple  # `waveglow.runtime.tf32_state()`

    @classmethod
    def capture(cls) -> NumericsState:
        return cls(deterministic=torch.are_deterministic_algorithms_enabled(), threads=torch.get_num_threads(),
                   cudnn_benchmark=torch.backends.cudnn.benchmark,
                   cudnn_deterministic=torch.backends.cudnn.deterministic, tf32=tf32_state())

    def restore(self) -> None:
        if torch.are_deterministic_algorithms_enabled() != self.deterministic:
            set_deterministic(self.deterministic)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic
        restore_tf32(self.tf32)


def configure(train_cfg: TrainConfig, device: torch.device, processes: int = 1) -> Threads:
    """Threads, TF32, cuDNN autotuning and deterministic mode for a run on `device`.

    `train.threads=null` takes the cores free at start, shared among the `processes` training
    processes on this machine (`waveglow.runtime.choose_threads`); returns the thread count.

    TF32 (`train.tf32`) is allowed globally for the conditioner's training convolutions; the
    1×1 convolutions, validation and every no-grad path switch it off themselves
    (`waveglow.runtime.exact_fp32`). cuDNN autotuning pays off for the fixed training shapes;
    validation and the audio log, whose lengths vary, turn it off (`fixed_shapes_only`).
    """
    t = train_cfg
    deterministic = bool(t.deterministic)
    threads = configure_threads(t.threads, key="train.threads", processes=processes)
    if device.type == "cuda":
        set_tf32(bool(t.tf32))
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if deterministic:
        set_deterministic(True)
    return threads


@contextlib.contextmanager
def fixed_shapes_only() -> Iterator[None]:
    """cuDNN autotuning off inside (variable-length inputs would re-tune at every new shape);
    the previous setting is restored on exit."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before
