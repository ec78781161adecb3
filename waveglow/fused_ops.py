"""Training-path operators of the conditioner with their own backward (`torch.autograd.Function`).

Each computes, with autograd on, what the plain composition of torch operators computes (the
same operators in the same order), while storing less or running fewer kernels:

- `gated_tanh_sigmoid(g)`: tanh(g[:, :C])·sigmoid(g[:, C:]) from the whole [B, 2C, N] gate
  input. The plain form stores tanh and sigmoid outputs (2 × [B, C, N]) and, in backward,
  fills and adds two zero [B, 2C, N] tensors (the slices' backward); this one stores only g,
  recomputes tanh and sigmoid in backward and writes dL/dg's two halves directly. The
  backward runs the same aten operators as autograd's (`tanh_backward`, `sigmoid_backward`
  after the product's two multiplications), so the gradient is bit-identical in every dtype.

The same file's sibling changes live in `WN.forward` (split views instead of per-layer slices).
Not kept (measured, docs/performance.md, issue 22): the 1×1 convolutions through oneDNN's fp32
matmul in forward and backward (dL/dx = Wᵀ dL/dy, dL/dW = Σ_b dL/dy_b x_bᵀ) instead of MKL's
`baddbmm` ran slower in training (0.77-0.92× on the conditioning projection's shapes).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _GatedTanhSigmoid(torch.autograd.Function):
    """tanh(a)·sigmoid(b) of g = [a; b] (channel halves) storing only g."""

    @staticmethod
    def forward(ctx: Any, g: Tensor) -> Tensor:  # type: ignore[override]
        C = g.shape[1] // 2
        ctx.save_for_backward(g)
        return torch.tanh(g[:, :C]) * torch.sigmoid(g[:, C:])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        (g,) = ctx.saved_tensors
        C = g.shape[1] // 2
        t = torch.tanh(g[:, :C])
        s = torch.sigmoid(g[:, C:])
        out = torch.empty_like(g)
        # Autograd's own sequence for y = t·s, t = tanh(a), s = sigmoid(b): dL/dt = dL/dy·s,
        # dL/ds = dL/dy·t, then the two activations' backward operators.
        torch.ops.aten.tanh_backward.grad_input(grad * s, t, grad_input=out[:, :C])
        torch.ops.aten.sigmoid_backward.grad_input(grad * t, s, grad_input=out[:, C:])
        return out


def gated_tanh_sigmoid(g: Tensor) -> Tensor:
    """WaveNet's gate with a backward that stores only its input.

    Args:
        g: [B, 2C, N] gate input (tanh half first, sigmoid half second).

    Returns:
        [B, C, N] tanh(g[:, :C])·sigmoid(g[:, C:]) in g's dtype.
    """
    if not torch.is_grad_enabled() or not g.requires_grad:
        C = g.shape[1] // 2
        return torch.tanh(g[:, :C]) * torch.sigmoid(g[:, C:])
    return _GatedTanhSigmoid.apply(g)
