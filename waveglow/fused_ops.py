"""Training-path operators of the conditioner with their own backward (`torch.autograd.Function`).

Each computes, with autograd on, what the plain composition of torch operators computes, to
float rounding (fp32: the same operators in the same order, or the same products through
another matmul library), while storing less or calling faster kernels:

- `gated_tanh_sigmoid(g)`: tanh(g[:, :C])·sigmoid(g[:, C:]) from the whole [B, 2C, N] gate
  input. The plain form stores tanh and sigmoid outputs (2 × [B, C, N]) and, in backward,
  fills and adds two zero [B, 2C, N] tensors (the slices' backward); this one stores only g,
  recomputes tanh and sigmoid in backward and writes dL/dg's two halves directly. The
  backward runs the same aten operators as autograd's (`tanh_backward`, `sigmoid_backward`
  after the product's two multiplications), so the gradient is bit-identical in every dtype.
- `pointwise_conv_train(x, weight, bias)`: a 1×1 convolution through oneDNN's fp32 matmul
  in forward and backward (CPU, float32, no autocast). torch's fp32 `bmm` runs MKL, which
  takes its AVX2 code path on AMD CPUs (about half oneDNN's AVX-512 speed on these shapes;
  see `waveglow.conditioner.pointwise_conv`); both gradients are matmuls too
  (dL/dx_b = Wᵀ dL/dy_b, dL/dW = Σ_b dL/dy_b x_bᵀ), so all three run in oneDNN.
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


def _onednn_matmul(a: Tensor, b_t: Tensor) -> Tensor:
    """a @ b_tᵀ through `torch.ops.mkldnn._linear_pointwise` ([M, K] × [N, K] -> [M, N])."""
    return torch.ops.mkldnn._linear_pointwise(a, b_t, None, "none", [], "")


class _PointwiseOneDNN(torch.autograd.Function):
    """W @ x_b (+ bias) per batch item with oneDNN fp32 matmuls in forward and backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, w)
        ctx.has_bias = bias is not None
        B = x.shape[0]
        ys = [_onednn_matmul(w, x[b].t()) for b in range(B)]  # each [C_out, N]
        y = ys[0].unsqueeze(0) if B == 1 else torch.stack(ys)
        return y if bias is None else y.add_(bias.view(1, -1, 1))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # type: ignore[override]
        x, w = ctx.saved_tensors
        B = x.shape[0]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            w_t = w.t().contiguous()  # [C_in, C_out]
            gx = [_onednn_matmul(w_t, grad[b].t()) for b in range(B)]  # W^T dL/dy_b: [C_in, N]
            grad_x = gx[0].unsqueeze(0) if B == 1 else torch.stack(gx)
        if ctx.needs_input_grad[1]:
            for b in range(B):
                # dL/dy_b [C_out, N] @ x_b^T [N, C_in]: x_b is passed as the [C_in, N] "weight".
                part = _onednn_matmul(grad[b].contiguous(), x[b].contiguous())
                grad_w = part if grad_w is None else grad_w.add_(part)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2))
        return grad_x, grad_w, grad_b


def pointwise_conv_train(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1×1 convolution through oneDNN's fp32 matmuls, differentiable (CPU, float32).

    Callers check `onednn_training_applies` first.

    Args:
        x: [B, C_in, N] float32 on the CPU.
        weight: [C_out, C_in, 1] float32.
        bias: [C_out] or None.

    Returns:
        [B, C_out, N].
    """
    return _PointwiseOneDNN.apply(x, weight.squeeze(-1), bias)
