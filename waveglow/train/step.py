"""One optimizer step of maximum-likelihood training: forward and backward over the step's
micro-batches, the non-finite check, Adam. The trainer and the benchmark (`waveglow.bench`)
run this same step."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from waveglow.flows import drop_cached_inverses
from waveglow.runtime import autocast


@dataclass
class StepResult:
    """What one step did (the same on every rank).

    Attributes:
        loss: negative log-likelihood in nats per audio sample (mean over the global batch, all
            micro-batches included).
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
        grad_accum: micro-batches per step: a batch of B·grad_accum items is split into
            grad_accum pieces whose gradients add up to the gradient of the whole batch (DDP
            synchronizes only on the last piece).
        memory: standard | invertible, passed to the model's forward (see `WaveGlow.log_prob`).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, device: torch.device,
                 amp_dtype: torch.dtype | None, grad_clip: float, scaler: torch.amp.GradScaler | None = None,
                 net: torch.nn.Module | None = None, world: int = 1, grad_accum: int = 1,
                 memory: str = "standard") -> None:
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.amp_dtype = amp_dtype
        self.grad_clip = float(grad_clip or 0)
        self.scaler = scaler
        self.net = net if net is not None else model
        self.world = int(world)
        self.grad_accum = int(grad_accum)
        self.forward_kwargs = {"memory": memory}

    def __call__(self, audio: Tensor, mel: Tensor, lr: float, *, with_stats: bool = False,
                 stop: bool = False) -> StepResult:
        """Forward, backward (per micro-batch), guards, optimizer step.

        Args:
            audio: [B·grad_accum, T] waveform batch (T a multiple of the model's n_group).
            mel: [B·grad_accum, n_mels, F] its log-mels.
            lr: learning rate of this step.
            with_stats: also return the per-flow log-det terms.
            stop: this rank was asked to stop (shared with the other ranks in the all-reduce).

        Returns:
            StepResult (a skipped step leaves the weights and optimizer moments untouched).
        """
        if audio.shape[0] % self.grad_accum:
            raise ValueError(f"batch of {audio.shape[0]} is not a multiple of grad_accum={self.grad_accum}")
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        # The loss of each piece is divided by the samples of the whole batch: the summed
        # gradients are those of the whole batch's mean NLL per sample.
        total = float(audio.numel())
        nll: Tensor | None = None
        stats: dict[str, Tensor] = {}
        pieces = list(zip(audio.chunk(self.grad_accum), mel.chunk(self.grad_accum)))
        for i, (a, m) in enumerate(pieces):
            a = a.to(self.device, non_blocking=True)
            m = m.to(self.device, non_blocking=True)
            last = i == len(pieces) - 1
            sync = contextlib.nullcontext() if last or not hasattr(self.net, "no_sync") else self.net.no_sync()
            with sync:
                with autocast(self.device, self.amp_dtype):
                    if with_stats:
                        log_prob, piece_stats = self.net(a, m, return_stats=True, **self.forward_kwargs)
                        for k, v in piece_stats.items():
                            stats[k] = stats.get(k, 0.0) + v.detach().float() / len(pieces)
                    else:
                        log_prob = self.net(a, m, **self.forward_kwargs)
                # The reduction in float32 (float64 for a float64 model) whatever the autocast
                # dtype: nats per audio sample.
                piece = -(log_prob.to(torch.promote_types(log_prob.dtype, torch.float32)).sum() / total)
                (self.scaler.scale(piece) if self.scaler is not None else piece).backward()
            nll = piece.detach() if nll is None else nll + piece.detach()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        clip = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        loss, norm, stopped, stat_values = self._sync(nll, grad_norm, stop, list(stats.values()))
        finite = math.isfinite(loss) and math.isfinite(norm)
        # fp16: an overflowing gradient with a finite loss while the loss scale is still >= 1 is
        # GradScaler calibrating its scale (it halves it), not the model diverging.
        overflow = (not finite and self.scaler is not None and math.isfinite(loss)
                    and self.scaler.get_scale() >= 1.0)
        if finite:
            # The gradients are known to be finite (their norm is), so GradScaler.step's own
            # check (a host sync) is not needed: the unscaled gradients are applied directly.
            self.optimizer.step()
            # The weights changed: the 1×1 convolutions' cached inverses (invertible backprop
            # inverts each once per step) are stale, even where the optimizer left the
            # version counter alone (fused optimizers).
            drop_cached_inverses(self.model)
        if self.scaler is not None:
            if math.isfinite(loss):
                self.scaler.update()  # halves the scale after non-finite gradients
            else:
                # A non-finite loss is the data or the model, not the loss scale: keep the scale
                # (halving it would leave fp16 unable to learn after a run of bad batches).
                self.scaler.update(new_scale=self.scaler.get_scale())
        self.optimizer.zero_grad(set_to_none=True)
        out_stats = dict(zip(stats, stat_values))
        if not finite and not out_stats:
            out_stats = self._stats_only(audio, mel)
        return StepResult(loss=loss, grad_norm=norm, skipped=not finite, overflow=overflow, stop=stopped > 0,
                          stats=out_stats, lr=lr)

    def _sync(self, nll: Tensor, grad_norm: Tensor, stop: bool, stats: list[Tensor]
              ) -> tuple[float, float, float, list[float]]:
        """The step's figures on the host in one transfer (and one all-reduce under DDP): loss,
        grad norm and per-flow terms averaged over ranks, the stop flag summed."""
        flags = torch.stack([nll.double(), grad_norm.detach().double(),
                             torch.tensor(float(stop), dtype=torch.float64, device=nll.device),
                             *(v.double() for v in stats)])
        if self.world > 1:
            # The loss of every rank is summed so that all ranks decide alike (gradients are
            # already averaged over ranks by DDP).
            dist.all_reduce(flags)
            values = flags.tolist()
            n = self.world
            return values[0] / n, values[1] / n, values[2], [v / n for v in values[3:]]
        values = flags.tolist()
        return values[0], values[1], values[2], values[3:]

    @torch.no_grad()
    def _stats_only(self, audio: Tensor, mel: Tensor) -> dict[str, float]:
        """Per-flow terms for a batch that went wrong (what TensorBoard should show)."""
        audio = audio.to(self.device)
        mel = mel.to(self.device)
        with autocast(self.device, self.amp_dtype):
            _, stats = self.model.forward_with_stats(audio, mel)
        values = torch.stack([v.float() for v in stats.values()]).tolist() if stats else []
        return dict(zip(stats, values))
