"""Training inside a SLURM job without torchrun: the launcher's variables read in one place
(`waveglow.train.launch`), a job step of 2 tasks trains with DDP (faked: two real
`waveglow-train` processes on this machine with SLURM_* set, gloo), and the default run
directory is named after the job, so a requeued job resumes it."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch
from conftest import compose, copy_demo_corpus
from tiny_runs import tiny_cpu_run

from waveglow.data import load_stats
from waveglow.errors import UserError
from waveglow.train.launch import (
    PORT_BASE,
    PORT_SPAN,
    Launch,
    first_host,
    read_launch,
    tasks_per_node,
)
from waveglow.train.rundir import default_run_dir

BIN = Path(sys.executable).parent
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "TORCHELASTIC_RUN_ID")


def test_first_host_of_slurm_host_lists():
    assert first_host("node[01-03,07]") == "node01"
    assert first_host("gpu-a[3,5],gpu-b1") == "gpu-a3"
    assert first_host("rack[2-3]-n[08-09]") == "rack2-n08"
    assert first_host("10.0.0.[5-6]") == "10.0.0.5"
    assert first_host("single") == "single"
    assert first_host("alpha,beta[1-2]") == "alpha"
    for bad in ("node[01-03", "node]1", ""):
        with pytest.raises(UserError, match="SLURM node list"):
            first_host(bad)


def test_tasks_per_node_lists():
    assert tasks_per_node("8(x2)") == [8, 8]
    assert tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert tasks_per_node("4") == [4]
    with pytest.raises(UserError, match="expected a list like 2\\(x3\\),1"):
        tasks_per_node("2x3")


SLURM_STEP = {  # rank 11 of a 2-node x 8-GPU job step (srun), as SLURM sets it
    "SLURM_JOB_ID": "123456", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "11",
    "SLURM_LOCALID": "3", "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
    "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]",
}


def test_a_slurm_job_step_is_read_as_ddp_ranks():
    launch = read_launch(SLURM_STEP)
    port = PORT_BASE + 123456 % PORT_SPAN
    assert launch == Launch(world=16, rank=11, local_rank=3, local_world=8, launcher="slurm",
                            init_method=f"tcp://gpu07:{port}", run_id="slurm123456", multi_node=True)
    # Set by the user, MASTER_ADDR / MASTER_PORT win.
    custom = read_launch({**SLURM_STEP, "MASTER_ADDR": "head", "MASTER_PORT": "29400"})
    assert custom.init_method == "tcp://head:29400"
    # One node: not multi-node.
    one = read_launch({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_NODEID": "0",
                       "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_STEP_NODELIST": "gpu07"})
    assert (one.world, one.rank, one.local_world, one.multi_node) == (2, 1, 2, False)
    with pytest.raises(UserError, match=r"SLURM_PROCID=x: expected an integer"):
        read_launch({**SLURM_STEP, "SLURM_PROCID": "x"})


def test_torchrun_wins_inside_a_slurm_job_and_the_job_names_the_run():
    env = {**SLURM_STEP, "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "5", "LOCAL_WORLD_SIZE": "8",
           "TORCHELASTIC_RUN_ID": "abc"}
    launch = read_launch(env)
    assert (launch.launcher, launch.world, launch.rank, launch.init_method) == ("torchrun", 8, 5, "env://")
    # The job id outlives a torchrun restarted by a requeue (its rendezvous id would change).
    assert launch.run_id == "slurm123456"
    alone = {k: v for k, v in env.items() if not k.startswith("SLURM")}
    assert read_launch(alone).run_id == "torchrun-abc"
    assert read_launch({**alone, "TORCHELASTIC_RUN_ID": "none"}).run_id == ""
    array = read_launch({"SLURM_JOB_ID": "90", "SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "3"})
    assert array.run_id == "slurm77_3" and array.world == 1


def test_a_batch_shell_or_a_one_task_step_trains_alone(caplog):
    """The batch script itself (no job step) sees SLURM_NTASKS of the whole job but is one
    process: waiting for the other tasks would hang, so it trains alone and says how to start
    one process per task."""
    batch = {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n[1-2]"}
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        launch = read_launch(batch)
    assert (launch.world, launch.launcher, launch.run_id) == (1, "", "slurm5")
    assert "SLURM_NTASKS=4 but this process is not one task of a job step" in caplog.text
    assert "srun waveglow-train" in caplog.text
    one = read_launch({**batch, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"})
    assert (one.world, one.launcher) == (1, "")
    assert read_launch({}) == Launch()


def test_the_default_run_dir_is_stable_under_a_launcher():
    when = datetime(2026, 1, 2, 3, 4, 5)
    assert default_run_dir("demo", "tiny", Launch(run_id="slurm7"), when) == Path("checkpoints/demo-tiny-slurm7")
    assert default_run_dir("demo", "tiny", Launch(world=2, local_world=2), when) == Path(
        "checkpoints/demo-tiny-20260102-030405")
    with pytest.raises(UserError, match=r"^run_dir: a run over several machines \(16 processes\) needs run_dir="):
        default_run_dir("demo", "tiny", Launch(world=16, local_world=8, multi_node=True), when)
    multi = read_launch({k: v for k, v in SLURM_STEP.items() if k != "SLURM_JOB_ID"})
    with pytest.raises(UserError, match="needs run_dir"):
        default_run_dir("demo", "tiny", multi, when)


# ------------------------------------------------------------------------ real processes
def overrides(root: Path, *extra: str) -> list[str]:
    """A tiny deterministic CPU run; no run_dir (the default is under the working directory)."""
    return tiny_cpu_run(root, "train.val_every=2", *extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("slurm") / "corpus")
    load_stats(compose("waveglow_train", *overrides(root)), progress=False)
    return root


def slurm_env(job_id: str, **variables: str) -> dict[str, str]:
    """This process's environment without any launcher's variables, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": job_id, **variables}


