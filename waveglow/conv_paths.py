"""The conditioner's convolutions: one 1×1 product for every path, and the inference fast paths.

`pointwise_conv` is every 1×1 convolution of the conditioner and the upsampler (oneDNN's matmul
in fp32 CPU inference, `baddbmm` otherwise). Without autograd, on the CPU: depthwise convs as
shifted multiply-adds (`depthwise_shifted`, fp32) and dense dilated convs as one matmul over
their stacked taps (`dilated_as_matmul`, bf16). `autograd_numerics()` turns the low-precision
reformulations off, so that a pass without autograd computes what one with autograd computes
(invertible backprop's forward walk). Which path a `WNConv1d` takes is decided in
`waveglow.conditioner`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Iterator

import torch
from torch import Tensor

# Whether the bf16 reformulations of the inference path (`dilated_as_matmul`, the float32
# gate) and its oneDNN 1×1 product may run; `autograd_numerics()` turns them off. The other
# fp32 ones change results only by float32 rounding and always run.
_LOW_PRECISION_FAST_PATHS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "waveglow_low_precision_fast_paths", default=True)


@contextlib.contextmanager
def autograd_numerics() -> Iterator[None]:
    """Inside: with autograd off, the conditioner computes in bf16/fp16 what it computes with
    autograd on (same operators, same roundings), up to float32 rounding.

    Invertible backprop runs its forward walk without autograd and recomputes each coupling's
    shift and scale with autograd in the backward pass, to invert the coupling: the two must
    agree, or the difference (bf16 rounding, ~4e-3 relative) shows up as reconstruction error.
    The 1×1 convs run as `baddbmm` there too, as with autograd.
    """
    token = _LOW_PRECISION_FAST_PATHS.set(False)
    try:
        yield
    finally:
        _LOW_PRECISION_FAST_PATHS.reset(token)


def low_precision_fast_paths() -> bool:
    """Whether the low-precision inference reformulations may run (False inside
    `autograd_numerics()`)."""
    return _LOW_PRECISION_FAST_PATHS.get()


@functools.cache
def _onednn_linear_available() -> bool:
    """Whether `torch.ops.mkldnn._linear_pointwise` exists here and computes `W @ x` correctly.

    It is a private oneDNN op (used by torch's inductor), so its presence and signature are
    probed once per process on a small product instead of being assumed; the answer depends
    only on the torch build, so caching it cannot go stale.
    """
    try:
        from torch.utils._python_dispatch import _disable_current_modes
    except ImportError:  # pragma: no cover - moved in another torch version
        _disable_current_modes = contextlib.nullcontext  # type: ignore[assignment]
    try:
        op = torch.ops.mkldnn._linear_pointwise
        # Real CPU tensors even if the first use happens under a dispatch mode (a FlopCounterMode
        # would count the probe, a FakeTensorMode would make it fail and cache a wrong answer).
        with _disable_current_modes(), torch.no_grad():
            g = torch.Generator().manual_seed(0)
            w = torch.randn(5, 3, generator=g, device="cpu")
            x = torch.randn(3, 7, generator=g, device="cpu")
            y = op(w, x.t(), None, "none", [], "")
            return tuple(y.shape) == (5, 7) and torch.allclose(y, w @ x, atol=1e-5, rtol=1e-5)
    except Exception:  # missing op, changed schema, build without oneDNN: use the fallback
        return False


def pointwise_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """A 1×1 convolution as one matrix product per batch item.

    fp32 on CPU without autograd (synthesis; not inside `autograd_numerics()`): oneDNN's matmul, called per batch item as
    `_linear_pointwise(W, x_b.t())` = `W @ x_b` (the activation is passed as the "weight"
    operand, so its [C_in, N] layout is used as is and the result comes out [C_out, N]). torch's
    own fp32 `bmm`/`baddbmm` run MKL, which takes its AVX2 code path on AMD CPUs: 40-55 GMAC/s
    per core against 85-120 for oneDNN's AVX-512 kernels on these shapes (whole waveglow_256
    synthesis +44%).

    Otherwise (autograd, autocast, other dtypes or devices): `baddbmm` with the weight expanded
    over the batch, about twice as fast on CPU as `conv1d` or `matmul` (both copy or transpose
    the activations first; 46 vs 20-22 GMAC/s for the 640 -> 4096 conditioning projection on one
    core) and as good as anything on CUDA. Under CPU autocast it runs in bf16.

    Args:
        x: [B, C_in, N].
        weight: [C_out, C_in, 1].
        bias: [C_out] or None.

    Returns:
        [B, C_out, N], in the dtype the product ran in (bf16 under CPU autocast).
    """
    B = x.shape[0]
    w = weight.squeeze(-1)
    if (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()  # inductor cannot lower this call; it picks its own product
            # Not in invertible backprop's forward walk: there the weights are new every step
            # and oneDNN's product ran at ~0.4 GMAC/s on squeeze's shapes (10 s of an 11 s
            # step); `baddbmm` is also what the walk's autograd recompute uses.
            and _LOW_PRECISION_FAST_PATHS.get()
            and _onednn_linear_available()):
        op = torch.ops.mkldnn._linear_pointwise
        ys = [op(w, x[b].t(), None, "none", [], "") for b in range(B)]  # each [C_out, N]
        y = ys[0].unsqueeze(0) if B == 1 else torch.stack(ys)
        # The op's own bias would be per column of its output (per time step), so the
        # per-channel bias is added afterwards, in place on the fresh output.
        return y if bias is None else y.add_(bias.view(1, -1, 1))
    w = w.expand(B, *w.shape)
    if bias is None:
        return torch.bmm(w, x)
    return torch.baddbmm(bias.view(1, -1, 1), w, x)


def in_dispatch_mode() -> bool:
    """Whether a TorchDispatchMode (FlopCounterMode, FakeTensorMode, ...) is active.

    Such modes inspect operators: under them the depthwise conv stays one convolution (which
    they count and understand) instead of k element-wise multiply-adds.
    """
    try:
        from torch.utils._python_dispatch import is_in_torch_dispatch_mode
    except ImportError:  # pragma: no cover - moved in another torch version
        return False
    return is_in_torch_dispatch_mode()


def depthwise_shifted(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
    """Depthwise "same" convolution as k shifted multiply-adds (fp32 CPU inference).

    For the `squeeze` configuration's small inputs (128 channels × ~172 steps per second of
    audio) oneDNN's depthwise kernel is dominated by its per-call overhead: the k vectorized
    multiply-adds over shifted views run 2-3.5x faster in fp32.

    Args:
        x: [B, C, N].
        weight: [C, 1, k], k odd (tap κ reads x[t + (κ - (k-1)/2)·dilation], zeros outside).
        bias: [C] or None.
        dilation: tap spacing.

    Returns:
        [B, C, N].
    """
    N = x.shape[2]
    k = weight.shape[2]
    c = (k - 1) // 2
    taps = weight[:, 0, :, None]  # [C, k, 1]
    y = torch.mul(x, taps[:, c])  # centre tap: [B, C, N]
    if bias is not None:
        y.add_(bias[:, None])
    for kappa in range(k):
        o = (kappa - c) * dilation
        if kappa == c or abs(o) >= N:  # a tap that only ever reads the zero padding
            continue
        if o > 0:
            y[:, :, :N - o].addcmul_(x[:, :, o:], taps[:, kappa])
        else:
            y[:, :, -o:].addcmul_(x[:, :, :N + o], taps[:, kappa])
    return y


def dilated_as_matmul(x: Tensor, weight: Tensor, bias: Tensor | None, dilation: int) -> Tensor:
    """A dense "same" dilated convolution as one matrix product over the stacked taps.

    bf16 CPU inference: oneDNN's bf16 convolution runs at 60-70% of its bf16 matmul speed for
    dilations 1 and >= 16 (waveglow_256 shapes, one core); stacking the k shifted copies of the
    input ([B, k·C, N], a small copy) and running one `pointwise_conv` product (oneDNN's bf16
    matmul under autocast) is 15% faster over the 8 dilations of a WN stack.

    Args:
        x: [B, C, N].
        weight: [O, C, k], k odd (tap κ reads x[t + (κ - (k-1)/2)·dilation], zeros outside).
        bias: [O] or None.
        dilation: tap spacing.

    Returns:
        [B, O, N] (bf16 under CPU autocast).
    """
    B, C, N = x.shape
    k = weight.shape[2]
    c = (k - 1) // 2
    cols = x.new_empty(B, k, C, N)  # row κ·C + i holds x[i, t + (κ - c)·dilation]
    for kappa in range(k):
        o = (kappa - c) * dilation
        dst = cols[:, kappa]
        if o == 0:
            dst.copy_(x)
        elif abs(o) >= N:
            dst.zero_()
        elif o > 0:
            dst[:, :, :N - o].copy_(x[:, :, o:])
            dst[:, :, N - o:].zero_()
        else:
            dst[:, :, -o:].copy_(x[:, :, :N + o])
            dst[:, :, :-o].zero_()
    w = weight.to(x.dtype).permute(0, 2, 1).reshape(weight.shape[0], k * C, 1)
    return pointwise_conv(cols.view(B, k * C, N), w, bias)
