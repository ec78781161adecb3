"""One optimizer step of maximum-likelihood training: forward, backward, the non-finite check,
Adam. The trainer and the benchmark (`waveglow.bench`) run this same step."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from waveglow.runtime import autocast


@dataclass
class StepResult:
    """What one step did (the same on every rank).

    Attributes:
        loss: negative log-likelihood in nats per audio sample (mean over the global batch).
        grad_norm: global gradient norm before clipping (mean over ranks).
        skipped: the loss or the gradient was not finite; the weights were left alone.
        overflow: fp16 only: a skipped step that is GradScaler calibrating its scale.
        stop: some rank asked to stop (a signal) before this step's all-reduce.
        stats: per-flow monitoring terms (`flow_<k>/log_s`, ...) when asked for or when skipped.
        lr: the learning rate the step used.
    """

    loss: float
    grad_norm: float
    skipped: bool
    overflow: bool
    stop: bool
    stats: dict[str, float]
    lr: float


class Stepper:
    """Callable training step for `model` with `optimizer`.

    Args:
        model: the WaveGlow (its parameters are clipped; `forward_with_stats` for bad steps).
        optimizer: its optimizer (the lr of every group is set at each call).
        device: where batches go.
        amp_dtype: autocast dtype (None: fp32), from `waveglow.runtime.resolve_precision`.
        grad_clip: max global gradient norm (0: no clipping; the norm is still measured).
        scaler: a GradScaler for fp16 (None otherwise).
        net: what the forward calls: the DDP wrapper of `model`, or `model` (default).
        world: processes in the group; > 1 all-reduces the loss, norm and stop flag.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device,
                 amp_dtype: torch.dtype | None, grad_clip: float, scaler: torch.amp.GradScaler | None = None,
                 net: torch.nn.Module | None = None, world: int = 1) -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.amp_dtype = amp_dtype
        self.grad_clip = float(grad_clip or 0)
        self.scaler = scaler
        self.net = net if net is not None else model
        self.world = int(world)

    def __call__(self, audio: Tensor, mel: Tensor, lr: float, *, with_stats: bool = False,
                 stop: bool = False) -> StepResult:
        """Forward, backward, guards, optimizer step.

        Args:
            audio: [B, T] waveform batch (T a multiple of the model's n_group).
            mel: [B, n_mels, F] its log-mels.
            lr: learning rate of this step.
            with_stats: also return the per-flow log-det terms.
            stop: this rank was asked to stop (shared with the other ranks in the all-reduce).

        Returns:
            StepResult (a skipped step leaves the weights and optimizer moments untouched).
        """
        audio = audio.to(self.device, non_blocking=True)
        mel = mel.to(self.device, non_blocking=True)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.amp_dtype):
            if with_stats:
                log_prob, stats = self.net(audio, mel, return_stats=True)
            else:
                log_prob, stats = self.net(audio, mel), {}
        # The reduction in float32 whatever the autocast dtype: nats per audio sample.
        nll = -(log_prob.float().sum() / float(audio.numel()))
        if self.scaler is not None:
            self.scaler.scale(nll).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            nll.backward()
        clip = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        # One host sync per step; the loss of every rank is summed so all ranks decide alike
        # (gradients are already averaged over ranks by DDP).
        flags = torch.stack([nll.detach().float(), grad_norm.detach().float(),
                             torch.tensor(float(stop), device=nll.device)])
        if self.world > 1:
            flags = flags.double()
            dist.all_reduce(flags)
            loss, norm, stopped = flags[0].item() / self.world, flags[1].item() / self.world, flags[2].item()
        else:
            loss, norm, stopped = (float(v) for v in flags.tolist())
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
        return StepResult(loss=loss, grad_norm=norm, skipped=not finite, overflow=overflow, stop=stopped > 0,
                          stats={k: float(v) for k, v in stats.items()}, lr=lr)

    @torch.no_grad()
    def _stats_only(self, audio: Tensor, mel: Tensor) -> dict[str, Tensor]:
        """Per-flow terms for a batch that went wrong (what TensorBoard should show)."""
        with autocast(self.device, self.amp_dtype):
            _, stats = self.model.forward_with_stats(audio, mel)
        return stats
