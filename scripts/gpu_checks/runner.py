"""Running the plan of `make gpu-check` within its time budget, and `--as-train`."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gpu_checks.checks import BY_KIND, read_step
from gpu_checks.report import write_results
from gpu_checks.rows import apply_goal, row
from gpu_checks.settings import BUDGET_S, MIN_STEP_S, PEAK_MARK, Settings, Step

# (argv, timeout in seconds, working folder) -> (exit status or None on timeout, output, wall s)
Runner = Callable[[Sequence[str], float, Path], tuple[int | None, str, float]]


def run_command(argv: Sequence[str], timeout: float, cwd: Path) -> tuple[int | None, str, float]:
    """Run `argv` in its own process group; returns (exit status or None on timeout, its
    stdout+stderr, wall seconds). On timeout or Ctrl-C the whole group (torchrun's workers,
    pytest's children) is killed."""
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out, time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out, time.perf_counter() - t0
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise


def run_steps(steps: Sequence[Step], s: Settings, out_dir: Path, machine: str,
              notes: Sequence[dict[str, Any]] = (), budget_s: float = BUDGET_S,
              run: Runner = run_command) -> list[dict[str, Any]]:
    """Run the plan; after each step rewrite results.jsonl and table.txt (a Ctrl-C keeps what ran).

    Args:
        steps: from `checks.build_plan`.
        s: the settings the plan was built from.
        out_dir: gets results.jsonl, table.txt and logs/<step>.log.
        machine: the GPU line (the first row and the table's title).
        notes: rows of checks that do not run here (e.g. DDP on one GPU), reported last.
        budget_s: steps that would start with less than MIN_STEP_S of it left are skipped.
        run: runs one command (`run_command`).

    Returns:
        Every row, the machine row first.
    """
    from waveglow.fileio import write_text_atomic  # after the CUDA check (see main)

    deadline = time.monotonic() + budget_s
    rows: list[dict[str, Any]] = [row(check="machine", status="ok", detail=machine)]
    prepared = True
    for i, step in enumerate(steps, 1):
        left = deadline - time.monotonic()
        print(f"==> [{i}/{len(steps)}] {step.name}: {shlex.join(step.argv)}", file=sys.stderr, flush=True)
        if left < MIN_STEP_S or (not prepared and BY_KIND[step.kind].needs_corpus):
            why = "the 8-minute budget is spent" if prepared else "preparing the demo corpus failed"
            rows.append(row(check=step.kind, model=step.model, precision=step.precision, status="skipped", detail=why))
            continue
        rc, text, wall = run(step.argv, min(step.cap_s, left), s.repo)
        log = out_dir / "logs" / f"{step.name}.log"
        write_text_atomic(log, f"$ {shlex.join(step.argv)}\n{text}")
        if step.kind == "prepare":
            prepared = rc == 0
        new = read_step(step, rc, text, wall, s)
        for r in new:
            r["log"] = str(log)
            rows.append(apply_goal(r))
        print(f"    {', '.join(r['status'] for r in new) or 'ok'} ({wall:.0f} s)", file=sys.stderr, flush=True)
        write_results(out_dir, rows)
    rows += [dict(r) for r in notes]
    write_results(out_dir, rows)
    return rows


def as_train(argv: Sequence[str]) -> int:
    """`waveglow-train` itself (its `main`), plus one line with the peak memory of the run:
    the CUDA allocator's peak, or the resident-set high-water mark on the CPU."""
    import resource

    import torch  # only this mode trains: the check itself imports torch late

    from waveglow.cli.train import main as train_main

    code = 0
    try:
        train_main(list(argv))
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        # A fresh process: its lifetime peak is the run's (ru_maxrss is KiB on Linux).
        peak = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_initialized()
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"{PEAK_MARK}{peak:.1f}", file=sys.stderr, flush=True)
    return code
