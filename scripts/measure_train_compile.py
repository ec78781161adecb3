"""`train.compile` on this CPU: interleaved A/B of the trainer's step with and without compiled
conditioners, and the compile time.

    python scripts/measure_train_compile.py --model waveglow_256 --batch 2 --samples 4000 --pairs 3

Two copies of one random-weight model (the bench's `resolve_model`: end layers perturbed),
each with its own Adam and the trainer's `Stepper`, on one synthetic batch; B has its
conditioners compiled (`waveglow.train.compile.compile_conditioners`, inductor). One thread.
B's first step compiles: its time less A's steady step is the compile time (wall and process
CPU). After one more untimed step of each, the pairs alternate A, B and time each step in
process CPU time (other processes' time slices do not count); the ratio A/B > 1 means compiled
is faster. Prints one JSON line with every figure and the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time

import torch

from waveglow.bench.cases import GRAD_CLIP, resolve_model, train_batch
from waveglow.config import AudioConfig
from waveglow.errors import UserError
from waveglow.runtime import resolve_precision
from waveglow.train.compile import compile_conditioners
from waveglow.train.step import Stepper


def timed(fn) -> tuple[float, float]:
    """(wall s, process CPU s) of one call."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny", help="a model config name (waveglow/configs/model)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--samples", type=int, default=4000, help="audio samples per batch item")
    p.add_argument("--pairs", type=int, default=5, help="timed A, B pairs")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--memory", default="standard", choices=("standard", "invertible"))
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    a = p.parse_args(argv)
    if a.batch < 1 or a.samples < 1 or a.pairs < 1:
        print("error: --batch, --samples and --pairs must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    device = torch.device("cpu")
    load_before = os.getloadavg()[0]
    try:
        model_a, model_cfg, audio_cfg, _ = resolve_model(a.model, AudioConfig())
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model_a.train()
    model_b = copy.deepcopy(model_a)
    compile_conditioners(model_b, backend=a.backend)
    audio, mel = train_batch(a.batch, a.samples, model_cfg.n_group, audio_cfg, 0)
    length = audio.shape[1]
    amp = resolve_precision(a.precision, device)
    steppers = [Stepper(m, torch.optim.Adam(m.parameters(), lr=1e-4), device=device, amp_dtype=amp,
                        grad_clip=GRAD_CLIP, memory=a.memory) for m in (model_a, model_b)]

    def step(i: int):
        return lambda: steppers[i](audio, mel, 1e-4)

    first = [timed(step(0)), timed(step(1))]  # B's first step compiles
    warm = [timed(step(0)), timed(step(1))]
    times: list[list[float]] = [[], []]
    for _ in range(a.pairs):
        for i in (0, 1):
            times[i].append(timed(step(i))[1])
    ratios = [ta / tb for ta, tb in zip(*times)]
    samples = a.batch * length
    out = {
        "model": a.model, "precision": a.precision, "memory": a.memory, "batch": a.batch, "samples": length,
        "pairs": a.pairs, "threads": 1, "backend": a.backend,
        "compile_wall_s": round(first[1][0] - warm[0][0], 2), "compile_cpu_s": round(first[1][1] - warm[0][1], 2),
        "eager_first_cpu_s": round(first[0][1], 3),
        "eager_samples_per_sec": round(samples / statistics.median(times[0]), 1),
        "compiled_samples_per_sec": round(samples / statistics.median(times[1]), 1),
        "ratio_min": round(min(ratios), 3), "ratio_median": round(statistics.median(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "eager_cpu_s": [round(t, 4) for t in times[0]], "compiled_cpu_s": [round(t, 4) for t in times[1]],
        "loadavg_1m_before": load_before, "loadavg_1m_after": os.getloadavg()[0],
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
