"""Structured pruning surgery: copy the kept channels of every WN conditioner into a smaller model.

A WN stack (`waveglow.conditioner.WN`, C = `n_channels`, L = `n_layers`) has three kinds of
channels, each of which can be removed on its own without changing what the rest computes:

    residual  h [C]      written by `start` (rows) and every `res_skip_layers.i` but the last
                         (rows 0..C-1); read by every dilated conv (`in_layers.i`: columns, or
                         the depthwise conv's rows and the pointwise conv's columns)
    skip      skip [C]   written by `res_skip_layers.i` (rows C..2C-1; the last layer: rows
                         0..C-1); read by `end` (columns)
    gate      acts_i [C] per layer i: written by `in_layers.i` (rows a and C+a: the tanh and
                         sigmoid halves) plus `cond_layer` (rows 2·C·i + a and 2·C·i + C + a);
                         read by `res_skip_layers.i` (columns)

A `ChannelPlan` keeps the same number C' of channels of every kind in every layer and coupling,
so the smaller model is an ordinary one: the same config with `wn.n_channels = C'`. Kept
channels stay in their original order, so keep = 1 copies every tensor unchanged.

Weight norm is per output row (w = g · v / ‖v‖), so dropping rows is exact. Dropping input
columns changes ‖v‖: the kept columns of v are kept as they are and the gain is rescaled,
g' = g · ‖v_kept‖ / ‖v‖, so that the effective kernel of the kept entries is unchanged. A folded
conv (`weight`) is sliced directly.

Removing a channel is exactly zeroing it in the original (`mask_model`): a residual or skip
channel whose writing rows (weights and biases) are zero stays zero; a gate whose tanh half is
zero is tanh(0)·σ(·) = 0. With depthwise-separable dilated convs a zero residual channel still
passes the depthwise conv's bias on to the pointwise conv: that constant is moved into the
pointwise conv's bias. The tests check the two agree.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from waveglow.conditioner import WN, WNConv1d
from waveglow.model import WaveGlow


@dataclass(frozen=True)
class WNPlan:
    """The channels one WN conditioner keeps (ascending indices, C' each).

    Attributes:
        residual: [C'] residual channels.
        skip: [C'] skip channels.
        gates: one [C'] tensor per layer: that layer's gated channels.
    """

    residual: Tensor
    skip: Tensor
    gates: tuple[Tensor, ...]

    @property
    def n_channels(self) -> int:
        return int(self.residual.numel())


# One plan per coupling, in flow order.
ChannelPlan = list[WNPlan]


def conditioners(model: WaveGlow) -> list[WN]:
    """The WN conditioner of every coupling, in flow order."""
    return [m for m in model.modules() if isinstance(m, WN)]


def kept_channels(n_channels: int, keep: float) -> int:
    """C' for a fraction `keep` of C channels: the nearest even count, at least 2 (configs need
    an even `n_channels`).

    Args:
        n_channels: C.
        keep: the fraction in (0, 1].
    """
    return max(2, min(n_channels, 2 * round(keep * n_channels / 2)))


def top_channels(scores: Tensor, n_keep: int) -> Tensor:
    """The `n_keep` highest-scoring indices of `scores` [C], ascending (ties: lower index)."""
    order = torch.argsort(-scores.double(), stable=True)
    return torch.sort(order[:n_keep]).values


def full_plan(model: WaveGlow) -> ChannelPlan:
    """The plan that keeps every channel (pruning with it copies the model)."""
    out = []
    for wn in conditioners(model):
        every = torch.arange(wn.n_channels)
        out.append(WNPlan(every, every, tuple(every for _ in range(wn.n_layers))))
    return out


def _rows(plan: WNPlan, i: int, C: int) -> tuple[Tensor, Tensor]:
    """(rows of the dilated conv i's output, rows of cond_layer) for the gates layer i keeps."""
    a = plan.gates[i]
    return torch.cat([a, C + a]), torch.cat([2 * C * i + a, 2 * C * i + C + a])


@torch.no_grad()
def _copy_conv(dst: WNConv1d, src: WNConv1d, rows: Tensor, cols: Tensor | None) -> None:
    """dst <- the `rows` (output channels) and `cols` (input channels; None: all) of src."""
    if src.folded:
        dst.remove_weight_norm()
        w = src.weight[rows]
        dst.weight.copy_(w if cols is None else w[:, cols])
    else:
        v = src.weight_v[rows]
        g = src.weight_g[rows]
        if cols is not None and cols.numel() < v.shape[1]:
            kept = v[:, cols]
            norm = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)
            kept_norm = torch.linalg.vector_norm(kept, dim=(1, 2), keepdim=True)
            # A row whose kept entries are all zero has a zero kernel either way: keep g.
            g = torch.where(norm > 0, g * kept_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny), g)
            v = kept
        dst.weight_v.copy_(v)
        dst.weight_g.copy_(g)
    dst.bias.copy_(src.bias[rows])


def _removed(kept: Tensor, n: int) -> Tensor:
    """The indices of range(n) not in `kept`, ascending."""
    return torch.tensor(sorted(set(range(n)) - set(kept.tolist())), dtype=torch.long)


@torch.no_grad()
def _copy_wn(dst: WN, src: WN, plan: WNPlan) -> None:
    C = src.n_channels
    R, S = plan.residual, plan.skip
    _copy_conv(dst.start, src.start, R, None)
    cond_rows = torch.cat([_rows(plan, i, C)[1] for i in range(src.n_layers)])
    _copy_conv(dst.cond_layer, src.cond_layer, cond_rows, None)
    last = src.n_layers - 1
    for i in range(src.n_layers):
        gate_rows = _rows(plan, i, C)[0]
        s_in, d_in = src.in_layers[i], dst.in_layers[i]
        if isinstance(s_in, WNConv1d):
            _copy_conv(d_in, s_in, gate_rows, R)
        else:  # depthwise-separable: the depthwise conv acts per residual channel
            _copy_conv(d_in.depthwise, s_in.depthwise, R, None)
            _copy_conv(d_in.pointwise, s_in.pointwise, gate_rows, R)
            # A removed (zero) residual channel still leaves the depthwise conv as its bias: a
            # constant the pointwise conv adds to its rows, moved into their bias.
            gone = _removed(R, C)
            if gone.numel():
                w = s_in.pointwise.kernel()[gate_rows][:, gone, 0]
                d_in.pointwise.bias.add_(w @ s_in.depthwise.bias[gone].to(w.dtype))
        out_rows = S if i == last else torch.cat([R, C + S])
        _copy_conv(dst.res_skip_layers[i], src.res_skip_layers[i], out_rows, plan.gates[i])
    dst.end.weight.copy_(src.end.weight[:, S])
    dst.end.bias.copy_(src.end.bias)


def pruned_config(config: dict, n_channels: int) -> dict:
    """A copy of a run config (plain dicts with `model`) with `model.wn.n_channels` = C'."""
    out = copy.deepcopy(dict(config))
    out["model"] = copy.deepcopy(dict(out["model"]))
    out["model"]["wn"] = {**out["model"]["wn"], "n_channels": int(n_channels)}
    return out


def check_plan(model: WaveGlow, plan: ChannelPlan) -> int:
    """C' of a plan that fits `model`; ValueError when it does not (a programming error)."""
    wns = conditioners(model)
    if len(plan) != len(wns):
        raise ValueError(f"plan for {len(plan)} couplings, the model has {len(wns)}")
    n = plan[0].n_channels
    for k, (p, wn) in enumerate(zip(plan, wns)):
        sizes = {p.residual.numel(), p.skip.numel(), *(a.numel() for a in p.gates)}
        if sizes != {n} or len(p.gates) != wn.n_layers:
            raise ValueError(f"coupling {k}: every channel set must keep {n} channels, one gate set per layer")
        for t in (p.residual, p.skip, *p.gates):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= wn.n_channels or t.unique().numel() != t.numel()):
                raise ValueError(f"coupling {k}: channel indices out of range or repeated")
    return n


def prune_model(model: WaveGlow, plan: ChannelPlan) -> WaveGlow:
    """The smaller model that keeps the plan's channels of every conditioner.

    Args:
        model: a WaveGlow (weight norm folded or not; left unchanged).
        plan: one `WNPlan` per coupling, every set of the same size C'.

    Returns:
        A new WaveGlow built from `model.config` with `model.wn.n_channels = C'` (its `config`
        describes it), in `model`'s mode and dtype, holding the kept weights; everything outside
        the conditioners (upsampler, 1×1 convs, mel statistics) is copied unchanged.
    """
    n = check_plan(model, plan)
    config = pruned_config(model.config, n)
    small = WaveGlow(config["model"], n_mels=model.n_mels, hop_length=model.hop_length)
    small.config = config
    small.to(dtype=model.mel_std.dtype)
    # Everything but the conditioners is copied as it is.
    wn_prefixes = tuple(name + "." for name, m in model.named_modules() if isinstance(m, WN))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(wn_prefixes)}
    missing, unexpected = small.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(wn_prefixes) for k in missing)
    for dst, src, p in zip(conditioners(small), conditioners(model), plan):
        _copy_wn(dst, src, p)
    small.train(model.training)
    return small.to(model.mel_std.device)


