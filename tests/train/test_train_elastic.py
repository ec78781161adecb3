"""Elastic restarts resume: `torchrun --max-restarts=1` of a run with the default run directory
(`run_dir=null`), one worker SIGKILLed after a checkpoint. torchrun restarts both workers; they
find the same run directory (named after torchrun's rendezvous id), resume from last.pt, and
end with the weights of an uninterrupted run, bit for bit (deterministic CPU, gloo)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose, copy_demo_corpus
from tiny_runs import tiny_cpu_run

from waveglow.data import load_stats
from waveglow.train.launch import read_launch
from waveglow.train.lock import LOCK_NAME

BIN = Path(sys.executable).parent
MAX_STEPS = 10


def overrides(root: Path, *extra: str) -> list[str]:
    return tiny_cpu_run(root, "train.val_every=100000", f"train.max_steps={MAX_STEPS}", *extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("elastic") / "corpus")
    load_stats(compose("waveglow_train", *overrides(root)), progress=False)
    return root


def torchrun(torchrun_args: list[str], args: list[str], cwd: Path) -> subprocess.Popen:
    exe = BIN / "torchrun"
    if not exe.exists():
        pytest.skip(f"torchrun is not installed in {BIN}")
    # Only torchrun's own variables: no SLURM job to name the run after. The README's setting for
    # elastic runs: without it, torch's shared rendezvous store hands the restarted workers the
    # dead workers' addresses (seen here on torch 2.13: the restart fails to connect).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
    return subprocess.Popen([str(exe), "--standalone", "--nproc_per_node=2", *torchrun_args,
                             str(BIN / "waveglow-train"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)


def test_restarts_on_a_shared_rendezvous_store_are_flagged():
    """What torchrun gives its workers with --max-restarts=1, with and without the setting."""
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "r",
           "TORCHELASTIC_MAX_RESTARTS": "1", "TORCHELASTIC_RESTART_COUNT": "0"}
    assert read_launch({**env, "TORCHELASTIC_USE_AGENT_STORE": "True"}).stale_restarts
    assert not read_launch({**env, "TORCHELASTIC_USE_AGENT_STORE": "False"}).stale_restarts
    assert not read_launch({**env, "TORCHELASTIC_USE_AGENT_STORE": "True", "TORCHELASTIC_MAX_RESTARTS": "0"}
                           ).stale_restarts


@pytest.mark.slow  # two 2-process runs of 10 steps and a restart: ~4 min on the 2 shared cores here
def test_a_killed_worker_is_restarted_by_torchrun_and_the_run_resumes_exactly(corpus, tmp_path):
    reference = torchrun([], overrides(corpus, f"run_dir={tmp_path / 'reference'}"), tmp_path)
    out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, out

    work = tmp_path / "elastic"
    work.mkdir()
    elastic = torchrun(["--max-restarts=1"], overrides(corpus), work)
    lines, killed = [], None
    for line in elastic.stdout:
        lines.append(line)
        if killed is None and re.match(r"step [3-9]/", line):
            # last.pt holds step 2; rank 0 (the process holding the run directory's lock) dies.
            (run_dir,) = (work / "checkpoints").iterdir()
            killed = int(re.match(r"pid (\d+) ", (run_dir / LOCK_NAME).read_text()).group(1))
            os.kill(killed, signal.SIGKILL)
    log = "".join(lines)
    assert elastic.wait(timeout=600) == 0, log
    assert killed is not None, log
    # One run directory, named after torchrun's rendezvous id, resumed after the restart.
    (run_dir,) = (work / "checkpoints").iterdir()
    assert run_dir.name.startswith("demo-tiny-torchrun-"), run_dir
    resumed = re.findall(r"resuming (\S+) at step (\d+)", log)
    assert len(resumed) == 1 and resumed[0][0] == str(Path("checkpoints", run_dir.name, "checkpoints/last.pt")), log
    assert 2 <= int(resumed[0][1]) < MAX_STEPS
    assert "ranks in sync: max |parameter difference| over 2 processes = 0" in log
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in log  # no warning: the setting is there

    a = torch.load(tmp_path / "reference/checkpoints/last.pt", weights_only=True)
    b = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert a["step"] == b["step"] == MAX_STEPS
    differ = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not differ, differ
    for k in a["optimizer"]["state"]:
        for name, value in a["optimizer"]["state"][k].items():
            assert torch.equal(value, b["optimizer"]["state"][k][name]), (k, name)
