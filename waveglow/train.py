"""Maximum-likelihood training of WaveGlow: the loop, its guards, checkpoints and DDP.

One entry point, `train(cfg)`, used by `waveglow-train` (and by tests in-process). It runs
unchanged under `torchrun --nproc_per_node=N` (DistributedDataParallel: NCCL on CUDA, gloo on
CPU); rank 0 alone logs and writes files. The global batch is `train.batch_size × world size`
and the loss is the mean over it.

Run directory (`run_dir`, default `checkpoints/<data>-<model>-<YYYYmmdd-HHMMSS>`):

    config.yaml            the resolved config of the latest start
    events.out.tfevents.*  TensorBoard (see waveglow.monitor for the tags)
    metrics.jsonl          one {"step": N, "val_log_likelihood": x} line per validation
    checkpoints/last.pt    newest state (resume point)
    checkpoints/best.pt    best validation log-likelihood so far
    checkpoints/step_<N>.pt  periodic, newest `train.keep_checkpoints` kept

Re-running with the same run_dir resumes from last.pt: the model, optimizer, lr schedule,
grad scaler, RNG states of every rank and the sampler position are restored, so in
deterministic mode (`train.deterministic=true`, CPU) a resumed run is bit-identical to an
uninterrupted one. Interruptions: SIGTERM/SIGINT finish the current step, write last.pt and
exit with 143/130; SIGKILL loses at most the steps since the last checkpoint (writes are atomic).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from waveglow.checkpoint import FORMAT_VERSION, build_model, load_checkpoint, save_checkpoint
from waveglow.errors import UserError
from waveglow.monitor import Monitor

log = logging.getLogger("waveglow")

PRECISIONS = ("fp32", "bf16", "fp16", "auto")


class TrainingError(RuntimeError):
    """Training cannot go on: a checkpoint could not be written, or it diverged beyond recovery.

    The CLI prints it as one `error: ...` line and exits 1; the checkpoints on disk are intact.
    """


@dataclass
class TrainHooks:
    """Programmatic hooks (tests, notebooks); the CLI uses none.

    before_step(trainer, batch): called with each batch before its step; may modify the batch
        or the model in place (tests inject NaNs or a divergence this way).
    after_step(trainer): called after each step (step counter already advanced).
    """

    before_step: Callable[[Trainer, dict[str, Tensor]], None] | None = None
    after_step: Callable[[Trainer], None] | None = None


@dataclass
class TrainResult:
    """What `train` returns: where the run lives and how it ended.

    exit_code: 0 finished (or nothing left to do), 130 stopped by SIGINT, 143 by SIGTERM
        (a final last.pt was written in both cases; re-running resumes).
    """

    run_dir: Path
    step: int
    exit_code: int = 0
    best_val_log_likelihood: float | None = None
    val_log_likelihood: float | None = None
    skipped_steps: int = 0
    recoveries: int = 0


@dataclass
class LoopState:
    """Everything besides weights/optimizer that decides what the next step does.

    Saved in the checkpoint (`scheduler`, `sampler`, `metrics`) so a resume is exact.
    """

    step: int = 0
    epoch: int = 0
    position: int = 0            # batches consumed in the current epoch (per rank)
    lr_mult: float = 1.0         # product of the guard's lr reductions
    recoveries: int = 0
    skipped_steps: int = 0       # cumulative non-finite steps
    bad_streak: int = 0          # consecutive non-finite steps
    val_log_likelihood: float | None = None
    best_val_log_likelihood: float | None = None
    best_step: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- small helpers
def _plain(cfg: Any) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `train.precision` on `device` (None = plain fp32).

    Raises:
        UserError: an unknown setting, or bf16 on a GPU without bf16 support.
    """
    if precision not in PRECISIONS:
        raise UserError(f"train.precision={precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise UserError("train.precision=bf16: this GPU has no bf16 support; use fp16 or fp32")
        return torch.bfloat16
    return torch.float16


def lr_at(step: int, train_cfg: Mapping[str, Any], lr_mult: float = 1.0) -> float:
    """Learning rate for optimizer step `step` (0-based): base × guard factor × warmup × decay."""
    lr = float(train_cfg["lr"]) * lr_mult
    warmup = int(train_cfg.get("warmup_steps") or 0)
    if warmup > 0 and step < warmup:
        lr *= (step + 1) / warmup
    for milestone in train_cfg.get("lr_decay_steps") or []:
        if step >= int(milestone):
            lr *= float(train_cfg.get("lr_decay_factor", 0.5))
    return lr


def segment_multiple(model: torch.nn.Module) -> int:
    """Audio lengths the model accepts are multiples of this (n_group, or the model's own rule)."""
    return int(getattr(model, "segment_multiple", None) or model.n_group)


def _rng_state(device: torch.device) -> dict[str, Any]:
    """This process's RNG states as tensors and plain values (loadable with weights_only)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }
    if device.type == "cuda":
        state["cuda"] = [torch.cuda.get_rng_state(device)]
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if device.type == "cuda" and state.get("cuda"):
        torch.cuda.set_rng_state(state["cuda"][0], device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _splitmix64(x: int) -> int:
    """One round of the SplitMix64 mixer (a well-spread 64-bit hash of an integer)."""
    mask = 2**64 - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one training example that depends only on (seed, epoch, index).

    So the random crop and dither noise of an example do not depend on the rank, the number of
    ranks, the loader workers or where a run was resumed.
    """
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ epoch) ^ index) >> 1


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(timedelta(seconds=int(seconds)))


