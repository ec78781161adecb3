"""`waveglow-bench`: speed table for synthesis, a training step and mel extraction.

    waveglow-bench                                   # tiny, squeeze, waveglow_256; fp32 + bf16
    waveglow-bench model=waveglow_256 precision=bf16 seconds=1,5 tasks=synthesis
    waveglow-bench model=run/checkpoints/best.pt device=cuda precision=fp16 batch=8

One JSON line per case goes to stdout (pipe it to a file or `jq`), the table to stderr.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from waveglow.cli.common import CONFIG_DIR, hydra_app, log, save_resolved_config
from waveglow.errors import UserError

# `model=` names a config under configs/model/ OR a checkpoint path, possibly several. Hydra
# reads any `model=...` as a choice in the `model` config group (configs/model/ exists), which
# accepts neither a path nor several names, so the command line's `model=` is passed to Hydra
# as the plain key `models=` (see configs/waveglow_bench.yaml).
# Keys whose value may be a list: Hydra reads an unbracketed `a,b` as a sweep and refuses it
# without --multirun; the benchmark wants the lists in one run, so `key=a,b` becomes `key=[a,b]`.
LIST_KEYS = ("models", "precision", "tasks", "seconds", "batch")
_LIST_ARG = re.compile(rf"^({'|'.join(LIST_KEYS)})=([^\[\]'\"]*,[^\[\]'\"]*)$")


def rewrite_argv(argv: list[str]) -> list[str]:
    """`model=a,b` -> `models=[a,b]`, `seconds=1,5` -> `seconds=[1,5]`; other arguments unchanged."""
    out = []
    for arg in argv:
        if arg.startswith("model="):
            arg = "models=" + arg[len("model="):]
        out.append(_LIST_ARG.sub(r"\1=[\2]", arg))
    return out


def _numbers(key: str, values: list, kind: type, positive: bool = True) -> list:
    """Convert a list option to numbers, as a one-line user error when that fails."""
    try:
        out = [kind(v) for v in values]
    except (TypeError, ValueError):
        raise UserError(f"{key}={values}: expected {kind.__name__} values") from None
    if positive and any(v <= 0 for v in out):
        raise UserError(f"{key}={values}: expected values > 0")
    return out


@hydra_app("waveglow_bench")
def _bench(cfg: DictConfig) -> None:
    """Run every requested case and print its JSON line and the table."""
    from waveglow import bench

    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # type: ignore[assignment]
    threads = c.get("threads")
    common = dict(
        repeats=_numbers("repeats", [c["repeats"]], int)[0],
        threads=None if threads is None else _numbers("threads", [threads], int)[0],
        sigma=_numbers("sigma", [c["sigma"]], float, positive=False)[0],
        seed=int(c["seed"]), audio=dict(c["audio"]), segment_length=int(c["segment_length"]),
        lr=float(c["lr"]), corpus=str(c["corpus"]), config_dir=str(CONFIG_DIR),
        peak=dict(c.get("peak") or {}), snr=bool(c.get("snr", True)),
        engine=str(c.get("engine", "model")), clock=str(c.get("clock", "wall")),
    )
    cases = list(bench.plan_cases(
        models=[str(m) for m in bench.as_list(c["models"])],
        tasks=bench.as_list(c["tasks"]),
        precisions=bench.as_list(c["precision"]),
        seconds=_numbers("seconds", bench.as_list(c["seconds"]), float),
        batches=_numbers("batch", bench.as_list(c["batch"]), int),
        device=str(c["device"]),
        warmup=None if c.get("warmup") is None else _numbers("warmup", [c["warmup"]], int, False)[0],
        **common,
    ))
    bench.check_device(str(c["device"]), str(c.get("clock", "wall")))
    for spec in {case.model for case in cases if case.task != "preprocess"}:
        bench.check_model_spec(spec, CONFIG_DIR)
    log.info(bench.machine_description(common["threads"]))
    rows = []
    for i, case in enumerate(cases, 1):
        log.info(f"[{i}/{len(cases)}] {case.task} {case.model} {case.device} {case.precision} "
                 f"batch {case.batch}" + (f" {case.seconds:g} s" if case.task == "synthesis" else ""))
        row = bench.run_case_isolated(case) if c.get("isolate", True) else _in_process(bench, case)
        row = bench.json_safe(row)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(bench.format_table(rows), file=sys.stderr, flush=True)

    if c.get("output_dir"):
        out = Path(c["output_dir"])
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("bench.jsonl", "".join(json.dumps(r) + "\n" for r in rows)),
                           ("table.txt", bench.format_table(rows) + "\n")):
            tmp = out / f".{name}.tmp{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, out / name)
        save_resolved_config(cfg, out)
        log.info(f"results written to {out}/bench.jsonl")
    failed = [r for r in rows if r.get("error")]
    if failed:
        log.error(f"{len(failed)} of {len(rows)} cases failed")
        sys.exit(1)


def _in_process(bench: Any, case: Any) -> dict:
    try:
        return bench.run_case(case)
    except UserError:
        raise
    except Exception as e:  # a case that breaks (e.g. a dtype this build lacks) is reported
        return bench._error_row(case, f"{type(e).__name__}: {e}")


def main() -> None:
    """Console-script entry point (`waveglow-bench`)."""
    sys.argv[1:] = rewrite_argv(sys.argv[1:])
    _bench()


if __name__ == "__main__":
    main()
