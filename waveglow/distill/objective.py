"""The distillation objectives, as one module the training step calls like the model itself.

`DistillObjective(audio, mel)` returns minus the loss of each batch item times its samples
(the units of `WaveGlow.forward`'s log-likelihood), so the unchanged training step
(`waveglow.train.step.Stepper`: autocast, micro-batches, the non-finite check, clipping, Adam,
DDP) minimizes the mean loss per audio sample. The teacher is held outside the module's
children: it is neither trained, nor saved, nor synchronized by DDP.

Objectives (`distill.loss`, plus `distill.real_weight`):
    regression   for one mel and one latent z ~ N(0, sigma^2) [B, T], the student's decoded
                 audio is pulled toward the teacher's: l1_weight * mean|s - t| +
                 stft_weight * multi-resolution STFT distance (spectral convergence +
                 log-magnitude L1 at the three resolutions of `waveglow.inference.metrics`).
    likelihood   the student's negative log-likelihood (nats/sample) of fresh teacher samples
                 decoded from z ~ N(0, sigma^2).
    real_weight  adds real_weight * the student's NLL of the real training audio.

The latent of each step comes from its own generator seeded by (seed, step, rank, micro-batch),
not from the global RNG: a resumed run draws the same z, and calling the objective outside
training (the throughput check) changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from waveglow.config import DistillConfig
from waveglow.inference.metrics import STFT_RESOLUTIONS
from waveglow.model import WaveGlow


def mr_stft_loss(target: Tensor, output: Tensor,
                 resolutions: Sequence[tuple[int, int, int]] = STFT_RESOLUTIONS) -> Tensor:
    """Differentiable multi-resolution STFT distance per batch item (the definition of
    `waveglow.inference.metrics.multi_resolution_stft_distance`, batched, in float32).

    Args:
        target: audio [B, T] (no gradient needed).
        output: audio [B, T].
        resolutions: (n_fft, hop, win) triples.

    Returns:
        [B]: (spectral convergence + log-magnitude L1), averaged over the resolutions.
    """
    total = target.new_zeros(target.shape[0], dtype=torch.float32)
    with torch.autocast(target.device.type, enabled=False):
        x, y = target.float(), output.float()
        for n_fft, hop, win in resolutions:
            window = torch.hann_window(win, device=x.device, dtype=x.dtype)
            pad = max(0, n_fft // 2 + 1 - x.shape[-1])  # reflect padding needs more than n_fft/2
            xs = nn.functional.pad(x, (0, pad)) if pad else x
            ys = nn.functional.pad(y, (0, pad)) if pad else y
            mx = torch.stft(xs, n_fft, hop, win, window, return_complex=True).abs().clamp_min(1e-7)
            my = torch.stft(ys, n_fft, hop, win, window, return_complex=True).abs().clamp_min(1e-7)
            sc = torch.linalg.vector_norm(mx - my, dim=(1, 2)) / torch.linalg.vector_norm(mx, dim=(1, 2)).clamp_min(1e-7)
            lm = (mx.log() - my.log()).abs().mean(dim=(1, 2))
            total = total + sc + lm
    return total / len(resolutions)


def common_multiple(*models: WaveGlow) -> int:
    """The audio length multiple every model accepts (lcm of their n_group)."""
    out = 1
    for m in models:
        out = out * m.n_group // math.gcd(out, m.n_group)
    return out


class DistillObjective(nn.Module):
    """Student + (frozen) teacher, called as `objective(audio, mel)` by the training step.

    Args:
        student: the WaveGlow being trained (its only child module).
        teacher: the trained WaveGlow to reproduce (eval mode, no gradients).
        settings: the `distill` settings.
        seed: the run's `train.seed` (with `step`, `rank`, the micro-batch: each step's z).
        rank: this process's rank.
    """

    def __init__(self, student: WaveGlow, teacher: WaveGlow, settings: DistillConfig, *, seed: int,
                 rank: int = 0) -> None:
        super().__init__()
        self.student = student
        self._teacher = (teacher,)  # a tuple: not a child module (not trained, saved or DDP-synced)
        self.settings = settings
        self.seed = int(seed)
        self.rank = int(rank)
        self.multiple = common_multiple(student, teacher)
        self.step = 0      # set by the trainer before each step
        self._piece = 0    # micro-batch counter within the step
        self._terms: dict[str, Tensor] = {}
        self._count = 0

    @property
    def teacher(self) -> WaveGlow:
        return self._teacher[0]

    def set_step(self, step: int) -> None:
        """The optimizer step about to run (seeds its latents)."""
        self.step, self._piece = int(step), 0

    def latent(self, batch: int, length: int, device: torch.device) -> Tensor:
        """z ~ N(0, sigma^2) [batch, length] (float32) for the current step and micro-batch."""
        gen = torch.Generator(device=device)
        # Distinct streams per (seed, step, rank, micro-batch), far from the data's seeds.
        gen.manual_seed(((self.seed * 1_000_003 + self.step) * 4099 + self.rank) * 257 + self._piece + 7)
        self._piece += 1
        return torch.randn(batch, length, generator=gen, device=device) * float(self.settings.sigma)

    @torch.no_grad()
    def teacher_audio(self, z: Tensor, mel: Tensor) -> Tensor:
        """The teacher's audio [B, T] for latent z [B, T] (clamped to [-1, 1], as a WAV holds it)."""
        return self.teacher.decode(z, mel).float().clamp(-1.0, 1.0)

    def forward(self, audio: Tensor, mel: Tensor, return_stats: bool = False, memory: str = "standard"
                ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Minus the loss of each item × its samples (nats for likelihood terms).

        Args:
            audio: [B, T] real training audio (T a multiple of the student's n_group).
            mel: [B, n_mels, F] its log-mels.
            return_stats: also return a dict of monitoring terms (empty: the distillation
                terms are logged as distill/* by the trainer).
            memory: the student's likelihood memory mode (see `WaveGlow.forward`).

        Returns:
            [B] float32, and `{}` with `return_stats`.
        """
        s = self.settings
        B, T = audio.shape
        loss = audio.new_zeros(B, dtype=torch.float32)
        terms: dict[str, Tensor] = {}
        if float(s.weight) > 0:
            # Both models must accept the length: the lcm of their n_group (a few samples cut).
            n = T - T % self.multiple
            z = self.latent(B, n, audio.device)
            target = self.teacher_audio(z, mel)
            if s.loss == "regression":
                out = self.student.decode(z, mel).float()
                l1 = (out - target).abs().mean(dim=1)
                stft = mr_stft_loss(target, out)
                term = float(s.l1_weight) * l1 + float(s.stft_weight) * stft
                terms.update({"distill/l1": l1.detach(), "distill/mr_stft": stft.detach()})
            else:
                term = -self.student(target, mel, memory=memory).float() / n
                terms["distill/teacher_nll"] = term.detach()
            loss = loss + float(s.weight) * term
        if float(s.real_weight) > 0:
            real = -self.student(audio, mel, memory=memory).float() / T
            terms["distill/real_nll"] = real.detach()
            loss = loss + float(s.real_weight) * real
        terms["distill/loss"] = loss.detach()
        if torch.is_grad_enabled():  # training steps only (not the throughput check's calls)
            for k, v in terms.items():
                self._terms[k] = self._terms.get(k, 0.0) + v.sum()
            self._count += B
        value = -loss * T
        return (value, {}) if return_stats else value

    def pop_terms(self) -> dict[str, Tensor]:
        """Means over the items seen since the last call of each distill/* term (tensors: the host
        transfer happens when they are logged), and reset."""
        out = {k: v / max(1, self._count) for k, v in self._terms.items()}
        self._terms, self._count = {}, 0
        return out
