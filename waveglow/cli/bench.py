"""`waveglow-bench`: speed table for synthesis, a training step and mel extraction.

One JSON line per case goes to stdout (pipe it to a file or `jq`), the table to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys

import torch

from waveglow import bench
from waveglow.bench.baseline import compare, format_comparison, load_baseline
from waveglow.cli.common import Script, app, log, save_config_beside
from waveglow.config import BenchApp, to_dict
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

SCRIPT = Script(
    name="waveglow-bench", config="waveglow_bench",
    summary="Measure speed: synthesis in kHz and real-time factor, a training step in samples/s and "
            "peak memory in MiB, mel extraction; each with the share of this machine's measured peak. "
            "One JSON line per case on stdout, a table on stderr. See docs/performance.md.",
    usage="[models=<config name | checkpoint>,...] [tasks=synthesis,train,preprocess] [precision=fp32,bf16] "
          "[memory=standard,invertible]  (model= is the same as models=)",
    examples=("waveglow-bench",
              "waveglow-bench models=waveglow_256 precision=bf16 seconds=1,5 tasks=synthesis",
              "waveglow-bench models=run/checkpoints/best.pt device=cuda precision=fp16 batch=8",
              "waveglow-bench models=waveglow_256 tasks=train memory=standard,invertible",
              "waveglow-bench models=tiny tasks=train baseline=bench-main.jsonl"),
)

# `models=` names configs under configs/model/ or checkpoint paths. `model=` is accepted as the
# same setting: Hydra would read `model=...` as a choice in the `model` config group, which takes
# neither a path nor several names, so the command line's `model=` is passed on as `models=`.
# The list keys take `key=a,b` (Hydra would read a sweep) and `key=a` (one item): both become
# `key=[...]`.
LIST_KEYS = ("models", "precision", "tasks", "seconds", "batch", "memory")
_LIST_ARG = re.compile(rf"^({'|'.join(LIST_KEYS)})=([^\[\]'\"]+)$")


def rewrite_argv(argv: list[str]) -> list[str]:
    """`model=a,b` -> `models=[a,b]`, `seconds=5` -> `seconds=[5]`; other arguments unchanged."""
    out = []
    for arg in argv:
        if arg.startswith("model="):
            arg = "models=" + arg[len("model="):]
        if not arg.endswith("=null"):
            arg = _LIST_ARG.sub(r"\1=[\2]", arg)
        out.append(arg)
    return out


@app(SCRIPT)
def _bench(cfg: BenchApp) -> None:
    """Run every requested case and print its JSON line and the table."""
    # threads=null: the count the script start chose from the free cores, in every case's process.
    threads = cfg.threads or torch.get_num_threads()
    common = dict(
        repeats=cfg.repeats, threads=threads, sigma=cfg.sigma, seed=cfg.seed,
        audio=to_dict(cfg.audio), segment_length=cfg.segment_length, lr=cfg.lr, corpus=cfg.corpus,
        peak=to_dict(cfg.peak), snr=cfg.snr, engine="model" if cfg.engine == "onnxruntime" else cfg.engine,
        clock=cfg.clock,
    )
    cases = list(bench.plan_cases(
        models=list(cfg.models), tasks=list(cfg.tasks), precisions=list(cfg.precision),
        seconds=list(cfg.seconds), batches=cfg.batch,
        device=cfg.device, warmup=cfg.warmup, memories=list(cfg.memory), **common,
    ))
    if cfg.engine == "onnxruntime":
        cases = with_onnx_rows(cases)
    bench.check_device(cfg.device, cfg.clock)
    # Read before any case runs: a bad baseline file stops the run before it costs anything.
    base_rows = load_baseline(cfg.baseline) if cfg.baseline else None
    for spec in {case.model for case in cases if case.task != "preprocess"}:
        bench.check_model_spec(spec)
    log.info(bench.machine_description(threads))
    rows = []
    for i, case in enumerate(cases, 1):
        log.info(f"[{i}/{len(cases)}] {case.task} {case.model} {case.device} {case.precision} "
                 f"batch {case.batch}" + (f" {case.seconds:g} s" if case.task == "synthesis" else "")
                 + (f" memory={case.memory}" if case.task == "train" else ""))
        row = bench.run_case_isolated(case) if cfg.isolate else _in_process(case)
        row = bench.json_safe(row)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(bench.format_table(rows), file=sys.stderr, flush=True)
    comparison = None
    if base_rows is not None:
        comparison = format_comparison(compare(rows, base_rows))
        print(f"\nagainst baseline {cfg.baseline} (speed ratio new/baseline: > 1 is faster; "
              f"mem ratio: < 1 is smaller)\n{comparison}", file=sys.stderr, flush=True)

    if cfg.output_dir:
        write_text_atomic(f"{cfg.output_dir}/bench.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        write_text_atomic(f"{cfg.output_dir}/table.txt", bench.format_table(rows) + "\n")
        if comparison is not None:
            write_text_atomic(f"{cfg.output_dir}/baseline.txt", comparison + "\n")
        save_config_beside(cfg, cfg.output_dir, "bench", is_dir=True)
        log.info(f"results written to {cfg.output_dir}/bench.jsonl")
    failed = [r for r in rows if r.get("error")]
    if failed:
        log.error(f"{len(failed)} of {len(rows)} cases failed")
        sys.exit(1)


def with_onnx_rows(cases: list[bench.Case]) -> list[bench.Case]:
    """engine=onnxruntime: each fp32 synthesis case on the CPU is followed by the same case run
    through the exported ONNX model, so eager and onnxruntime share one table."""
    out = []
    for case in cases:
        out.append(case)
        if case.task == "synthesis" and case.precision == "fp32" and case.device == "cpu":
            out.append(dataclasses.replace(case, engine="onnxruntime"))
    if not any(c.engine == "onnxruntime" for c in out):
        raise UserError("engine=onnxruntime times the fp32 ONNX export on the CPU: add tasks=synthesis, "
                        "precision=fp32 and device=cpu")
    return out


def _in_process(case: bench.Case) -> dict:
    try:
        return bench.run_case(case)
    except UserError:
        raise
    except Exception as e:  # a case that breaks (e.g. a dtype this build lacks) is reported
        return bench.error_row(case, f"{type(e).__name__}: {e}")


def main() -> None:
    """Console-script entry point (`waveglow-bench`)."""
    _bench(rewrite_argv(sys.argv[1:]))


if __name__ == "__main__":
    main()
