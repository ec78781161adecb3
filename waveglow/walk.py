"""Walking the flow parts: each part's monitoring terms, and the walk that keeps no activations
for the backward pass (the model's `memory="invertible"`).

Invertible backprop: the forward walk keeps only the final output and the conditioning; the
backward pass walks the parts in reverse, rebuilding each part's input from its output
(`FlowPart.inverse_vjp`) and backpropagating through that part alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from waveglow.conv_paths import autograd_numerics
from waveglow.flows import FlowPart, trainable


def record_stats(stats: dict[str, Tensor], part: FlowPart, logdet: Tensor, length: int) -> None:
    """Add a part's monitoring terms to `stats` (detached): `flow_{k}/{stat_key}` = its mean
    log-det per audio sample (`length` samples per item), and its `extra_stats()`."""
    if part.stat_key is None:
        return
    prefix = f"flow_{part.flow_index}/"
    stats[prefix + part.stat_key] = logdet.detach().mean() / length
    for key, value in part.extra_stats().items():
        stats[prefix + key] = value


def walk_recomputed(parts: Sequence[FlowPart], x: Tensor, cond: Tensor,
                    stats: dict[str, Tensor] | None = None, length: int = 1) -> tuple[Tensor, Tensor]:
    """Walk `parts` forward like a plain loop, but keep no activations for the backward pass.

    Same value as `for part in parts: x, logdet = part(x, cond)` (summing the log-dets), and
    the same gradients for x, cond and every part's parameters, up to float rounding: the
    backward pass rebuilds each part's input from its output (`FlowPart.inverse_vjp`). Only
    the final output and the conditioning are kept; memory is that of one part's activations.
    Under autocast the backward pass recomputes under the forward's autocast settings, so the
    conditioner's outputs it inverts with are the forward's own.

    Args:
        parts: the flow parts in forward order.
        x: the walk's input ([B, T] audio for the model's walk).
        cond: the conditioning every part sees.
        stats: filled (if given) with each part's detached monitoring terms, as the model's
            standard walk does: `flow_{k}/{stat_key}` = mean log-det / `length`, plus extras.
        length: audio samples per item (the stats' unit).

    Returns:
        (output, summed log-det [B]).
    """
    params = [trainable(part) for part in parts]
    flat = [p for group in params for p in group]
    return _RecomputedWalk.apply(tuple(parts), tuple(len(g) for g in params), stats, length, x, cond,
                                 *flat)


class _RecomputedWalk(torch.autograd.Function):
    """The autograd node of `walk_recomputed`. The parameters are inputs of the node, so their
    gradients come back through the engine (one accumulation each, as DDP's hooks expect)."""

    @staticmethod
    def forward(ctx: Any, parts: tuple[FlowPart, ...], counts: tuple[int, ...],
                stats: dict[str, Tensor] | None, length: int, x: Tensor, cond: Tensor,
                *params: Tensor) -> tuple[Tensor, Tensor]:
        total: Tensor | None = None
        with autograd_numerics():  # autograd is off in here: compute as the backward pass will
            for part in parts:
                x, logdet = part(x, cond)
                total = logdet if total is None else total + logdet
                if stats is not None:
                    record_stats(stats, part, logdet, length)
        assert total is not None, "walk_recomputed needs at least one part"
        device = x.device.type
        ctx.parts, ctx.counts = parts, counts
        ctx.amp = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(x, cond)
        return x, total

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, grad_total: Tensor | None
                 ) -> tuple[Tensor | None, ...]:
        y, cond = ctx.saved_tensors
        want_cond = ctx.needs_input_grad[5]
        cond_in = cond.detach().requires_grad_(want_cond)
        grad_y = grad_out if grad_out is not None else torch.zeros_like(y)
        grad_logdet = grad_total if grad_total is not None else y.new_zeros(y.shape[0])
        grad_cond: Tensor | None = None
        # Every parameter's gradient buffer is allocated here, before any part's working set:
        # allocated part by part instead, the long-lived gradients would sit between the freed
        # working sets of earlier parts and fragment the heap (+500 MiB of resident memory for
        # waveglow_256, batch 2 × 16,000, on CPU).
        buffers = [[torch.zeros_like(p) for p in trainable(part)] for part in ctx.parts]
        grad_params: list[list[Tensor | None]] = []
        device, amp_on, amp_dtype = ctx.amp
        with torch.autocast(device, dtype=amp_dtype, enabled=amp_on), autograd_numerics():
            for part, count, bufs in zip(reversed(ctx.parts), reversed(ctx.counts), reversed(buffers)):
                y, grad_y, g_cond, g_params = part.inverse_vjp(y.detach(), cond_in, grad_y, grad_logdet)
                assert len(g_params) == count == len(bufs)
                grad_params.append([None if g is None else buf.copy_(g) for g, buf in zip(g_params, bufs)])
                del g_params
                if g_cond is not None:
                    grad_cond = g_cond if grad_cond is None else grad_cond.add_(g_cond)
        grad_x = grad_y if ctx.needs_input_grad[4] else None
        flat = [g for group in reversed(grad_params) for g in group]
        return (None, None, None, None, grad_x, grad_cond, *flat)