@torch.no_grad()
def _zero_rows(conv: WNConv1d, rows: Tensor) -> None:
    if conv.folded:
        conv.weight[rows] = 0
    else:
        conv.weight_g[rows] = 0
    conv.bias[rows] = 0


def mask_model(model: WaveGlow, plan: ChannelPlan) -> WaveGlow:
    """A copy of `model` with the channels the plan removes zeroed in place (same size).

    What `prune_model(model, plan)` computes, computed by the full-size model: the reference of
    the surgery's exactness.
    """
    check_plan(model, plan)
    out = copy.deepcopy(model)
    for wn, p in zip(conditioners(out), plan):
        C = wn.n_channels
        R, S = _removed(p.residual, C), _removed(p.skip, C)
        _zero_rows(wn.start, R)
        last = wn.n_layers - 1
        for i in range(wn.n_layers):
            a = _removed(p.gates[i], C)
            in_layer = wn.in_layers[i]
            _zero_rows(in_layer if isinstance(in_layer, WNConv1d) else in_layer.pointwise, a)  # tanh half
            _zero_rows(wn.cond_layer, 2 * C * i + a)
            _zero_rows(wn.res_skip_layers[i], S if i == last else torch.cat([R, C + S]))
    return out


def parameter_count(module: nn.Module) -> int:
    """Number of parameters (weight-normed convs count g and v, as stored in a checkpoint)."""
    return sum(p.numel() for p in module.parameters())
