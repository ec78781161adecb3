"""Peak memory of a region of code: resident-set high-water mark on CPU, allocator peak on CUDA."""

from __future__ import annotations

import contextlib
import resource
from typing import Any

import torch


def proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (e.g. "VmHWM", "VmRSS") in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak memory of a region: RSS high-water on CPU, max allocated on CUDA (MiB).

    On Linux the RSS high-water mark (VmHWM) is reset to the current RSS by writing "5" to
    /proc/self/clear_refs, so the peak is that of the region, not of the process so far (it
    still includes what was resident at the start: the torch runtime and the model's weights).
    Where that is not possible it falls back to `ru_maxrss`, the process-lifetime peak — which
    is why cases run in fresh subprocesses.

    Attributes:
        start_mib: memory at entry (RSS, or CUDA allocated).
        peak_mib: the region's peak, set on exit.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: float | None = None
        self.start_mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mib = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            self.start_mib = proc_status_mib("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = proc_status_mib("VmHWM")
            if hwm is None:  # ru_maxrss is KiB on Linux
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            self.peak_mib = hwm