def start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "waveglow-train"), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=cwd)


def test_two_slurm_tasks_train_with_ddp_without_torchrun(corpus, tmp_path):
    """`srun --ntasks=2 waveglow-train ...` on one node, faked: two processes with the variables
    SLURM gives each task. They meet at the first host of the node list (here a loopback
    address in SLURM's compressed form) on the job's port, train as ranks 0 and 1, end with
    identical parameters, and rank 0 alone writes, into the job's default run directory."""
    job = str(random.randrange(10**6, 10**7))  # its port: a fresh one per test run
    step = {"SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "2",
            "SLURM_STEP_NODELIST": "127.0.0.[1-2]", "SLURM_JOB_NODELIST": "127.0.0.[1-2]"}
    procs = [start(overrides(corpus, "train.max_steps=2"),
                   slurm_env(job, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), **step), tmp_path)
             for rank in (0, 1)]
    outputs = []
    for proc in procs:
        try:
            outputs.append(proc.communicate(timeout=300)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the two SLURM tasks did not finish within 300 s")
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(outputs)
    rank0, rank1 = outputs
    port = PORT_BASE + int(job) % PORT_SPAN
    assert f"DDP from the SLURM environment: 2 tasks (2 on this node), rendezvous tcp://127.0.0.1:{port}" in rank0
    assert "× 2 processes, global batch 2 × 4096 samples" in rank0
    # The ranks agree: the trainer compares every parameter with rank 0's at the end.
    assert "ranks in sync: max |parameter difference| over 2 processes = 0" in rank0
    assert "error" not in rank1.lower() and "Traceback" not in rank1
    run_dir = tmp_path / "checkpoints" / f"demo-tiny-slurm{job}"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [run_dir.name]
    last = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
    assert last["step"] == 2 and last["sampler"]["world_size"] == 2 and len(last["rng"]["per_rank"]) == 2
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes


@pytest.mark.slow  # two trainer starts: 50-80 s on the 2 shared cores here
def test_a_preempted_job_writes_last_pt_exits_143_and_its_requeue_resumes(corpus, tmp_path):
    """SLURM preempts (or reaches the time limit of) a job with SIGTERM: the step in flight
    ends, last.pt is written and the status is 143, which the README's batch script requeues
    on. The requeued job (same job id, run_dir=null) finds the same run directory and resumes."""
    env = slurm_env(str(random.randrange(10**6, 10**7)))
    first = start(overrides(corpus, "train.max_steps=100000"), env, tmp_path)
    lines = []
    for line in first.stdout:
        lines.append(line)
        if line.startswith("step 3/"):
            first.send_signal(signal.SIGTERM)
            break
    lines += first.stdout.read().splitlines(keepends=True)
    assert first.wait(timeout=120) == 143, "".join(lines)
    run_dir = tmp_path / "checkpoints" / f"demo-tiny-slurm{env['SLURM_JOB_ID']}"
    saved = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"]
    assert saved >= 3
    assert f"SIGTERM: {run_dir.relative_to(tmp_path) / 'checkpoints/last.pt'} holds step {saved}" in "".join(lines)

    again = start(overrides(corpus, f"train.max_steps={saved + 1}"), env, tmp_path)
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    assert f"resuming {run_dir.relative_to(tmp_path) / 'checkpoints/last.pt'} at step {saved}" in out
    assert torch.load(run_dir / "checkpoints/last.pt", weights_only=True)["step"] == saved + 1
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1


def test_a_slurm_task_that_sees_one_gpu_takes_it(monkeypatch):
    """--gpus-per-task=1 gives each task its own single visible GPU (cuda:0 in every task); with
    all of a node's GPUs visible, each task takes the GPU of its local rank."""
    from waveglow.train.distributed import _gpu_index

    launch = read_launch({**SLURM_STEP, "SLURM_LOCALID": "3"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _gpu_index("cuda", launch) == _gpu_index("auto", launch) == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert _gpu_index("cuda", launch) == 3
    torchrun = read_launch({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8"})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _gpu_index("cuda", torchrun) == 3  # torchrun: the local rank (a missing GPU is then named)
