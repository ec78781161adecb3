"""The distillation run: `waveglow.train.Trainer` with the student as its model and a
`DistillObjective` as what each step's forward calls. No second loop: resume, atomic
checkpoints, AMP, DDP, the guards, progress lines and TensorBoard are the trainer's.

What it adds:
    * the teacher, loaded and checked before the run directory is touched;
    * distill/* TensorBoard scalars every `train.log_every` steps: `distill/loss` (the
      objective), `distill/l1`, `distill/mr_stft` (regression), `distill/teacher_nll`
      (likelihood of teacher samples, nats/sample), `distill/real_nll` (with real_weight);
    * at every validation, beside the student's val log-likelihood (`val/log_likelihood`, which
      the guard and best.pt follow when the objective has a likelihood term; with regression
      alone they follow the student-teacher MR-STFT distance): the distances of `distill.val_clips` val
      clips decoded by student and teacher from the same latent (`distill/val_mel_l1_teacher`,
      `distill/val_mr_stft_teacher`), and of the student's and teacher's output to the originals
      (`distill/val_mel_l1_truth`, ..., `distill/val_teacher_mr_stft_truth`), also in metrics.jsonl.

The progress line's "train NLL" (and `train/log_likelihood`, `zz_optim/nll`) carries the
objective: an NLL only for distill.loss=likelihood.
"""

from __future__ import annotations

import json
import logging
import math

import torch
from torch import Tensor

from waveglow.config import DistillApp, to_dict
from waveglow.distill.distance import teacher_distances
from waveglow.distill.objective import DistillObjective
from waveglow.distill.teacher import load_teacher, warn_if_larger
from waveglow.mel import MelSpectrogram
from waveglow.train.loop import Trainer, TrainHooks, run_trainer
from waveglow.train.progress import append_metric
from waveglow.train.state import TrainResult
from waveglow.train.step import StepResult
from waveglow.train.validation import report_validation

log = logging.getLogger("waveglow")


