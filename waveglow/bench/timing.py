"""Timing a callable, and the dense throughput this machine reaches (its practical peak)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from waveglow.runtime import PRECISIONS

CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device,
              clock: str = "wall") -> list[float]:
    """Seconds of `repeats` calls of `fn` after `warmup` untimed calls (device-synchronized).

    `clock="wall"` is elapsed time, what a user waits. `clock="cpu"` is this process's CPU time:
    on cores shared with other work, time slices given to other processes do not count, so
    with one thread it approximates the wall time on an idle core (with several threads it
    adds up every thread's time, spin-waits included).
    """
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = now()
        fn()
        sync(device)
        times.append(now() - t0)
    return times


def measure_machine_peak(device: str | torch.device = "cpu", precision: str = "fp32",
                         matmul_n: int = 2048, conv_length: int = 16000,
                         repeats: int = 5, clock: str = "wall") -> dict[str, float]:
    """Dense throughput this process reaches in `precision`: a square matmul and a conv1d.

    The conv is 256 -> 512 channels, kernel 3, the shape of a WaveGlow-256 dilated layer, on
    one sequence of `conv_length` steps. Both are timed as the median of `repeats` runs, the
    same statistic the model cases use.

    Returns:
        {"matmul_gmacs", "conv_gmacs"} in 1e9 multiply-accumulates per second.
    """
    device = torch.device(device)
    dtype = PRECISIONS[precision] or torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        a = torch.randn(matmul_n, matmul_n, generator=gen).to(device, dtype)
        b = torch.randn(matmul_n, matmul_n, generator=gen).to(device, dtype)
        mm = statistics.median(time_runs(lambda: torch.mm(a, b), repeats, 2, device, clock))
        x = torch.randn(1, 256, conv_length, generator=gen).to(device, dtype)
        w = torch.randn(512, 256, 3, generator=gen).to(device, dtype) * 0.05
        conv = statistics.median(
            time_runs(lambda: torch.nn.functional.conv1d(x, w, padding=1), repeats, 2, device, clock))
    return {
        "matmul_gmacs": matmul_n ** 3 / mm / 1e9,
        "conv_gmacs": 256 * 512 * 3 * conv_length / conv / 1e9,
    }
