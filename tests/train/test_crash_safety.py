"""Crash safety of `waveglow-train` (real subprocesses, CPU, deterministic mode).

* SIGKILL at random points — between steps, in validation, and while a checkpoint is being
  written — then resume: the final state equals an uninterrupted run bit for bit, and every
  checkpoint on disk is readable after every kill.
* SIGTERM (real process) and SIGINT (in process) write a final last.pt and exit 143 / 130;
  resuming is exact.
* A checkpoint write that fails (file size limit standing in for a full disk; a read-only
  checkpoints directory) stops training with one clear line and leaves last.pt intact.

Kills during a write run tests/train/train_slow_save.py: `train` with a TrainHooks.write_checkpoint
that pauses each checkpoint write halfway through its temp file and prints `checkpoint write
in progress`. The kill points are random; WAVEGLOW_KILL_SEED=<int> replays a particular sequence.
"""

from __future__ import annotations

import ctypes
import os
import queue
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import assert_same_state, compose, copy_demo_corpus
from conftest import load_state as load

from waveglow.checkpoint import load_checkpoint
from waveglow.data import load_stats
from waveglow.train import TrainHooks, TrainingError, train

REPO = Path(__file__).resolve().parents[2]
SLOW_SAVE = Path(__file__).resolve().parent / "train_slow_save.py"
BIN = Path(sys.executable).parent
KILL_SEED = int(os.environ.get("WAVEGLOW_KILL_SEED", "1234"))


def overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    """A tiny deterministic run: 2 × 4096-sample batches, single-threaded, log every step."""
    return [
        "data=demo", f"data.root={root}", "model=tiny", "model.upsample_kernel=256",
        "data.segment_length=4096", "train.batch_size=2", "train.log_every=1", "train.audio_every=0",
        "train.logdet_every=0", "train.val_segment_length=4096", "train.deterministic=true",
        "train.threads=1", "train.device=cpu", "train.checkpoint_every=2", "train.keep_checkpoints=2",
        "train.val_every=4",
        f"run_dir={run_dir}", *extra,
    ]


