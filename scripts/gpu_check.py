#!/usr/bin/env python
"""`make gpu-check`: everything CUDA in one run, in under 8 minutes on one modern GPU.

Runs, each as the real command a user would type (see `--plan`):
  1. the CUDA-marked tests (`pytest --device cuda -m cuda`);
  2. synthesis of waveglow_256 in fp32, fp16 and bf16 (`waveglow-bench tasks=synthesis`): kHz,
     peak memory, and the SNR of fp16/bf16 against fp32 with the same noise;
  3. 200 steps of waveglow_256 on the demo corpus in fp16 and in bf16 (`waveglow-train`):
     samples/s, peak memory, skipped steps, val log-likelihood before and after;
  4. the benchmark's training step on CUDA (`waveglow-bench tasks=train`): samples/s, peak memory;
  5. a 2-process DDP run of `tiny` (torchrun) when there are 2 or more GPUs.

Prints a table (stdout; progress on stderr) and writes the same rows to
outputs/gpu-check/results.jsonl, the table to table.txt and every command's output to logs/.
Exit status 0 when every check ran and passed (goals missed are reported, not failures), 1
otherwise. Without a CUDA device it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUDGET_S = 470.0  # the whole run: under 8 minutes, with a little left for writing the results
MIN_STEP_S = 20.0  # a check that would get less than this is skipped rather than started
CHECKS = ("tests", "synthesis", "train", "bench", "ddp")
PEAK_MARK = "gpu-check: peak_mem_mib="
# Goals on an H100/H200-class GPU: (check, precision) -> (figure, at least, as printed).
GOALS: dict[tuple[str, str], tuple[str, float, str]] = {
    ("synthesis", "fp16"): ("khz", 3000.0, ">= 3 MHz"),
    ("train", "fp16"): ("samples_per_sec", 300_000.0, ">= 300k samples/s"),
    ("train", "bf16"): ("samples_per_sec", 300_000.0, ">= 300k samples/s"),
}
GOAL_MODEL = "waveglow_256"
# Every row carries these keys (None where a figure does not apply), in this order.
ROW_KEYS = ("check", "model", "precision", "status", "khz", "samples_per_sec", "peak_mem_mib",
            "snr_db_vs_fp32", "skipped_steps", "val_ll_before", "val_ll_after", "goal", "goal_met",
            "wall_s", "detail", "log")


@dataclass(frozen=True)
class Settings:
    """What the check runs and where (the defaults are the real GPU check)."""

    work: Path                      # temporary folder: feature cache, run dirs
    gpus: int = 1
    bf16: bool = True
    device: str = "cuda"
    model: str = GOAL_MODEL
    steps: int = 200
    batch: int = 8                  # per step, × data.segment_length (16000) samples
    train_precisions: tuple[str, ...] = ("fp16", "bf16")
    synth_seconds: float = 10.0     # audio per synthesis call (batch 1)
    ddp_model: str = "tiny"
    ddp_steps: int = 20
    checks: tuple[str, ...] = CHECKS
    train_overrides: tuple[str, ...] = ()  # appended to every waveglow-train command
    bench_overrides: tuple[str, ...] = ()  # appended to every waveglow-bench command
    python: str = sys.executable
    bin_dir: Path = BIN
    repo: Path = REPO


@dataclass(frozen=True)
class Step:
    """One command of the check and how to read its result."""

    name: str                       # file name of its log: logs/<name>.log
    kind: str                       # prepare | tests | bench | train | ddp
    argv: tuple[str, ...]
    cap_s: float                    # its own time limit (the overall budget may cut it)
    model: str | None = None
    precision: str | None = None
    run_dir: Path | None = None
    expect: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------ the plan
def _script(s: Settings, name: str) -> str:
    path = s.bin_dir / name
    return str(path if path.exists() else shutil.which(name) or path)


def _train_args(s: Settings, model: str, precision: str, steps: int, batch: int, run_dir: Path) -> list[str]:
    return [
        "data=demo", f"data.root={s.repo / 'data' / 'demo'}", f"data.cache_dir={s.work / 'cache'}",
        f"model={model}", f"train.max_steps={steps}", f"train.val_every={steps}",
        f"train.log_every={max(1, steps // 4)}", "train.audio_every=0", "train.logdet_every=0",
        f"train.checkpoint_every={steps}", f"train.batch_size={batch}", f"train.device={s.device}",
        f"train.precision={precision}", f"run_dir={run_dir}", *s.train_overrides,
    ]


def build_plan(s: Settings) -> list[Step]:
    """The commands of a check, in the order they run."""
    py, synth_prec = s.python, ["fp32", "fp16"] + (["bf16"] if s.bf16 else [])
    amp = [p for p in s.train_precisions if p != "bf16" or s.bf16]
    steps = []
    if {"train", "ddp"} & set(s.checks):  # one feature cache, built before any run needs it
        steps.append(Step("prepare", "prepare", (
            _script(s, "waveglow-preprocess"), "data=demo", f"data.root={s.repo / 'data' / 'demo'}",
            f"data.cache_dir={s.work / 'cache'}", "progress=false"), cap_s=120))
    if "tests" in s.checks:
        steps.append(Step("tests", "tests", (py, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                             "--device", "cuda", "-m", "cuda", str(s.repo / "tests")), cap_s=180))
    if "synthesis" in s.checks:
        steps.append(Step("synthesis", "bench", (
            _script(s, "waveglow-bench"), f"device={s.device}", "tasks=synthesis", f"model={s.model}",
            f"precision={','.join(synth_prec)}", f"seconds={s.synth_seconds:g}", "batch=1",
            *s.bench_overrides), cap_s=150, model=s.model))
    if "train" in s.checks:
        for p in amp:
            run = s.work / f"train-{p}"
            steps.append(Step(f"train-{p}", "train", (py, str(Path(__file__).resolve()), "--as-train",
                              *_train_args(s, s.model, p, s.steps, s.batch, run)), cap_s=240, model=s.model,
                              precision=p, run_dir=run, expect={"steps": s.steps}))
    if "bench" in s.checks:
        steps.append(Step("bench-train", "bench", (
            _script(s, "waveglow-bench"), f"device={s.device}", "tasks=train", f"model={s.model}",
            f"precision={','.join(amp)}", f"batch={s.batch}", *s.bench_overrides), cap_s=150, model=s.model))
    if "ddp" in s.checks and s.gpus >= 2:
        run = s.work / "ddp"
        steps.append(Step("ddp", "ddp", (py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                         _script(s, "waveglow-train"), "train=demo",  # tiny's lr
                                         *_train_args(s, s.ddp_model, "fp16", s.ddp_steps, 4, run)),
                          cap_s=150, model=s.ddp_model, precision="fp16", run_dir=run,
                          expect={"steps": s.ddp_steps, "processes": 2}))
    return steps


# ------------------------------------------------------------------------------ running
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


def row(**values: Any) -> dict[str, Any]:
    """A result row: every ROW_KEYS entry (None unless given), extra keys after them."""
    out: dict[str, Any] = dict.fromkeys(ROW_KEYS)
    out.update(values)
    return out


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or [""])[-1][:200]


def _failure(rc: int | None, wall: float, text: str) -> str:
    if rc is None:
        return f"timed out after {wall:.0f} s"
    return f"exit status {rc}: {_last_error(text)}" if text.strip() else f"exit status {rc}"


def parse_pytest(text: str) -> dict[str, int]:
    """Counts from pytest's summary line ("3 passed, 1 skipped, 9 deselected in 4.2s")."""
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped", "deselected")}
    summary = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|error|skipped|deselected|no tests ran)\b", ln)
               and re.search(r"\bin [\d.]+s\b", ln)]
    for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", summary[-1] if summary else ""):
        counts["errors" if word.startswith("error") else word] = int(n)
    return counts


