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


def _fit(full: int, smallest: int, macs_per_unit: float, seconds_per_mac: float,
         max_seconds: float, power: int) -> int:
    """The largest size <= `full` whose run is estimated to take at most `max_seconds`, and at
    least `smallest` (the probe's size, <= `full`).

    The run's cost is `macs_per_unit · size**power` multiply-accumulates; `seconds_per_mac`
    comes from a probe at a small size.
    """
    fits = (max_seconds / (seconds_per_mac * macs_per_unit)) ** (1.0 / power)
    # (1e9)**(1/3) is 999.9999...: a relative nudge keeps exact roots whole.
    return max(smallest, min(full, int(fits * (1 + 1e-9))))


def measure_machine_peak(device: str | torch.device = "cpu", precision: str = "fp32",
                         matmul_n: int = 2048, conv_length: int = 16000,
                         repeats: int = 5, clock: str = "wall",
                         max_seconds: float = 1.0) -> dict[str, float]:
    """Dense throughput this process reaches in `precision`: a square matmul and a conv1d.

    The conv is 256 -> 512 channels, kernel 3, the shape of a WaveGlow-256 dilated layer, on
    one sequence of `conv_length` steps. Both are timed as the median of `repeats` runs, the
    same statistic the model cases use.

    Each kernel is first probed at a small size (256³, 1,000 steps); when one full-size run
    would take over `max_seconds`, the size shrinks to what fits. Where the dtype has no fast
    kernel (bf16 on a CPU without bf16 instructions: emulated at ~0.1-0.4 GMAC/s) the 2048³
    product alone would take minutes per run, and a smaller one measures the same slow rate.

    Returns:
        {"matmul_gmacs", "conv_gmacs"} in 1e9 multiply-accumulates per second, and the sizes
        used, {"matmul_n", "conv_length"}.
    """
    device = torch.device(device)
    dtype = PRECISIONS[precision] or torch.float32
    gen = torch.Generator(device="cpu").manual_seed(0)

    def matmul_seconds(n: int, runs: int, warmup: int) -> float:
        a = torch.randn(n, n, generator=gen).to(device, dtype)
        b = torch.randn(n, n, generator=gen).to(device, dtype)
        return statistics.median(time_runs(lambda: torch.mm(a, b), runs, warmup, device, clock))

    w = torch.randn(512, 256, 3, generator=gen).to(device, dtype) * 0.05

    def conv_seconds(length: int, runs: int, warmup: int) -> float:
        x = torch.randn(1, 256, length, generator=gen).to(device, dtype)
        return statistics.median(time_runs(
            lambda: torch.nn.functional.conv1d(x, w, padding=1), runs, warmup, device, clock))

    conv_macs = 256 * 512 * 3  # per step
    with torch.inference_mode():
        probe_n, probe_len = min(matmul_n, 256), min(conv_length, 1000)
        matmul_n = _fit(matmul_n, probe_n, 1.0,
                        matmul_seconds(probe_n, 1, 1) / probe_n ** 3, max_seconds, 3)
        conv_length = _fit(conv_length, probe_len, conv_macs,
                           conv_seconds(probe_len, 1, 1) / (conv_macs * probe_len), max_seconds, 1)
        mm = matmul_seconds(matmul_n, repeats, 2)
        conv = conv_seconds(conv_length, repeats, 2)
    return {
        "matmul_gmacs": matmul_n ** 3 / mm / 1e9,
        "conv_gmacs": conv_macs * conv_length / conv / 1e9,
        "matmul_n": matmul_n,
        "conv_length": conv_length,
    }
