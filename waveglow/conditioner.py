"""The coupling's conditioner: a WaveNet-like stack of gated dilated convolutions.

`WN(a, cond)` maps the conditioning half `a` of the squeezed audio and the squeezed mel
`cond` to the coupling's shift and log-scale. It follows the reference layout exactly, so that
imported weights reproduce the reference numerically:

    h    = start(a)                                   1×1, n_in -> C
    c    = cond_layer(cond)                           1×1, n_cond -> 2·C·L (all layers at once)
    for layer i (dilation 2^i):
        g    = in_layers[i](h) + c[:, 2·C·i : 2·C·(i+1)]
        acts = tanh(g[:, :C]) · sigmoid(g[:, C:])
        rs   = res_skip_layers[i](acts)               1×1, C -> 2C (last layer: C, skip only)
        h   += rs[:, :C]  (not the last layer);  skip += rs[:, C:] (last layer: rs)
    out  = end(skip)                                  plain 1×1, C -> n_out, zero at init

`start`, `in_layers.i`, `res_skip_layers.i` and `cond_layer` are weight-normed
(`WNConv1d`, parameters `weight_g [out,1,1]`, `weight_v [out,in/groups,k]`, `bias [out]`:
the same names and shapes as `torch.nn.utils.weight_norm` gives); `end` is a plain
`nn.Conv1d` (`weight`, `bias`). With `depthwise=True` (the fast configuration) each
`in_layers.i` is instead a depthwise-separable pair `in_layers.i.depthwise` (C -> C, groups C,
dilated) and `in_layers.i.pointwise` (1×1, C -> 2C), both weight-normed.

`remove_weight_norm()` folds every `weight_g`/`weight_v` pair into one `weight` parameter
(state_dict keys change from `*.weight_g`/`*.weight_v` to `*.weight`).

The conditioning projection's bias is added through the dilated convs' biases instead of over
its whole output (with and without autograd alike). Inference fast paths (autograd off, e.g.
`torch.inference_mode`; same results to float rounding, nothing cached from the weights, the
state_dict untouched): intermediates are updated in place; on CPU in float32 (no autocast) the
1×1 convs run as oneDNN matmuls and depthwise convs as shifted
multiply-adds (`depthwise_shifted`); in bf16 (CPU autocast) the dense dilated convs run as one
matmul over their stacked taps (the kernels: `waveglow.conv_paths`); on CPU in fp32 and bf16 the gate's tanh
is 2·sigmoid(2u) − 1 evaluated in float32.

Training path (autograd on): the conditioning projection, its bias and each res/skip output are
`split` rather than sliced per layer (one concatenation in backward instead of zero-filled
full-size gradients), and the gate is `waveglow.fused_ops.gated_tanh_sigmoid` (its gradient
written as one tensor). `waveglow.fused_ops.plain_training_ops()` restores the plain composition, the reference of
the tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from waveglow.conv_paths import (
    depthwise_shifted,
    dilated_as_matmul,
    in_dispatch_mode,
    low_precision_fast_paths,
    pointwise_conv,
)
from waveglow.fused_ops import fused_training_ops, gated_tanh_sigmoid


class WNConv1d(nn.Module):
    """Weight-normed Conv1d: weight = weight_g · weight_v / ‖weight_v‖ (norm per output channel).

    Initialized like `nn.Conv1d` followed by `torch.nn.utils.weight_norm` (so `weight_g` starts
    at the norm of the default-initialized kernel). `remove_weight_norm()` replaces the pair by a
    plain `weight` parameter holding the folded kernel.

    Args:
        in_channels, out_channels, kernel_size: as `nn.Conv1d`.
        dilation: dilation; the padding keeps the length ("same" convolution, odd kernels).
        groups: as `nn.Conv1d` (in_channels for a depthwise conv).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.groups = groups
        self.padding = dilation * (kernel_size - 1) // 2
        v = torch.empty(out_channels, in_channels // groups, kernel_size)
        # nn.Conv1d's default initialization (kaiming-uniform with a=sqrt(5) and its bias rule).
        nn.init.kaiming_uniform_(v, a=math.sqrt(5))
        bound = 1.0 / math.sqrt((in_channels // groups) * kernel_size)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))
        self.folded = False

    @property
    def pointwise(self) -> bool:
        return self.kernel_size == 1 and self.groups == 1

    def kernel(self) -> Tensor:
        """The effective kernel [out, in/groups, k] (the folded one after remove_weight_norm)."""
        if self.folded:
            return self.weight
        v = self.weight_v
        return v * (self.weight_g / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))

    def remove_weight_norm(self) -> None:
        """Fold weight_g/weight_v into one `weight` parameter (idempotent)."""
        if self.folded:
            return
        with torch.no_grad():
            w = self.kernel().detach().clone()
        del self.weight_v
        del self.weight_g
        self.weight = nn.Parameter(w)
        self.folded = True

    @property
    def out_bias(self) -> Tensor:
        """The bias added to the output, [out]."""
        return self.bias

    def conv(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """The convolution with `bias` [out] (or None) in place of `self.bias`: [B, in, N] -> [B, out, N]."""
        w = self.kernel()
        if self.pointwise:
            return pointwise_conv(x, w, bias)
        if (self.groups == self.in_channels == self.out_channels and x.device.type == "cpu"
                and x.dtype == torch.float32 and w.dtype == torch.float32
                and not torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
                and not in_dispatch_mode()):
            return depthwise_shifted(x, w, bias, self.dilation)
        if (self.groups == 1 and x.device.type == "cpu" and x.dtype == torch.bfloat16
                and not torch.is_grad_enabled() and low_precision_fast_paths()
                and not in_dispatch_mode()):
            return dilated_as_matmul(x, w, bias, self.dilation)
        return F.conv1d(x, w, bias, padding=self.padding, dilation=self.dilation,
                        groups=self.groups)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in, N] -> [B, out, N]."""
        return self.conv(x, self.bias)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"dilation={self.dilation}, groups={self.groups}, folded={self.folded}")


class SeparableConv1d(nn.Module):
    """Depthwise dilated conv (C -> C, one filter per channel) then a 1×1 conv (C -> out).

    About kernel_size·C + C·out multiply-adds per step instead of kernel_size·C·out.
    """

    def __init__(self, channels: int, out_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.depthwise = WNConv1d(channels, channels, kernel_size, dilation=dilation,
                                  groups=channels)
        self.pointwise = WNConv1d(channels, out_channels, 1)

    @property
    def out_bias(self) -> Tensor:
        """The bias added to the output (the pointwise conv's), [out]."""
        return self.pointwise.bias

    def conv(self, x: Tensor, bias: Tensor | None) -> Tensor:
        """As `forward`, with `bias` [out] (or None) as the pointwise conv's bias."""
        return self.pointwise.conv(self.depthwise(x), bias)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, N] -> [B, out, N]."""
        return self.pointwise(self.depthwise(x))


class WN(nn.Module):
    """WaveNet-like conditioner (see the module docstring for the exact computation).

    Args:
        n_in: channels of the conditioning half of the audio.
        n_cond: channels of the squeezed mel conditioning.
        n_out: output channels (2·n_transformed for affine couplings: shift then log-scale;
            n_transformed for additive ones).
        n_layers: number of gated layers L (dilation 2^i for layer i).
        n_channels: residual channels C (even).
        kernel_size: odd kernel of the dilated convs.
        depthwise: use depthwise-separable dilated convs (SqueezeWave-style).
    """

    def __init__(self, n_in: int, n_cond: int, n_out: int, n_layers: int, n_channels: int,
                 kernel_size: int = 3, depthwise: bool = False) -> None:
        super().__init__()
        self.n_layers = n_layers
        self.n_channels = n_channels
        self.start = WNConv1d(n_in, n_channels, 1)
        self.cond_layer = WNConv1d(n_cond, 2 * n_channels * n_layers, 1)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        for i in range(n_layers):
            dilation = 2**i
            if depthwise:
                self.in_layers.append(SeparableConv1d(n_channels, 2 * n_channels, kernel_size,
                                                      dilation))
            else:
                self.in_layers.append(WNConv1d(n_channels, 2 * n_channels, kernel_size,
                                               dilation=dilation))
            # The last layer only feeds the skip sum: nothing reads its residual.
            out = 2 * n_channels if i < n_layers - 1 else n_channels
            self.res_skip_layers.append(WNConv1d(n_channels, out, 1))
        # Zero end layer: every coupling starts as the identity (log s = 0, t = 0).
        self.end = nn.Conv1d(n_channels, n_out, 1)
        nn.init.zeros_(self.end.weight)
        nn.init.zeros_(self.end.bias)

    def remove_weight_norm(self) -> None:
        """Fold every weight-normed conv (for inference)."""
        for m in self.modules():
            if isinstance(m, WNConv1d):
                m.remove_weight_norm()

    def forward(self, a: Tensor, cond: Tensor) -> Tensor:
        """Shift and log-scale from the conditioning half and the mel.

        Args:
            a: [B, n_in, N] conditioning half of the audio.
            cond: [B, n_cond, N] squeezed mel conditioning.

        Returns:
            [B, n_out, N] (bf16 under CPU autocast; callers upcast).
        """
        param = self.end.weight
        if not torch.is_autocast_enabled(a.device.type):
            # The flow state is float32 even for a bf16/fp16 model; the conv stack runs in the
            # parameters' dtype.
            a = a.to(param.dtype)
            cond = cond.to(param.dtype)
        C = self.n_channels
        last = self.n_layers - 1
        # Without autograd (no_grad / inference_mode) intermediates are overwritten in place:
        # fewer allocations per layer.
        inplace = not torch.is_grad_enabled()
        h = self.start(a)
        # The conditioning projection's bias is folded into the dilated convs' biases
        # (g = W_i h + b_i + V_i cond + d_i = W_i h + (b_i + d_i) + V_i cond): no [2·C·L] bias
        # broadcast over the whole [B, 2·C·L, N] projection output (~5% of fp32 synthesis
        # time). The sums are recomputed on every call from the current parameters (never
        # stale; the state_dict is unchanged). The training path does the same, so that with
        # autograd on and off the outputs are computed alike: invertible backprop inverts
        # with the conditioner's autograd-on output what was computed with it off, and under
        # autocast a different rounding of the biases would show as reconstruction error.
        c_all = self.cond_layer.conv(cond, None)
        cond_bias = self.cond_layer.bias
        # Under torch.compile (train.compile) always the fused path: dynamo cannot read a
        # ContextVar without breaking the graph, and plain_training_ops() is an eager reference.
        fused = not inplace and (torch.compiler.is_compiling() or fused_training_ops())
        # With autograd, per-layer slices of the projection would each back-propagate as a
        # zero-filled [B, 2·C·L, N] tensor added into the others (L fills and adds of the whole
        # projection per conditioner); `split` back-propagates as one concatenation.
        c_parts = c_all.split(2 * C, dim=1) if fused else None
        b_parts = cond_bias.split(2 * C) if fused else None
        skip: Tensor | None = None
        for i, (in_layer, res_skip) in enumerate(zip(self.in_layers, self.res_skip_layers)):
            rows = slice(2 * C * i, 2 * C * (i + 1))
            if c_parts is not None and b_parts is not None:
                g = in_layer.conv(h, in_layer.out_bias + b_parts[i])
                g = g.add_(c_parts[i])
            else:
                g = in_layer.conv(h, in_layer.out_bias + cond_bias[rows])
                g = g.add_(c_all[:, rows])
            if inplace and g.device.type == "cpu" and (
                    g.dtype == torch.float32 or g.dtype == torch.bfloat16 and low_precision_fast_paths()):
                # tanh(u) = 2·sigmoid(2u) - 1, in float32: on the CPU the vectorized fp32
                # sigmoid is ~10x faster than tanh, which made the gate a visible share of
                # synthesis time. A bf16 gate (CPU autocast) is computed this way in float32
                # too: faster than bf16 tanh·sigmoid (1.5 vs 2.1 ms per 512 × 2752 layer, one
                # core) and more accurate (only the final rounding to bf16: 2.0e-3 max error
                # vs 5.3e-3). Not on CUDA (tanh is as fast) nor in fp16, and never with the
                # identity evaluated in bf16/fp16 itself (4.6e-3 vs 1.8e-3 max error in bf16).
                u = g if g.dtype == torch.float32 else g.float()
                gate = torch.sigmoid_(u[:, C:])
                acts = torch.sigmoid_(u[:, :C].mul_(2.0)).mul_(2.0).sub_(1.0).mul_(gate).to(g.dtype)
            elif fused:
                acts = gated_tanh_sigmoid(g)
            else:
                acts = torch.tanh(g[:, :C]) * torch.sigmoid(g[:, C:])
            rs = res_skip(acts)
            if i < last and fused:
                res, s = rs.split(C, dim=1)  # one concatenation in backward, not two filled slices
                h = h + res
            elif i < last:
                h = h.add_(rs[:, :C]) if inplace else h + rs[:, :C]
                s = rs[:, C:]
            else:
                s = rs
            if skip is None:
                skip = s
            elif inplace:
                skip = skip.add_(s)
            else:
                skip = skip + s
        assert skip is not None  # n_layers >= 1, checked by the model config validation
        return pointwise_conv(skip, self.end.weight, self.end.bias)