def tests_row(rc: int | None, text: str, wall: float) -> dict[str, Any]:
    c = parse_pytest(text)
    detail = ", ".join(f"{v} {k}" for k, v in c.items() if v and k != "deselected") or "no tests ran"
    ok = rc == 0 and c["passed"] > 0 and not c["failed"] and not c["errors"]
    if rc is None:
        detail = f"timed out after {wall:.0f} s; {detail}"
    elif not ok and c["passed"] == 0 and not c["failed"]:
        detail = f"no CUDA test passed ({detail}; exit status {rc})"
    return row(check="tests", status="ok" if ok else "failed", wall_s=wall, detail=detail, **c)


def bench_rows(step: Step, rc: int | None, text: str, wall: float) -> list[dict[str, Any]]:
    """One row per JSON line of `waveglow-bench` (its stdout)."""
    check = "synthesis" if step.name == "synthesis" else "bench-train"
    rows = []
    for line in text.splitlines():
        try:
            b = json.loads(line) if line.startswith("{") else None
        except ValueError:
            b = None
        if not isinstance(b, dict):
            continue
        r = row(check=check, model=b.get("model"), precision=b.get("precision"), status="ok",
                khz=b.get("khz"), samples_per_sec=b.get("samples_per_sec"), peak_mem_mib=b.get("peak_mem_mib"),
                snr_db_vs_fp32=b.get("snr_db_vs_fp32"), batch=b.get("batch"), audio_seconds=b.get("audio_seconds"))
        if b.get("error"):
            r.update(status="failed", detail=str(b["error"]))
        elif check == "synthesis" and b.get("precision") != "fp32" and not _finite(b.get("snr_db_vs_fp32")):
            r.update(status="failed", detail="SNR against fp32 is not finite (NaN output, or no autocast)")
        rows.append(r)
    # waveglow-bench exits 1 when a case failed (that row says why); anything else is the
    # command's own failure, e.g. a timeout before the last case.
    if not rows or rc is None or rc not in (0, 1) or (rc == 1 and all(r["status"] == "ok" for r in rows)):
        rows.append(row(check=check, model=step.model, status="failed", wall_s=wall, detail=_failure(rc, wall, text)))
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_metrics(run_dir: Path) -> dict[int, float]:
    """step -> val log-likelihood from a run's metrics.jsonl (torn lines skipped)."""
    out: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[int(rec["step"])] = float(rec["val_log_likelihood"])
            except (ValueError, KeyError, TypeError):
                continue
    return out


