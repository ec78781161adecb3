"""`make gpu-check` (scripts/gpu_check.py) on a machine without a GPU: the one-line exit, the
plan of commands (each one a valid command line), the training and synthesis checks run for
real on the CPU with a tiny model (so the log and JSON reading matches what the tools print),
and the table and JSON lines with fake figures (so a GPU run cannot crash on formatting)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, compose

from waveglow.cli.bench import rewrite_argv

SCRIPT = REPO / "scripts" / "gpu_check.py"
# A tiny, short CPU run of the same training command (see test_train.make_cfg).
TINY_TRAIN = ("model.upsample_kernel=256", "data.segment_length=4096", "train.val_segment_length=4096",
              "train.threads=1")
PEAK_LINE = "gpu-check: peak_mem_mib="  # what `--as-train` prints at exit
TINY_BENCH = ("repeats=1", "warmup=0", "isolate=false", "threads=1", "peak.matmul_n=64",
              "peak.conv_length=256", "peak.repeats=1")


@pytest.fixture(scope="module")
def gc():
    """scripts/gpu_check.py as a module."""
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


def run_script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def strict_json(line: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=refuse)


# ------------------------------------------------------------------------------ no GPU here
def test_without_cuda_prints_one_line_and_writes_nothing(tmp_path):
    proc = run_script(cwd=tmp_path)  # conftest hides CUDA from this process and its children
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-check: no CUDA device here"), proc.stdout
    assert "Traceback" not in proc.stderr and proc.stderr.strip() == ""
    assert list(tmp_path.iterdir()) == []  # no outputs/gpu-check


def test_plan_lists_every_check_and_writes_nothing(gc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert gc.main(["--plan", "--gpus", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert list(tmp_path.iterdir()) == []
    assert any("pytest" in ln and "--device cuda -m cuda" in ln for ln in lines)
    bench = [ln for ln in lines if "waveglow-bench" in ln]
    assert len(bench) == 2
    assert "tasks=synthesis" in bench[0] and "precision=fp32,fp16,bf16" in bench[0]
    assert "tasks=train" in bench[1] and "device=cuda" in bench[1]
    train = [ln for ln in lines if "--as-train" in ln]
    standard = [ln for ln in train if "train.memory=invertible" not in ln]
    assert [p for p in ("fp16", "bf16") if any(f"train.precision={p}" in ln for ln in standard)] == ["fp16", "bf16"]
    assert all("model=waveglow_256" in ln and "train.max_steps=200" in ln and "train.val_every=200" in ln
               and "train.audio_every=0" in ln and "train.device=cuda" in ln for ln in standard)
    # Invertible backprop in fp16 (autocast + GradScaler), a quarter of the steps.
    invertible = [ln for ln in train if "train.memory=invertible" in ln]
    assert len(invertible) == 1 and "train.precision=fp16" in invertible[0] and "train.max_steps=50" in invertible[0]
    assert any("torch.distributed.run" in ln and "--nproc_per_node=2" in ln for ln in lines)


def test_planned_commands_are_valid_command_lines(gc, tmp_path):
    """Every waveglow-* command of the plan composes into its typed config: a GPU host never
    meets a misspelled setting. One GPU: no DDP run; no bf16 where the GPU lacks it."""
    full = gc.build_plan(gc.Settings(work=tmp_path, gpus=2))
    assert [s.name for s in full] == ["prepare", "tests", "synthesis", "train-fp16", "train-bf16",
                                      "train-invertible-fp16", "bench-train", "train-compile-fp16",
                                      "train-compile-bf16", "ddp"]
    for step in full:
        argv = list(step.argv)
        if step.kind in ("train", "invertible", "compile", "ddp"):
            script = argv.index("--as-train") if "--as-train" in argv else next(
                i for i, a in enumerate(argv) if a.endswith("waveglow-train"))
            assert Path(argv[script if step.kind == "ddp" else script - 1]).exists()
            cfg = compose("waveglow_train", *argv[script + 1:])
            assert cfg.train.device == "cuda" and cfg.train.precision == step.precision
            assert Path(cfg.run_dir) == step.run_dir and cfg.data.cache_dir == str(tmp_path / "cache")
            assert cfg.train.memory == ("invertible" if step.kind == "invertible" else "standard")
            assert cfg.train.compile is (step.kind == "compile")
        elif step.kind in ("synthesis", "bench"):
            assert Path(argv[0]).name == "waveglow-bench" and Path(argv[0]).exists()
            cfg = compose("waveglow_bench", *rewrite_argv(argv[1:]))
            assert cfg.device == "cuda" and list(cfg.models) == ["waveglow_256"]
        elif step.kind == "prepare":
            assert compose("waveglow_preprocess", *argv[1:]).data.cache_dir == str(tmp_path / "cache")
    assert importlib.util.find_spec("torch.distributed.run") is not None

    one = gc.build_plan(gc.Settings(work=tmp_path, gpus=1, bf16=False))
    assert [s.name for s in one] == ["prepare", "tests", "synthesis", "train-fp16", "train-invertible-fp16",
                                     "bench-train", "train-compile-fp16"]
    assert not any("bf16" in a for s in one for a in s.argv)


# ------------------------------------------------------------------------------ real runs, CPU
def test_train_check_runs_the_real_trainer_and_reads_its_figures(gc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = gc.Settings(work=tmp_path / "work", device="cpu", model="tiny", steps=2, batch=2,
                    train_precisions=("fp32",), checks=("train",), train_overrides=TINY_TRAIN)
    rows = gc.run_steps(gc.build_plan(s), s, Path("out"), "cpu")
    machine, train = rows
    assert machine["check"] == "machine" and train["check"] == "train", rows
    assert train["status"] == "ok", train
    assert (train["model"], train["precision"], train["skipped_steps"]) == ("tiny", "fp32", 0)
    assert train["samples_per_sec"] > 0 and train["peak_mem_mib"] > 0
    metrics = [json.loads(ln) for ln in (s.work / "train-fp32" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 2]
    assert (train["val_ll_before"], train["val_ll_after"]) == (metrics[0]["val_log_likelihood"],
                                                               metrics[1]["val_log_likelihood"])
    assert not (s.work / "train-fp32" / "checkpoints").exists()  # large files go once read
    # The files hold the same rows, and each command's output.
    written = [strict_json(ln) for ln in Path("out/results.jsonl").read_text().splitlines()]
    assert written == [json.loads(json.dumps(r)) for r in rows]
    assert "every check passed" in Path("out/table.txt").read_text()
    assert "done: step 2" in Path("out/logs/train-fp32.log").read_text()
    assert Path("out/logs/prepare.log").is_file()


@pytest.mark.slow  # ~60 s: preprocessing the demo corpus, then training
def test_invertible_check_runs_the_real_trainer_with_invertible_backprop(gc, tmp_path, monkeypatch):
    """The invertible check's command on the CPU (fp32 here: the GPU run is fp16 with its
    GradScaler): the trainer says train.memory=invertible, and the row reads it."""
    monkeypatch.chdir(tmp_path)
    s = gc.Settings(work=tmp_path / "work", device="cpu", model="tiny", steps=8, batch=2,
                    invertible_precision="fp32", checks=("invertible",), train_overrides=TINY_TRAIN)
    rows = gc.run_steps(gc.build_plan(s), s, Path("out"), "cpu")[1:]
    assert [(r["check"], r["precision"], r["status"]) for r in rows] == [("invertible", "fp32", "ok")], rows
    assert "train.memory=invertible" in Path("out/logs/train-invertible-fp32.log").read_text()
    assert rows[0]["val_ll_after"] > rows[0]["val_ll_before"]


@pytest.mark.slow  # preprocessing, then training with inductor compiling the conditioners
def test_compile_check_runs_the_real_trainer_with_compiled_conditioners(gc, tmp_path, monkeypatch):
    """The compile check's command on the CPU (fp32 here): the trainer says compile on, it
    learns, and the row reads its speed and peak memory."""
    monkeypatch.chdir(tmp_path)
    s = gc.Settings(work=tmp_path / "work", device="cpu", model="tiny", steps=8, batch=2,
                    train_precisions=("fp32",), checks=("compile",), train_overrides=TINY_TRAIN)
    rows = gc.run_steps(gc.build_plan(s), s, Path("out"), "cpu")[1:]
    assert [(r["check"], r["precision"], r["status"]) for r in rows] == [("compile", "fp32", "ok")], rows
    assert "compile on (train.compile=true" in Path("out/logs/train-compile-fp32.log").read_text()
    assert rows[0]["samples_per_sec"] > 0 and rows[0]["peak_mem_mib"] > 0


def test_synthesis_check_reads_the_benchmark_rows(gc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = gc.Settings(work=tmp_path / "work", device="cpu", model="tiny", bf16=False, synth_seconds=0.05,
                    checks=("synthesis",), bench_overrides=TINY_BENCH)
    rows = gc.run_steps(gc.build_plan(s), s, Path("out"), "cpu")[1:]
    assert [(r["check"], r["precision"], r["status"]) for r in rows] == [
        ("synthesis", "fp32", "ok"), ("synthesis", "fp16", "ok")], rows
    assert all(r["khz"] > 0 and r["peak_mem_mib"] > 0 for r in rows)
    assert rows[0]["snr_db_vs_fp32"] is None and rows[1]["snr_db_vs_fp32"] > 20
    assert rows[1]["goal"] is None  # goals are for waveglow_256 only


# ------------------------------------------------------------------------------ formatting
def fake_rows(gc) -> list[dict]:
    r = gc.row
    return [
        r(check="machine", status="ok", detail="NVIDIA H200 x1 (139 GiB), torch 2.13.0+cu128"),
        r(check="tests", status="ok", wall_s=61.2, detail="14 passed, 1 skipped", passed=14, skipped=1),
        r(check="synthesis", model="waveglow_256", precision="fp32", status="ok", khz=2100.4, peak_mem_mib=812.0),
        r(check="synthesis", model="waveglow_256", precision="fp16", status="ok", khz=3512.9,
          snr_db_vs_fp32=41.25, peak_mem_mib=455.5),
        r(check="synthesis", model="waveglow_256", precision="bf16", status="failed", khz=float("nan"),
          snr_db_vs_fp32=float("inf"), detail="SNR against fp32 is not finite"),
        r(check="train", model="waveglow_256", precision="fp16", status="ok", samples_per_sec=251234.5,
          peak_mem_mib=20480.25, skipped_steps=3, val_ll_before=-1.2345, val_ll_after=3.5, wall_s=98.0),
        r(check="train", model="waveglow_256", precision="bf16", status="failed", detail="timed out after 240 s"),
        r(check="bench-train", model="waveglow_256", precision="fp16", status="ok", samples_per_sec=1e9),
        r(check="ddp", status="skipped", detail="1 GPU (needs 2)"),
        {"check": "odd", "status": 3, "khz": "fast", "detail": None},  # keys missing, wrong types
    ]


def test_table_and_json_lines_with_fake_figures(gc, tmp_path):
    rows = [gc.apply_goal(r) for r in fake_rows(gc)]
    goals = {(r["check"], r["precision"]): r["goal_met"] for r in rows if r.get("goal")}
    assert goals == {("synthesis", "fp16"): True, ("train", "fp16"): False, ("train", "bf16"): None}

    table = gc.format_table(rows)
    lines = table.splitlines()
    assert lines[0].startswith("NVIDIA H200")  # the machine row is the title, not a line
    assert lines[1].split()[:4] == ["check", "model", "prec", "status"] and set(lines[2]) == {"-"}
    body = lines[3:]
    assert len(body) == len(rows) - 1
    assert "3,513" in body[2] and "41.2" in body[2] and ">= 3 MHz met" in body[2]
    assert "251,234" in body[4] and "20,480" in body[4] and "-1.234 -> 3.500" in body[4]
    assert ">= 300k samples/s MISSED" in body[4] and ">= 300k samples/s ?" in body[5]
    assert "nan" in body[3] and "inf" in body[3]
    assert "1,000,000,000" in body[6]

    text = gc.json_lines(rows)
    parsed = [strict_json(ln) for ln in text.splitlines()]
    assert len(parsed) == len(rows) and text.endswith("\n")
    assert parsed[4]["khz"] is None and parsed[4]["snr_db_vs_fp32"] is None  # nan, inf -> null
    assert parsed[3]["khz"] == 3512.9 and parsed[5]["val_ll_before"] == -1.2345
    assert list(parsed[2])[: len(gc.ROW_KEYS)] == list(gc.ROW_KEYS)
    assert parsed[1]["passed"] == 14  # extra keys are kept

    summary = gc.summary(rows)
    assert "2 of 9 checks failed" in summary and "goals missed: train fp16" in summary

    gc.write_results(tmp_path / "out", rows)
    assert [strict_json(ln) for ln in (tmp_path / "out/results.jsonl").read_text().splitlines()] == parsed
    assert (tmp_path / "out/table.txt").read_text() == table + "\n" + summary + "\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["results.jsonl", "table.txt"]


def test_what_the_commands_print_is_read_into_rows(gc, tmp_path):
    counts = gc.parse_pytest("....s.\n14 passed, 1 skipped, 412 deselected in 61.20s\n")
    assert (counts["passed"], counts["skipped"], counts["deselected"], counts["failed"]) == (14, 1, 412, 0)
    assert gc.tests_row(0, "14 passed, 1 skipped, 412 deselected in 61.20s", 61)["status"] == "ok"
    failed = gc.tests_row(1, "===== 1 failed, 13 passed, 2 errors in 9.1s =====", 9)
    assert failed["status"] == "failed" and failed["detail"] == "13 passed, 1 failed, 2 errors"
    assert gc.tests_row(0, "5 skipped, 9 deselected in 1.0s", 1)["status"] == "failed"  # nothing ran
    assert gc.tests_row(5, "no tests ran in 0.01s", 1)["status"] == "failed"

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 0, "val_log_likelihood": -1.5}\n{"step": 200, "val_log_likelihood": -0.5}\n{"st')
    log = ("run x: model waveglow_256 (87.73M parameters), data demo, fp16 on cuda:0, global batch 8 × 16000 samples\n"
           "step 50/200 | train NLL 1.1 nats/sample | 100,000 samples/s (4.5× real time) | lr 0.0001 | ETA 0:00:30\n"
           "step 100/200 | train NLL 0.9 nats/sample | 310,000 samples/s (14.1× real time) | lr 0.0001 | ETA 0:00:10\n"
           "step 200/200 | train NLL 0.8 nats/sample | 330,000 samples/s (15.0× real time) | lr 0.0001 | ETA 0:00:00\n"
           "done: step 200, val log-likelihood -0.5000 nats/sample, best -0.5000 (step 200); skipped steps 4; x\n"
           f"{gc.PEAK_MARK}20480.5\n")
    step = gc.Step("train-fp16", "train", ("x",), 1, model="waveglow_256", precision="fp16", run_dir=run,
                   expect={"steps": 200})
    # The invertible run must say so in its start line (the trainer names a non-standard memory mode).
    inv = gc.Step("train-invertible-fp16", "invertible", ("x",), 1, model="waveglow_256", precision="fp16",
                  run_dir=run, expect={"steps": 200, "memory": "invertible"})
    assert "train.memory=standard, expected invertible" in gc.train_row(inv, 0, log, 1, "cuda")["detail"]
    inv_log = log.replace("× 16000 samples\n", "× 16000 samples, train.memory=invertible\n")
    inverted = gc.apply_goal(gc.train_row(inv, 0, inv_log, 1, "cuda"))
    assert inverted["status"] == "ok" and inverted["check"] == "invertible" and inverted["goal"] is None
    # The compile run must say "compile on" in its start line, the others not.
    comp = gc.Step("train-compile-fp16", "compile", ("x",), 1, model="waveglow_256", precision="fp16",
                   run_dir=run, expect={"steps": 200, "compile": True})
    assert "compile off, expected train.compile=True" in gc.train_row(comp, 0, log, 1, "cuda")["detail"]
    comp_log = log.replace("× 16000 samples\n", "× 16000 samples, compile on (train.compile=true: ...)\n")
    assert gc.apply_goal(gc.train_row(comp, 0, comp_log, 1, "cuda"))["status"] == "ok"
    assert "expected train.compile=False" in gc.train_row(step, 0, comp_log, 1, "cuda")["detail"]
    r = gc.apply_goal(gc.train_row(step, 0, log, 90.0, "cuda"))
    # Steps over time of the windows after the first (warm-up): 50 steps at 310k, 100 at 330k.
    assert r["status"] == "ok" and r["samples_per_sec"] == pytest.approx(150 / (50 / 310e3 + 100 / 330e3))
    assert (r["skipped_steps"], r["peak_mem_mib"], r["val_ll_before"], r["val_ll_after"]) == (4, 20480.5, -1.5, -0.5)
    assert r["goal_met"] is True
    # A run that fell back to fp32, did not learn, crashed or hung is a failure with a reason.
    assert "expected fp16 on cuda" in gc.train_row(step, 0, log.replace("fp16 on cuda:0", "fp32 on cpu"), 1, "cuda")["detail"]
    (run / "metrics.jsonl").write_text('{"step": 0, "val_log_likelihood": -0.5}\n{"step": 200, "val_log_likelihood": -0.5}\n')
    assert "did not rise" in gc.train_row(step, 0, log, 1, "cuda")["detail"]
    crashed = gc.train_row(step, 1, "step 0: ...\nerror: data.root=x: no such folder\n", 1, "cuda")
    assert crashed["detail"] == "exit status 1: error: data.root=x: no such folder"
    assert gc.train_row(step, None, "", 240, "cuda")["detail"] == "timed out after 240 s"

    bench = gc.Step("synthesis", "synthesis", ("x",), 1, model="waveglow_256")
    good = json.dumps({"task": "synthesis", "model": "waveglow_256", "precision": "fp16", "khz": 3100.0,
                       "snr_db_vs_fp32": None, "peak_mem_mib": 400.0})
    bad = json.dumps({"task": "synthesis", "model": "waveglow_256", "precision": "bf16", "error": "RuntimeError: x"})
    rows = gc.bench_rows(bench, 1, f"[1/2] ...\n{good}\n{bad}\ntable\n", 10)
    assert [(r["precision"], r["status"]) for r in rows] == [("fp16", "failed"), ("bf16", "failed")]
    assert "not finite" in rows[0]["detail"] and rows[1]["detail"] == "RuntimeError: x"
    timed_out = gc.bench_rows(bench, None, "", 150)
    assert [r["detail"] for r in timed_out] == ["timed out after 150 s"]


def test_time_budget_and_timeouts(gc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = gc.Settings(work=tmp_path)
    hang = gc.Step("tests", "tests", (sys.executable, "-c", "import time; time.sleep(60)"), cap_s=1)
    rows = gc.run_steps([hang], s, Path("out"), "cpu")
    assert rows[1]["status"] == "failed" and rows[1]["detail"].startswith("timed out after 1 s")
    assert math.isclose(rows[1]["wall_s"], 1, abs_tol=5)
    late = gc.run_steps([hang], s, Path("out"), "cpu", notes=[gc.row(check="ddp", status="skipped")], budget_s=0)
    assert [(r["check"], r["status"]) for r in late[1:]] == [("tests", "skipped"), ("ddp", "skipped")]
    assert "budget" in late[1]["detail"]


def fake_commands(calls: list[list[str]]):
    """A stand-in for `run_command` that prints what the real commands print on a GPU host."""

    def value(args: list[str], key: str) -> str:
        return next(a.split("=", 1)[1] for a in args if a.startswith(f"{key}="))

    def run(argv, timeout, cwd):
        args = list(argv)
        calls.append(args)
        if "pytest" in args:
            return 0, "..............\n14 passed, 400 deselected in 50.00s\n", 50.0
        if "--as-train" in args:
            run_dir, precision = Path(value(args, "run_dir")), value(args, "train.precision")
            steps = int(value(args, "train.max_steps"))
            memory = ", train.memory=invertible" if "train.memory=invertible" in args else ""
            memory += ", compile on (train.compile=true: ...)" if "train.compile=true" in args else ", compile off"
            (run_dir / "checkpoints").mkdir(parents=True)
            (run_dir / "metrics.jsonl").write_text('{"step": 0, "val_log_likelihood": -1.0}\n'
                                                   f'{{"step": {steps}, "val_log_likelihood": 2.0}}\n')
            rate = "350,000" if precision == "fp16" else "250,000"
            return 0, (f"run {run_dir}: model waveglow_256 (87.73M parameters), data demo, {precision} on cuda:0, "
                       f"global batch 8 × 16000 samples{memory}\n"
                       f"step {steps // 4}/{steps} | train NLL 1.0 nats/sample | 90,000 samples/s (4× real time) | lr 0.0001\n"
                       f"step {steps}/{steps} | train NLL 0.5 nats/sample | {rate} samples/s (15× real time) | lr 0.0001\n"
                       f"done: step {steps}, val log-likelihood 2.0000 nats/sample, best 2.0000 (step {steps}); "
                       f"skipped steps 3; checkpoints in {run_dir}/checkpoints\n{PEAK_LINE}30000.0\n"), 100.0
        if "tasks=synthesis" in args:
            lines = [{"task": "synthesis", "model": "waveglow_256", "precision": p, "khz": k, "peak_mem_mib": 900.0,
                      "snr_db_vs_fp32": snr} for p, k, snr in (("fp32", 1500.0, None), ("fp16", 3300.0, 45.0),
                                                               ("bf16", 3400.0, 35.0))]
            return 0, "".join(json.dumps(x) + "\n" for x in lines) + "table\n", 30.0
        if "tasks=train" in args:
            lines = [{"task": "train", "model": "waveglow_256", "precision": p, "samples_per_sec": 400000.0,
                      "peak_mem_mib": 20000.0} for p in ("fp16", "bf16")]
            return 0, "".join(json.dumps(x) + "\n" for x in lines), 30.0
        return 0, "preprocessed 40/40 clips\n", 5.0

    return run



def test_the_gpu_run_end_to_end_with_a_fake_gpu(gc, tmp_path, monkeypatch, capsys):
    """main's GPU branch with CUDA faked and the commands replaced by what they print on a GPU:
    the rows, the table, the files, the goals, the clean-up and the exit status."""
    import torch

    assert gc.PEAK_MARK == PEAK_LINE
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: type("Props", (), {"name": "Fake H200", "total_memory": 141 * 2**30})())
    calls: list[list[str]] = []
    monkeypatch.setattr(gc, "run_command", fake_commands(calls))

    assert gc.main([]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("Fake H200 x1 (141 GiB)")
    assert "gpu-check: every check passed; goals missed: train bf16" in out
    rows = [strict_json(ln) for ln in Path("outputs/gpu-check/results.jsonl").read_text().splitlines()]
    assert [(r["check"], r["precision"], r["status"]) for r in rows] == [
        ("machine", None, "ok"), ("tests", None, "ok"),
        ("synthesis", "fp32", "ok"), ("synthesis", "fp16", "ok"), ("synthesis", "bf16", "ok"),
        ("train", "fp16", "ok"), ("train", "bf16", "ok"), ("invertible", "fp16", "ok"),
        ("bench-train", "fp16", "ok"), ("bench-train", "bf16", "ok"), ("compile", "fp16", "ok"),
        ("compile", "bf16", "ok"), ("ddp", None, "skipped")]
    by = {(r["check"], r["precision"]): r for r in rows}
    assert by["synthesis", "fp16"]["goal_met"] is True and by["train", "fp16"]["goal_met"] is True
    assert by["train", "bf16"]["goal_met"] is False and by["train", "fp16"]["samples_per_sec"] == 350000
    assert by["train", "fp16"]["peak_mem_mib"] == 30000.0 and by["train", "fp16"]["skipped_steps"] == 3
    assert by["tests", None]["passed"] == 14
    assert sorted(p.name for p in Path("outputs/gpu-check/logs").iterdir()) == [
        "bench-train.log", "prepare.log", "synthesis.log", "tests.log", "train-bf16.log", "train-compile-bf16.log",
        "train-compile-fp16.log", "train-fp16.log", "train-invertible-fp16.log"]
    assert by["invertible", "fp16"]["val_ll_after"] == 2.0 and by["invertible", "fp16"]["goal"] is None
    work = Path(next(a for a in calls[0] if a.startswith("data.cache_dir=")).split("=", 1)[1]).parent
    assert not work.exists()  # the temporary run folders are gone
    assert all("train.device=cuda" in c for c in calls if "--as-train" in c)


def test_bench_check_measures_each_precision_in_both_memory_modes(gc, tmp_path):
    """The cases that decide the GPU defaults: fp16 vs bf16 × standard vs invertible backprop,
    each read into its own row (samples/s, peak memory) and told apart in the table."""
    (step,) = [st for st in gc.build_plan(gc.Settings(work=tmp_path, gpus=1)) if st.kind == "bench"]
    cfg = compose("waveglow_bench", *rewrite_argv(list(step.argv[1:])))
    assert list(cfg.tasks) == ["train"] and list(cfg.memory) == ["standard", "invertible"]
    assert list(cfg.precision) == ["fp16", "bf16"]
    lines = [{"task": "train", "model": "waveglow_256", "precision": p, "memory": m,
              "samples_per_sec": 1000.0 * (i + 1), "peak_mem_mib": 100.0 * (i + 1)}
             for i, (p, m) in enumerate((p, m) for p in ("fp16", "bf16") for m in ("standard", "invertible"))]
    rows = gc.bench_rows(step, 0, "".join(json.dumps(x) + "\n" for x in lines) + "table\n", 30)
    assert [(r["precision"], r["memory"], r["samples_per_sec"], r["peak_mem_mib"], r["status"]) for r in rows] == [
        ("fp16", "standard", 1000.0, 100.0, "ok"), ("fp16", "invertible", 2000.0, 200.0, "ok"),
        ("bf16", "standard", 3000.0, 300.0, "ok"), ("bf16", "invertible", 4000.0, 400.0, "ok")]
    table = gc.format_table(rows)
    assert table.count("bench-train/invertible") == 2 and table.count("bench-train ") == 2
