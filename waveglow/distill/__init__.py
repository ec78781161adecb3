"""Distillation: a smaller student flow trained to reproduce a teacher checkpoint.

One entry point, `distill(cfg)`, used by `waveglow-distill`. It runs the training loop of
`waveglow.train` (no second loop) with the student as the model and `DistillObjective` as the
step's loss: latent-matched regression (`distill.loss=regression`, the default), the exact
likelihood of fresh teacher samples (`likelihood`), either mixed with the student's likelihood
of the real audio (`distill.real_weight`). The run directory and its checkpoints are those of
a training run of the student (see waveglow.train), so synthesis, scoring, export and
evaluation take them as they are. See docs/distillation.md.

Modules: `objective` (the losses, as a module the training step calls), `teacher` (loading and
checking the teacher), `distance` (student vs teacher vs ground truth on held-out clips),
`loop` (DistillTrainer, distill).
"""

from waveglow.distill.distance import teacher_distances
from waveglow.distill.loop import DistillTrainer, distill
from waveglow.distill.objective import DistillObjective, mr_stft_loss

__all__ = ["distill", "DistillTrainer", "DistillObjective", "mr_stft_loss", "teacher_distances"]
