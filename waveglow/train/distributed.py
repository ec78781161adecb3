"""The process group of a run: one process, or `torchrun --nproc_per_node=N` ranks.

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
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from waveglow.errors import UserError
from waveglow.runtime import resolve_device
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
        world, rank, local_rank: from torchrun's environment (1, 0, 0 without torchrun).
        device: this rank's device (`cuda:<local_rank>` under torchrun on GPUs).
        local_world: processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE).
        owns_group: this context created the process group (and destroys it in `close`).
        prepare_group: a gloo group with `PREPARE_TIMEOUT`, for waiting on rank 0's one-off work.
    """

    world: int
    rank: int
    local_rank: int
    device: torch.device
    local_world: int = 1
    owns_group: bool = False
    prepare_group: Any = None

    @classmethod
    def from_env(cls, device_name: str, environ: dict[str, str] | None = None) -> DistContext:
        """Read torchrun's variables, pick the device, and join the process group (NCCL on CUDA,
        gloo on CPU) when there is more than one process.

        Args:
            device_name: the `train.device` setting.
            environ: the variables to read (default: this process's environment).

        Raises:
            UserError: a bad device setting, or a local rank without a GPU of its own.
        """
        env = os.environ if environ is None else environ
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", "0"))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
        # Under torchrun, `cuda`/`auto` mean cuda:<local_rank>; a local rank beyond the GPUs
        # present is a one-line error, not a CUDA error at the first kernel.
        device = resolve_device(device_name, key="train.device", local_rank=local_rank if world > 1 else None)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        ctx = cls(world, rank, local_rank, device, local_world=local_world)
        if ctx.distributed:
            if not dist.is_initialized():
                dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
                ctx.owns_group = True
            ctx.prepare_group = dist.new_group(backend="gloo", timeout=PREPARE_TIMEOUT)
        return ctx

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs and writes files."""
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the training step calls: DDP around `model` under torchrun, else `model`."""
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
        """Run `fn` on rank 0, then (if `others`) on the other ranks; a UserError on rank 0
        stops every rank with the same message instead of leaving them waiting.

        The other ranks wait on the gloo `prepare_group` (up to `PREPARE_TIMEOUT`), so `fn` may
        take long (building a feature cache) without tripping a collective's timeout.
        """
        result, error = None, ""
        if self.is_main:
            try:
                result = fn()
            except UserError as e:
                error = str(e)
                if not self.distributed:
                    raise
        if self.distributed:
            box = [error]
            dist.broadcast_object_list(box, src=0, group=self.prepare_group)
            error = box[0]
        if error:
            raise UserError(error)
        if others and not self.is_main:
            result = fn()
        return result

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