# --------------------------------------------------------------------------- data
class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch and tags each index with its example seed.

    Every rank draws the same permutation of the whole split (seeded by seed + epoch) and takes
    every world_size-th index, so global batch j is the same set of examples for any number
    of ranks with the same global batch. Yields `(index, example_seed)`.

    Args:
        n_items: examples in the split.
        num_replicas, rank: the process group.
        seed: `train.seed`.
    """

    def __init__(self, n_items: int, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(range(n_items), num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` indices of this rank's share of the current epoch."""
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        indices = list(super().__iter__())[self.start:]
        for index in indices:
            yield index, item_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededItems(Dataset):
    """`base[index]` with its randomness (crop, padding, dither) seeded from the example seed.

    Through the dataset's `generator` attribute when it has one, else by seeding the global
    RNGs around the call. Each example is then a function of (seed, epoch, index) only.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if hasattr(self.base, "generator"):
            # The dataset draws from its own generator: give it one per example.
            self.base.generator = torch.Generator().manual_seed(seed)
            return self.base[index]
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.base[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Holds one run: model, optimizer, data, monitor and loop state. See `train`."""

    def __init__(self, cfg: DictConfig, hooks: TrainHooks | None = None) -> None:
        self.cfg = cfg
        self.tcfg = cfg.train
        self.hooks = hooks or TrainHooks()
        self.stop_signal: int | None = None
        self.state = LoopState()
        self.owns_group = False
        self._saved_numerics = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
        self.monitor = Monitor("", enabled=False)

    def setup(self) -> None:
        """Process group, numerics, run dir, data, model, optimizer; then resume or initialize."""
        self._check_settings()
        self._setup_distributed()
        self._setup_numerics()
        self._setup_run_dir()
        self._setup_data_and_model()
        self._setup_optimizer()
        self._resume_or_init()

    # ---------------------------------------------------------------- setup
    def _check_settings(self) -> None:
        t = self.tcfg

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise UserError(f"train.{key}={t.get(key)!r}: expected {what}")

        def is_int(key: str, low: int) -> bool:
            v = t.get(key)
            return isinstance(v, int) and not isinstance(v, bool) and v >= low

        for key, low in (("max_steps", 0), ("batch_size", 1), ("val_every", 1), ("checkpoint_every", 1),
                         ("keep_checkpoints", 0), ("log_every", 1), ("audio_every", 0), ("audio_clips", 0),
                         ("logdet_every", 0), ("warmup_steps", 0), ("seed", 0)):
            need(is_int(key, low), key, f"an integer >= {low}")
        for key in ("lr", "audio_sigma"):
            need(isinstance(t.get(key), (int, float)) and t.get(key) > 0, key, "a number > 0")
        need(isinstance(t.get("grad_clip"), (int, float)) and t.grad_clip >= 0, "grad_clip",
             "a number >= 0 (0 = no clipping)")
        g = t.guard
        if not (isinstance(g.max_bad_steps, int) and g.max_bad_steps >= 1 and 0 < float(g.lr_factor) <= 1
                and float(g.val_drop) > 0 and isinstance(g.max_recoveries, int) and g.max_recoveries >= 0):
            raise UserError("train.guard: expected max_bad_steps >= 1, 0 < lr_factor <= 1, val_drop > 0, "
                            "max_recoveries >= 0")

    def _setup_distributed(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want = str(self.tcfg.get("device", "auto"))
        if want not in ("auto", "cpu", "cuda"):
            raise UserError(f"train.device={want!r}: expected auto, cpu or cuda")
        if want == "cuda" and not torch.cuda.is_available():
            raise UserError("train.device=cuda: no CUDA device is available")
        use_cuda = want == "cuda" or (want == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.distributed = self.world > 1
        if self.distributed and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
            self.owns_group = True
        self.is_main = self.rank == 0

    def _setup_numerics(self) -> None:
        t = self.tcfg
        self.amp_dtype = resolve_precision(str(t.precision), self.device)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.amp_dtype]
        self.deterministic = bool(t.get("deterministic", False))
        if t.get("threads"):
            torch.set_num_threads(int(t.threads))
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = bool(t.get("tf32", True))
            torch.backends.cudnn.allow_tf32 = bool(t.get("tf32", True))
            torch.backends.cudnn.benchmark = not self.deterministic
            torch.backends.cudnn.deterministic = self.deterministic
            if self.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if self.deterministic:
            _set_deterministic(True)
        self.loader_workers = int(self.cfg.data.get("loader_workers") or 0)
        if self.deterministic and self.loader_workers:
            log.info("train.deterministic: loading data in the main process (data.loader_workers=0)")
            self.loader_workers = 0

    def _broadcast_object(self, obj: Any) -> Any:
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
        return box[0]

    def _setup_run_dir(self) -> None:
        run_dir = self.cfg.get("run_dir")
        if not run_dir:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = str(Path("checkpoints") / f"{self.cfg.data.name}-{self.cfg.model.name}-{stamp}")
        # Every rank must use rank 0's directory (the timestamps of two ranks may differ).
        self.run_dir = Path(self._broadcast_object(str(run_dir)))
        self.ckpt_dir = self.run_dir / "checkpoints"
        with _open_dict(self.cfg):
            self.cfg.run_dir = str(self.run_dir)

    def _setup_data_and_model(self) -> None:
        cfg = self.cfg
        seed = int(self.tcfg.seed)
        # The same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        seed_everything(seed)
        self.model = build_model(cfg).to(self.device)
        self.multiple = segment_multiple(self.model)
        seg = int(cfg.data.segment_length)
        self.segment_length = seg - seg % self.multiple
        if self.segment_length <= 0:
            raise UserError(f"data.segment_length={seg}: must be at least {self.multiple} "
                            f"(a multiple of the model's n_group)")
        if self.segment_length != seg:
            log.info(f"segment length {seg} rounded down to {self.segment_length} samples "
                     f"(a multiple of {self.multiple})")
        # Rank 0 builds any missing feature cache (and the splits) first; the others then read it.
        train_set, self.val_set = self._rank0_first(self._load_data)
        n_train = len(train_set)
        self.batch_size = int(self.tcfg.batch_size)
        self.global_batch = self.batch_size * self.world
        if n_train < self.global_batch:
            raise UserError(f"data: the train split has {n_train} clips, fewer than one global batch "
                            f"(train.batch_size={self.batch_size} × {self.world} processes)")
        self.sampler = ResumableDistributedSampler(n_train, self.world, self.rank, seed)
        self.batches_per_epoch = len(self.sampler) // self.batch_size
        # The loader's own seed draw uses this generator, not the global RNG (a resume creates
        # its iterator at another point than the uninterrupted run).
        self.loader = DataLoader(
            SeededItems(train_set), batch_size=self.batch_size, sampler=self.sampler, drop_last=True,
            num_workers=self.loader_workers, pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(seed), persistent_workers=False)
        self.n_mels = int(cfg.audio.n_mels)

    def _load_data(self) -> tuple[Dataset, Dataset]:
        """Mel statistics, the training segments and the fixed validation set."""
        from waveglow.data import ClipDataset, SegmentDataset, load_stats

        cfg = self.cfg
        mean, std = load_stats(cfg, progress=self.is_main and sys.stderr.isatty())
        self.mel_stats = {"mean": mean, "std": std}
        train_set = SegmentDataset(cfg, "train", segment_length=self.segment_length)
        val_seg = self.tcfg.get("val_segment_length")
        if val_seg:
            val_seg = int(val_seg) - int(val_seg) % self.multiple
        limit = self.tcfg.get("val_max_clips")
        val_set = ClipDataset(cfg, "val", segment_length=val_seg or None, multiple_of=self.multiple,
                              max_clips=int(limit) if limit else None, seed=int(self.tcfg.seed))
        return train_set, val_set

    def _setup_optimizer(self) -> None:
        t = self.tcfg
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=float(t.lr), betas=tuple(float(b) for b in t.betas),
            eps=float(t.eps), weight_decay=float(t.weight_decay))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel

            self.net: torch.nn.Module = DistributedDataParallel(
                self.model, device_ids=[self.local_rank] if self.device.type == "cuda" else None)
        else:
            self.net = self.model

    def _apply_optimizer_settings(self) -> None:
        """Adam's settings come from this run's config, not from a loaded optimizer state."""
        t = self.tcfg
        for group in self.optimizer.param_groups:
            group.update(betas=tuple(float(b) for b in t.betas), eps=float(t.eps),
                         weight_decay=float(t.weight_decay))

    def _prepare_run_dir(self) -> None:
        """Create the run directory (once data and model are known to work)."""
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            # Temp files of writes that a crash interrupted: never checkpoints, safe to remove.
            for stale in self.ckpt_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        except OSError as e:
            raise UserError(f"{self.ckpt_dir}: cannot create the run directory ({e.strerror})") from None

    def _resume_or_init(self) -> None:
        self._rank0_first(self._prepare_run_dir, others=False)
        last = self.ckpt_dir / "last.pt"
        self.resumed = last.is_file()
        if self.resumed:
            self._resume(last)
        else:
            init_from = self.tcfg.get("init_from")
            if init_from:
                self._init_from(Path(str(init_from)))
            else:
                self.model.set_mel_stats(self.mel_stats["mean"], self.mel_stats["std"])
            # Per-rank streams for anything random outside the data (the data is seeded per example).
            seed_everything(int(self.tcfg.seed) + 1 + self.rank)
        if self.is_main:
            _save_config(self.cfg, self.run_dir)
            if self.resumed:
                _truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        # On resume, TensorBoard hides what the interrupted process logged after last.pt's step.
        self.monitor = Monitor(self.run_dir, enabled=self.is_main,
                               purge_step=self.state.step + 1 if self.resumed else None)

    def _check_same_model(self, ckpt_cfg: Mapping[str, Any], path: Path) -> None:
        from waveglow.model import resolve_model_config

        old = resolve_model_config(ckpt_cfg["model"])
        new = resolve_model_config(self.cfg.model)
        diff = _diff_keys(old, new, "model")
        old_audio = ckpt_cfg.get("audio") or {}
        new_audio = _plain(self.cfg.audio)
        diff += _diff_keys(old_audio, new_audio, "audio")
        if diff:
            raise UserError(
                f"{path}: this run directory holds a run with other model/audio settings "
                f"({'; '.join(diff[:4])}); use another run_dir or the run's own settings")

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        self._check_same_model(ckpt["config"], path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self._apply_optimizer_settings()
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        sched = ckpt.get("scheduler") or {}
        metrics = ckpt.get("metrics") or {}
        sampler = ckpt.get("sampler") or {}
        s = self.state
        s.step = int(ckpt["step"])
        s.epoch = int(ckpt.get("epoch", 0))
        s.lr_mult = float(sched.get("lr_mult", 1.0))
        s.recoveries = int(sched.get("recoveries", 0))
        s.skipped_steps = int(metrics.get("skipped_steps", 0))
        s.bad_streak = int(metrics.get("bad_streak", 0))
        s.val_log_likelihood = metrics.get("val_log_likelihood")
        s.best_val_log_likelihood = metrics.get("best_val_log_likelihood")
        s.best_step = metrics.get("best_step")
        old_world = int(sampler.get("world_size", self.world))
        old_batch = int(sampler.get("batch_size", self.batch_size))
        position = int(sampler.get("position", 0))
        if (old_world, old_batch) != (self.world, self.batch_size):
            # Keep the number of examples of this epoch already seen; exactness is lost anyway.
            position = position * old_world * old_batch // self.global_batch
            log.warning(f"resuming with {self.world} process(es) × batch {self.batch_size} instead of "
                        f"{old_world} × {old_batch}: the data order continues approximately")
        s.epoch += position // self.batches_per_epoch
        s.position = position % self.batches_per_epoch
        rng = ckpt.get("rng") or {}
        per_rank = rng.get("per_rank") or []
        if len(per_rank) == self.world:
            _set_rng_state(per_rank[self.rank], self.device)
        else:
            seed_everything(int(self.tcfg.seed) + 1 + self.rank + s.step)
        if self.is_main:
            log.info(f"resuming {path} at step {s.step} (epoch {s.epoch})")

    def _init_from(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location="cpu")
        src = dict(ckpt["model"])
        own = self.model.state_dict()
        _unfold_weight_norm(src, own)
        problems = [f"{k} missing" for k in own if k not in src]
        problems += [f"{k} unexpected" for k in src if k not in own]
        problems += [f"{k} has shape {list(src[k].shape)}, the model needs {list(own[k].shape)}"
                     for k in own if k in src and src[k].shape != own[k].shape]
        if problems:
            raise UserError(f"{path}: train.init_from weights do not fit model {self.cfg.model.name} "
                            f"({'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''})")
        self.model.load_state_dict(src)
        from waveglow.model import resolve_model_config

        diff = _diff_keys(resolve_model_config(ckpt["config"]["model"]),
                          resolve_model_config(self.cfg.model), "model")
        audio_diff = _diff_keys(ckpt["config"].get("audio") or {}, _plain(self.cfg.audio), "audio")
        if self.is_main:
            log.info(f"init_from {path}: weights loaded (step {ckpt.get('step', '?')} of its run); "
                     "its mel statistics are kept (the conditioner was trained with them)")
            if diff:
                log.info(f"init_from: model settings that differ from the checkpoint's (this run's "
                         f"apply): {'; '.join(diff)}")
            if audio_diff:
                log.warning(f"init_from: the checkpoint was trained with other audio features "
                            f"({'; '.join(audio_diff)}); fine-tuning starts from a mismatched frontend")

    # ---------------------------------------------------------------- distributed helpers
    def _rank0_first(self, fn: Callable[[], Any], others: bool = True) -> Any:
        """Run `fn` on rank 0, then (if `others`) on the other ranks; a UserError on rank 0
        stops every rank with the same message instead of leaving them waiting."""
        result, error = None, ""
        if self.is_main:
            try:
                result = fn()
            except UserError as e:
                error = str(e)
                if not self.distributed:
                    raise
        error = self._broadcast_object(error)
        if error:
            raise UserError(error)
        if others and not self.is_main:
            result = fn()
        return result

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _all_sum(self, values: list[float]) -> list[float]:
        """Sum a few floats over ranks (one collective)."""
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    # ---------------------------------------------------------------- checkpoints
    def _checkpoint_state(self) -> dict[str, Any] | None:
        """The checkpoint dict (on rank 0; None elsewhere). Every rank must call it (RNG gather)."""
        rng = _rng_state(self.device)
        if self.distributed:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rng)
        else:
            gathered = [rng]
        if not self.is_main:
            return None
        s = self.state
        return {
            "format_version": FORMAT_VERSION,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "config": _plain(self.cfg),
            "step": s.step,
            "epoch": s.epoch,
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": {"lr_mult": s.lr_mult, "recoveries": s.recoveries,
                          "lr": lr_at(s.step, self.tcfg, s.lr_mult)},
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": {**gathered[0], "per_rank": gathered},
            "sampler": {"epoch": s.epoch, "position": s.position, "seed": int(self.tcfg.seed),
                        "world_size": self.world, "batch_size": self.batch_size},
            "metrics": {"val_log_likelihood": s.val_log_likelihood,
                        "best_val_log_likelihood": s.best_val_log_likelihood,
                        "best_step": s.best_step, "skipped_steps": s.skipped_steps,
                        "bad_streak": s.bad_streak},
        }

    def save(self, names: list[str]) -> None:
        """Write the current state as each of `names` (e.g. ["last.pt", "best.pt", "step_100.pt"]).

        The first is serialized once; the others are atomic hard links to it (copies where links
        are not supported). Raises TrainingError on every rank if rank 0 could not write.
        """
        state = self._checkpoint_state()
        error = ""
        if self.is_main:
            if not _params_finite(self.model):
                log.warning(f"step {self.state.step}: parameters are not finite; checkpoint not written")
                names = []
            try:
                first = save_checkpoint(self.ckpt_dir / names[0], state) if names else None
                for name in names[1:]:
                    _link_or_save(first, self.ckpt_dir / name, state)
                self._prune_step_checkpoints()
            except (OSError, RuntimeError) as e:
                # torch.save reports a failed write (disk full) as a RuntimeError whose context
                # is the OSError; any other RuntimeError is a bug and keeps its traceback.
                cause = e if isinstance(e, OSError) else e.__context__
                if not isinstance(cause, OSError):
                    raise
                last = self.ckpt_dir / "last.pt"
                kept = f"{last} still holds the previous state" if last.is_file() else "no checkpoint was kept"
                error = (f"could not write checkpoint {self.ckpt_dir / names[0]}: "
                         f"{cause.strerror or cause}{_free_space(self.ckpt_dir)} ({kept}); "
                         f"training stopped at step {self.state.step}")
        error = self._broadcast_object(error)
        if error:
            if not self.is_main:
                error = "rank 0 could not write a checkpoint; training stopped"
            raise TrainingError(error)

    def _prune_step_checkpoints(self) -> None:
        keep = int(self.tcfg.keep_checkpoints)
        found = sorted((int(m.group(1)), p) for p in self.ckpt_dir.glob("step_*.pt")
                       if (m := re.fullmatch(r"step_(\d+)\.pt", p.name)))
        for _, path in found[:-keep] if keep > 0 else found:
            path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- one step
    def _forward(self, audio: Tensor, mel: Tensor, with_stats: bool) -> tuple[Tensor, dict[str, Tensor]]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            if with_stats:
                log_prob, stats = self.net(audio, mel, return_stats=True)
            else:
                log_prob, stats = self.net(audio, mel), {}
        return log_prob, stats

    def train_step(self, batch: dict[str, Tensor], with_stats: bool) -> dict[str, Any]:
        """Forward, backward, guards, optimizer step. Returns loss/grad norm/skipped/stats."""
        audio = batch["audio"].to(self.device, non_blocking=True)
        mel = batch["mel"].to(self.device, non_blocking=True)
        lr = lr_at(self.state.step, self.tcfg, self.state.lr_mult)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        log_prob, stats = self._forward(audio, mel, with_stats)
        # The reduction in float32 whatever the autocast dtype: nats per audio sample.
        nll = -(log_prob.float().sum() / float(audio.numel()))
        if self.scaler is not None:
            self.scaler.scale(nll).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            nll.backward()
        clip = float(self.tcfg.grad_clip or 0)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        # One host sync per step; the loss of every rank is summed so all ranks decide alike
        # (gradients are already averaged over ranks by DDP).
        flags = torch.stack([nll.detach().float(), grad_norm.detach().float(),
                             torch.tensor(float(self.stop_signal is not None), device=nll.device)])
        if self.distributed:
            flags = flags.double()
            dist.all_reduce(flags)
            loss, norm, stop = flags[0].item() / self.world, flags[1].item() / self.world, flags[2].item()
        else:
            loss, norm, stop = (float(v) for v in flags.tolist())
        finite = math.isfinite(loss) and math.isfinite(norm)
        # fp16: an overflowing gradient with a finite loss while the loss scale is still >= 1 is
        # GradScaler calibrating its scale (it halves it), not the model diverging.
        overflow = (not finite and self.scaler is not None and math.isfinite(loss)
                    and self.scaler.get_scale() >= 1.0)
        if finite:
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
            else:
                self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if not finite and not stats:
            stats = self._stats_only(audio, mel)
        return {"loss": loss, "grad_norm": norm, "skipped": not finite, "overflow": overflow, "stop": stop > 0,
                "stats": {k: float(v) for k, v in stats.items()}, "lr": lr}

    @torch.no_grad()
    def _stats_only(self, audio: Tensor, mel: Tensor) -> dict[str, Tensor]:
        """Per-flow terms for a batch that went wrong (what TensorBoard should show)."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            _, stats = self.model.forward_with_stats(audio, mel)
        return stats

    # ---------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> float:
        """Mean log-likelihood of the val split in nats per audio sample (all ranks share it).

        fp32, no dither, the same fixed segments every time; the clips are split over ranks and
        the sums combined.
        """
        total, count = 0.0, 0
        n_val = len(self.val_set)
        group: list[dict[str, Tensor]] = []

        def flush() -> None:
            nonlocal total, count, group
            if not group:
                return
            audio = torch.stack([g["audio"] for g in group]).to(self.device)
            mel = torch.stack([g["mel"] for g in group]).to(self.device)
            total += float(self.model.log_prob(audio, mel).double().sum())
            count += audio.numel()
            group = []

        for i in range(self.rank, n_val, self.world):
            item = self._val_item(i)
            if group and (item["audio"].shape != group[0]["audio"].shape
                          or item["mel"].shape != group[0]["mel"].shape or len(group) >= self.batch_size):
                flush()
            group.append(item)
        flush()
        total, count = self._all_sum([total, float(count)])
        return total / count if count else float("nan")

    def _val_item(self, i: int) -> dict[str, Tensor]:
        """Val example i cut to a length the model accepts (and the mel frames it needs)."""
        item = self.val_set[i]
        audio = torch.as_tensor(item["audio"], dtype=torch.float32)
        mel = torch.as_tensor(item["mel"], dtype=torch.float32)
        n = audio.shape[-1] - audio.shape[-1] % self.multiple
        hop = int(self.cfg.audio.hop_length)
        return {"audio": audio[:n], "mel": mel[:, : 1 + n // hop]}

    @torch.no_grad()
    def log_audio(self) -> None:
        """Resynthesize the first val clips at train.audio_sigma; audio + mel images to TensorBoard."""
        if not self.is_main:
            return
        from waveglow.mel import MelSpectrogram

        frontend = MelSpectrogram.from_config(self.cfg.audio).to(self.device)
        sr = int(self.cfg.audio.sampling_rate)
        n = min(int(self.tcfg.audio_clips), len(self.val_set))
        for i in range(n):
            item = self._val_item(i)
            mel = item["mel"][None].to(self.device)
            gen = torch.Generator(device=self.device).manual_seed(int(self.tcfg.seed) + i)
            audio = self.model.infer(mel, sigma=float(self.tcfg.audio_sigma), generator=gen)[0]
            audio = torch.nan_to_num(audio.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
            self.monitor.audio(self.state.step, f"audio/val_{i}", audio, sr)
            self.monitor.mel_image(self.state.step, f"mel/val_{i}", item["mel"], frontend(audio).cpu())
            if not self.resumed and self.state.step == 0:
                self.monitor.audio(0, f"audio/val_{i}_target", item["audio"], sr)

    # ---------------------------------------------------------------- guards
    def recover(self, reason: str, source: Path) -> None:
        """Reload `source` (weights + optimizer), lower the lr, keep the data moving forward."""
        g = self.tcfg.guard
        s = self.state
        s.recoveries += 1
        if s.recoveries > int(g.max_recoveries):
            raise TrainingError(f"training diverged at step {s.step}: {reason}; gave up after "
                                f"{int(g.max_recoveries)} recoveries (last good checkpoint: {source})")
        self._barrier()
        ckpt = load_checkpoint(source, map_location="cpu")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self._apply_optimizer_settings()
        s.lr_mult *= float(g.lr_factor)
        s.bad_streak = 0
        if self.is_main:
            log.warning(f"guard: {reason} at step {s.step}; reloaded {source} (step {ckpt['step']}) and "
                        f"lowered lr to {lr_at(s.step, self.tcfg, s.lr_mult):.3g} "
                        f"(recovery {s.recoveries}/{int(g.max_recoveries)})")
        self.monitor.scalars(s.step, {"train/recoveries": s.recoveries})

    def _after_validation(self, value: float) -> bool:
        """Record a validation; returns True if it is a new best (False after a recovery)."""
        s = self.state
        s.val_log_likelihood = value
        if self.is_main:
            best_so_far = s.best_val_log_likelihood
            if best_so_far is None:
                note = ""
            elif value > best_so_far:
                note = f" (new best; previous {best_so_far:.4f} at step {s.best_step})"
            else:
                note = f" (best {best_so_far:.4f} at step {s.best_step})"
            log.info(f"step {s.step}: val log-likelihood {value:.4f} nats/sample{note}")
            self.monitor.scalars(s.step, {"val/log_likelihood": value})
            _append_metric(self.run_dir / "metrics.jsonl", {"step": s.step, "val_log_likelihood": value})
        best = s.best_val_log_likelihood
        margin = float(self.tcfg.guard.val_drop)
        if not math.isfinite(value) or (best is not None and value < best - margin):
            what = ("val log-likelihood is not finite" if not math.isfinite(value) else
                    f"val log-likelihood {value:.3f} fell more than {margin} nats/sample below "
                    f"the best ({best:.3f})")
            best_path = self.ckpt_dir / "best.pt"
            self.recover(what, best_path if best_path.is_file() else self.ckpt_dir / "last.pt")
            return False
        if best is None or value > best:
            s.best_val_log_likelihood = value
            s.best_step = s.step
            return True
        return False

    # ---------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        t = self.tcfg
        s = self.state
        max_steps = int(t.max_steps)
        if self.is_main:
            self._log_start()
        if s.step >= max_steps and self.resumed:
            if self.is_main:
                log.info(f"{self.run_dir}: already trained to step {s.step} (train.max_steps={max_steps}); "
                         "nothing to do")
            return self._result(0)
        handlers = self._install_signal_handlers()
        try:
            return self._loop(max_steps)
        finally:
            for signum, old in handlers.items():
                signal.signal(signum, old)
            self.monitor.close()

    def _log_start(self) -> None:
        s = self.state
        n_params = sum(p.numel() for p in self.model.parameters())
        log.info(f"run {self.run_dir}: model {self.cfg.model.name} ({n_params / 1e6:.2f}M parameters), "
                 f"data {self.cfg.data.name}, {self.precision} on {self.device}"
                 + (f" × {self.world} processes" if self.distributed else "")
                 + f", global batch {self.global_batch} × {self.segment_length} samples")
        if not self.resumed:
            self.monitor.hparams(
                {"model": self.cfg.model.name, "data": self.cfg.data.name, "precision": self.precision,
                 "world_size": self.world, "global_batch": self.global_batch,
                 "segment_length": self.segment_length, "lr": float(self.tcfg.lr),
                 "seed": int(self.tcfg.seed), "grad_clip": float(self.tcfg.grad_clip or 0),
                 "warmup_steps": int(self.tcfg.warmup_steps or 0)},
                ["val/log_likelihood", "train/log_likelihood"])
        elif s.best_val_log_likelihood is not None:
            log.info(f"best val log-likelihood so far {s.best_val_log_likelihood:.4f} nats/sample "
                     f"(step {s.best_step})")

    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGTERM/SIGINT: finish the step, write last.pt, exit 143/130. A second one kills."""
        handlers: dict[int, Any] = {}
        if not _in_main_thread():
            return handlers

        def on_signal(signum: int, frame: Any) -> None:
            if self.stop_signal is None:
                self.stop_signal = signum
                # A second signal takes the default action (the write in flight is atomic).
                signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)

        for signum in (signal.SIGTERM, signal.SIGINT):
            handlers[signum] = signal.signal(signum, on_signal)
        return handlers

    def _loop(self, max_steps: int) -> TrainResult:
        t = self.tcfg
        s = self.state
        val_every = int(t.val_every)
        audio_every = int(t.audio_every or 0)
        ckpt_every = int(t.checkpoint_every)
        log_every = max(1, int(t.log_every))
        logdet_every = int(t.get("logdet_every") or 0)
        if not self.resumed:
            # "Before" numbers, and a first last.pt: the guard always has something to reload.
            self._after_validation(self.validate())
            if audio_every:
                self.log_audio()
            self.save(["last.pt", "best.pt"])
        self.saved_step = s.step
        progress = _Progress(self, max_steps)
        window = _Window()
        iterator: Iterator[Any] | None = None
        while s.step < max_steps:
            if iterator is None:
                self.sampler.set_epoch(s.epoch)
                self.sampler.set_start(s.position * self.batch_size)
                iterator = iter(self.loader)
            try:
                batch = next(iterator)
            except StopIteration:  # pragma: no cover - epochs end by the position counter
                s.epoch, s.position, iterator = s.epoch + 1, 0, None
                continue
            if self.hooks.before_step:
                self.hooks.before_step(self, batch)
            t0 = time.perf_counter()
            with_stats = bool(logdet_every) and (s.step + 1) % logdet_every == 0
            out = self.train_step(batch, with_stats)
            s.step += 1
            s.position += 1
            if s.position >= self.batches_per_epoch:
                s.epoch, s.position, iterator = s.epoch + 1, 0, None
            window.add(out, time.perf_counter() - t0, self.global_batch * self.segment_length)
            self.last_lr = out["lr"]
            if out["skipped"]:
                s.skipped_steps += 1
                if out["overflow"]:
                    if self.is_main:
                        log.info(f"step {s.step}: fp16 gradient overflow; step skipped, loss scale lowered")
                else:
                    s.bad_streak += 1
                    if self.is_main:
                        what = "loss" if not math.isfinite(out["loss"]) else "gradient"
                        log.warning(f"step {s.step}: non-finite {what}; step skipped ({s.skipped_steps} so far)")
            else:
                s.bad_streak = 0
            if out["stats"]:
                self.monitor.logdets(s.step, out["stats"])
            # Under DDP only the all-reduced flag counts (a signal that lands after this step's
            # all-reduce is seen at the next step), so every rank stops after the same step.
            stop = out["stop"] if self.distributed else self.stop_signal is not None
            if stop and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM  # another rank was told to stop
            if self.hooks.after_step:
                self.hooks.after_step(self)
            if s.step % log_every == 0 or s.step == max_steps:
                self._log_window(window, progress, max_steps)
            progress.update(s, window)
            if s.bad_streak >= int(t.guard.max_bad_steps):
                self.recover(f"{s.bad_streak} consecutive non-finite steps", self.ckpt_dir / "last.pt")
            names: list[str] = []
            if s.step % val_every == 0 or s.step == max_steps:
                if self._after_validation(self.validate()):
                    names.append("best.pt")
            if audio_every and s.step % audio_every == 0:
                self.log_audio()
            if s.step % ckpt_every == 0:
                names.append(f"step_{s.step}.pt")
            if names or s.step == max_steps or stop:
                if s.bad_streak:
                    # last.pt must stay a state the guard can go back to.
                    if self.is_main:
                        log.warning(f"step {s.step}: no checkpoint written during a run of non-finite steps")
                else:
                    self.save(["last.pt", *names])
                    self.saved_step = s.step
            if stop:
                break
        progress.close()
        self.monitor.flush()
        if s.step < max_steps:
            name = signal.Signals(self.stop_signal).name
            if self.is_main:
                log.info(f"{name}: {self.ckpt_dir / 'last.pt'} holds step {self.saved_step}; run the same "
                         f"command with run_dir={self.run_dir} to resume")
            return self._result(128 + int(self.stop_signal))
        if self.distributed:
            self._check_ranks_in_sync()
        if self.is_main:
            best = s.best_val_log_likelihood
            log.info(f"done: step {s.step}, val log-likelihood {s.val_log_likelihood:.4f} nats/sample, best "
                     f"{best:.4f} (step {s.best_step}); skipped steps {s.skipped_steps}; "
                     f"checkpoints in {self.ckpt_dir}")
        return self._result(0)

    def _log_window(self, window: _Window, progress: _Progress, max_steps: int) -> None:
        s = self.state
        values = window.summary()
        lr = self.last_lr
        self.monitor.scalars(s.step, {
            "train/log_likelihood": -values["nll"], "train/nll": values["nll"], "train/lr": lr,
            "train/grad_norm": values["grad_norm"], "train/samples_per_sec": values["samples_per_sec"],
            "train/skipped_steps": s.skipped_steps})
        if self.is_main and not progress.bar:
            eta = (max_steps - s.step) * values["sec_per_step"]
            sr = float(self.cfg.audio.sampling_rate)
            log.info(f"step {s.step}/{max_steps} | train NLL {values['nll']:.4f} nats/sample | "
                     f"{values['samples_per_sec']:,.0f} samples/s ({values['samples_per_sec'] / sr:.2f}× real time) | "
                     f"lr {lr:.3g} | ETA {_fmt_duration(eta)}")
        window.clear()

    def _check_ranks_in_sync(self) -> None:
        """Compare every rank's parameters with rank 0's (exactly); a mismatch is a bug."""
        flat = torch.cat([p.detach().reshape(-1).float() for p in self.model.parameters()])
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

    def _result(self, code: int) -> TrainResult:
        s = self.state
        return TrainResult(self.run_dir, s.step, code, s.best_val_log_likelihood, s.val_log_likelihood,
                           s.skipped_steps, s.recoveries)

    def close(self) -> None:
        """Undo process-wide settings (deterministic mode, threads) and the process group."""
        det, threads = self._saved_numerics
        if torch.are_deterministic_algorithms_enabled() != det:
            _set_deterministic(det)
        torch.set_num_threads(threads)
        self.monitor.close()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


