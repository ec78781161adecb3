"""DistributedDataParallel on CPU: `torchrun --nproc_per_node=2 waveglow-train` (gloo) builds a
missing feature cache on rank 0 while rank 1 waits, keeps the ranks identical with gradient
accumulation (DDP synchronizes on the last micro-batch), and matches a single process with the
same global batch; rank 0's failures reach every rank at once; `train.device=cuda:N` with several
processes is refused. The CPU only: no rank ever selects a GPU."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import compose, copy_demo_corpus

from waveglow.data import load_stats
from waveglow.errors import UserError
from waveglow.train import train
from waveglow.train.distributed import PREPARE_TIMEOUT, DistContext

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def overrides(root: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "data=demo", f"data.root={root}", "model=tiny", "model.upsample_kernel=256",
        "data.segment_length=4096", "train.log_every=1", "train.audio_every=0", "train.logdet_every=0",
        "train.val_segment_length=4096", "train.deterministic=true", "train.threads=1", "train.device=cpu",
        "train.checkpoint_every=2", "train.val_every=2", "train.max_steps=4", f"run_dir={run_dir}", *extra,
    ]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("ddp") / "corpus")
    load_stats(compose("waveglow_train", *overrides(root, root / "x")), progress=False)
    return root


def torchrun(nproc: int, args: list[str]) -> subprocess.CompletedProcess:
    exe = BIN / "torchrun"
    if not exe.exists():
        pytest.skip(f"torchrun is not installed in {BIN}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([str(exe), "--standalone", f"--nproc_per_node={nproc}", str(BIN / "waveglow-train"),
                           *args], capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    return proc


def test_two_gloo_ranks_stay_identical_and_match_one_process(demo_root, tmp_path):
    corpus = copy_demo_corpus(demo_root, tmp_path / "corpus")  # no feature cache yet
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    proc = torchrun(2, overrides(corpus, ddp_dir, "train.batch_size=1", "train.grad_accum=2"))
    log = proc.stdout + proc.stderr
    assert log.count("preprocessing the corpus") == 1  # rank 0 alone, before the others read it
    # Every rank ends with rank 0's parameters exactly (checked by the trainer at the end).
    assert "ranks in sync: max |parameter difference| over 2 processes = 0" in log
    assert "× 2 processes, global batch 4 (2 micro-batches of 1 per process) × 4096 samples" in log
    train(compose("waveglow_train", *overrides(corpus, single_dir, "train.batch_size=4")))

    ddp = torch.load(ddp_dir / "checkpoints/last.pt", weights_only=True)
    single = torch.load(single_dir / "checkpoints/last.pt", weights_only=True)
    assert ddp["step"] == single["step"] == 4
    # Same examples per global batch; only the order of float sums differs.
    for k, v in single["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    val = [m["val_log_likelihood"] for m in (ddp["metrics"], single["metrics"])]
    assert val[0] == pytest.approx(val[1], abs=1e-5)
    # Rank-specific RNG states and the sampler position of a 2-process run are saved.
    assert len(ddp["rng"]["per_rank"]) == 2
    assert not torch.equal(ddp["rng"]["per_rank"][0]["torch"], ddp["rng"]["per_rank"][1]["torch"])
    assert ddp["sampler"]["world_size"] == 2 and ddp["sampler"]["batch_size"] == 2
    # Rank 0 alone writes: one event file, one metrics line per validation.
    assert len(list(ddp_dir.glob("events.out.tfevents.*"))) == 1
    assert len((ddp_dir / "metrics.jsonl").read_text().splitlines()) == 3  # steps 0, 2, 4


@pytest.mark.slow
def test_ddp_resume_is_exact(corpus, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    torchrun(2, overrides(corpus, full, "train.batch_size=1", "train.max_steps=6"))
    torchrun(2, overrides(corpus, split, "train.batch_size=1", "train.max_steps=3"))
    torchrun(2, overrides(corpus, split, "train.batch_size=1", "train.max_steps=6"))
    a = torch.load(full / "checkpoints/last.pt", weights_only=True)
    b = torch.load(split / "checkpoints/last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    differ = {k: float((a["model"][k] - b["model"][k]).abs().max()) for k in a["model"]
              if not torch.equal(a["model"][k], b["model"][k])}
    assert not differ, differ


def _rank0_first_worker(rank: int, init_file: str, results) -> None:  # noqa: ANN001
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ctx = DistContext(2, rank, rank, torch.device("cpu"), local_world=2)
    ctx.prepare_group = torch.distributed.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
    failures = {"ok": None, "bug": RuntimeError("disk on fire"), "user": UserError("data.root=/x: no clips"),
                "interrupt": KeyboardInterrupt()}
    out = []
    for name, failure in failures.items():
        def fn(failure=failure, name=name):  # noqa: ANN001, ANN202
            if rank == 0 and failure is not None:
                raise failure
            return f"{name} on rank {rank}"

        t0 = time.monotonic()
        try:
            out.append((name, "returned", ctx.rank0_first(fn)))
        except BaseException as e:  # noqa: BLE001 - the outcome is what the test checks
            out.append((name, type(e).__name__, str(e)))
        out[-1] += (time.monotonic() - t0,)
    results.put((rank, out))
    ctx.close()
    torch.distributed.destroy_process_group()


def test_any_failure_of_rank_0_in_rank0_first_ends_every_rank_with_its_message(tmp_path):
    """Two gloo processes waiting on the preprocessing group (12 h timeout): whatever stops rank 0
    (a bug, a UserError, Ctrl-C), rank 1 stops at once with rank 0's message."""
    results = mp.get_context("fork").SimpleQueue()
    procs = mp.start_processes(_rank0_first_worker, args=(str(tmp_path / "init"), results), nprocs=2,
                               start_method="fork", join=False)
    deadline = time.monotonic() + 120
    while not procs.join(timeout=1):
        if time.monotonic() > deadline:
            for p in procs.processes:
                p.kill()
            pytest.fail("a rank still waits for rank 0 after 120 s")
    outcome = dict(results.get() for _ in range(2))
    assert [o[:3] for o in outcome[0]] == [
        ("ok", "returned", "ok on rank 0"), ("bug", "RuntimeError", "disk on fire"),
        ("user", "UserError", "data.root=/x: no clips"), ("interrupt", "KeyboardInterrupt", "")]
    assert [o[:3] for o in outcome[1]] == [
        ("ok", "returned", "ok on rank 1"), ("bug", "TrainingError", "rank 0 failed: RuntimeError: disk on fire"),
        ("user", "UserError", "data.root=/x: no clips"), ("interrupt", "TrainingError", "rank 0 failed: KeyboardInterrupt")]
    # Rank 1 was not left waiting (the old behaviour: up to PREPARE_TIMEOUT, 12 hours).
    assert max(o[3] for o in outcome[1]) < 60


def test_cuda_n_with_several_processes_is_refused_before_any_collective():
    """train.device=cuda:1 under torchrun (or SLURM) would put every rank on GPU 1."""
    for env in ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
                {"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "9",
                 "SLURM_STEP_NODELIST": "n1"}):
        with pytest.raises(UserError, match=r"^train.device=cuda:1: with 2 processes each one takes the GPU of its "
                                            r"local rank; use train.device=cuda or auto"):
            DistContext.from_env("cuda:1", env)
    assert not torch.distributed.is_initialized()
