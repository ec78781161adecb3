"""The training loop: `train(cfg)` builds a `Trainer` and runs it.

`Trainer.setup` composes the parts (process group, run-directory lock, data, model, optimizer,
checkpoints, guard, validation); `Trainer._loop` is the policy: step, count, log, validate,
checkpoint, stop on a signal.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from waveglow.checkpoint import build_model
from waveglow.config import TrainApp, to_dict
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic
from waveglow.runtime import precision_name, resolve_precision, seed_everything
from waveglow.train.checkpoints import Checkpointer, WriteFn
from waveglow.train.compile import (
    DEFAULT_BACKEND,
    Backend,
    check_backend,
    compile_conditioners,
    compiled,
    eager,
)
from waveglow.train.distributed import DistContext
from waveglow.train.guard import Guard
from waveglow.train.lock import RunDirLock
from waveglow.train.monitor import Monitor
from waveglow.train.numerics import NumericsState, configure
from waveglow.train.progress import (
    Progress,
    SpeedCheck,
    ThroughputCheck,
    one_thread_training_rate,
    truncate_metrics,
)
from waveglow.train.rundir import default_run_dir
from waveglow.train.sampling import (
    ResumableDistributedSampler,
    load_datasets,
    loader_workers,
    segment_multiple,
    train_loader,
    training_segment_length,
)
from waveglow.train.state import LoopState, TrainResult, lr_at
from waveglow.train.step import Stepper, StepResult
from waveglow.train.validation import Validator, report_validation

log = logging.getLogger("waveglow")


@dataclass
class TrainHooks:
    """Programmatic hooks (tests, notebooks); the CLI uses none.

    before_step(trainer, batch): called with each batch before its step; may modify the batch
        or the model in place (tests inject NaNs or a divergence this way).
    after_step(trainer): called after each step (step counter already advanced).
    write_checkpoint(f, state): writes a checkpoint's bytes into the open temp file instead of
        torch.save (tests inject a slow write to kill the process in the middle of one).
    compile_backend: the torch.compile backend of `train.compile=true` (tests pass "eager").
    """

    before_step: Callable[[Trainer, dict[str, Tensor]], None] | None = None
    after_step: Callable[[Trainer], None] | None = None
    write_checkpoint: WriteFn | None = None
    compile_backend: Backend = DEFAULT_BACKEND


class Trainer:
    """Holds one run: model, optimizer, data, monitor and loop state. See `train`."""

    def __init__(self, cfg: TrainApp, hooks: TrainHooks | None = None) -> None:
        self.cfg = cfg
        self.tcfg = cfg.train
        self.hooks = hooks or TrainHooks()
        self.stop_signal: int | None = None
        self.state = LoopState()
        self.ctx: DistContext | None = None
        self._saved_numerics = NumericsState.capture()
        self.monitor = Monitor("", enabled=False)
        self.lock: RunDirLock | None = None

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        """Process group, numerics, run dir and its lock, data, model, optimizer; then resume or
        initialize; then the DDP wrapper (it broadcasts rank 0's resumed weights)."""
        t = self.tcfg
        self.ctx = ctx = DistContext.from_env(str(t.device))
        self.device, self.is_main, self.world = ctx.device, ctx.is_main, ctx.world
        self.amp_dtype = resolve_precision(str(t.precision), self.device, key="train.precision")
        self.threads = configure(t, self.device, processes=ctx.local_world)
        self.loader_workers = loader_workers(self.cfg.data.loader_workers, deterministic=bool(t.deterministic),
                                             processes=ctx.local_world, report=ctx.is_main)
        # run_dir=null: named after the launcher's run id, so that a restart or requeue resumes.
        run_dir = self.cfg.run_dir or default_run_dir(str(self.cfg.data.name), str(self.cfg.model.name), ctx.launch)
        # Every rank must use rank 0's directory (the timestamps of two ranks may differ).
        self.run_dir = Path(ctx.broadcast_object(str(run_dir)))
        # Before anything else touches the run directory: one training process per run_dir.
        self.lock = RunDirLock(self.run_dir)
        ctx.rank0_first(self.lock.acquire, others=False)
        self.config = {**to_dict(self.cfg), "run_dir": str(self.run_dir)}  # what checkpoints store
        self._setup_data_and_model()
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=float(t.lr), betas=tuple(float(b) for b in t.betas),
            eps=float(t.eps), weight_decay=float(t.weight_decay))
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.checkpoints = Checkpointer(
            self.run_dir / "checkpoints", ctx, model=self.model, optimizer=self.optimizer, scaler=self.scaler,
            state=self.state, config=self.config, train_cfg=t, batch_size=self.loader_batch,
            write=self.hooks.write_checkpoint)
        self.ckpt_dir = self.checkpoints.dir
        self._resume_or_init()
        self.stepper = Stepper(self.model, self.optimizer, device=self.device, amp_dtype=self.amp_dtype,
                               grad_clip=float(t.grad_clip or 0), scaler=self.scaler, net=ctx.wrap(self.training_net()),
                               world=self.world, grad_accum=self.grad_accum, memory=str(t.memory))
        self.guard = Guard(self.state, t, self.checkpoints, ctx, self.monitor)

    def _setup_data_and_model(self) -> None:
        seed = int(self.tcfg.seed)
        # The same initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        seed_everything(seed)
        self.model = build_model(self.config).to(self.device)
        # In place, before the DDP wrapper and before any weights are loaded: the state_dict keys
        # stay the same, so resume and fine-tuning start work as without compilation.
        self.compiled = bool(self.tcfg.compile)
        if self.compiled:
            check_backend(self.hooks.compile_backend, self.device)
            compile_conditioners(self.model, backend=self.hooks.compile_backend)
        self.multiple = segment_multiple(self.model)
        self.segment_length = training_segment_length(int(self.cfg.data.segment_length), self.multiple)
        # Rank 0 builds any missing feature cache (and the splits) first, while the others wait
        # on a group whose timeout fits preprocessing; then they read it.
        self.mel_stats, train_set, val_set = self.ctx.rank0_first(lambda: load_datasets(
            self.cfg, self.segment_length, self.multiple, progress=self.is_main and sys.stderr.isatty()))
        self.batch_size = int(self.tcfg.batch_size)
        self.grad_accum = int(self.tcfg.grad_accum)
        self.global_batch = self.batch_size * self.grad_accum * self.world
        if len(train_set) == 0:
            raise UserError(f"data.root={self.cfg.data.root}: the train split has no usable clips")
        self.sampler = ResumableDistributedSampler(len(train_set), self.world, self.ctx.rank, seed,
                                                   global_batch=self.global_batch)
        if self.sampler.replacement and self.is_main:
            log.warning(f"data: the train split has {len(train_set)} clips, fewer than one global batch of "
                        f"{self.global_batch}; clips are drawn with replacement (each segment is a random crop)")
        # One loader batch is one optimizer step: batch_size × grad_accum examples per process.
        self.loader_batch = self.batch_size * self.grad_accum
        self.batches_per_epoch = len(self.sampler) // self.loader_batch
        self.loader = train_loader(train_set, self.sampler, self.loader_batch, workers=self.loader_workers,
                                   seed=seed, pin_memory=self.device.type == "cuda")
        self.validator = Validator(self.model, val_set, self.ctx, self.cfg, self.batch_size, self.multiple)

    def _resume_or_init(self) -> None:
        self.ctx.rank0_first(self.checkpoints.prepare_dir, others=False)
        # Decided by rank 0, and every rank must see the same: a rank that would start afresh
        # while rank 0 resumes (run_dir not on shared storage) stops the run with an error.
        self.resumed = self.ctx.agree(f"whether {self.checkpoints.last} exists", self.checkpoints.last.is_file())
        if self.resumed:
            self.checkpoints.resume(self.checkpoints.last, self.batches_per_epoch)
            self.ctx.agree(f"the step stored in {self.checkpoints.last}", self.state.step)
        else:
            if self.tcfg.init_from:
                self.checkpoints.init_from(Path(str(self.tcfg.init_from)))
            else:
                self.model.set_mel_stats(self.mel_stats["mean"], self.mel_stats["std"])
            # Per-rank streams for anything random outside the data (the data is seeded per example).
            seed_everything(int(self.tcfg.seed) + 1 + self.ctx.rank)
        if self.is_main:
            try:
                write_text_atomic(self.run_dir / "config.yaml", yaml.safe_dump(self.config, sort_keys=False))
            except OSError as e:
                raise UserError(f"{self.run_dir}: cannot write config.yaml ({e.strerror})") from None
            if self.resumed:
                truncate_metrics(self.run_dir / "metrics.jsonl", self.state.step)
        # On resume, TensorBoard hides what the interrupted process logged after last.pt's step.
        self.monitor = Monitor(self.run_dir, enabled=self.is_main,
                               purge_step=self.state.step + 1 if self.resumed else None)
        self.monitor.layout()

    # ---------------------------------------------------------------- the parts the loop calls
    def training_net(self) -> torch.nn.Module:
        """What each step's forward calls (before the DDP wrapper): the model, whose output is the
        log-likelihood [B] in nats. A subclass may return a module around the model whose output
        is minus its own loss per batch item in the same units (waveglow.distill)."""
        return self.model

    def train_step(self, batch: dict[str, Tensor], with_stats: bool) -> StepResult:
        """One optimizer step on `batch` at the scheduled learning rate."""
        lr = lr_at(self.state.step, self.tcfg, self.state.lr_mult)
        # train.compile: the step alone runs the compiled conditioners (the loop runs eager).
        with compiled(self.compiled):
            return self.stepper(batch["audio"], batch["mel"], lr, with_stats=with_stats,
                                stop=self.stop_signal is not None)

    def save(self, names: list[str]) -> None:
        """Write the current state as each of `names` (see Checkpointer.save)."""
        self.checkpoints.save(names)

    def validate(self) -> bool:
        """Validate, report, let the guard judge; True for a new best."""
        value = self.validator.log_likelihood()
        self.state.val_log_likelihood = value
        report_validation(self.state, value, self.monitor, self.run_dir / "metrics.jsonl", self.is_main)
        # Held-out speakers (multi-speaker corpora): reported beside val; the guard and best.pt follow val.
        self.validator.report_unseen(self.state.step, self.monitor, self.run_dir / "metrics.jsonl")
        return self.guard.after_validation(value)

    def log_audio(self) -> None:
        self.validator.log_audio(self.monitor, self.state.step, with_targets=not self.resumed and self.state.step == 0)

    # ---------------------------------------------------------------- the loop
    def run(self) -> TrainResult:
        s, max_steps = self.state, int(self.tcfg.max_steps)
        if self.is_main:
            self._log_start()
        if s.step >= max_steps and self.resumed:
            if self.is_main:
                log.info(f"{self.run_dir}: already trained to step {s.step} (train.max_steps={max_steps}); "
                         "nothing to do")
            return s.result(self.run_dir, 0)
        handlers = _install_stop_handlers(self)
        try:
            # train.compile: validation, resynthesis and the speed calibration run eager (other
            # lengths and grad modes: a compilation each, for rare calls); train_step does not.
            with eager(self.compiled):
                return self._loop(max_steps)
        finally:
            for signum, old in handlers.items():
                signal.signal(signum, old)
            self.monitor.close()

    def _loop(self, max_steps: int) -> TrainResult:
        t, s = self.tcfg, self.state
        logdet_every, audio_every = int(t.logdet_every or 0), int(t.audio_every or 0)
        if not self.resumed:
            # "Before" numbers, and a first last.pt: the guard always has something to reload.
            if self.is_main:
                log.info(f"step 0: validation log-likelihood of {len(self.validator.val_set)} val clip(s) "
                         "before training")
            self.validate()
            if audio_every:
                self.log_audio()
            self.save(["last.pt", "best.pt"])
        self.saved_step = s.step
        progress = Progress(self.monitor, is_main=self.is_main, start_step=s.step, max_steps=max_steps,
                            sampling_rate=float(self.cfg.audio.sampling_rate),
                            interval_s=float(t.progress_seconds), check=ThroughputCheck(
                                enabled=self.is_main and self.device.type == "cpu", threads=self.threads.count,
                                world=self.world, calibrate=one_thread_training_rate(
                                    self.training_net(), n_mels=int(self.cfg.audio.n_mels), device=self.device,
                                    hop_length=int(self.cfg.audio.hop_length), samples=self.segment_length,
                                    amp_dtype=self.amp_dtype)))
        speed = SpeedCheck(enabled=self.is_main and self.cpu_fallback, start_step=s.step, max_steps=max_steps,
                           n_params=sum(p.numel() for p in self.model.parameters()))
        self._iterator: Iterator[Any] | None = None
        while s.step < max_steps:
            batch = self._next_batch()
            if self.hooks.before_step:
                self.hooks.before_step(self, batch)
            t0 = time.perf_counter()
            out = self.train_step(batch, with_stats=bool(logdet_every) and (s.step + 1) % logdet_every == 0)
            self._advance()
            seconds = time.perf_counter() - t0
            progress.add(out, seconds, self.global_batch * self.segment_length)
            speed.after_step(s.step, seconds)
            self.guard.after_step(out)
            if out.stats:
                self.monitor.logdets(s.step, out.stats)
            # Under DDP only the all-reduced flag counts (a signal that lands after this step's
            # all-reduce is seen at the next step), so every rank stops after the same step.
            stop = out.stop if self.ctx.distributed else self.stop_signal is not None
            if stop and self.stop_signal is None:
                self.stop_signal = signal.SIGTERM  # another rank was told to stop
            if self.hooks.after_step:
                self.hooks.after_step(self)
            progress.update(s, out.lr, int(t.log_every))
            self.guard.check_streak()
            names = []
            if (s.step % int(t.val_every) == 0 or s.step == max_steps) and self.validate():
                names.append("best.pt")
            if audio_every and s.step % audio_every == 0:
                self.log_audio()
            if s.step % int(t.checkpoint_every) == 0:
                names.append(f"step_{s.step}.pt")
            if names or s.step == max_steps or stop:
                self._checkpoint(names)
            if stop:
                break
        progress.close()
        return self._finish(max_steps)

    def _next_batch(self) -> dict[str, Tensor]:
        """The next training batch, from the loop state's epoch and position."""
        s = self.state
        while True:
            if self._iterator is None:
                self.sampler.set_epoch(s.epoch)
                self.sampler.set_start(s.position * self.loader_batch)
                self._iterator = iter(self.loader)
            try:
                return next(self._iterator)
            except StopIteration:  # pragma: no cover - epochs end by the position counter
                s.epoch, s.position, self._iterator = s.epoch + 1, 0, None

    def _advance(self) -> None:
        """Count a step; the epoch ends after `batches_per_epoch` batches."""
        s = self.state
        s.step, s.position = s.step + 1, s.position + 1
        if s.position >= self.batches_per_epoch:
            s.epoch, s.position, self._iterator = s.epoch + 1, 0, None

    def _checkpoint(self, names: list[str]) -> None:
        if self.state.bad_streak:
            # last.pt must stay a state the guard can go back to.
            if self.is_main:
                log.warning(f"step {self.state.step}: no checkpoint written during a run of non-finite steps")
            return
        self.save(["last.pt", *names])
        self.saved_step = self.state.step

    def _finish(self, max_steps: int) -> TrainResult:
        s = self.state
        self.monitor.flush()
        if s.step < max_steps:
            name = signal.Signals(self.stop_signal).name
            if self.is_main:
                log.info(f"{name}: {self.ckpt_dir / 'last.pt'} holds step {self.saved_step}; run the same "
                         f"command with run_dir={self.run_dir} to resume")
            return s.result(self.run_dir, 128 + int(self.stop_signal))
        self.ctx.check_in_sync(self.model)
        if self.is_main:
            log.info(f"done: step {s.step}, val log-likelihood {s.val_log_likelihood:.4f} nats/sample, best "
                     f"{s.best_val_log_likelihood:.4f} (step {s.best_step}); skipped steps {s.skipped_steps}; "
                     f"checkpoints in {self.ckpt_dir}")
        return s.result(self.run_dir, 0)

    @property
    def cpu_fallback(self) -> bool:
        """`train.device=auto` found no CUDA device and runs on the CPU."""
        return str(self.tcfg.device) == "auto" and self.device.type == "cpu"

    def _log_start(self) -> None:
        s, cfg, precision = self.state, self.cfg, precision_name(self.amp_dtype)
        n_params = sum(p.numel() for p in self.model.parameters())
        where = f"{precision} on {self.device}, {self.threads.describe()}" + (" (train.device=auto: no CUDA GPU found)"
                                                   if self.cpu_fallback else "")
        batch = (f"global batch {self.global_batch}"
                 + (f" ({self.grad_accum} micro-batches of {self.batch_size} per process)" if self.grad_accum > 1
                    else "") + f" × {self.segment_length} samples")
        log.info(f"run {self.run_dir}: model {cfg.model.name} ({n_params / 1e6:.2f}M parameters), "
                 f"data {cfg.data.name}, {where}"
                 + (f" × {self.world} processes" if self.ctx.distributed else "")
                 + f", {batch}" + (f", train.memory={self.tcfg.memory}" if self.tcfg.memory != "standard" else "")
                 + (", compile on (train.compile=true: the first steps compile the conditioners)" if self.compiled
                    else ", compile off"))
        if not self.resumed:
            self.monitor.hparams(
                {"model": cfg.model.name, "data": cfg.data.name, "precision": precision,
                 "world_size": self.world, "global_batch": self.global_batch, "grad_accum": self.grad_accum,
                 "memory": str(self.tcfg.memory), "compile": self.compiled,
                 "segment_length": self.segment_length, "lr": float(self.tcfg.lr),
                 "seed": int(self.tcfg.seed), "grad_clip": float(self.tcfg.grad_clip or 0),
                 "warmup_steps": int(self.tcfg.warmup_steps or 0)},
                ["val/log_likelihood", "train/log_likelihood"])
        elif s.best_val_log_likelihood is not None:
            log.info(f"best val log-likelihood so far {s.best_val_log_likelihood:.4f} nats/sample "
                     f"(step {s.best_step})")

    def close(self) -> None:
        """Undo process-wide settings (deterministic mode, threads, cuDNN and TF32 flags), leave
        the process group, release the run directory."""
        self._saved_numerics.restore()
        self.monitor.close()
        if self.ctx is not None:
            self.ctx.close()
        if self.lock is not None:
            self.lock.release()