class _Window:
    """Running means of the steps since the last log line (time counts only training steps,
    not validation or checkpoint writes)."""

    def __init__(self) -> None:
        self.clear()
        self.sec_per_step = math.nan
        self.samples_per_sec = math.nan

    def clear(self) -> None:
        self.nll: list[float] = []
        self.norm: list[float] = []
        self.seconds = 0.0
        self.samples = 0
        self.steps = 0

    def add(self, out: Mapping[str, Any], seconds: float, samples: int) -> None:
        if not out["skipped"]:
            self.nll.append(out["loss"])
            self.norm.append(out["grad_norm"])
        self.seconds += seconds
        self.samples += samples
        self.steps += 1
        if self.seconds > 0:
            rate = self.seconds / self.steps
            # Smoothed over windows so the ETA does not jump with each log line.
            self.sec_per_step = rate if not math.isfinite(self.sec_per_step) else 0.7 * self.sec_per_step + 0.3 * rate
            self.samples_per_sec = self.samples / self.seconds

    def summary(self) -> dict[str, float]:
        mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
        return {"nll": mean(self.nll), "grad_norm": mean(self.norm),
                "samples_per_sec": self.samples / self.seconds if self.seconds else math.nan,
                "sec_per_step": self.sec_per_step}


class _Progress:
    """A tqdm bar on an interactive terminal (rank 0); log lines otherwise."""

    def __init__(self, trainer: Trainer, max_steps: int) -> None:
        self.bar = None
        if trainer.is_main and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=trainer.state.step, unit="step", dynamic_ncols=True)
        self.sr = float(trainer.cfg.audio.sampling_rate)

    def update(self, state: LoopState, window: _Window) -> None:
        if self.bar is None:
            return
        self.bar.update(state.step - self.bar.n)
        nll = window.nll[-1] if window.nll else math.nan
        self.bar.set_postfix_str(f"NLL {nll:.3f} nats/sample, {window.samples_per_sec:,.0f} samples/s",
                                 refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- files
class _open_dict:
    """Context manager: allow adding keys to a struct DictConfig."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> DictConfig:
        self.flag = OmegaConf.is_struct(self.cfg)
        OmegaConf.set_struct(self.cfg, False)
        return self.cfg

    def __exit__(self, *exc: Any) -> None:
        OmegaConf.set_struct(self.cfg, self.flag)


def _save_config(cfg: DictConfig, run_dir: Path) -> None:
    from waveglow.cli.common import save_resolved_config

    try:
        save_resolved_config(cfg, run_dir)
    except OSError as e:
        raise UserError(f"{run_dir}: cannot write config.yaml ({e.strerror})") from None


def _append_metric(path: Path, record: Mapping[str, Any]) -> None:
    """Append one JSON line (a log: appended, flushed; a torn last line is dropped on resume)."""
    with open(path, "a") as f:
        f.write(json.dumps(dict(record)) + "\n")
        f.flush()


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume from `step`, drop lines the interrupted process wrote after it (atomic rewrite)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by a crash
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def _link_or_save(src: Path, dst: Path, state: Mapping[str, Any]) -> None:
    """Make `dst` hold the checkpoint `src` holds, atomically (hard link + rename, or a copy)."""
    tmp = dst.with_name(f".{dst.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        save_checkpoint(dst, state)
        return
    os.replace(tmp, dst)


def _free_space(directory: Path) -> str:
    """", 1.2 GB free" for the disk holding `directory` (empty if unknown)."""
    try:
        return f", {shutil.disk_usage(directory).free / 1e9:.1f} GB free"
    except OSError:
        return ""


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _params_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _diff_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff_keys(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: {a!r} -> {b!r}")
    return out


def _unfold_weight_norm(src: dict[str, Tensor], own: Mapping[str, Tensor]) -> None:
    """Let folded conv weights (`weight`, after remove_weight_norm) initialize weight-normed ones."""
    for key in list(src):
        if not key.endswith(".weight") or key in own:
            continue
        base = key[: -len("weight")]
        if base + "weight_g" in own and base + "weight_v" in own:
            w = src.pop(key)
            src[base + "weight_v"] = w.clone()
            src[base + "weight_g"] = torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)


def _set_deterministic(mode: bool) -> None:
    """torch.use_deterministic_algorithms without importing the compiler stack when unused.

    The public function also sets a torch.compile (inductor) flag, and importing inductor costs
    seconds per process start; nothing here is compiled, so only the eager flag matters then.
    """
    if "torch._inductor.config" in sys.modules or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode)
    else:
        torch._C._set_deterministic_algorithms(mode)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------- entry point
def train(cfg: DictConfig, hooks: TrainHooks | None = None) -> TrainResult:
    """Train (or resume) the run described by `cfg` (the composed waveglow_train config).

    Args:
        cfg: config with audio, data, model, train and run_dir.
        hooks: optional TrainHooks (tests).

    Returns:
        TrainResult; `exit_code` is 130/143 when a signal stopped the run after writing last.pt.

    Raises:
        UserError: bad settings or input files.
        TrainingError: a checkpoint write failed, or the guards gave up.
    """
    trainer = Trainer(cfg, hooks)
    try:
        trainer.setup()
        return trainer.run()
    finally:
        trainer.close()
