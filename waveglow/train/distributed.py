"""The process group of a run: one process, `torchrun --nproc_per_node=N` ranks, or the tasks of
a SLURM job step (`srun waveglow-train ...`; see `waveglow.train.launch`).

`DistContext` is the only place that talks to `torch.distributed`'s collectives for the
trainer (the step's all-reduce lives in `waveglow.train.step`); with one process every
collective is the identity, so callers never branch on the world size.

Waiting for rank 0: work of unbounded length that rank 0 does alone (building the feature
cache of a corpus) is waited for on a separate gloo group with a timeout that fits it
(`PREPARE_TIMEOUT`), never inside an NCCL collective, whose watchdog would kill the job after
10 minutes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from waveglow.errors import UserError
from waveglow.runtime import resolve_device
from waveglow.train.launch import Launch, read_launch
from waveglow.train.state import TrainingError

log = logging.getLogger("waveglow")

# How long the other ranks wait for rank 0's one-off work (preprocessing a corpus: LJSpeech's
# 24 hours of audio take minutes on a few cores; this leaves room for corpora 100x larger on a
# slow disk) before they give up with an error.
PREPARE_TIMEOUT = timedelta(hours=12)


@dataclass
class DistContext:
    """Where this process stands in the run: rank, world size, device.

    Attributes:
        world, rank, local_rank: from torchrun's or SLURM's environment (1, 0, 0 alone).
        device: this rank's device (`cuda:<local_rank>` with several processes on GPUs).
        local_world: processes of this run on this machine.
        owns_group: this context created the process group (and destroys it in `close`).
        prepare_group: a gloo group with `PREPARE_TIMEOUT`, for waiting on rank 0's one-off work.
        launch: how the process was started (launcher, run id; see `waveglow.train.launch`).
    """

    world: int
    rank: int
    local_rank: int
    device: torch.device
    local_world: int = 1
    owns_group: bool = False
    prepare_group: Any = None
    launch: Launch = field(default_factory=Launch)

    @classmethod
    def from_env(cls, device_name: str, environ: Mapping[str, str] | None = None) -> DistContext:
        """Read the launcher's variables (torchrun's or SLURM's, see `waveglow.train.launch`), pick
        the device, and join the process group (NCCL on CUDA, gloo on CPU) when there is more
        than one process.

        Args:
            device_name: the `train.device` setting.
            environ: the variables to read (default: this process's environment).

        Raises:
            UserError: a bad device setting (`cuda:N` with several processes), or a local rank
                without a GPU of its own.
        """
        launch = read_launch(environ)
        if launch.world > 1 and str(device_name).startswith("cuda:"):
            # Every rank would take GPU N; each process takes its own (cuda:<local rank>).
            raise UserError(f"train.device={device_name}: with {launch.world} processes each one takes the GPU of "
                            "its local rank; use train.device=cuda or auto (choose GPUs with CUDA_VISIBLE_DEVICES)")
        device = resolve_device(device_name, key="train.device",
                                local_rank=_gpu_index(device_name, launch) if launch.world > 1 else None)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        ctx = cls(launch.world, launch.rank, launch.local_rank, device, local_world=launch.local_world,
                  launch=launch)
        if ctx.distributed:
            if not dist.is_initialized():
                backend = "nccl" if device.type == "cuda" else "gloo"
                if launch.launcher == "slurm":
                    dist.init_process_group(backend, init_method=launch.init_method, world_size=launch.world,
                                            rank=launch.rank)
                else:
                    dist.init_process_group(backend)
                ctx.owns_group = True
            ctx.prepare_group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
            if ctx.is_main and launch.stale_restarts:
                log.warning("torchrun --max-restarts shares its rendezvous store with the workers: restarted "
                            "workers may fail to connect to the previous attempt's addresses; start torchrun with "
                            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 in its environment")
            if ctx.is_main and launch.launcher == "slurm":
                log.info(f"DDP from the SLURM environment: {launch.world} tasks ({launch.local_world} on this "
                         f"node), rendezvous {launch.init_method}")
        return ctx

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: DDP around `model` with several processes, else `model`."""
        if not self.distributed:
            return model
        return DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def gather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def rank0_first(self, fn: Callable[[], Any], others: bool = True) -> Any:
        """Run `fn` on rank 0, then (if `others`) on the other ranks. Whatever stops `fn` on rank 0
        (a UserError, a bug, Ctrl-C) stops every rank at once with rank 0's message, instead of
        leaving them waiting.

        The other ranks wait on the gloo `prepare_group` (up to `PREPARE_TIMEOUT`), so `fn` may
        take long (building a feature cache) without tripping a collective's timeout.

        Raises:
            On rank 0: what `fn` raised. On the others: UserError with rank 0's message when
            rank 0's was a UserError, else TrainingError naming rank 0's exception.
        """
        result, failure = None, None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:
                if self.distributed:
                    failure = (isinstance(e, UserError), _describe(e))
                    self._share_failure(failure)
                raise
        if self.distributed:
            failure = self._share_failure(failure)
        if failure is not None:
            is_user_error, message = failure
            if is_user_error:
                raise UserError(message)
            raise TrainingError(f"rank 0 failed: {message}")
        if others and not self.is_main:
            result = fn()
        return result

    def _share_failure(self, failure: tuple[bool, str] | None) -> tuple[bool, str] | None:
        """Rank 0's outcome of a `rank0_first` call on every rank (None: it succeeded)."""
        box = [failure]
        dist.broadcast_object_list(box, src=0, group=self.prepare_group)
        return box[0]

    def agree(self, what: str, value: Any) -> Any:
        """Check that every rank holds the same `value`; returns it.

        Args:
            what: names the value in the error (e.g. "run_dir/checkpoints/last.pt exists").

        Raises:
            UserError: the ranks disagree (listing each rank's value).
        """
        values = self.gather_object(value)
        if any(v != values[0] for v in values):
            listed = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
            raise UserError(f"the {self.world} processes disagree on {what} ({listed}); the run directory "
                            "must be on storage that every process sees (or hold the same files on every node)")
        return value

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over ranks (one collective)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def check_in_sync(self, model: torch.nn.Module) -> None:
        """Compare every rank's parameters with rank 0's (exactly); a mismatch is a bug.

        Raises:
            TrainingError: the ranks ended with different parameters.
        """
        if not self.distributed:
            return
        flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
        ref = flat.clone()
        dist.broadcast(ref, src=0)
        diff = (flat - ref).abs().max().reshape(1).double()
        dist.all_reduce(diff, op=dist.ReduceOp.MAX)
        value = float(diff.item())
        if self.is_main:
            log.info(f"ranks in sync: max |parameter difference| over {self.world} processes = {value:g}")
        if value != 0.0:
            raise TrainingError(f"the {self.world} processes ended with different parameters "
                                f"(max difference {value:g})")

    def close(self) -> None:
        """Leave the process group if this context created it."""
        if self.prepare_group is not None and dist.is_initialized():
            dist.destroy_process_group(self.prepare_group)
        self.prepare_group = None
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _describe(error: BaseException) -> str:
    """One line for another rank: a UserError's message, else the exception's type and message."""
    if isinstance(error, UserError):
        return str(error)
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _gpu_index(device_name: str, launch: Launch) -> int:
    """The GPU of a process among several: its local rank, except in a SLURM task that sees one
    GPU only (SLURM bound one GPU to each task, e.g. --gpus-per-task=1): that one."""
    if (launch.launcher == "slurm" and str(device_name) in ("cuda", "auto") and torch.cuda.is_available()
            and torch.cuda.device_count() == 1):
        return 0
    return launch.local_rank
