#!/usr/bin/env python
"""`make gpu-check`: everything CUDA in one run, in under 8 minutes on one modern GPU.

Runs, each as the real command a user would type (see `--plan`):
  1. the CUDA-marked tests (`pytest --device cuda -m cuda`);
  2. synthesis of waveglow_256 in fp32, fp16 and bf16 (`waveglow-bench tasks=synthesis`): kHz,
     peak memory, and the SNR of fp16/bf16 against fp32 with the same noise;
  3. 200 steps of waveglow_256 on the demo corpus in fp16 and in bf16 (`waveglow-train`):
     samples/s, peak memory, skipped steps, val log-likelihood before and after;
  4. 50 steps of the same with invertible backprop (`train.memory=invertible`) in fp16 with
     its GradScaler: it must learn like the standard pass;
  5. the benchmark's training step on CUDA (`waveglow-bench tasks=train`) in fp16 and bf16, each
     with standard and invertible backprop: samples/s and peak memory, the figures that decide
     the GPU defaults of train.precision and train.memory;
  6. the runs of 3. again with `train.compile=true` (conditioners compiled by torch.compile):
     samples/s and peak memory against 3.'s, the figures that decide the GPU default of
     train.compile;
  7. a 2-process DDP run of `tiny` (torchrun) when there are 2 or more GPUs.

Prints a table (stdout; progress on stderr) and writes the same rows to
outputs/gpu-check/results.jsonl, the table to table.txt and every command's output to logs/.
Exit status 0 when every check ran and passed (goals missed are reported, not failures), 1
otherwise. Without a CUDA device it prints one line and exits 0.

The parts live beside this file in `gpu_checks/` (settings, checks, parsing, report, runner);
a new check is one entry in `gpu_checks.checks.CHECKS`.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # gpu_checks/ beside this file, also when the file is loaded by path
    sys.path.append(_HERE)

from gpu_checks.checks import (  # noqa: E402
    CHECK_NAMES,
    CHECKS,
    Check,
    bench_rows,
    build_plan,
    tests_row,
    train_row,
)
from gpu_checks.parse import parse_pytest, parse_train_log, read_metrics  # noqa: E402
from gpu_checks.report import format_table, json_lines, summary, write_results  # noqa: E402
from gpu_checks.rows import ROW_KEYS, apply_goal, row  # noqa: E402
from gpu_checks.runner import as_train, run_command, run_steps  # noqa: E402
from gpu_checks.settings import GOAL_MODEL, GOALS, PEAK_MARK, Settings, Step  # noqa: E402

__all__ = ["CHECKS", "CHECK_NAMES", "GOALS", "GOAL_MODEL", "PEAK_MARK", "ROW_KEYS", "Check", "Settings", "Step",
           "apply_goal", "as_train", "bench_rows", "build_plan", "format_table", "json_lines", "main",
           "parse_pytest", "parse_train_log", "read_metrics", "row", "run_command", "run_steps", "summary",
           "tests_row", "train_row", "write_results"]


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                epilog="See docs/gpu.md.")
    p.add_argument("--plan", action="store_true", help="print the commands it would run and exit")
    p.add_argument("--gpus", type=int, default=None, help="with --plan: plan for this many GPUs (default: those present, else 1)")
    p.add_argument("--checks", default=",".join(CHECK_NAMES), help=f"comma-separated subset of {','.join(CHECK_NAMES)}")
    p.add_argument("--steps", type=int, default=200, help="training steps per precision (default 200)")
    p.add_argument("--batch", type=int, default=8, help="training batch per step (default 8 x 16000 samples)")
    p.add_argument("--output-dir", default="outputs/gpu-check", help="results.jsonl, table.txt, logs/ (default %(default)s)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary run folders (printed)")
    args = p.parse_args(argv)
    args.checks = tuple(c for c in args.checks.split(",") if c)
    bad = [c for c in args.checks if c not in CHECK_NAMES]
    if bad:
        p.error(f"--checks: unknown {', '.join(bad)} (expected {', '.join(CHECK_NAMES)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The check (or `--plan`); returns the exit status: 0 all passed, 1 a check failed, 130 Ctrl-C."""
    args = _parse_args(sys.argv[1:] if argv is None else argv)
    # torch decides whether there is anything to do; the package and the runs come after.
    import torch

    cuda = torch.cuda.is_available()
    base = Settings(work=Path(tempfile.gettempdir()) / "gpu-check-XXXX", checks=args.checks, steps=args.steps,
                    batch=args.batch)
    if args.plan:
        gpus = args.gpus if args.gpus is not None else (torch.cuda.device_count() if cuda else 1)
        bf16 = torch.cuda.is_bf16_supported() if cuda else True
        for step in build_plan(replace(base, gpus=gpus, bf16=bf16)):
            print(shlex.join(step.argv))
        return 0
    if not cuda:
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}); nothing to check")
        return 0
    gpus = torch.cuda.device_count()
    props = torch.cuda.get_device_properties(0)
    machine = (f"{props.name} x{gpus} ({props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}, "
               f"CUDA {torch.version.cuda}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
    print(f"gpu-check: {machine}", file=sys.stderr, flush=True)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    s = replace(base, work=work, gpus=gpus, bf16=torch.cuda.is_bf16_supported())
    out_dir = Path(args.output_dir)
    notes = [row(check="ddp", status="skipped", detail=f"{gpus} GPU (needs 2)")] if "ddp" in s.checks and gpus < 2 else []
    try:
        # `run_command` looked up here at call time: tests replace it with what a GPU host prints.
        rows = run_steps(build_plan(s), s, out_dir, machine, notes, run=run_command)
    except KeyboardInterrupt:
        print("interrupted; the finished checks are in " + str(out_dir / "results.jsonl"), file=sys.stderr)
        return 130
    finally:
        if args.keep_work:
            print(f"gpu-check: run folders kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(format_table(rows))
    print(summary(rows))
    print(f"gpu-check: results in {out_dir / 'results.jsonl'}, logs in {out_dir / 'logs'}")
    return 1 if any(r.get("status") == "failed" for r in rows) else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--as-train"]:
        sys.exit(as_train(sys.argv[2:]))
    sys.exit(main())
