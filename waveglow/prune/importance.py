"""How much each conditioner channel matters: weight magnitude, or a first-order Taylor estimate.

Both give, per coupling, a score for every residual channel [C], skip channel [C] and gated
channel of every layer [L, C] (the three kinds of `waveglow.prune.surgery`). Channels are only
ranked within their own kind and coupling, so the scales of the kinds need not agree.

* `magnitude`: the L2 norm of the channel's effective (weight-normed) weights, those that write
  it and those that read it. For a row-normed conv the writing part is the gains g.
* `taylor`: |ΔL| ≈ |Σ_t a_c · ∂L/∂a_c|, the first-order change of the training loss L (negative
  log-likelihood in nats per sample) when channel c's activation a_c is set to zero, averaged
  over a few batches (|·| per batch). It is read off the weight gradients of a weight-norm-folded
  copy: for a 1×1 conv y = W x + b, Σ_t x_c ∂L/∂x_c = Σ_o W[o, c] ∂L/∂W[o, c] (a channel's
  readers) and Σ_t y_o ∂L/∂y_o = Σ_i W[o, i] ∂L/∂W[o, i] + b_o ∂L/∂b_o (its writers). Residual
  channels sum their writers (start and every residual output, each one's removal is
  first-order additive), skip channels read `end`'s columns, gates read `res_skip`'s columns.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from waveglow.conditioner import WN, WNConv1d
from waveglow.model import WaveGlow
from waveglow.prune.surgery import ChannelPlan, WNPlan, conditioners, top_channels
from waveglow.runtime import exact_fp32

IMPORTANCES = ("taylor", "magnitude")


@dataclass
class WNScores:
    """Scores of one conditioner's channels (higher: more important).

    Attributes:
        residual: [C].
        skip: [C].
        gates: [L, C].
    """

    residual: Tensor
    skip: Tensor
    gates: Tensor


def plan_from_scores(scores: list[WNScores], n_keep: int) -> ChannelPlan:
    """Keep the `n_keep` best channels of every kind in every layer and coupling."""
    return [WNPlan(top_channels(s.residual, n_keep), top_channels(s.skip, n_keep),
                   tuple(top_channels(g, n_keep) for g in s.gates)) for s in scores]


def _dilated(wn: WN, i: int) -> tuple[WNConv1d | None, WNConv1d]:
    """(depthwise conv or None, the conv whose rows are the gates) of layer i."""
    layer = wn.in_layers[i]
    return (None, layer) if isinstance(layer, WNConv1d) else (layer.depthwise, layer.pointwise)


def _sq_rows(w: Tensor) -> Tensor:
    """Σ w² per output row: [out, in, k] -> [out]."""
    return w.double().pow(2).sum(dim=(1, 2))


def _sq_cols(w: Tensor) -> Tensor:
    """Σ w² per input column: [out, in, k] -> [in]."""
    return w.double().pow(2).sum(dim=(0, 2))


@torch.no_grad()
def magnitude_scores(model: WaveGlow) -> list[WNScores]:
    """Per channel: the L2 norm of its effective weights, writing and reading (no data needed)."""
    out = []
    for wn in conditioners(model):
        C, L = wn.n_channels, wn.n_layers
        res = _sq_rows(wn.start.kernel())
        skip = _sq_cols(wn.end.weight)
        gates = torch.zeros(L, C, dtype=torch.float64)
        cond = _sq_rows(wn.cond_layer.kernel())
        for i in range(L):
            dw, gate_conv = _dilated(wn, i)
            if dw is not None:
                res = res + _sq_rows(dw.kernel())
            res = res + _sq_cols(gate_conv.kernel())
            g_rows = _sq_rows(gate_conv.kernel())
            rs = wn.res_skip_layers[i].kernel()
            gates[i] = (g_rows[:C] + g_rows[C:] + cond[2 * C * i: 2 * C * i + C]
                        + cond[2 * C * i + C: 2 * C * (i + 1)] + _sq_cols(rs))
            rs_rows = _sq_rows(rs)
            if i < L - 1:
                res = res + rs_rows[:C]
                skip = skip + rs_rows[C:]
            else:
                skip = skip + rs_rows
        out.append(WNScores(res.sqrt(), skip.sqrt(), gates.sqrt()))
    return out


def _row_terms(conv: WNConv1d) -> Tensor:
    """Σ_t y_o ∂L/∂y_o per output row o of a folded conv with gradients: [out]."""
    w, b = conv.weight, conv.bias
    return (w * w.grad).double().sum(dim=(1, 2)) + (b * b.grad).double()


def _col_terms(w: Tensor) -> Tensor:
    """Σ_t x_c ∂L/∂x_c per input column c of a 1×1 weight with its gradient: [in]."""
    return (w * w.grad).double().sum(dim=(0, 2))


def taylor_scores(model: WaveGlow, batches: Iterable[tuple[Tensor, Tensor]]) -> list[WNScores]:
    """Per channel: mean over batches of |first-order change of the loss| when it is zeroed.

    Args:
        model: the WaveGlow (left unchanged: a folded copy gets the gradients).
        batches: (audio [B, T], mel [B, n_mels, F]) pairs, e.g. training segments; the loss is
            -log p(audio | mel) in nats per audio sample, fp32.

    Returns:
        One `WNScores` per coupling; a ValueError if `batches` is empty.
    """
    work = copy.deepcopy(model).float().train()
    work.remove_weight_norm()
    for p in work.parameters():
        p.requires_grad_(True)
    wns = conditioners(work)
    totals: list[WNScores] | None = None
    n = 0
    device = work.mel_std.device
    for audio, mel in batches:
        audio, mel = audio.to(device), mel.to(device)
        work.zero_grad(set_to_none=False)
        with torch.enable_grad(), exact_fp32(device):  # no TF32: scores as exact as the CPU's
            loss = -work.log_prob(audio, mel).sum() / audio.numel()
            loss.backward()
        scores = []
        with torch.no_grad():
            for wn in wns:
                C, L = wn.n_channels, wn.n_layers
                res = _row_terms(wn.start)
                gates = torch.zeros(L, C, dtype=torch.float64, device=device)
                for i in range(L):
                    rs = wn.res_skip_layers[i]
                    gates[i] = _col_terms(rs.weight)
                    if i < L - 1:
                        res = res + _row_terms(rs)[:C]
                skip = _col_terms(wn.end.weight)
                scores.append(WNScores(res.abs(), skip.abs(), gates.abs()))
        if totals is None:
            totals = scores
        else:
            for t, s in zip(totals, scores):
                t.residual += s.residual
                t.skip += s.skip
                t.gates += s.gates
        n += 1
    if totals is None:
        raise ValueError("taylor_scores: no batches")
    return [WNScores((t.residual / n).cpu(), (t.skip / n).cpu(), (t.gates / n).cpu()) for t in totals]
