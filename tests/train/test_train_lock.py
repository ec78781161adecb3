"""The run-directory lock lives exactly as long as the trainer: children it forks (DataLoader
workers) do not keep it, so a restart right after a SIGKILL is accepted even while a worker is
still alive (or hung); and a run directory where the lock file cannot be opened is one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import compose, copy_demo_corpus, run_cli, run_script
from test_crash_safety import Run

from waveglow.data import load_stats
from waveglow.errors import UserError
from waveglow.train.lock import LOCK_NAME, RunDirLock


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    """Running or stopped (not gone, not a zombie)."""
    try:
        state = [line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:")]
    except FileNotFoundError:
        return False
    return bool(state) and "Z" not in state[0].split()[1]


def acquire_now(run_dir: Path) -> None:
    """Take the lock as a restart would (raises UserError if it is held), then let it go."""
    lock = RunDirLock(run_dir)
    lock.acquire()
    lock.release()


HOLDER = textwrap.dedent("""
    import multiprocessing, sys, time
    from waveglow.train.lock import RunDirLock
    lock = RunDirLock(sys.argv[1])
    lock.acquire()
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    child.start()
    print(child.pid, flush=True)
    time.sleep(120)
""")


def test_a_forked_child_does_not_keep_the_lock_of_a_killed_parent(tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True,
                              cwd=tmp_path)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(UserError, match=f"another waveglow-train \\(pid {holder.pid} on "):
            acquire_now(run_dir)  # held while its process lives
        holder.kill()
        holder.wait(timeout=30)
        assert alive(child)  # the forked child outlives its parent...
        acquire_now(run_dir)  # ...and holds nothing
    finally:
        os.kill(child, signal.SIGKILL)


def overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "data=demo", f"data.root={root}", "model=tiny", "model.upsample_kernel=256", "data.segment_length=4096",
        "train.batch_size=2", "train.log_every=1", "train.audio_every=0", "train.logdet_every=0",
        "train.val_segment_length=4096", "train.val_max_clips=2", "train.threads=1", "train.device=cpu",
        "train.val_every=100000", "train.checkpoint_every=2", f"run_dir={run_dir}", *extra,
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("lock") / "corpus")
    load_stats(compose("waveglow_train", *overrides(root, root / "x")), progress=False)
    return root


@pytest.mark.slow  # two trainer starts with two workers each: 60-75 s on the 2 shared cores here
def test_a_restart_after_sigkill_is_accepted_while_the_loader_workers_live_on(corpus, tmp_path):
    """data.loader_workers=2: kill the trainer and leave its two workers stopped (a hung worker
    never exits); a restart at once takes the lock and resumes."""
    run_dir = tmp_path / "run"
    first = Run(overrides(corpus, run_dir, "train.max_steps=100000", "data.loader_workers=2"))
    assert first.wait_for(r"^data loading: 2 DataLoader worker\(s\) per process") is not None, first.output
    assert first.wait_for(r"^step 3/") is not None, first.output
    pid = first.proc.pid
    os.kill(pid, signal.SIGSTOP)  # freeze it, so its workers cannot change under us
    workers = children(pid)
    try:
        assert len(workers) == 2, workers
        for w in workers:
            os.kill(w, signal.SIGSTOP)
        assert first.kill() == -signal.SIGKILL
        assert all(alive(w) for w in workers)
        acquire_now(run_dir)
        saved = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"]
        # The restart takes the lock and resumes (to the step it was killed at: nothing to train).
        again = run_cli("waveglow-train", *overrides(corpus, run_dir, f"train.max_steps={saved}",
                                                     "data.loader_workers=2"), check=False, timeout=300)
        assert again.returncode == 0, again.stderr
        assert f"resuming {run_dir / 'checkpoints/last.pt'} at step {saved}" in again.stderr
        assert "nothing to do" in again.stderr
        assert all(alive(w) for w in workers)  # the restart really ran beside them
    finally:
        for w in workers:
            os.kill(w, signal.SIGKILL)


def test_a_run_dir_whose_lock_file_cannot_be_opened_is_one_line(corpus, tmp_path):
    """What really stops a root process too: the lock's name taken by a folder, a run directory
    in a file system that creates no files (/proc), a run directory under a regular file."""
    taken = tmp_path / "taken"
    (taken / LOCK_NAME).mkdir(parents=True)
    with pytest.raises(UserError, match=rf"^run_dir={taken}: cannot open its lock file {LOCK_NAME} \(Is a directory\)"):
        acquire_now(taken)
    if Path("/proc/self").is_dir():
        with pytest.raises(UserError, match=r"^run_dir=/proc/\d+: cannot open its lock file"):
            acquire_now(Path(f"/proc/{os.getpid()}"))
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(UserError, match=rf"^run_dir={blocker / 'run'}: cannot create the run directory"):
        acquire_now(blocker / "run")

    proc = run_script("waveglow-train", *overrides(corpus, taken, "train.max_steps=1"), check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: run_dir={taken}: cannot open its lock file {LOCK_NAME} (Is a directory); expected a "
                      "run directory this process can write to"], proc.stderr
    assert sorted(p.name for p in taken.iterdir()) == [LOCK_NAME]  # nothing written