def parse_train_log(text: str) -> dict[str, Any]:
    """What `waveglow-train` logs: precision and device, processes, samples/s per logging
    window, skipped steps, whether it finished, and the peak memory line of `--as-train`."""
    info: dict[str, Any] = {"rates": [], "finished": False}
    for line in text.splitlines():
        if m := re.search(r"data \S+, (\w+) on (cpu|cuda(?::\d+)?)(?: \([^)]*\))?(?: × (\d+) processes)?, ", line):
            info.update(precision=m.group(1), device=m.group(2), processes=int(m.group(3) or 1))
        elif m := re.match(r"step (\d+)/\d+ \|.*?\| ([\d,.]+) samples/s", line):
            info["rates"].append((int(m.group(1)), float(m.group(2).replace(",", ""))))
        elif m := re.match(r"done: step (\d+),.*skipped steps (\d+)", line):
            info.update(finished=True, final_step=int(m.group(1)), skipped_steps=int(m.group(2)))
        elif line.startswith(PEAK_MARK):
            info["peak_mem_mib"] = float(line[len(PEAK_MARK):])
    # Each line's rate covers the steps since the previous line (every log_every steps, or
    # sooner after a pause): the run's rate is steps over time, not the mean of the rates. The
    # first window holds cuDNN autotuning and the allocator's warm-up and is left out.
    windows = [(step - prev, rate) for (prev, _), (step, rate) in zip([(0, 0.0), *info["rates"]], info["rates"])]
    steady = [(n, r) for n, r in (windows[1:] or windows) if n > 0 and r > 0]
    info["samples_per_sec"] = (sum(n for n, _ in steady) / sum(n / r for n, r in steady)) if steady else None
    return info


