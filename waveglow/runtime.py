"""Where and in what number format the work runs: the one device resolver, the one precision
table, autocast, seeding and the process-wide determinism switch.

Every entry point (training, synthesis, scoring, the benchmark) goes through these, so that
`device=auto` and `precision=bf16` mean the same thing everywhere.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch

from waveglow.errors import UserError

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
    return dtype


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
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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
