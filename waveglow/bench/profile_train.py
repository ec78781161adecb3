"""Where a training step's time goes: `torch.profiler` over one trainer step (`Stepper`), the
operators' self CPU time split into forward / backward / optimizer × conv / matmul /
element-wise / other (the table of docs/performance.md, "Training throughput").

    python -m waveglow.bench.profile_train waveglow_256 fp32 [segment_length] [--plain]

`--plain` profiles the conditioner's plain operators (`plain_training_ops`), i.e. the step
before the fused training path. One thread; the machine's load average is printed with it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
from collections.abc import Sequence

import torch
from torch.profiler import ProfilerActivity, profile

from waveglow.bench.cases import GRAD_CLIP, resolve_model, train_batch
from waveglow.config import AudioConfig
from waveglow.fused_ops import plain_training_ops
from waveglow.runtime import resolve_precision
from waveglow.train.step import Stepper

KINDS = ("conv", "matmul", "element-wise", "other")
PHASES = ("forward", "backward", "optimizer")
_ELEMENTWISE = ("tanh", "sigmoid", "mul", "add", "sub", "div", "exp", "pow", "neg", "sum", "norm", "copy",
                "cat", "fill", "zero", "clamp", "sqrt", "where", "lerp", "addcmul", "addcdiv", "foreach",
                "stack", "split")


def kind_of(name: str) -> str:
    """The operator class of an aten operator name (convolution first: `convolution_backward`)."""
    n = name.lower()
    if "conv" in n:
        return "conv"
    if any(k in n for k in ("bmm", "mm", "matmul", "linear")):
        return "matmul"
    if any(k in n for k in _ELEMENTWISE):
        return "element-wise"
    return "other"


def _phase(event) -> str:  # type: ignore[no-untyped-def]
    p = event
    while p is not None:
        if "Backward" in p.name or p.name.startswith("autograd::engine"):
            return "backward"
        if p.name.startswith("Optimizer"):
            return "optimizer"
        p = p.cpu_parent
    return "forward"


def profile_step(model_name: str, precision: str, segment_length: int = 16000, batch: int = 2,
                 plain: bool = False) -> dict[tuple[str, str], float]:
    """Self CPU seconds per (phase, kind) of one training step (after one unprofiled step).

    Args:
        model_name: a model config name (random weights, randomized end layers).
        precision: fp32 | bf16 | fp16 (CPU autocast for bf16).
        segment_length: audio samples per batch item.
        batch: batch items.
        plain: profile the plain conditioner operators instead of the fused ones.

    Returns:
        {(phase, kind): seconds}; the autograd engine's and profiler's wrapper events count
        as "other" so that every operator's own time is counted once.
    """
    device = torch.device("cpu")
    model, model_cfg, audio, _ = resolve_model(model_name, AudioConfig())
    model.train()
    wave, mel = train_batch(batch, segment_length, model_cfg.n_group, audio, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    stepper = Stepper(model, optimizer, device=device, amp_dtype=resolve_precision(precision, device),
                      grad_clip=GRAD_CLIP)
    mode = plain_training_ops() if plain else contextlib.nullcontext()
    with mode:
        stepper(wave, mel, 1e-4)  # warm-up: allocator, oneDNN primitive caches
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            stepper(wave, mel, 1e-4)
    out: dict[tuple[str, str], float] = collections.Counter()
    for e in prof.events():
        wrapper = "Backward" in e.name or e.name.startswith(("autograd::engine", "Optimizer", "ProfilerStep"))
        out[(_phase(e), "other" if wrapper else kind_of(e.name))] += e.self_cpu_time_total / 1e6
    return dict(out)


def format_profile(times: dict[tuple[str, str], float]) -> str:
    """A markdown table of shares of the step's self CPU time (phase rows × kind columns)."""
    total = sum(times.values()) or 1.0
    lines = ["| phase | " + " | ".join(KINDS) + " | total |", "| --- |" + " ---: |" * (len(KINDS) + 1)]
    for phase in PHASES:
        cells = [100 * times.get((phase, k), 0.0) / total for k in KINDS]
        lines.append(f"| {phase} | " + " | ".join(f"{c:.1f}%" for c in cells) + f" | {sum(cells):.1f}% |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("precision", choices=("fp32", "bf16", "fp16"))
    parser.add_argument("segment_length", nargs="?", type=int, default=16000)
    parser.add_argument("--plain", action="store_true", help="the plain conditioner operators")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    times = profile_step(args.model, args.precision, args.segment_length, plain=args.plain)
    print(f"{args.model} {args.precision} segment {args.segment_length} plain={args.plain}: "
          f"{sum(times.values()):.2f} s self CPU, 1 thread, load average {os.getloadavg()[0]:.1f}")
    print(format_profile(times))


if __name__ == "__main__":
    main()
