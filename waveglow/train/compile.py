"""`train.compile`: the coupling conditioners (`WN`) compiled with `torch.compile`.

Each conditioner is compiled in place (`nn.Module.compile`): the module, its parameters and its
state_dict keys stay the same, so checkpoints, resume (compiled and not, from each other),
export and the NVIDIA import see no difference. The trainer compiles before the DDP wrapper is
built, so DDP sees the same parameters and gradient hooks as without compilation; with
`train.memory=invertible` the conditioner's no-grad pass (the forward walk) and its autograd
pass (rebuilt in backward) are both compiled graphs.

Only the training step runs compiled: validation, the resynthesized audio and the one-thread
calibration run eager (`eager()`), since they see other lengths and grad modes, which would
each cost another compilation for calls that run rarely.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from waveglow.conditioner import WN
from waveglow.errors import UserError

# What torch.compile uses by default (inductor: generated C++ on the CPU, Triton on CUDA).
DEFAULT_BACKEND = "inductor"

Backend = str | Callable[..., Any]


def compile_conditioners(model: nn.Module, backend: Backend = DEFAULT_BACKEND) -> int:
    """Compile every `WN` conditioner of `model` in place (the first call of each compiles).

    Args:
        model: a WaveGlow (or any module holding `WN` conditioners), before any DDP wrapper.
        backend: the torch.compile backend ("inductor"; tests pass "eager": the same graph
            capture without code generation).

    Returns:
        How many conditioners were compiled.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, WN):
            # dynamic=None: shapes start static; a dimension that changes between calls (the
            # conditioning half's channels after an early output) becomes dynamic on the
            # recompile instead of costing one compilation per size.
            module.compile(backend=backend)
            count += 1
    return count


def check_backend(backend: Backend, device: torch.device) -> None:
    """Refuse `train.compile=true` up front where inductor cannot compile: on the CPU it
    generates C++ and needs a C++ compiler (otherwise the first step would fail with a long
    traceback after data loading and validation).

    Raises:
        UserError: inductor on the CPU and no C++ compiler found.
    """
    if backend != "inductor" or device.type != "cpu":
        return
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # pragma: no cover - moved in another torch version: let compile say
        return
    try:
        get_cpp_compiler()
    except Exception as e:  # inductor's InvalidCxxCompiler (or an unusable one)
        reason = " ".join(str(e).split())[:160]
        raise UserError(f"train.compile=true: torch.compile (inductor) on the CPU needs a C++ compiler and found "
                        f"none usable ({reason}); install g++ or use train.compile=false") from None


@contextlib.contextmanager
def eager(enabled: bool = True) -> Iterator[None]:
    """Inside (when `enabled`): compiled modules run their eager code, nothing is compiled."""
    if not enabled:
        yield
        return
    with torch.compiler.set_stance("force_eager"):
        yield


@contextlib.contextmanager
def compiled(enabled: bool = True) -> Iterator[None]:
    """Inside (when `enabled`): compiled modules run compiled, also within `eager()`."""
    if not enabled:
        yield
        return
    with torch.compiler.set_stance("default"):
        yield
