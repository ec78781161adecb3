"""Where and in what number format the work runs: the one device resolver, the one precision
table, autocast, seeding, the process-wide determinism switch, and the thread count (chosen
from the free cores, applied in one place) with the check that warns when threads fight other
work for the cores.

Every entry point (training, synthesis, scoring, the benchmark) goes through these, so that
`device=auto` and `precision=bf16` mean the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from waveglow.errors import UserError

log = logging.getLogger(__name__)

# precision name -> autocast dtype (None: plain float32, no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device, *, key: str = "device", local_rank: int | None = None
                   ) -> torch.device:
    """The torch device for a `device=` setting.

    Args:
        name: auto (CUDA when available, else CPU) | cpu | cuda | cuda:N.
        key: the setting's name, for the error message (e.g. `train.device`).
        local_rank: under torchrun, the process's GPU index; `cuda` then means `cuda:<local_rank>`.

    Returns:
        The device (CUDA devices always carry an index).

    Raises:
        UserError: an unknown name, CUDA asked for where there is none, or an index beyond the
            GPUs present.
    """
    text = str(name)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return torch.device("cpu")
    if text != "cuda" and not (text.startswith("cuda:") and text[5:].isdigit()):
        raise UserError(f"{key}={name}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UserError(f"{key}={name}: no CUDA device is available here; expected {key}=auto or cpu")
    index = int(text[5:]) if ":" in text else (local_rank or 0)
    count = torch.cuda.device_count()
    if index >= count:
        what = f"local rank {index}" if ":" not in text and local_rank is not None else f"{key}={name}"
        raise UserError(f"{what}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    return torch.device("cuda", index)


def resolve_precision(name: str, device: torch.device, *, key: str = "precision") -> torch.dtype | None:
    """The autocast dtype for a `precision=` setting on `device` (None: plain fp32).

    Args:
        name: fp32 | bf16 | fp16 | auto (fp16 on CUDA, fp32 on CPU).
        device: where it will run.
        key: the setting's name, for the error message.

    Raises:
        UserError: an unknown name, or bf16 on a GPU without bf16 support.
    """
    text = str(name)
    if text == "auto":
        text = "fp16" if device.type == "cuda" else "fp32"
    if text not in PRECISIONS:
        raise UserError(f"{key}={name}: expected one of {', '.join([*PRECISIONS, 'auto'])}")
    dtype = PRECISIONS[text]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError(f"{key}=bf16: this GPU has no bfloat16 support; use fp16 or fp32")
    if dtype == torch.bfloat16 and device.type == "cpu" and not cpu_native_bf16():
        _warn_once(f"{key}=bf16 on a CPU without bfloat16 instructions (AVX-512 BF16 or AMX; torch "
                   f"reports {torch.backends.cpu.get_cpu_capability()}): bf16 products are emulated "
                   "there, 20-40x slower than fp32 where measured (docs/performance.md); use fp32")
    return dtype


@functools.cache
def cpu_native_bf16() -> bool:
    """Whether oneDNN computes bfloat16 natively on this CPU (AVX-512 BF16 or AMX).

    Without it a bf16 convolution or matmul is emulated: on an AVX2-only host a 256 -> 512
    channel conv ran at 0.8 GMAC/s in bf16 against 16 in fp32 (one thread)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - a build without oneDNN
        return False


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """Log `message` as a warning the first time this process sees it (synthesis and training
    resolve their precision more than once)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


def precision_name(dtype: torch.dtype | None) -> str:
    """fp32 | bf16 | fp16 for an autocast dtype from `resolve_precision`."""
    for name, value in PRECISIONS.items():
        if value == dtype:
            return name
    if dtype == torch.float32:
        return "fp32"
    raise ValueError(f"no precision name for {dtype}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`; a no-op context for fp32 (dtype None or float32)."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(mode: bool) -> None:
    """torch.use_deterministic_algorithms without importing the compiler stack when unused.

    The public function also sets a torch.compile (inductor) flag, and importing inductor costs
    seconds per process start; nothing here is compiled, so only the eager flag matters then.
    """
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode)


def _tf32_state() -> tuple:
    """The current TF32 switches (the fp32_precision API where torch has it: mixing it with the
    legacy allow_tf32 flags makes torch refuse to read them)."""
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        return ("precision", torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    return ("legacy", torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)


def _set_tf32_state(state: tuple) -> None:
    api, matmul, conv = state
    if api == "precision":
        torch.backends.cuda.matmul.fp32_precision = matmul
        torch.backends.cudnn.conv.fp32_precision = conv
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = conv


def set_tf32(enabled: bool) -> tuple:
    """Allow (or forbid) TF32 in CUDA float32 matmuls and convolutions, process-wide.

    Returns:
        The previous state, for `restore_tf32` (training restores it when it closes).
    """
    before = _tf32_state()
    if before[0] == "precision":
        value = "tf32" if enabled else "ieee"
        _set_tf32_state(("precision", value, value))
    else:
        _set_tf32_state(("legacy", enabled, enabled))
    return before


def restore_tf32(state: tuple) -> None:
    """Put back what `set_tf32` returned."""
    _set_tf32_state(state)


def tf32_allowed() -> bool:
    """Whether CUDA float32 convolutions may currently run in TF32."""
    api, _, conv = _tf32_state()
    return conv in ("tf32", "none") if api == "precision" else bool(conv)


def tf32_state() -> tuple:
    """The current TF32 switches, as `set_tf32` returns them (put back with `restore_tf32`),
    read through the one API this torch has (never the legacy flags where the new API exists)."""
    return _tf32_state()


def tf32_switches() -> tuple[bool, bool]:
    """(matmul, convolution): whether CUDA float32 matmuls and convolutions may run in TF32."""
    api, matmul, _ = _tf32_state()
    return (matmul == "tf32" if api == "precision" else bool(matmul)), tf32_allowed()


@contextlib.contextmanager
def exact_fp32(device: torch.device | str) -> Iterator[None]:
    """float32 kernels without TF32 on CUDA, for the parts whose exactness the likelihood needs.

    With TF32 allowed (Ampere and newer), a "float32" matmul or convolution rounds its inputs to
    10 mantissa bits (~1e-3 relative): the 1×1 convolution would no longer be the inverse of its
    inverse and log-likelihoods would be off. The 1×1 convolutions, validation, scoring and
    encode/decode run inside this context; the conditioner's training convolutions may use TF32.
    Restores the previous switches; a no-op on the CPU.
    """
    if torch.device(device).type != "cuda":
        yield
        return
    before = set_tf32(False)
    try:
        yield
    finally:
        restore_tf32(before)


def available_cores() -> int:
    """CPU cores this process may use (its affinity mask, not the machine's count)."""
    return max(1, len(_affinity()))


def resolve_loader_workers(setting: int | str, processes: int = 1) -> int:
    """DataLoader worker processes for `data.loader_workers` (`auto` or a number).

    `auto` gives each training process the cores left after its own main thread, and none on
    small machines: with fewer than 4 cores per process, workers compete with the training
    step for the same cores (measured on 2 cores: 4 workers halve the samples/s of 0).

    Args:
        setting: `auto` or an integer >= 0.
        processes: training processes sharing this machine (torchrun's LOCAL_WORLD_SIZE).
    """
    if setting != "auto":
        return int(setting)
    per_process = available_cores() // max(1, processes)
    return 0 if per_process < 4 else min(per_process - 1, 8)


# ------------------------------------------------------------------------------------ threads
# Intra-op threads that outnumber the free cores do not share them gracefully: torch's OpenMP
# pool waits at a barrier after every operator for its slowest thread, and a thread that shares
# its core with another process is descheduled for whole time slices. Measured on 2 cores with
# one busy: tiny training 4.7k samples/s with 2 threads against 70k with 1, synthesis 10.8 kHz
# against 279 kHz. So the default is the cores that are free when the script starts.

@dataclass(frozen=True)
class Threads:
    """The intra-op thread count a process runs with, and where it came from.

    Attributes:
        count: threads set with `torch.set_num_threads`.
        cores: CPU cores this process may use (its affinity mask).
        busy: of those, cores busy with other work when it was chosen (None: given, not measured).
        given: set by a `threads=` setting rather than chosen automatically.
        key: the setting's name (`threads`, `train.threads`), for messages.
    """

    count: int
    cores: int
    busy: float | None
    given: bool
    key: str = "threads"

    def describe(self) -> str:
        """`2 threads (threads=2)` or `1 thread (threads=null: 2 usable cores, 1.0 busy at start)`."""
        n = f"{self.count} thread{'' if self.count == 1 else 's'}"
        if self.given:
            return f"{n} ({self.key}={self.count})"
        busy = "?" if self.busy is None else f"{self.busy:.1f}"
        return f"{n} ({self.key}=null: {self.cores} usable core{'' if self.cores == 1 else 's'}, {busy} busy at start)"


def _cpu_jiffies(stat_text: str) -> dict[int, tuple[int, int]]:
    """Per-CPU (total, idle) jiffies from the text of /proc/stat (idle includes iowait)."""
    out = {}
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit():
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        out[int(name[3:])] = (sum(values), values[3] + (values[4] if len(values) > 4 else 0))
    return out


def busy_cores(cpus: Iterable[int], before: str, after: str, own_cpu_seconds: float = 0.0,
               wall_seconds: float = 1.0) -> float:
    """Cores of `cpus` busy with other work between two readings of /proc/stat.

    Args:
        cpus: the CPU numbers this process may use.
        before, after: the text of /proc/stat at the start and the end of the window.
        own_cpu_seconds: this process's CPU time during the window (not other work).
        wall_seconds: the window's length.

    Returns:
        The sum over `cpus` of each one's busy fraction, less this process's share (>= 0).
    """
    a, b = _cpu_jiffies(before), _cpu_jiffies(after)
    busy = 0.0
    for cpu in cpus:
        if cpu in a and cpu in b:
            total, idle = b[cpu][0] - a[cpu][0], b[cpu][1] - a[cpu][1]
            if total > 0:
                busy += (total - idle) / total
    return max(0.0, busy - own_cpu_seconds / max(wall_seconds, 1e-9))


def measure_busy_cores(cpus: Iterable[int], sample_s: float = 0.1) -> float | None:
    """Cores of `cpus` busy with other work, from /proc/stat over `sample_s` seconds (None where
    /proc/stat cannot be read). The per-CPU counters see load the moment it starts, unlike the
    load average, which needs a minute to follow a job that just began."""
    try:
        with open("/proc/stat") as f:
            before = f.read()
        t0, c0 = time.perf_counter(), time.process_time()
        time.sleep(sample_s)
        t1, c1 = time.perf_counter(), time.process_time()
        with open("/proc/stat") as f:
            after = f.read()
    except OSError:
        return None
    return busy_cores(cpus, before, after, own_cpu_seconds=c1 - c0, wall_seconds=t1 - t0)


def auto_threads(cores: int, busy: float | None, processes: int = 1, cap: int | None = None) -> int:
    """The default thread count: the free cores (a core counts as busy from half use on),
    shared among `processes` processes on this machine, at most `cap` (OMP_NUM_THREADS), >= 1.

    Args:
        cores: usable cores (affinity mask).
        busy: cores busy with other work (None: unknown, taken as 0).
        processes: processes of this job sharing the cores (torchrun's LOCAL_WORLD_SIZE).
        cap: an upper bound set by the user outside the toolkit (OMP_NUM_THREADS), or None.
    """
    free = int(math.floor(cores - (busy or 0.0) + 0.5))
    n = max(1, free // max(1, processes))
    return max(1, min(n, cap)) if cap else n


def omp_cap(value: str | None) -> int | None:
    """OMP_NUM_THREADS as a cap on the automatic choice (None when unset or not a positive integer)."""
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if n >= 1 else None


def choose_threads(setting: int | None, *, key: str = "threads", processes: int = 1,
                   cpus: Iterable[int] | None = None, busy: float | None | str = "measure",
                   cap: int | None | str = "env") -> Threads:
    """The thread count for a `threads=` setting (an integer, or None for automatic).

    Args:
        setting: the user's value; None chooses `auto_threads` of the free cores.
        key: the setting's name, for the log line and messages.
        processes: processes of this job on this machine (each gets its share of the free cores).
        cpus: the CPUs this process may use (default: its affinity mask).
        busy: cores busy with other work (default "measure": `measure_busy_cores`).
        cap: upper bound of the automatic choice (default "env": OMP_NUM_THREADS when set).
    """
    cpus = sorted(_affinity() if cpus is None else cpus)
    if setting is not None:
        return Threads(int(setting), len(cpus), None, True, key)
    if busy == "measure":
        busy = measure_busy_cores(cpus)
    if cap == "env":
        cap = omp_cap(os.environ.get("OMP_NUM_THREADS"))
    return Threads(auto_threads(len(cpus), busy, processes, cap), len(cpus), busy, False, key)  # type: ignore[arg-type]


def _affinity() -> set[int]:
    """The CPU numbers this process may run on (its affinity mask; every CPU where there is none)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return set(range(os.cpu_count() or 1))


def apply_threads(threads: Threads) -> Threads:
    """torch.set_num_threads(threads.count), and as many inter-op threads where torch still
    allows setting them (only before the first inter-op work of the process)."""
    torch.set_num_threads(threads.count)
    with contextlib.suppress(RuntimeError):
        if torch.get_num_interop_threads() > threads.count:
            torch.set_num_interop_threads(threads.count)
    return threads


def configure_threads(setting: int | None, *, key: str = "threads", processes: int = 1) -> Threads:
    """Choose (`choose_threads`) and apply (`apply_threads`) the thread count of a script."""
    return apply_threads(choose_threads(setting, key=key, processes=processes))


# --------------------------------------------------------------------------- throughput check
# A run slower than this fraction of what one thread reaches is fighting other work for cores.
SLOW_FRACTION = 0.25


def one_thread_rate(fn: Callable[[], Any], units: float, runs: int = 2) -> float:
    """`units` per second of `fn()` on one thread of this machine: the best of `runs` calls after
    one warm-up call, timed by this process's CPU time (other processes' time slices on the
    same core do not count, so a busy machine does not lower it). The previous thread count
    is restored.

    Returns:
        units per CPU second (inf if too fast to time).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fn()
        best = math.inf
        for _ in range(max(1, runs)):
            t0 = time.process_time()
            fn()
            best = min(best, time.process_time() - t0)
    finally:
        torch.set_num_threads(before)
    return units / best if best > 0 else math.inf


def slow_warning(what: str, measured: float, expected: float, unit: str, threads: int,
                 key: str = "threads") -> str | None:
    """The warning for a run at under `SLOW_FRACTION` of the one-thread figure, or None.

    With one thread a busy core only time-slices the work (at worst about halving it); with
    several, every operator waits for the descheduled thread, which is what makes a run 10-40x
    slower and what `threads=` fixes.

    Args:
        what: the work (`synthesis`, `training`).
        measured: its throughput (wall clock).
        expected: the one-thread figure of the same model here (`one_thread_rate`).
        unit: of both (`kHz`, `samples/s`).
        threads: the intra-op threads the run used.
        key: the setting that fixes it.
    """
    if threads <= 1 or not math.isfinite(expected) or not measured < SLOW_FRACTION * expected:
        return None
    return (f"{what} ran at {measured:,.1f} {unit} with {threads} threads, under a quarter of the "
            f"{expected:,.1f} {unit} one thread of this machine reaches with this model: other work is "
            f"using the cores; set {key}=1 (or the number of idle cores)")