def train_row(step: Step, rc: int | None, text: str, wall: float, device: str) -> dict[str, Any]:
    """The row of a training run: figures from its log and metrics.jsonl, and whether it learned."""
    info, metrics = parse_train_log(text), read_metrics(step.run_dir) if step.run_dir else {}
    steps = step.expect.get("steps")
    r = row(check=step.kind, model=step.model, precision=step.precision, status="ok", wall_s=wall,
            samples_per_sec=info["samples_per_sec"], peak_mem_mib=info.get("peak_mem_mib"),
            skipped_steps=info.get("skipped_steps"), val_ll_before=metrics.get(0), val_ll_after=metrics.get(steps))
    before, after = r["val_ll_before"], r["val_ll_after"]
    if rc != 0 or not info["finished"]:
        problem = _failure(rc, wall, text) if rc != 0 else "no `done:` line in the log"
    elif info.get("precision") != step.precision or not str(info.get("device", "")).startswith(device):
        problem = f"ran {info.get('precision')} on {info.get('device')}, expected {step.precision} on {device}"
    elif info.get("processes", 1) != step.expect.get("processes", 1):
        problem = f"{info.get('processes')} processes, expected {step.expect.get('processes')}"
    elif not (_finite(before) and _finite(after)):
        problem = f"val log-likelihood missing or not finite at steps 0 and {steps} (metrics.jsonl)"
    elif after <= before:
        problem = f"val log-likelihood did not rise ({before:.4f} -> {after:.4f} nats/sample)"
    else:
        problem = None
    if problem:
        r.update(status="failed", detail=problem)
    return r


def apply_goal(r: dict[str, Any]) -> dict[str, Any]:
    """Fill `goal` / `goal_met` for the figures that have one (waveglow_256 only)."""
    goal = GOALS.get((r.get("check"), r.get("precision")))
    if goal and r.get("model") == GOAL_MODEL:
        key, least, text = goal
        r["goal"] = text
        r["goal_met"] = bool(r[key] >= least) if _finite(r.get(key)) else None
    return r


# ------------------------------------------------------------------------------ the report
def _fmt(value: Any, digits: int = 1, thousands: bool = False) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}f}" if thousands else f"{value:.{digits}f}"
    return str(value)


def _val(r: Mapping[str, Any]) -> str:
    before, after = r.get("val_ll_before"), r.get("val_ll_after")
    return "-" if before is None and after is None else f"{_fmt(before, 3)} -> {_fmt(after, 3)}"


def _goal(r: Mapping[str, Any]) -> str:
    if not r.get("goal"):
        return "-"
    met = {True: "met", False: "MISSED", None: "?"}.get(r.get("goal_met"), "?")
    return f"{r['goal']} {met}"


TABLE = (  # header, cell(row), right-aligned
    ("check", lambda r: _fmt(r.get("check")), False),
    ("model", lambda r: _fmt(r.get("model")), False),
    ("prec", lambda r: _fmt(r.get("precision")), False),
    ("status", lambda r: _fmt(r.get("status")), False),
    ("kHz", lambda r: _fmt(r.get("khz"), 0, True), True),
    ("samples/s", lambda r: _fmt(r.get("samples_per_sec"), 0, True), True),
    ("peak MiB", lambda r: _fmt(r.get("peak_mem_mib"), 0, True), True),
    ("SNR dB", lambda r: _fmt(r.get("snr_db_vs_fp32"), 1), True),
    ("skipped", lambda r: _fmt(r.get("skipped_steps"), 0), True),
    ("val LL nats/sample", _val, True),
    ("goal (H100/H200)", _goal, False),
    ("wall s", lambda r: _fmt(r.get("wall_s"), 0), True),
    ("detail", lambda r: _fmt(r.get("detail")), False),
)


