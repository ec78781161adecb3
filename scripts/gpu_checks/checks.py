"""Every check of `make gpu-check`: the commands it plans and the rows it reads back.

A check is one `Check` in `CHECKS`: its name (as `--checks` takes it), `plan(settings)`
giving its commands (`Step`s, each the real command a user would type), and `read(step, rc,
text, wall, settings)` turning one command's exit status and output into result rows. Adding
a check is writing those two functions and adding one entry; the runner, the budget, the logs,
the table and the JSON lines need nothing else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu_checks.parse import parse_pytest, parse_train_log, read_metrics
from gpu_checks.rows import failure, finite, row
from gpu_checks.settings import ENTRY, Settings, Step


@dataclass(frozen=True)
class Check:
    """One check: its commands and how to read them.

    Attributes:
        name: as `--checks` takes it.
        plan: settings -> its commands (none where it does not apply, e.g. DDP on one GPU).
        read: (step, exit status or None on timeout, output, wall seconds, settings) -> rows.
        needs_corpus: its commands train on the demo corpus's feature cache (`prepare` first).
    """

    name: str
    plan: Callable[[Settings], list[Step]]
    read: Callable[[Step, int | None, str, float, Settings], list[dict[str, Any]]]
    needs_corpus: bool = False


# ------------------------------------------------------------------------------ commands
def script(s: Settings, name: str) -> str:
    """The console script `name` of this environment (else found on PATH)."""
    path = s.bin_dir / name
    return str(path if path.exists() else shutil.which(name) or path)


def train_args(s: Settings, model: str, precision: str, steps: int, batch: int, run_dir: Path) -> list[str]:
    """`waveglow-train` settings of a short run on the demo corpus (validated at steps 0 and `steps`)."""
    return [
        "data=demo", f"data.root={s.repo / 'data' / 'demo'}", f"data.cache_dir={s.work / 'cache'}",
        f"model={model}", f"train.max_steps={steps}", f"train.val_every={steps}",
        f"train.log_every={max(1, steps // 4)}", "train.audio_every=0", "train.logdet_every=0",
        f"train.checkpoint_every={steps}", f"train.batch_size={batch}", f"train.device={s.device}",
        f"train.precision={precision}", f"run_dir={run_dir}", *s.train_overrides,
    ]


def amp_precisions(s: Settings) -> list[str]:
    return [p for p in s.train_precisions if p != "bf16" or s.bf16]


def prepare_step(s: Settings) -> Step:
    """The feature cache of the demo corpus, built once before any training check."""
    return Step("prepare", "prepare", (
        script(s, "waveglow-preprocess"), "data=demo", f"data.root={s.repo / 'data' / 'demo'}",
        f"data.cache_dir={s.work / 'cache'}", "progress=false"), cap_s=120)


def read_prepare(step: Step, rc: int | None, text: str, wall: float, s: Settings) -> list[dict[str, Any]]:
    return [] if rc == 0 else [row(check="prepare", status="failed", wall_s=wall, detail=failure(rc, wall, text))]


# ------------------------------------------------------------------------------ tests
def plan_tests(s: Settings) -> list[Step]:
    return [Step("tests", "tests", (s.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    "--device", "cuda", "-m", "cuda", str(s.repo / "tests")), cap_s=180)]


def tests_row(rc: int | None, text: str, wall: float) -> dict[str, Any]:
    """The row of the CUDA tests: pytest's counts; ok only if some passed and none failed."""
    c = parse_pytest(text)
    detail = ", ".join(f"{v} {k}" for k, v in c.items() if v and k != "deselected") or "no tests ran"
    ok = rc == 0 and c["passed"] > 0 and not c["failed"] and not c["errors"]
    if rc is None:
        detail = f"timed out after {wall:.0f} s; {detail}"
    elif not ok and c["passed"] == 0 and not c["failed"]:
        detail = f"no CUDA test passed ({detail}; exit status {rc})"
    return row(check="tests", status="ok" if ok else "failed", wall_s=wall, detail=detail, **c)


def read_tests(step: Step, rc: int | None, text: str, wall: float, s: Settings) -> list[dict[str, Any]]:
    return [tests_row(rc, text, wall)]