class DistillTrainer(Trainer):
    """A training run of the student of `cfg` toward the teacher `cfg.teacher`."""

    def __init__(self, cfg: DistillApp, hooks: TrainHooks | None = None) -> None:
        super().__init__(cfg, hooks)  # type: ignore[arg-type]  # a TrainApp plus teacher and distill
        self.dcfg = cfg.distill
        self._window: dict[str, Tensor] = {}
        self._window_steps = 0
        self._teacher_truth: dict[str, float] | None = None
        self._teacher_outputs: dict[int, Tensor] = {}  # val clip -> the teacher's audio
        self._best_distance: float | None = None  # distill=regression: what best.pt follows

    def setup(self) -> None:
        # Before the run directory and its lock: a bad teacher is one error line, nothing written.
        self.teacher = load_teacher(str(self.cfg.teacher), to_dict(self.cfg.audio))
        super().setup()

    def _setup_data_and_model(self) -> None:
        super()._setup_data_and_model()
        if self.is_main:
            warn_if_larger(self.teacher, self.model, to_dict(self.cfg.audio))
        self.teacher.to(self.device)
        self.objective = DistillObjective(self.model, self.teacher, self.dcfg, seed=int(self.tcfg.seed),
                                          rank=self.ctx.rank)
        self.mel_fn = MelSpectrogram.from_config(self.cfg.audio)

    def training_net(self) -> torch.nn.Module:
        return self.objective

    def train_step(self, batch: dict[str, Tensor], with_stats: bool) -> StepResult:
        step = self.state.step + 1  # the step this one becomes
        self.objective.set_step(step)
        out = super().train_step(batch, with_stats)
        terms = self.objective.pop_terms()
        if not out.skipped:
            for k, v in terms.items():
                self._window[k] = self._window.get(k, 0.0) + v
            self._window_steps += 1
        if self._window_steps and (step % int(self.tcfg.log_every) == 0 or step == int(self.tcfg.max_steps)):
            values = {k: float(v) / self._window_steps for k, v in self._window.items()}
            self.monitor.scalars(step, values)
            self._window, self._window_steps = {}, 0
        return out

    @property
    def trains_likelihood(self) -> bool:
        """Whether the objective has a likelihood term (teacher samples or real audio)."""
        d = self.dcfg
        return (d.loss == "likelihood" and float(d.weight) > 0) or float(d.real_weight) > 0

    def validate(self) -> bool:
        """The student–teacher distances of the first `distill.val_clips` val clips, then the
        student's val log-likelihood. With a likelihood term in the objective the guard and
        best.pt follow the log-likelihood (the trainer's validation); with regression alone they
        follow the student–teacher MR-STFT distance, since the likelihood is not what is trained
        (it may fall by tens of nats/sample while the decoder gets closer to the teacher).

        Returns:
            True for a new best.
        """
        distance = self._report_distances() if self.is_main else None
        if self.trains_likelihood or int(self.dcfg.val_clips) == 0:
            return super().validate()
        value = self.validator.log_likelihood()
        self.state.val_log_likelihood = value
        report_validation(self.state, value, self.monitor, self.run_dir / "metrics.jsonl", self.is_main)
        self.validator.report_unseen(self.state.step, self.monitor, self.run_dir / "metrics.jsonl")
        s = self.state
        if math.isfinite(value) and (s.best_val_log_likelihood is None or value > s.best_val_log_likelihood):
            # Reported (log lines, TrainResult) as the run's best log-likelihood; not what best.pt follows.
            s.best_val_log_likelihood, s.best_step = value, s.step
        distance = self.ctx.broadcast_object(distance)
        if distance is None or not math.isfinite(distance):
            best = self.ckpt_dir / "best.pt"
            self.guard.recover("the student-teacher distance of the val clips is not finite",
                               best if best.is_file() else self.checkpoints.last)
            return False
        if self._best_distance is None and self.resumed:
            self._best_distance = self._best_distance_so_far()
        if self._best_distance is None or distance < self._best_distance:
            self._best_distance = distance
            if self.is_main:
                log.info(f"step {self.state.step}: new best student-teacher MR-STFT distance {distance:.4f} (best.pt)")
            return True
        return False

    def _best_distance_so_far(self) -> float | None:
        """The lowest val student-teacher MR-STFT distance in metrics.jsonl (a resumed run's
        history, already cut at its step), broadcast from rank 0."""
        best = None
        if self.is_main:
            path = self.run_dir / "metrics.jsonl"
            lines = path.read_text().splitlines() if path.is_file() else []
            records = [json.loads(x) for x in lines if x.strip()]
            # The current step's line is already written: it is not history.
            values = [r.get("distill_mr_stft_teacher") for r in records if r.get("step", 0) < self.state.step]
            values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
            best = min(values) if values else None
        return self.ctx.broadcast_object(best)

    def _report_distances(self) -> float | None:
        """Score, log and record the distances; returns the student-teacher MR-STFT distance."""
        n = min(int(self.dcfg.val_clips), len(self.validator.val_set))
        if n == 0:
            return None
        clips = [self.validator.item(i) for i in range(n)]
        was_training = self.model.training
        self.model.eval()
        try:
            d = teacher_distances(self.model, self.teacher, clips, sigma=float(self.dcfg.val_sigma),
                                  seed=int(self.tcfg.seed), mel_fn=self.mel_fn,
                                  with_teacher_truth=self._teacher_truth is None, cache=self._teacher_outputs)
        finally:
            self.model.train(was_training)
        if not d:
            return None
        if self._teacher_truth is None:  # the teacher does not change: scored once per process
            self._teacher_truth = {k: d.pop(k) for k in list(d) if k.startswith("teacher_")}
        d.update(self._teacher_truth)
        step = self.state.step
        self.monitor.scalars(step, {f"distill/val_{k}": v for k, v in d.items()})
        append_metric(self.run_dir / "metrics.jsonl", {"step": step, **{f"distill_{k}": v for k, v in d.items()}})
        finite = all(math.isfinite(v) for v in d.values())
        log.info(f"step {step}: student vs teacher on {n} val clip(s) at sigma {float(self.dcfg.val_sigma):g}: "
                 f"mel L1 {d['mel_l1_teacher']:.3f}, MR-STFT {d['mr_stft_teacher']:.3f}; vs the originals: "
                 f"student {d['mel_l1_truth']:.3f} / {d['mr_stft_truth']:.3f}, teacher "
                 f"{d['teacher_mel_l1_truth']:.3f} / {d['teacher_mr_stft_truth']:.3f} (mel L1 / MR-STFT, "
                 f"lower is better)" + ("" if finite else "; some distances are not finite"))
        return d["mr_stft_teacher"]


def distill(cfg: DistillApp, hooks: TrainHooks | None = None) -> TrainResult:
    """Distill (or resume distilling) the run described by `cfg`.

    Args:
        cfg: the validated waveglow_distill settings (teacher, audio, data, model = the student,
            train, distill, run_dir).
        hooks: optional TrainHooks (tests).

    Returns:
        TrainResult of the student's run; `exit_code` 130/143 after a signal (last.pt written).

    Raises:
        UserError: bad settings or input files (the teacher included), before anything is written
            for the teacher's checks.
        TrainingError: a checkpoint write failed, or the guards gave up.
    """
    return run_trainer(DistillTrainer(cfg, hooks))

