"""Invertible flow parts and the one protocol they share.

Every part maps the flow state forward and back:

    forward(x, cond) -> (y, logdet)     logdet: [B], log|det ∂y/∂x| per batch item
    inverse(y, cond) -> x
    inverse_vjp(y, cond, dy, dlogdet) -> (x, dx, dcond, dparams)   (default: from the two above)

`WaveGlow` keeps one ordered list of parts and walks it forward for the likelihood and encoding,
backward for decoding; no part's inverse is written anywhere else.

Invertible backprop (`waveglow.walk.walk_recomputed`, the model's `memory="invertible"`): the forward walk
keeps only the final output and the conditioning; the backward pass walks the parts in
reverse, and each part rebuilds its input from its output (`inverse`) and back-propagates
through itself (`inverse_vjp`). Activation memory is that of one part instead of all of them.

The state between `Squeeze` and `Unsqueeze` is the squeezed audio `[B, n_group, N]`
(N = T / n_group, channel j holds sample offset j of each group). Early outputs are expressed by
each part's `start`: channels `[:start]` have already left the flow and pass through unchanged,
the part acts on `[start:]`. The state therefore stays one tensor whose final value is the
latent in the reference's order (first early output, second early output, ..., remaining
channels), with no bookkeeping outside the parts.

Precision: the 1×1 convolutions, their log-determinants and the coupling's affine update run in
float32 (float64 for a float64 model) even under autocast; only the conditioner's conv stack
runs in the autocast dtype. Log-dets are returned in that float32/float64 dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from waveglow.conditioner import WN
from waveglow.runtime import exact_fp32


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the flow state and log-dets use for parameters of `dtype` (≥ float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class FlowPart(nn.Module):
    """Base of the protocol. Subclasses implement `forward` and `inverse`.

    Attributes:
        flow_index: which flow step the part belongs to (None for layout parts).
        stat_key: name of the part's per-flow monitoring term (`f"flow_{k}/{stat_key}"`), or None.
    """

    flow_index: int | None = None
    stat_key: str | None = None

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """Returns (y, logdet [B])."""
        raise NotImplementedError

    def inverse(self, y: Tensor, cond: Tensor) -> Tensor:  # pragma: no cover
        """Returns x with forward(x, cond)[0] == y."""
        raise NotImplementedError

    def extra_stats(self) -> dict[str, Tensor]:
        """Extra monitoring scalars of the part (detached), keyed by short name."""
        return {}

    def inverse_vjp(self, y: Tensor, cond: Tensor, grad_y: Tensor, grad_logdet: Tensor) -> VJP:
        """Rebuild the input from the output and back-propagate through the part, using no
        activation stored by the forward pass.

        The default inverts (without autograd), then runs `forward` again with autograd on.
        Parts override it where the inverse already computes what the gradient needs.

        Args:
            y: the part's output (no graph).
            cond: the conditioning; a leaf that requires grad when its gradient is wanted.
            grad_y: dL/dy, y's shape.
            grad_logdet: dL/dlogdet [B].

        Returns:
            (x, dL/dx, dL/dcond or None, [dL/dp for each p of `trainable(self)`, None if unused]).
        """
        with torch.no_grad():
            x = self.inverse(y, cond)
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            y_again, logdet = self(x, cond)
        return (x.detach(), *_vjp(self, [y_again, logdet], [grad_y, grad_logdet], x, cond))


# (x, dx, dcond, dparams) of `FlowPart.inverse_vjp`.
VJP = tuple[Tensor, Tensor, Tensor | None, list[Tensor | None]]


def trainable(module: nn.Module) -> list[Tensor]:
    """The parameters of `module` that require grad, in `parameters()` order."""
    return [p for p in module.parameters() if p.requires_grad]


def _vjp(part: nn.Module, outputs: Sequence[Tensor], grads: Sequence[Tensor], x: Tensor, cond: Tensor
         ) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
    """dL/dx, dL/dcond (None unless cond requires grad) and dL/dparams of `part` for the
    outputs' cotangents `grads` (outputs without a graph, e.g. a constant log-det, are skipped)."""
    params = trainable(part)
    inputs = [x, *([cond] if cond.requires_grad else []), *params]
    pairs = [(o, g.to(o.dtype)) for o, g in zip(outputs, grads) if o.requires_grad]
    got: Sequence[Tensor | None] = [None] * len(inputs)
    if pairs:
        got = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)
    grad_x = got[0] if got[0] is not None else torch.zeros_like(x)
    grad_cond = got[1] if cond.requires_grad else None
    return grad_x, grad_cond, list(got[len(inputs) - len(params):])