def reference(root: Path, run_dir: Path, *extra: str) -> dict:
    """Uninterrupted in-process run; returns its last.pt."""
    cfg = compose("waveglow_train", *overrides(root, run_dir, *extra))
    assert train(cfg).exit_code == 0
    return load(run_dir / "checkpoints/last.pt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("crash") / "corpus")
    load_stats(compose("waveglow_train", *overrides(root, root / "x")), progress=False)
    return root


def assert_checkpoints_readable(run_dir: Path) -> list[int]:
    """Every *.pt under checkpoints/ loads safely; returns their steps."""
    steps = []
    for path in sorted((run_dir / "checkpoints").glob("*.pt")):
        steps.append(load_checkpoint(path)["step"])
        load(path)  # and with plain torch.load(weights_only=True)
    return steps


class Run:
    """`waveglow-train` in a subprocess, its merged output read line by line.

    With `slow_save` (seconds), tests/train/train_slow_save.py instead: each checkpoint write pauses
    halfway through its temp file.
    """

    def __init__(self, args: list[str], slow_save: float | None = None, preexec_fn=None,
                 env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
        command = ([sys.executable, str(SLOW_SAVE), str(slow_save)] if slow_save is not None
                   else [str(BIN / "waveglow-train")])
        self.proc = subprocess.Popen([*command, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, env=full_env,
                                     cwd=REPO, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.queue.put(line.rstrip("\n"))
        self.queue.put(None)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> str | None:
        """The first new line matching `pattern`; None if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return None
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        self.proc.kill()
        pytest.fail(f"no line matching {pattern!r} within {timeout} s:\n{self.output}")

    def finish(self, timeout: float = 180) -> int:
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        while not self.queue.empty():
            line = self.queue.get()
            if line is not None:
                self.lines.append(line)
        return code

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.finish()


def last_step(run_dir: Path) -> int:
    path = run_dir / "checkpoints/last.pt"
    return load(path)["step"] if path.is_file() else 0


def kill_and_resume(corpus: Path, tmp_path: Path, n_steps: int, n_random: int, seed: int,
                    first_write: bool = False) -> list[str]:
    """Interrupt one run again and again, resuming each time; compare its end with an
    uninterrupted run. Interruptions, in order: SIGKILL during the very first checkpoint write
    (no last.pt yet; if `first_write`), SIGKILL during a later write, then SIGTERM and
    `n_random` SIGKILLs at random steps (one per stretch of the run, after a random delay:
    mid-step, mid-validation or mid-save). Returns the interruptions survived."""
    rng = random.Random(seed)
    ref = reference(corpus, tmp_path / "ref", f"train.max_steps={n_steps}")
    run_dir = tmp_path / "killed"
    args = overrides(corpus, run_dir, f"train.max_steps={n_steps}")
    done: list[str] = []
    for when in ("first write", "later write")[0 if first_write else 1:]:
        start = last_step(run_dir)
        run = Run(args, slow_save=0.5)
        if when == "later write":
            assert run.wait_for(r"^step \d+/") is not None, run.output
        assert run.wait_for("checkpoint write in progress") is not None, run.output
        time.sleep(rng.uniform(0.0, 0.3))
        assert run.kill() == -signal.SIGKILL
        assert list((run_dir / "checkpoints").glob(".*.tmp")), f"killed outside a write?\n{run.output}"
        assert_checkpoints_readable(run_dir)
        assert last_step(run_dir) == start  # the interrupted write left last.pt as it was
        done.append(f"SIGKILL during {when}")
    # Random points: one per stretch of the remaining steps, SIGTERM first.
    signals = [signal.SIGTERM] + [signal.SIGKILL] * n_random
    bounds = [1 + i * (n_steps - 2) // len(signals) for i in range(len(signals) + 1)]
    for sig, lo, hi in zip(signals, bounds[:-1], bounds[1:]):
        start = last_step(run_dir)
        target = max(rng.randint(lo, max(lo, hi - 1)), start + 1)
        run = Run(args)
        assert run.wait_for(rf"^step {target}/") is not None, run.output
        if sig == signal.SIGKILL:
            time.sleep(rng.uniform(0.0, 0.4))
        run.proc.send_signal(sig)
        code = run.finish()
        if code == 0:  # it had already finished: not an interruption
            continue
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL, run.output
        else:  # the step in flight finishes, last.pt gets it, exit 128 + signal number
            assert code == 128 + sig, run.output
            stopped = last_step(run_dir)
            assert stopped >= target
            assert f"{sig.name}: {run_dir / 'checkpoints' / 'last.pt'} holds step {stopped}" in run.output
            assert "Traceback" not in run.output
        steps = assert_checkpoints_readable(run_dir)
        assert last_step(run_dir) in steps
        done.append(f"{sig.name} after step {target}")
    run = Run(args)
    assert run.finish() == 0, run.output
    assert not list((run_dir / "checkpoints").glob(".*.tmp")), "stale temp files were not removed"
    assert_checkpoints_readable(run_dir)
    assert_same_state(ref, load(run_dir / "checkpoints/last.pt"), f"seed {seed}: {done}")
    print(f"survived (seed {seed}): {', '.join(done)}")
    return done


@pytest.mark.slow  # ~70 s: three killed runs and a SIGTERM, each resumed
def test_kills_and_sigterm_then_resume_is_exact(corpus, tmp_path):
    done = kill_and_resume(corpus, tmp_path, n_steps=12, n_random=4, seed=KILL_SEED)
    assert sum("SIGKILL" in d for d in done) >= 5 and any("SIGTERM" in d for d in done)


@pytest.mark.slow
def test_kills_at_many_points(corpus, tmp_path):
    done = kill_and_resume(corpus, tmp_path, n_steps=30, n_random=12, seed=KILL_SEED + 1, first_write=True)
    assert sum("SIGKILL" in d for d in done) >= 12


def test_sigint_in_process_writes_last_pt_and_resumes_exactly(corpus, tmp_path):
    """Ctrl-C (SIGINT) mid-run: the step in flight finishes, last.pt gets it, exit code 130."""
    ref = reference(corpus, tmp_path / "ref", "train.max_steps=6")

    def interrupt(trainer, batch):
        if trainer.state.step == 2:
            os.kill(os.getpid(), signal.SIGINT)

    # What the handler was before (SIG_IGN when the suite runs as a background job, where the
    # shell ignores SIGINT; Python's default_int_handler otherwise): training must restore it.
    handler_before = signal.getsignal(signal.SIGINT)

    cfg = compose("waveglow_train", *overrides(corpus, tmp_path / "run", "train.max_steps=6"))
    result = train(cfg, TrainHooks(before_step=interrupt))
    assert result.exit_code == 130 and result.step == 3
    assert load(tmp_path / "run/checkpoints/last.pt")["step"] == 3
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    assert train(cfg).exit_code == 0
    assert_same_state(ref, load(tmp_path / "run/checkpoints/last.pt"))


def _prepared_run(corpus: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A run stopped at step 4 with a last.pt (and its bytes, to prove it is untouched)."""
    run_dir = tmp_path / "run"
    reference(corpus, run_dir, "train.max_steps=4")
    last = run_dir / "checkpoints/last.pt"
    return run_dir, {"bytes": last.read_bytes(), "size": last.stat().st_size}


def _check_failed_write(run: Run, run_dir: Path, before: dict, reason: str) -> None:
    assert run.finish() == 1, run.output
    errors = [line for line in run.lines if line.startswith("error:")]
    assert len(errors) == 1 and reason in errors[0], run.output
    assert "last.pt still holds the previous state" in errors[0]
    assert "Traceback" not in run.output
    assert (run_dir / "checkpoints/last.pt").read_bytes() == before["bytes"]
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["step"] == 4
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def test_disk_full_during_checkpoint_write_keeps_last_pt(corpus, tmp_path):
    """In process, a file-size limit below a checkpoint's size: the write fails halfway through
    with EFBIG, as it would with ENOSPC on a full disk."""
    run_dir, before = _prepared_run(corpus, tmp_path)
    cfg = compose("waveglow_train", *overrides(corpus, run_dir, "train.max_steps=8"))
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of dying
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (before["size"] // 2, hard))
    try:
        with pytest.raises(TrainingError) as info:
            train(cfg)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    message = str(info.value)
    assert message.startswith("could not write checkpoint") and "File too large" in message
    assert "last.pt still holds the previous state" in message and "stopped at step 6" in message
    assert (run_dir / "checkpoints/last.pt").read_bytes() == before["bytes"]
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))


def _drop_file_override_capabilities() -> None:
    """In the child: root loses the capabilities that ignore file permissions."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_read_only_checkpoints_dir_keeps_last_pt(corpus, tmp_path):
    run_dir, before = _prepared_run(corpus, tmp_path)
    ckpt_dir = run_dir / "checkpoints"
    preexec = None
    if os.geteuid() == 0:
        try:
            subprocess.run(["true"], preexec_fn=_drop_file_override_capabilities, check=True)
        except (OSError, subprocess.SubprocessError):
            pytest.skip("running as root without the right to drop CAP_DAC_OVERRIDE")
        preexec = _drop_file_override_capabilities
    ckpt_dir.chmod(0o555)
    try:
        run = Run(overrides(corpus, run_dir, "train.max_steps=8"), preexec_fn=preexec)
        _check_failed_write(run, run_dir, before, "Permission denied")
    finally:
        ckpt_dir.chmod(0o755)
