"""The divergence guard: skipped non-finite steps, and going back to a good checkpoint.

* A step whose loss or gradient is not finite is skipped (the weights stay as they were) and
  counted; `train.guard.max_bad_steps` such steps in a row reload last.pt.
* A validation log-likelihood that is not finite, or more than `train.guard.val_drop`
  nats/sample below the best so far, reloads best.pt.
Each reload multiplies the learning rate by `train.guard.lr_factor`; after
`train.guard.max_recoveries` reloads training stops with a TrainingError.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from waveglow.config import TrainConfig
from waveglow.train.checkpoints import Checkpointer
from waveglow.train.distributed import DistContext
from waveglow.train.monitor import Monitor
from waveglow.train.state import LoopState, TrainingError, lr_at
from waveglow.train.step import StepResult

log = logging.getLogger("waveglow")


class Guard:
    """Watches the steps and validations of one run (the same decisions on every rank).

    Args:
        state: the loop state (counters updated in place).
        train_cfg: the `train` settings (`guard`, and the lr schedule for the log line).
        checkpoints: reloads a checkpoint's weights and optimizer state.
        ctx: the process group.
        monitor: TensorBoard (`zz_optim/recoveries`).
    """

    def __init__(self, state: LoopState, train_cfg: TrainConfig, checkpoints: Checkpointer,
                 ctx: DistContext, monitor: Monitor) -> None:
        self.state = state
        self.tcfg = train_cfg
        self.cfg = train_cfg.guard
        self.checkpoints = checkpoints
        self.ctx = ctx
        self.monitor = monitor

    def after_step(self, out: StepResult) -> None:
        """Count a skipped step (the step counter already advanced) and warn about it."""
        s = self.state
        if not out.skipped:
            s.bad_streak = 0
            return
        s.skipped_steps += 1
        if out.overflow:
            if self.ctx.is_main:
                log.info(f"step {s.step}: fp16 gradient overflow; step skipped, loss scale lowered")
            return
        s.bad_streak += 1
        if self.ctx.is_main:
            what = "loss" if not math.isfinite(out.loss) else "gradient"
            log.warning(f"step {s.step}: non-finite {what}; step skipped ({s.skipped_steps} so far)")

    def check_streak(self) -> None:
        """Reload last.pt after `max_bad_steps` consecutive non-finite steps."""
        s = self.state
        if s.bad_streak >= int(self.cfg.max_bad_steps):
            self.recover(f"{s.bad_streak} consecutive non-finite steps", self.checkpoints.last)

    def after_validation(self, value: float) -> bool:
        """Judge a validation result; True if it is a new best (False after a recovery)."""
        s = self.state
        best = s.best_val_log_likelihood
        margin = float(self.cfg.val_drop)
        if not math.isfinite(value) or (best is not None and value < best - margin):
            what = ("val log-likelihood is not finite" if not math.isfinite(value) else
                    f"val log-likelihood {value:.3f} fell more than {margin} nats/sample below "
                    f"the best ({best:.3f})")
            best_path = self.checkpoints.dir / "best.pt"
            self.recover(what, best_path if best_path.is_file() else self.checkpoints.last)
            return False
        if best is None or value > best:
            s.best_val_log_likelihood = value
            s.best_step = s.step
            return True
        return False

    def recover(self, reason: str, source: Path) -> None:
        """Reload `source` (weights + optimizer), lower the lr, keep the data moving forward.

        Raises:
            TrainingError: more than `max_recoveries` recoveries.
        """
        s = self.state
        s.recoveries += 1
        limit = int(self.cfg.max_recoveries)
        if s.recoveries > limit:
            raise TrainingError(f"training diverged at step {s.step}: {reason}; gave up after "
                                f"{limit} recoveries (last good checkpoint: {source})")
        self.ctx.barrier()
        ckpt = self.checkpoints.load_weights(source)
        s.lr_mult *= float(self.cfg.lr_factor)
        s.bad_streak = 0
        if self.ctx.is_main:
            log.warning(f"guard: {reason} at step {s.step}; reloaded {source} (step {ckpt['step']}) and "
                        f"lowered lr to {lr_at(s.step, self.tcfg, s.lr_mult):.3g} "
                        f"(recovery {s.recoveries}/{limit})")
        self.monitor.scalars(s.step, {"zz_optim/recoveries": s.recoveries})
