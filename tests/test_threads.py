"""Threads that fit the machine (`waveglow.runtime`): the automatic count from the usable and
busy cores (values injected, nothing read from /proc here), the scripts' start lines, and the
warning a run far below one thread's rate gives."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_script

from waveglow.inference.jobs import slow_synthesis_warning
from waveglow.runtime import (
    Threads,
    auto_threads,
    busy_cores,
    choose_threads,
    omp_cap,
    slow_warning,
)
from waveglow.train.progress import ThroughputCheck


def stat(*cpus: tuple[int, int]) -> str:
    """/proc/stat text with (busy, idle) jiffies per CPU (busy split over user and system)."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for i, (busy, idle) in enumerate(cpus):
        lines.append(f"cpu{i} {busy // 2} 0 {busy - busy // 2} {idle} 0 0 0 0 0 0")
    return "\n".join([*lines, "intr 1 2 3", "ctxt 42"]) + "\n"


def test_busy_cores_counts_only_usable_cpus_and_not_this_process():
    before = stat((100, 100), (100, 100), (100, 100))
    after = stat((200, 100), (150, 150), (100, 200))  # cpu0 fully busy, cpu1 half, cpu2 idle
    assert busy_cores([0, 1, 2], before, after) == pytest.approx(1.5)
    assert busy_cores([1, 2], before, after) == pytest.approx(0.5)  # cpu0 is outside the affinity mask
    # This process's own CPU time in the window is not other work.
    assert busy_cores([0, 1, 2], before, after, own_cpu_seconds=0.05, wall_seconds=0.1) == pytest.approx(1.0)
    assert busy_cores([2], before, after, own_cpu_seconds=0.1, wall_seconds=0.1) == 0.0


@pytest.mark.parametrize("cores,busy,processes,cap,expected", [
    (2, 0.0, 1, None, 2),    # idle machine: every core
    (2, 1.0, 1, None, 1),    # one of two busy (`yes > /dev/null &`): one thread
    (2, 0.4, 1, None, 2),    # a core counts as busy from half use on
    (2, 0.6, 1, None, 1),
    (2, 2.0, 1, None, 1),    # never below one
    (2, None, 1, None, 2),   # busy unknown (no /proc/stat): all usable cores
    (16, 3.0, 4, None, 3),   # 13 free cores shared by 4 torchrun processes
    (16, 0.0, 1, 4, 4),      # OMP_NUM_THREADS caps the automatic choice
])
def test_auto_threads(cores, busy, processes, cap, expected):
    assert auto_threads(cores, busy, processes, cap) == expected


def test_choose_threads_from_injected_affinity_and_load():
    auto = choose_threads(None, cpus={0, 1}, busy=1.0, cap=None)
    assert auto == Threads(1, 2, 1.0, False)
    assert auto.describe() == "1 thread (threads=null: 2 usable cores, 1.0 busy at start)"
    given = choose_threads(3, key="train.threads", cpus={0, 1}, busy=1.0, cap=None)
    assert given.count == 3 and given.given and given.describe() == "3 threads (train.threads=3)"
    assert choose_threads(None, cpus=range(8), busy=0.0, cap=2).count == 2
    assert [omp_cap(v) for v in (None, "", "4", " 2 ", "0", "x")] == [None, None, 4, 2, None, None]


def test_slow_warning_names_the_setting_only_when_threads_are_the_fix():
    message = slow_warning("training", 4_700, 70_000, "samples/s", 2, key="train.threads")
    assert message is not None and "train.threads=1" in message and "4,700.0 samples/s" in message
    assert slow_warning("training", 4_700, 70_000, "samples/s", 1) is None      # one thread: not the fix
    assert slow_warning("training", 20_000, 70_000, "samples/s", 2) is None     # above a quarter
    assert slow_warning("training", 4_700, float("inf"), "samples/s", 2) is None


def test_synthesis_warning_fires_with_an_injected_slow_measurement():
    cpu = SimpleNamespace(device=torch.device("cpu"))
    message = slow_synthesis_warning(cpu, khz=10.8, wall_seconds=40.0, threads=2, expected_khz=279.0)
    assert message is not None and "synthesis ran at 10.8 kHz with 2 threads" in message and "threads=1" in message
    assert slow_synthesis_warning(cpu, khz=200.0, wall_seconds=40.0, threads=2, expected_khz=279.0) is None
    # A short job, one thread or a GPU is never checked (nothing is measured then).
    assert slow_synthesis_warning(cpu, khz=1.0, wall_seconds=1.0, threads=2) is None
    assert slow_synthesis_warning(cpu, khz=1.0, wall_seconds=40.0, threads=1) is None
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    assert slow_synthesis_warning(gpu, khz=1.0, wall_seconds=40.0, threads=2) is None


def test_training_warning_fires_once_at_the_second_line(caplog):
    calls = []

    def calibrate() -> float:
        calls.append(1)
        return 70_000.0

    check = ThroughputCheck(enabled=True, threads=2, calibrate=calibrate)
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        check.after_line(1_000.0)  # the first line carries one-off costs: not judged
        assert not calls and not caplog.records
        check.after_line(4_700.0)
        check.after_line(4_700.0)
    assert len(calls) == 1 and len(caplog.records) == 1
    assert "train.threads=1" in caplog.records[0].getMessage() and check.message == caplog.records[0].getMessage()
    # Global samples/s of 4 processes are judged per process; one thread is never measured.
    per_process = ThroughputCheck(enabled=True, threads=2, calibrate=lambda: 10_000.0, world=4)
    per_process.after_line(0.0)
    per_process.after_line(8_000.0)
    assert per_process.message is not None and "2,000.0 samples/s per process" in per_process.message
    one = ThroughputCheck(enabled=True, threads=1, calibrate=calibrate)
    one.after_line(1.0)
    one.after_line(1.0)
    assert len(calls) == 1 and one.message is None


def test_start_lines_show_threads(tmp_path: Path):
    # The thread line comes before any work, so a run that then fails on its input still shows it.
    args = [f"checkpoint={tmp_path / 'none.pt'}", f"input={tmp_path}", f"output_dir={tmp_path / 'out'}"]
    proc = run_script("waveglow-synthesize", *args, check=False)
    first = proc.stderr.splitlines()[0]
    assert first.startswith("waveglow-synthesize: ") and "(threads=null: " in first and "busy at start)" in first
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].startswith("error: ")


def test_training_start_line_shows_threads(tmp_path: Path, corpus_copy):
    root = corpus_copy(6)
    train = run_script("waveglow-train", "data=demo", f"data.root={root}", "model=tiny", "data.segment_length=4096",
                    "train.batch_size=1", "train.max_steps=1", "train.val_max_clips=1", "train.audio_every=0",
                    "train.val_segment_length=4096", "train.device=cpu", "train.threads=1",
                    f"run_dir={tmp_path / 'run'}", timeout=240)
    start = [line for line in train.stderr.splitlines() if line.startswith("run ")]
    assert start and "fp32 on cpu, 1 thread (train.threads=1)" in start[0], train.stderr
