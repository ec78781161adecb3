"""Training-path operators of the conditioner with their own backward (`torch.autograd.Function`).

Each computes, with autograd on, what the plain composition of torch operators computes (the
same operators in the same order), while storing less or running fewer kernels:

- `gated_tanh_sigmoid(g)`: tanh(g[:, :C])·sigmoid(g[:, C:]) from the whole [B, 2C, N] gate
  input. It stores what autograd stores, the two activations t = tanh and s = sigmoid
  (2 × [B, C, N]), but where the plain form's backward fills and adds two zero [B, 2C, N]
  tensors (the slices' backward), this one writes dL/dg's two halves directly into one
  [B, 2C, N] tensor. The backward runs the same aten operators as autograd's
  (`tanh_backward`, `sigmoid_backward` after the product's two multiplications), so the
  gradient is bit-identical in every dtype. (Storing g instead and recomputing t and s in
  backward saves the same bytes, but kept every layer's [B, 2C, N] gate input alive in place
  of two [B, C, N] halves, and glibc's resident peak rose by 240 MiB on a waveglow_256
  step of 2 × 16,000 samples; docs/performance.md, issue 22.)

The same file's sibling changes live in `WN.forward` (split views instead of per-layer slices).
Not kept (measured, docs/performance.md, issue 22): the 1×1 convolutions through oneDNN's fp32
matmul in forward and backward (dL/dx = Wᵀ dL/dy, dL/dW = Σ_b dL/dy_b x_bᵀ) instead of MKL's
`baddbmm` ran slower in training (0.77-0.92× on the conditioning projection's shapes).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

# Whether the training-path operators of this module (and the split views of the
# conditioning projection) run; `plain_training_ops()` turns them off, for the tests and A/B
# measurements that compare them with the plain composition of torch operators.
_FUSED_TRAINING_OPS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "waveglow_fused_training_ops", default=True)


@contextlib.contextmanager
def plain_training_ops() -> Iterator[None]:
    """Inside: the conditioner's autograd path uses only plain torch operators (slices of the
    conditioning projection, tanh·sigmoid with autograd's own backward, `baddbmm` 1×1 convs):
    the reference the fused training operators are tested and measured against."""
    token = _FUSED_TRAINING_OPS.set(False)
    try:
        yield
    finally:
        _FUSED_TRAINING_OPS.reset(token)


def fused_training_ops() -> bool:
    """Whether the training-path operators run (False inside `plain_training_ops()`)."""
    return _FUSED_TRAINING_OPS.get()


class _GatedTanhSigmoid(torch.autograd.Function):
    """tanh(a)·sigmoid(b) of g = [a; b] (channel halves), its gradient written as one tensor."""

    @staticmethod
    def forward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        C = g.shape[1] // 2
        t = torch.tanh(g[:, :C])  # [B, C, N]
        s = torch.sigmoid(g[:, C:])  # [B, C, N]
        ctx.save_for_backward(t, s)
        return t * s

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        t, s = ctx.saved_tensors
        B, C, N = t.shape
        out = grad.new_empty(B, 2 * C, N)  # dL/dg: tanh half, then sigmoid half
        # Autograd's own sequence for y = t·s, t = tanh(a), s = sigmoid(b): dL/dt = dL/dy·s,
        # dL/ds = dL/dy·t, then the two activations' backward operators.
        torch.ops.aten.tanh_backward.grad_input(grad * s, t, grad_input=out[:, :C])
        torch.ops.aten.sigmoid_backward.grad_input(grad * t, s, grad_input=out[:, C:])
        return out


def gated_tanh_sigmoid(g: Tensor) -> Tensor:
    """WaveNet's gate with a backward that writes dL/dg without zero-filled slices.

    Args:
        g: [B, 2C, N] gate input (tanh half first, sigmoid half second).

    Returns:
        [B, C, N] tanh(g[:, :C])·sigmoid(g[:, C:]) in g's dtype.
    """
    if not torch.is_grad_enabled() or not g.requires_grad:
        C = g.shape[1] // 2
        return torch.tanh(g[:, :C]) * torch.sigmoid(g[:, C:])
    return _GatedTanhSigmoid.apply(g)
