"""`waveglow-train` as a user runs it (real processes): one run per run directory, and a run that
says what it is doing from the first step."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from conftest import compose, copy_demo_corpus, run_script
from test_crash_safety import Run

from waveglow.data import load_stats
from waveglow.train.lock import LOCK_NAME, RunDirLock


def overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny CPU run that logs every step and never validates or checkpoints by itself."""
    return [
        "data=demo", f"data.root={root}", "model=tiny", "model.upsample_kernel=256", "data.segment_length=4096",
        "train.batch_size=2", "train.log_every=1", "train.audio_every=0", "train.logdet_every=0",
        "train.val_segment_length=4096", "train.val_max_clips=2", "train.threads=1", "train.device=cpu",
        "train.val_every=100000",
        "train.checkpoint_every=5", f"run_dir={run_dir}", *extra,
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("console") / "corpus")
    load_stats(compose("waveglow_train", *overrides(root, root / "x")), progress=False)
    return root


def step_of(line: str | None) -> int:
    match = re.match(r"step (\d+)/", line or "")
    assert match, line
    return int(match.group(1))


def test_a_second_run_on_the_same_run_dir_is_refused_and_a_killed_run_leaves_no_lock(corpus, tmp_path):
    run_dir = tmp_path / "run"
    args = overrides(corpus, run_dir, "train.max_steps=100000")
    first = Run(args)
    assert first.wait_for(r"^step 3/") is not None, first.output
    second = run_script("waveglow-train", *args, check=False, timeout=120)
    # Refused at once, with the run directory and the process holding it; nothing written.
    assert second.returncode == 2, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in second.stderr
    assert str(run_dir.absolute()) in errors[0] and f"pid {first.proc.pid} " in errors[0], errors[0]
    # The first keeps training, unaffected.
    reached = step_of(first.wait_for(r"^step \d+/"))
    assert step_of(first.wait_for(rf"^step {reached + 3}/")) == reached + 3
    assert first.proc.poll() is None and "error" not in first.output
    # SIGKILL: the kernel drops the lock with the process (the crash-safety tests resume after
    # such kills with real processes).
    assert first.kill() == -signal.SIGKILL
    lock = RunDirLock(run_dir)
    lock.acquire()
    assert (run_dir / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} ")
    lock.release()
    assert (run_dir / "checkpoints/last.pt").is_file()  # a lock release never removes a run


def test_a_slow_cpu_run_says_where_it_runs_how_slow_it_is_and_reports_by_time(corpus, tmp_path):
    """device=auto on a machine without CUDA (the test suite hides it): the start line names the
    device and precision, a warning gives the measured seconds per step and the ETA of
    max_steps, and progress lines come every `train.progress_seconds` although log_every is
    never reached."""
    run = Run(overrides(corpus, tmp_path / "run", "train.max_steps=50000000", "train.log_every=1000000",
                        "train.progress_seconds=1", "train.device=auto", "train.precision=auto"),
              env={"CUDA_VISIBLE_DEVICES": ""})  # a machine without CUDA, also under --device cuda
    start = run.wait_for(r"^run ")
    # Precision, device, the thread count and the setting that chose it, then why the CPU.
    assert start is not None and ("fp32 on cpu, 1 thread (train.threads=1) (train.device=auto: no CUDA GPU found)"
                                  in start), run.output
    warning = run.wait_for(r"training on the CPU")
    assert warning is not None, run.output
    match = re.search(r"\(train.device=auto found no CUDA GPU\): ([\d.e+-]+) s per step, ETA (.+) for "
                      r"train.max_steps=50000000; use a machine with a CUDA GPU", warning)
    assert match and float(match.group(1)) > 0 and "day" in match.group(2), warning
    lines = [run.wait_for(r"^step \d+/50000000 \|") for _ in range(2)]
    assert all(line is not None and " s/step | " in line and "ETA" in line for line in lines), run.output
    assert step_of(lines[1]) > step_of(lines[0])
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 143, run.output