class Squeeze(FlowPart):
    """Audio [B, T] -> [B, n_group, T/n_group]; channel j holds samples j, j+G, j+2G, ...

    A permutation of the samples: log-det 0.
    """

    def __init__(self, n_group: int) -> None:
        super().__init__()
        self.n_group = n_group

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        B, T = x.shape
        y = x.reshape(B, T // self.n_group, self.n_group).transpose(1, 2).contiguous()
        return y, x.new_zeros(B, dtype=state_dtype(x.dtype))

    def inverse(self, y: Tensor, cond: Tensor) -> Tensor:
        B = y.shape[0]
        return y.transpose(1, 2).reshape(B, -1)

    def extra_repr(self) -> str:
        return f"n_group={self.n_group}"


class Unsqueeze(Squeeze):
    """The inverse of `Squeeze` as a part: puts the latent back in the audio's [B, T] layout."""

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        return super().inverse(x, cond), x.new_zeros(x.shape[0], dtype=state_dtype(x.dtype))

    def inverse(self, y: Tensor, cond: Tensor) -> Tensor:
        return super().forward(y, cond)[0]


def _merge(x: Tensor, start: int, active: Tensor) -> Tensor:
    """Channels [:start] of x followed by `active` (the part's output)."""
    if start == 0:
        return active
    return torch.cat([x[:, :start].to(active.dtype), active], dim=1)


class Invertible1x1Conv(FlowPart):
    """Glow's invertible 1×1 convolution over channels [start:] of the state.

    `weight` has the reference's shape [c, c, 1] and is initialized to a random orthogonal
    matrix with det = +1. log|det| is computed with slogdet in float32 (float64 for a float64
    model), also under autocast.

    Inverse cache: `inverse` computes W⁻¹ from the current weight. When autograd is off
    (`torch.no_grad` / `torch.inference_mode`, and the backward pass of invertible backprop)
    the inverse is cached and reused, keyed on the weight tensor itself, its version counter,
    storage pointer, dtype and device, so any in-place update (`load_state_dict`, `copy_`, an
    optimizer's step) or replacement of the weight invalidates it. Writes through `weight.data`
    and fused optimizers (`Adam(fused=True)`) bypass the version counter: call
    `invalidate_inverse()` after those (the training step does, after every optimizer step:
    `drop_cached_inverses`). With autograd on, the inverse is always recomputed (and
    differentiable). Invertible backprop therefore inverts each W once per optimizer step, in
    the first micro-batch's backward, whatever `grad_accum` is.

    Args:
        channels: c, the active channel count.
        start: channels already output early (passed through unchanged).
        flow_index: the flow step k (for monitoring names).
    """

    stat_key = "W"

    def __init__(self, channels: int, start: int = 0, flow_index: int | None = None) -> None:
        super().__init__()
        self.channels = channels
        self.start = start
        self.flow_index = flow_index
        # Drawn on the CPU (the det sign test needs real values), then moved to the default
        # device, so building under `torch.device("meta")` or "cuda" also works.
        w = torch.linalg.qr(torch.randn(channels, channels, device="cpu"))[0]
        if torch.linalg.det(w) < 0:
            w[:, 0] = -w[:, 0]
        self.weight = nn.Parameter(w.unsqueeze(-1).to(torch.empty(0).device))
        self._inv_key: tuple | None = None
        self._inv: Tensor | None = None

    def _matrix(self) -> Tensor:
        """W in the state dtype, [c, c]."""
        w = self.weight.squeeze(-1)
        return w.to(state_dtype(w.dtype))

    def log_abs_det(self) -> Tensor:
        """log|det W| (scalar, float32/float64)."""
        with torch.autocast(self.weight.device.type, enabled=False):
            return torch.linalg.slogdet(self._matrix())[1]

    def invalidate_inverse(self) -> None:
        """Drop the cached inverse (needed only after writing through `weight.data`)."""
        self._inv_key = None
        self._inv = None

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        # .to() / .cuda() / .double(): a cached inverse on the old device or dtype is dropped,
        # not kept alive beside the moved weight.
        self.invalidate_inverse()
        return super()._apply(fn, *args, **kwargs)

    def inverse_matrix(self) -> Tensor:
        """W⁻¹ [c, c, 1] in the state dtype, from the current weight (cached without autograd)."""
        if torch.is_grad_enabled():
            return torch.linalg.inv(self._matrix()).unsqueeze(-1)
        w = self.weight
        # The tensor object itself is part of the key: a replaced parameter can reuse the old
        # one's memory (same data_ptr) and restart its version counter.
        key = (w, w._version, w.data_ptr(), w.dtype, w.device)
        if self._inv is None or self._inv_key is None or self._inv_key[0] is not w or self._inv_key[1:] != key[1:]:
            # Built outside inference mode so the cached tensor is an ordinary tensor usable
            # under no_grad as well.
            # inv_ex: no singularity check, which would be a host sync on CUDA; a singular W
            # gives non-finite values (its log-det is -inf already, and the training step
            # skips non-finite steps).
            with torch.inference_mode(False), torch.no_grad():
                self._inv = torch.linalg.inv_ex(self._matrix().clone())[0].unsqueeze(-1)
            self._inv_key = key
        return self._inv

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """y[:, start:] = W x[:, start:]; logdet = N·log|det W| per batch item."""
        with torch.autocast(x.device.type, enabled=False), exact_fp32(x.device):
            w = self._matrix()
            xa = x[:, self.start:].to(w.dtype)
            ya = F.conv1d(xa, w.unsqueeze(-1))
            logdet = (xa.shape[2] * torch.linalg.slogdet(w)[1]).expand(x.shape[0])
        return _merge(x, self.start, ya), logdet

    def inverse(self, y: Tensor, cond: Tensor) -> Tensor:
        """x[:, start:] = W⁻¹ y[:, start:], in float32 (float64) even under autocast."""
        with torch.autocast(y.device.type, enabled=False), exact_fp32(y.device):
            w_inv = self.inverse_matrix()
            xa = F.conv1d(y[:, self.start:].to(w_inv.dtype), w_inv)
        return _merge(y, self.start, xa)

    def inverse_vjp(self, y: Tensor, cond: Tensor, grad_y: Tensor, grad_logdet: Tensor) -> VJP:
        """As `FlowPart.inverse_vjp`, written out with the cached W⁻¹: no second forward and no
        factorization of W in any micro-batch's backward. On the active channels, with
        y = W x and logdet = N·log|det W| per item (N time steps):
        x = W⁻¹ y,  dL/dx = Wᵀ dL/dy,  dL/dW = Σ_b dL/dy_b x_bᵀ + (Σ_b dL/dlogdet_b)·N·W⁻ᵀ.
        In float32 (float64 for a float64 model) without TF32, also under autocast."""
        with torch.no_grad(), torch.autocast(y.device.type, enabled=False), exact_fp32(y.device):
            w_inv = self.inverse_matrix()  # [c, c, 1], cached
            w = self._matrix()
            ya = y[:, self.start:].to(w.dtype)
            grad_ya = grad_y[:, self.start:].to(w.dtype)
            xa = F.conv1d(ya, w_inv)
            grad_xa = F.conv1d(grad_ya, w.t().unsqueeze(-1))
            grads: list[Tensor | None] = []
            if self.weight.requires_grad:
                grad_w = torch.matmul(grad_ya, xa.transpose(1, 2)).sum(dim=0)
                grad_w += (grad_logdet.to(w.dtype).sum() * ya.shape[2]) * w_inv.squeeze(-1).t()
                grads.append(grad_w.unsqueeze(-1).to(self.weight.dtype))
        return _merge(y, self.start, xa), _merge(grad_y, self.start, grad_xa), None, grads

    def extra_stats(self) -> dict[str, Tensor]:
        """{"W_cond": 2-norm condition number of W} (detached)."""
        with torch.no_grad(), torch.autocast(self.weight.device.type, enabled=False):
            return {"W_cond": torch.linalg.cond(self._matrix())}

    def extra_repr(self) -> str:
        return f"channels={self.channels}, start={self.start}"


def drop_cached_inverses(module: nn.Module) -> None:
    """Drop the cached W⁻¹ of every 1×1 convolution in `module`: the training step calls it
    after each optimizer step, so the cache never outlives the weights it was computed from,
    also where the optimizer bypasses the version counter (fused optimizers)."""
    for part in module.modules():
        if isinstance(part, Invertible1x1Conv):
            part.invalidate_inverse()


class Coupling(FlowPart):
    """Coupling layer over channels [start:]: one half conditions, the other is transformed.

    With h = c/2 and `condition="first"` (the reference), a = x[:, :h] conditions and
    b = x[:, h:] is transformed; with `condition="second"` (odd flows of the legacy layout),
    a = x[:, h:] conditions and b = x[:, :h] is transformed; positions are kept either way.
    The conditioner `wn` sees a and the mel; its output's first h channels are the shift t and,
    for affine couplings, its second h channels are log s.

    Args:
        channels: c, the active channel count (even).
        start: channels already output early.
        n_cond: channels of the squeezed mel conditioning.
        n_layers, n_channels, kernel_size, depthwise: the conditioner `WN`'s settings.
        condition: "first" or "second".
        flow_index: the flow step k.
    """

    stat_key = "log_s"
    affine: bool = True

    def __init__(self, channels: int, start: int, n_cond: int, n_layers: int, n_channels: int,
                 kernel_size: int = 3, depthwise: bool = False,
                 condition: Literal["first", "second"] = "first",
                 flow_index: int | None = None) -> None:
        super().__init__()
        if condition not in ("first", "second"):
            raise ValueError(f"condition must be 'first' or 'second', got {condition!r}")
        self.channels = channels
        self.start = start
        self.half = channels // 2
        self.condition = condition
        self.flow_index = flow_index
        n_out = 2 * self.half if self.affine else self.half
        self.wn = WN(self.half, n_cond, n_out, n_layers, n_channels, kernel_size, depthwise)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning half, transformed half) of the active channels."""
        s, h = self.start, self.half
        first, second = x[:, s:s + h], x[:, s + h:]
        return (first, second) if self.condition == "first" else (second, first)

    def _join(self, x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        active = torch.cat([a.to(b.dtype), b] if self.condition == "first" else [b, a.to(b.dtype)],
                           dim=1)
        return _merge(x, self.start, active)

    def _shift_scale(self, a: Tensor, cond: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        out = self.wn(a, cond)
        t = out[:, :self.half].to(dtype)
        log_s = out[:, self.half:].to(dtype) if self.affine else None
        return t, log_s

    def forward(self, x: Tensor, cond: Tensor) -> tuple[Tensor, Tensor]:
        """b -> b·exp(log s) + t (affine) or b + t (additive); logdet = Σ log s."""
        a, b = self._split(x)
        dtype = state_dtype(b.dtype)
        t, log_s = self._shift_scale(a, cond, dtype)
        b = b.to(dtype)
        if log_s is None:
            return self._join(x, a, b + t), b.new_zeros(b.shape[0])
        y_b = b * torch.exp(log_s) + t
        return self._join(x, a, y_b), log_s.sum(dim=(1, 2))

    def inverse(self, y: Tensor, cond: Tensor) -> Tensor:
        """b = (y_b − t)·exp(−log s) (affine) or y_b − t (additive)."""
        a, y_b = self._split(y)
        dtype = state_dtype(y_b.dtype)
        t, log_s = self._shift_scale(a, cond, dtype)
        b = y_b.to(dtype) - t
        if log_s is not None:
            b = b * torch.exp(-log_s)
        return self._join(y, a, b)

    def inverse_vjp(self, y: Tensor, cond: Tensor, grad_y: Tensor, grad_logdet: Tensor) -> VJP:
        """As `FlowPart.inverse_vjp` with ONE conditioner pass: the conditioning half passes
        through unchanged, so the shift and log-scale computed (with autograd) to invert are
        the forward's own, and the affine update's gradient is written out:
        dL/db = dy_b·s, dL/dt = dy_b, dL/dlog s = dy_b·b·s + dL/dlogdet (s = exp(log s))."""
        a, y_b = self._split(y)
        dtype = state_dtype(y_b.dtype)
        with torch.enable_grad():
            a_in = a.detach().requires_grad_()
            t, log_s = self._shift_scale(a_in, cond, dtype)
        grad_a, grad_yb = self._split(grad_y.to(dtype))
        with torch.no_grad():
            b = y_b.to(dtype) - t
            if log_s is None:
                outputs, cotangents, grad_b = [t], [grad_yb], grad_yb
            else:
                scale = torch.exp(log_s)
                b = b / scale
                grad_b = grad_yb * scale
                grad_log_s = grad_yb * b * scale + grad_logdet.to(dtype)[:, None, None]
                outputs, cotangents = [t, log_s], [grad_yb, grad_log_s]
        grad_a_wn, grad_cond, grad_params = _vjp(self, outputs, cotangents, a_in, cond)
        x = self._join(y, a, b)
        return x, self._join(grad_y, grad_a.to(dtype) + grad_a_wn, grad_b), grad_cond, grad_params

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, start={self.start}, condition={self.condition}, "
                f"affine={self.affine}")


class AffineCoupling(Coupling):
    """Real NVP coupling: y_b = x_b·exp(log s) + t."""

    affine = True


class AdditiveCoupling(Coupling):
    """NICE coupling: y_b = x_b + t (volume preserving, log-det 0)."""

    affine = False