# ------------------------------------------------------------------------------ benchmark
def plan_synthesis(s: Settings) -> list[Step]:
    precisions = ["fp32", "fp16"] + (["bf16"] if s.bf16 else [])
    return [Step("synthesis", "synthesis", (
        script(s, "waveglow-bench"), f"device={s.device}", "tasks=synthesis", f"model={s.model}",
        f"precision={','.join(precisions)}", f"seconds={s.synth_seconds:g}", "batch=1",
        *s.bench_overrides), cap_s=150, model=s.model)]


def plan_bench(s: Settings) -> list[Step]:
    """The training step in each mixed precision × backprop memory mode: the figures (samples/s,
    peak memory) that decide the GPU defaults of `train.precision` and `train.memory`."""
    return [Step("bench-train", "bench", (
        script(s, "waveglow-bench"), f"device={s.device}", "tasks=train", f"model={s.model}",
        f"precision={','.join(amp_precisions(s))}", "memory=standard,invertible", f"batch={s.batch}",
        *s.bench_overrides), cap_s=210, model=s.model)]


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
                snr_db_vs_fp32=b.get("snr_db_vs_fp32"), batch=b.get("batch"), audio_seconds=b.get("audio_seconds"),
                memory=b.get("memory") if b.get("task") == "train" else None)
        if b.get("error"):
            r.update(status="failed", detail=str(b["error"]))
        elif check == "synthesis" and b.get("precision") != "fp32" and not finite(b.get("snr_db_vs_fp32")):
            r.update(status="failed", detail="SNR against fp32 is not finite (NaN output, or no autocast)")
        rows.append(r)
    # waveglow-bench exits 1 when a case failed (that row says why); anything else is the
    # command's own failure, e.g. a timeout before the last case.
    if not rows or rc is None or rc not in (0, 1) or (rc == 1 and all(r["status"] == "ok" for r in rows)):
        rows.append(row(check=check, model=step.model, status="failed", wall_s=wall, detail=failure(rc, wall, text)))
    return rows


def read_bench(step: Step, rc: int | None, text: str, wall: float, s: Settings) -> list[dict[str, Any]]:
    return bench_rows(step, rc, text, wall)


# ------------------------------------------------------------------------------ training
def as_train(s: Settings, args: Sequence[str]) -> tuple[str, ...]:
    """`waveglow-train <args>` run through the entry's `--as-train` (it adds the peak memory line)."""
    return (s.python, str(ENTRY), "--as-train", *args)


def plan_train(s: Settings) -> list[Step]:
    steps = []
    for p in amp_precisions(s):
        run = s.work / f"train-{p}"
        steps.append(Step(f"train-{p}", "train", as_train(s, train_args(s, s.model, p, s.steps, s.batch, run)),
                          cap_s=240, model=s.model, precision=p, run_dir=run, expect={"steps": s.steps}))
    return steps


