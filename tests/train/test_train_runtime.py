"""What a run does to the process and its peers: the global cuDNN/TF32 flags are put back,
validation runs without cuDNN autotuning, ranks that disagree about resuming are refused, and
a local rank without a GPU of its own is a one-line error."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.multiprocessing as mp
from conftest import compose

from waveglow.errors import UserError
from waveglow.runtime import exact_fp32, set_tf32, tf32_switches
from waveglow.train.distributed import DistContext
from waveglow.train.numerics import NumericsState, configure
from waveglow.train.validation import Validator


@pytest.fixture
def saved_flags():
    state = NumericsState.capture()
    yield
    state.restore()


def test_numerics_are_restored_after_a_cuda_configuration(saved_flags):
    """configure() for a CUDA run sets TF32, cuDNN autotuning and determinism globally (the
    flags are plain switches, settable without a GPU); restore() puts every one back."""
    torch.backends.cudnn.benchmark = False
    set_tf32(False)
    before = NumericsState.capture()
    t = compose("waveglow_train", "data=demo", "train.tf32=true", "train.threads=1").train
    configure(t, torch.device("cuda", 0))
    changed = NumericsState.capture()
    assert changed.cudnn_benchmark and tf32_switches() == (True, True) and changed.threads == 1
    before.restore()
    assert NumericsState.capture() == before and tf32_switches() == (False, False)


def test_numerics_use_one_tf32_api(saved_flags):
    """What `make gpu-check` does on torch >= 2.9: TF32 switched on through the fp32_precision
    API (`set_tf32`, as training and `exact_fp32` do), then the run's numerics captured,
    configured and restored. Reading the legacy `allow_tf32` flags at any point of that round
    trip raises ("mix of the legacy and new APIs"); the flags are plain switches, so the CPU
    exercises the same path."""
    set_tf32(True)
    before = NumericsState.capture()  # read the switches after the new API set them
    t = compose("waveglow_train", "data=demo", "train.tf32=false", "train.threads=1").train
    configure(t, torch.device("cuda", 0))
    assert tf32_switches() == (False, False)
    with exact_fp32("cuda"):
        NumericsState.capture()
    before.restore()
    assert tf32_switches() == (True, True) and NumericsState.capture() == before
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # this torch has the new API
        assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "tf32"


class _Recorder(torch.nn.Module):
    """Stands in for the model: records the cuDNN autotuning flag of each log_prob call."""

    def __init__(self) -> None:
        super().__init__()
        self.flags: list[bool] = []

    def log_prob(self, audio, mel):  # noqa: ANN001, ANN201
        self.flags.append(torch.backends.cudnn.benchmark)
        return -audio.pow(2).sum(1)


def test_validation_runs_without_cudnn_autotuning(saved_flags):
    """Clips of different lengths: autotuning is off during validation, back on after it."""
    cfg = compose("waveglow_train", "data=demo")
    val_set = [{"audio": torch.ones(n), "mel": torch.zeros(80, 1 + n // 256)} for n in (2048, 4096, 1024)]
    model = _Recorder()
    validator = Validator(model, val_set, DistContext(1, 0, 0, torch.device("cpu")), cfg, batch_size=2, multiple=8)
    torch.backends.cudnn.benchmark = True
    assert validator.log_likelihood() == pytest.approx(-1.0)
    assert model.flags == [False, False, False] and torch.backends.cudnn.benchmark


def test_a_local_rank_beyond_the_gpus_is_a_clear_error(monkeypatch):
    """torchrun with more processes per node than GPUs: named before any CUDA call or collective."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    with pytest.raises(UserError, match=r"local rank 1: this machine has 1 CUDA device\(s\)"):
        DistContext.from_env("auto", env)


def _agree_worker(rank: int, init_file: str, results) -> None:  # noqa: ANN001
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ctx = DistContext(2, rank, rank, torch.device("cpu"), local_world=2)
    out = []
    for value in (True, rank == 0):  # both see last.pt; only rank 0 sees it
        try:
            out.append(("ok", ctx.agree("whether run/checkpoints/last.pt exists", value)))
        except UserError as e:
            out.append(("error", str(e)))
    results.put((rank, out))
    torch.distributed.destroy_process_group()


def test_ranks_that_disagree_about_resuming_are_refused():
    """Two gloo processes: the same answer passes; rank 0 seeing last.pt while rank 1 does not
    (no shared storage) is the same clear error on both ranks."""
    results = mp.get_context("fork").SimpleQueue()
    with tempfile.TemporaryDirectory() as tmp:
        # fork: the workers need nothing this process has not imported already.
        mp.start_processes(_agree_worker, args=(os.path.join(tmp, "init"), results), nprocs=2, start_method="fork")
    outcome = dict(results.get() for _ in range(2))
    message = ("the 2 processes disagree on whether run/checkpoints/last.pt exists (rank 0: True, rank 1: "
               "False); the run directory must be on storage that every process sees")
    for rank in (0, 1):
        assert outcome[rank][0] == ("ok", True)
        assert outcome[rank][1][0] == "error" and outcome[rank][1][1].startswith(message)