def format_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The fixed-width table of result rows (the `machine` row becomes the title line)."""
    rows = list(rows)
    title = next((str(r.get("detail")) for r in rows if r.get("check") == "machine"), "")
    cells = [[h for h, _, _ in TABLE]]
    cells += [[cell(r) for _, cell, _ in TABLE] for r in rows if r.get("check") != "machine"]
    widths = [max(len(c[i]) for c in cells) for i in range(len(TABLE))]
    lines = []
    for i, c in enumerate(cells):
        lines.append("  ".join(v.rjust(w) if right else v.ljust(w)
                               for v, w, (_, _, right) in zip(c, widths, TABLE)).rstrip())
        if i == 0:
            lines.append("-" * len(lines[0]))
    return "\n".join(([title] if title else []) + lines)


def json_lines(rows: Iterable[Mapping[str, Any]]) -> str:
    """One strict-JSON object per row, newline-terminated: NaN/inf -> null, other objects -> str."""
    def safe(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)

    return "".join(json.dumps({str(k): safe(v) for k, v in r.items()}, allow_nan=False) + "\n" for r in rows)


def summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """The closing line: failures and goals."""
    failed = [r for r in rows if r.get("status") == "failed"]
    missed = [r for r in rows if r.get("goal_met") is False]
    parts = [f"{len(failed)} of {len([r for r in rows if r.get('check') != 'machine'])} checks failed"
             if failed else "every check passed"]
    if missed:
        parts.append("goals missed: " + ", ".join(f"{r['check']} {r['precision']}" for r in missed))
    return "gpu-check: " + "; ".join(parts)


# ------------------------------------------------------------------------------ main
def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                epilog="See docs/gpu.md.")
    p.add_argument("--plan", action="store_true", help="print the commands it would run and exit")
    p.add_argument("--gpus", type=int, default=None, help="with --plan: plan for this many GPUs (default: those present, else 1)")
    p.add_argument("--checks", default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}")
    p.add_argument("--steps", type=int, default=200, help="training steps per precision (default 200)")
    p.add_argument("--batch", type=int, default=8, help="training batch per step (default 8 x 16000 samples)")
    p.add_argument("--output-dir", default="outputs/gpu-check", help="results.jsonl, table.txt, logs/ (default %(default)s)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary run folders (printed)")
    args = p.parse_args(argv)
    args.checks = tuple(c for c in args.checks.split(",") if c)
    bad = [c for c in args.checks if c not in CHECKS]
    if bad:
        p.error(f"--checks: unknown {', '.join(bad)} (expected {', '.join(CHECKS)})")
    return args


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


def run_steps(steps: Sequence[Step], s: Settings, out_dir: Path, machine: str,
              notes: Sequence[dict[str, Any]] = (), budget_s: float = BUDGET_S) -> list[dict[str, Any]]:
    """Run the plan; after each step rewrite results.jsonl and table.txt (a Ctrl-C keeps what ran).

    Args:
        steps: from `build_plan`.
        s: the settings the plan was built from.
        out_dir: gets results.jsonl, table.txt and logs/<step>.log.
        machine: the GPU line (the first row and the table's title).
        notes: rows of checks that do not run here (e.g. DDP on one GPU), reported last.
        budget_s: steps that would start with less than MIN_STEP_S of it left are skipped.

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
        if left < MIN_STEP_S or (not prepared and step.kind in ("train", "ddp")):
            why = "the 8-minute budget is spent" if prepared else "preparing the demo corpus failed"
            rows.append(row(check=step.kind, model=step.model, precision=step.precision, status="skipped", detail=why))
            continue
        rc, text, wall = run_command(step.argv, min(step.cap_s, left), s.repo)
        log = out_dir / "logs" / f"{step.name}.log"
        write_text_atomic(log, f"$ {shlex.join(step.argv)}\n{text}")
        if step.kind == "prepare":
            prepared = rc == 0
            new = [] if prepared else [row(check="prepare", status="failed", wall_s=wall, detail=_failure(rc, wall, text))]
        elif step.kind == "tests":
            new = [tests_row(rc, text, wall)]
        elif step.kind == "bench":
            new = bench_rows(step, rc, text, wall)
        else:
            new = [train_row(step, rc, text, wall, s.device)]
            if step.run_dir is not None:  # checkpoints of waveglow_256 are ~1 GB each
                shutil.rmtree(step.run_dir / "checkpoints", ignore_errors=True)
        for r in new:
            r["log"] = str(log)
            rows.append(apply_goal(r))
        print(f"    {', '.join(r['status'] for r in new) or 'ok'} ({wall:.0f} s)", file=sys.stderr, flush=True)
        _write(out_dir, rows)
    rows += [dict(r) for r in notes]
    _write(out_dir, rows)
    return rows


def _write(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    from waveglow.fileio import write_text_atomic  # after the CUDA check (see main)

    write_text_atomic(out_dir / "results.jsonl", json_lines(rows))
    write_text_atomic(out_dir / "table.txt", format_table(rows) + "\n" + summary(rows) + "\n")


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
        rows = run_steps(build_plan(s), s, out_dir, machine, notes)
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