def plan_invertible(s: Settings) -> list[Step]:
    """Invertible backprop (`train.memory=invertible`) in fp16 with its GradScaler: a quarter of
    the training steps (the path is what is checked, not the speed)."""
    steps, p = max(1, s.steps // 4), s.invertible_precision
    run = s.work / f"train-invertible-{p}"
    args = [*train_args(s, s.model, p, steps, s.batch, run), "train.memory=invertible"]
    return [Step(f"train-invertible-{p}", "invertible", as_train(s, args), cap_s=150, model=s.model,
                 precision=p, run_dir=run, expect={"steps": steps, "memory": "invertible"})]


def plan_compile(s: Settings) -> list[Step]:
    """`train.compile=true`: the training runs of `plan_train` with compiled conditioners, whose
    samples/s and peak memory against the `train` rows (train.compile=false) decide the GPU
    default of train.compile. The log's first window (the compilation) is left out of samples/s."""
    steps = []
    for p in amp_precisions(s):
        run = s.work / f"train-compile-{p}"
        args = [*train_args(s, s.model, p, s.steps, s.batch, run), "train.compile=true"]
        steps.append(Step(f"train-compile-{p}", "compile", as_train(s, args), cap_s=300, model=s.model,
                          precision=p, run_dir=run, expect={"steps": s.steps, "compile": True}))
    return steps


def plan_ddp(s: Settings) -> list[Step]:
    if s.gpus < 2:
        return []
    run = s.work / "ddp"
    return [Step("ddp", "ddp", (s.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                script(s, "waveglow-train"), "train=demo",  # tiny's lr
                                *train_args(s, s.ddp_model, "fp16", s.ddp_steps, 4, run)),
                 cap_s=150, model=s.ddp_model, precision="fp16", run_dir=run,
                 expect={"steps": s.ddp_steps, "processes": 2})]


def train_row(step: Step, rc: int | None, text: str, wall: float, device: str) -> dict[str, Any]:
    """The row of a training run: figures from its log and metrics.jsonl, and whether it learned."""
    info, metrics = parse_train_log(text), read_metrics(step.run_dir) if step.run_dir else {}
    steps = step.expect.get("steps")
    r = row(check=step.kind, model=step.model, precision=step.precision, status="ok", wall_s=wall,
            samples_per_sec=info["samples_per_sec"], peak_mem_mib=info.get("peak_mem_mib"),
            skipped_steps=info.get("skipped_steps"), val_ll_before=metrics.get(0), val_ll_after=metrics.get(steps))
    before, after = r["val_ll_before"], r["val_ll_after"]
    if rc != 0 or not info["finished"]:
        problem = failure(rc, wall, text) if rc != 0 else "no `done:` line in the log"
    elif info.get("precision") != step.precision or not str(info.get("device", "")).startswith(device):
        problem = f"ran {info.get('precision')} on {info.get('device')}, expected {step.precision} on {device}"
    elif info.get("processes", 1) != step.expect.get("processes", 1):
        problem = f"{info.get('processes')} processes, expected {step.expect.get('processes')}"
    elif info.get("memory", "standard") != step.expect.get("memory", "standard"):
        problem = f"train.memory={info.get('memory')}, expected {step.expect.get('memory')}"
    elif bool(info.get("compile")) != step.expect.get("compile", False):
        problem = f"compile {'on' if info.get('compile') else 'off'}, expected train.compile={step.expect.get('compile', False)}"
    elif not (finite(before) and finite(after)):
        problem = f"val log-likelihood missing or not finite at steps 0 and {steps} (metrics.jsonl)"
    elif after <= before:
        problem = f"val log-likelihood did not rise ({before:.4f} -> {after:.4f} nats/sample)"
    else:
        problem = None
    if problem:
        r.update(status="failed", detail=problem)
    return r


def read_train(step: Step, rc: int | None, text: str, wall: float, s: Settings) -> list[dict[str, Any]]:
    r = train_row(step, rc, text, wall, s.device)
    if step.run_dir is not None:  # checkpoints of waveglow_256 are ~1 GB each
        shutil.rmtree(step.run_dir / "checkpoints", ignore_errors=True)
    return [r]


# ------------------------------------------------------------------------------ the registry
CHECKS: tuple[Check, ...] = (  # in the order they run
    Check("tests", plan_tests, read_tests),
    Check("synthesis", plan_synthesis, read_bench),
    Check("train", plan_train, read_train, needs_corpus=True),
    Check("invertible", plan_invertible, read_train, needs_corpus=True),
    Check("bench", plan_bench, read_bench),
    Check("compile", plan_compile, read_train, needs_corpus=True),
    Check("ddp", plan_ddp, read_train, needs_corpus=True),
)
CHECK_NAMES = tuple(c.name for c in CHECKS)
PREPARE = Check("prepare", lambda s: [prepare_step(s)], read_prepare)
BY_KIND = {c.name: c for c in (*CHECKS, PREPARE)}


def selected(s: Settings) -> list[Check]:
    """The checks `s.checks` names (all when empty), in running order."""
    return [c for c in CHECKS if not s.checks or c.name in s.checks]


def build_plan(s: Settings) -> list[Step]:
    """The commands of a check, in the order they run (the corpus prepared first when needed)."""
    checks = selected(s)
    steps = [prepare_step(s)] if any(c.needs_corpus for c in checks) else []
    for c in checks:
        steps += c.plan(s)
    return steps


def read_step(step: Step, rc: int | None, text: str, wall: float, s: Settings) -> list[dict[str, Any]]:
    """The rows of one finished command, read by the check that planned it."""
    return BY_KIND[step.kind].read(step, rc, text, wall, s)