def _install_stop_handlers(trainer: Trainer) -> dict[int, Any]:
    """SIGTERM/SIGINT set `trainer.stop_signal`: the loop finishes the step, writes last.pt and
    returns 143/130. A second one takes the default action. Returns the handlers replaced."""
    handlers: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return handlers

    def on_signal(signum: int, frame: Any) -> None:
        if trainer.stop_signal is None:
            trainer.stop_signal = signum
            # A second signal takes the default action (the write in flight is atomic).
            signal.signal(signum, signal.SIG_DFL if signum == signal.SIGTERM else signal.default_int_handler)

    for signum in (signal.SIGTERM, signal.SIGINT):
        handlers[signum] = signal.signal(signum, on_signal)
    return handlers


def train(cfg: TrainApp, hooks: TrainHooks | None = None) -> TrainResult:
    """Train (or resume) the run described by `cfg`.

    Args:
        cfg: the validated waveglow_train settings (audio, data, model, train, run_dir).
        hooks: optional TrainHooks (tests).

    Returns:
        TrainResult; `exit_code` is 130/143 when a signal stopped the run after writing last.pt.

    Raises:
        UserError: bad settings or input files.
        TrainingError: a checkpoint write failed, or the guards gave up.
    """
    return run_trainer(Trainer(cfg, hooks))


def run_trainer(trainer: Trainer) -> TrainResult:
    """Set up, run and close `trainer` (a Trainer or a subclass: distillation's)."""
    try:
        trainer.setup()
        return trainer.run()
    finally:
        trainer.close()
