"""Short defects (clicks of a few samples) found on a finer time scale than one mel frame.

A single-sample click changes one mel frame's mean log-likelihood by little (it is one sample
of 256), but the flow's per-sample terms ℓ_t (`score.per_sample_log_likelihood`) drop sharply
at the samples it touches. The statistic here is the mean of ℓ_t over windows of
`WINDOW` samples, compared with its own neighbourhood: a robust z-score against the median
and MAD of the windows within ±`CONTEXT` windows. Local (not whole-file) statistics, because
ℓ_t is heavy-tailed and its typical value follows the loudness of the speech.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from waveglow.inference.score import MAD_TO_STD

WINDOW = 8  # samples per window of the statistic
CONTEXT = 128  # windows on each side (±1024 samples) that set the local median and MAD


def local_window_z(ll: Tensor, window: int = WINDOW, context: int = CONTEXT, floor: float = 1e-3) -> Tensor:
    """Robust z-score of each `window`-sample mean of ℓ_t against its ±`context` neighbours.

    Args:
        ll: per-sample log-likelihood [T] (nats).
        window: samples per window.
        context: windows on each side that give the local median and MAD.
        floor: smallest MAD (nats), so that a flat stretch does not give infinite scores.

    Returns:
        z [ceil(T / window)] (the last window may be shorter).
    """
    T = ll.numel()
    n = -(-T // window)
    padded = torch.nn.functional.pad(ll.float(), (0, n * window - T), value=float(ll[-1])) if T % window else ll
    v = padded.float().view(n, window).mean(1)
    L = min(context, n - 1)
    if L < 1:
        return torch.zeros_like(v)
    ext = torch.nn.functional.pad(v[None, None], (L, L), mode="reflect")[0, 0]
    nb = ext.unfold(0, 2 * L + 1, 1)  # [n, 2L + 1]
    med = nb.median(1).values
    mad = (nb - med[:, None]).abs().median(1).values
    return (v - med) / (MAD_TO_STD * mad.clamp_min(floor))


def click_spans(ll: Tensor, threshold: float, pad: int, merge: int, window: int = WINDOW) -> list[tuple[int, int]]:
    """Sample spans [s0, s1) of windows whose local z is below −threshold.

    Args:
        ll: per-sample log-likelihood [T].
        threshold: positive; a window is suspect when its z < −threshold.
        pad: samples added on each side of a suspect run (the flow's terms spread a click over
            its group of samples and the neighbouring ones).
        merge: suspect windows at most this many samples apart form one span.
        window: samples per window.

    Returns:
        Sorted, non-overlapping spans within [0, T).
    """
    z = local_window_z(ll, window)
    idx = (z < -threshold).nonzero().flatten().tolist()
    spans: list[list[int]] = []
    for w in idx:
        a, b = max(0, w * window - pad), min(ll.numel(), (w + 1) * window + pad)
        if spans and a <= spans[-1][1] + merge:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    return [(a, b) for a, b in spans]


# ---------------------------------------------------------------------------- the click's samples
# Autoregressive (linear-prediction) model of the speech next to a click span: its order, the
# samples on each side it is fitted on, and the residual (in residual stds, forward and backward
# both) above which a sample counts as damaged.
AR_ORDER = 24
AR_CONTEXT = 384
OUTLIER_Z = 5.0
# The smallest residual std the outlier test divides by: one 16-bit LSB. Next to digital silence
# the AR model predicts exactly (residual 0), and a click there must still stand out, as a click.
RESIDUAL_FLOOR = 1.0 / 32768
# Damaged samples more than this many samples apart belong to separate runs (`outlier_runs`):
# inside a 0.1-rms noise burst over speech, the samples that stand out are seldom more than a
# few apart.
RUN_GAP = 64


def ar_fit(segments: list[Tensor], order: int) -> tuple[Tensor, float]:
    """Least-squares AR coefficients of the samples in `segments` (each [L], float64).

    Returns:
        (a [order]: x_t ≈ Σ_k a_k x_{t−1−k}, the residual's std); a zero model when too short.
    """
    rows, ys = [], []
    for s in segments:
        if s.numel() > order + 1:
            rows.append(s.unfold(0, order, 1)[:-1].flip(1))  # [L − order, order]: x_{t−1} ... x_{t−order}
            ys.append(s[order:])
    if not rows or sum(r.shape[0] for r in rows) < 2 * order:
        return torch.zeros(order, dtype=torch.float64), 0.0
    X, y = torch.cat(rows), torch.cat(ys)
    ridge = 1e-6 * float((X * X).mean()) + 1e-12  # silence around: a well-posed (near-zero) model
    a = torch.linalg.solve(X.T @ X + ridge * X.shape[0] * torch.eye(order, dtype=X.dtype), X.T @ y)
    return a, float((y - X @ a).std())


def ar_interpolate(x: Tensor, missing: Tensor, a: Tensor) -> Tensor:
    """Samples `missing` of x [L] (float64) replaced by the least-squares AR interpolation:
    the values that minimise the AR model's residual energy over every prediction they enter.

    Args:
        x: float64 [L], the missing samples at least `order` samples from either end.
        missing: bool [L].
        a: AR coefficients [order].

    Returns:
        float64 [L].
    """
    p = a.numel()
    idx = missing.nonzero().flatten()
    if idx.numel() == 0 or p == 0:
        return x.clone()
    lo, hi = int(idx.min()), int(idx.max()) + 1
    t = torch.arange(lo, min(x.numel(), hi + p))  # predictions a missing sample enters
    filt = torch.cat([torch.ones(1, dtype=x.dtype), -a])  # e_t = x_t − Σ a_k x_{t−1−k}
    H = torch.zeros(t.numel(), x.numel(), dtype=x.dtype)
    for k in range(p + 1):
        cols = t - k
        ok = cols >= 0
        H[ok.nonzero().flatten(), cols[ok]] = filt[k]
    Hu, Hk = H[:, idx], H[:, ~missing]
    sol = torch.linalg.lstsq(Hu, -(Hk @ x[~missing])[:, None]).solution[:, 0]
    out = x.clone()
    out[idx] = sol
    return out


def ar_residual_z(x: Tensor, a: Tensor, sd: float) -> Tensor:
    """min(|forward residual|, |backward residual|) / sd per sample of x [L] (0 where a side's
    prediction runs past an end): a click sample is badly predicted from both sides, a clean
    sample after (or before) a click only from one."""
    p = a.numel()
    L = x.numel()
    z = torch.zeros(L, dtype=x.dtype)
    if sd <= 0 or L <= 2 * p:
        return z
    past = x.unfold(0, p, 1)[:-1].flip(1)  # rows for t = p .. L-1: x_{t−1} .. x_{t−p}
    fwd = (x[p:] - past @ a).abs()
    rev = x.flip(0)
    bwd = (rev[p:] - rev.unfold(0, p, 1)[:-1].flip(1) @ a).abs().flip(0)  # for t = 0 .. L−p−1
    z[p: L - p] = torch.minimum(fwd[: L - 2 * p], bwd[p:]) / sd
    return z


def outlier_runs(audio: Tensor, s0: int, s1: int, order: int = AR_ORDER, context: int = AR_CONTEXT,
                 outlier_z: float = OUTLIER_Z, gap: int = RUN_GAP) -> list[tuple[int, int]]:
    """The damaged stretches [c0, c1) of a flagged span [s0, s1) of `audio` [T]: the samples of
    the span whose forward and backward prediction residuals (an AR model fitted on `context`
    samples on each side of the span) both exceed `outlier_z` residual stds (at least one
    16-bit LSB), grouped into runs wherever more than `gap` samples apart (a click in digital
    silence and a speech onset 40 ms later are two runs, not one 40 ms burst).

    Returns:
        Sorted runs; empty when nothing in the span stands out or the span is too near a file
        edge for the model (a run needs `order` samples of context on each side).
    """
    T = audio.numel()
    lo, hi = max(0, s0 - context), min(T, s1 + context)
    if sum(n - order for n in (s0 - lo, hi - s1) if n > order + 1) < 2 * order:
        return []  # too little context to fit the model on (`ar_fit`)
    x = audio[lo:hi].double()
    a, sd = ar_fit([x[: s0 - lo], x[s1 - lo:]], order)
    z = ar_residual_z(x, a, max(sd, RESIDUAL_FLOOR))[s0 - lo: s1 - lo]
    runs: list[list[int]] = []
    for i in (z > outlier_z).nonzero().flatten().tolist():
        if runs and s0 + i - runs[-1][1] <= gap:
            runs[-1][1] = s0 + i + 1
        else:
            runs.append([s0 + i, s0 + i + 1])
    return [(c0, c1) for c0, c1 in runs if c0 - lo >= order and hi - c1 >= order]


# The longest run of damaged samples repaired by AR interpolation (longer: a burst).
MAX_CLICK = 32
# A run of damaged samples is repaired only where its AR prediction residual stands this far (dB)
# above the louder side's (`clicks.residual_contrast_db`). Measured on the held-out demo clips
# with the 300- and 1000-step demo-recipe models (docs/enhance_convert.md): injected ±0.9 clicks
# 30-90 dB, the runs of at most 32 samples found in clean speech at most 15.3 dB; injected
# 20 ms bursts 8.8-48 dB, the longer runs found in clean speech (onsets) at most 10.5 dB.
MIN_CLICK_CONTRAST_DB = 20.0
MIN_BURST_CONTRAST_DB = 12.0


def gate_db(c0: int, c1: int) -> float:
    """The residual contrast (dB) a run of damaged samples [c0, c1) needs to be repaired: a
    click's (≤ MAX_CLICK samples) or a burst's."""
    return MIN_CLICK_CONTRAST_DB if c1 - c0 <= MAX_CLICK else MIN_BURST_CONTRAST_DB


# A run ending within this many samples of a flagged span's edge may go on past it
# (`outlier_runs_past_edges`).
EDGE_SLACK = 2


def outlier_runs_past_edges(audio: Tensor, s0: int, s1: int, edge: int, max_short: int
                            ) -> tuple[list[tuple[int, int]], int, int]:
    """`outlier_runs` of a flagged span [s0, s1) of `audio` [T], searched again with the span
    widened by `edge` samples on a side where a short run (≤ `max_short` samples: a click)
    reaches that edge: a 5-sample click starting in the span's last samples was otherwise
    found as four, its fifth sample used as clean context (and left at 0.9 by the repair).
    Only then: widened everywhere, the search merged speech transients next to clicks into
    longer runs; and not for longer runs (bursts), whose fill reaches past their run anyway.

    Returns:
        (runs, a0, a1): the runs and the span [a0, a1) they were searched in (the AR model's
        span for `residual_contrast_db`).
    """
    T = audio.numel()
    runs = outlier_runs(audio, s0, s1)

    def short(run: tuple[int, int]) -> bool:
        return run[1] - run[0] <= max_short

    a0 = max(0, s0 - edge) if runs and runs[0][0] <= s0 + EDGE_SLACK and short(runs[0]) else s0
    a1 = min(T, s1 + edge) if runs and runs[-1][1] >= s1 - EDGE_SLACK and short(runs[-1]) else s1
    if (a0, a1) != (s0, s1):
        runs = outlier_runs(audio, a0, a1)
    return runs, a0, a1


def at_silence_edge(audio: Tensor, c0: int, c1: int, n: int = AR_ORDER) -> bool:
    """Whether the run [c0, c1) of `audio` [T] begins or ends sound at digital silence: the `n`
    samples on one side of it all within one 16-bit LSB of zero, those on the other side not.
    A sound that starts (or stops) after digital silence cannot be predicted from the silence,
    so its first samples stand out like damage (a synthetic onset: 25 dB of residual contrast);
    a click inside silence has silence on both sides."""
    T = audio.numel()
    quiet = [bool(seg.numel()) and float(seg.abs().max()) <= RESIDUAL_FLOOR
             for seg in (audio[max(0, c0 - n): c0], audio[c1: min(T, c1 + n)])]
    return quiet[0] != quiet[1]


def residual_contrast_db(audio: Tensor, s0: int, s1: int, c0: int, c1: int, order: int = AR_ORDER,
                         context: int = AR_CONTEXT) -> float:
    """How far the damaged samples [c0, c1) of a flagged span [s0, s1) stand out: the mean square
    of the forward AR prediction residual over them (the model fitted on `context` samples on each
    side of the span, as `outlier_runs`), in dB over that of the louder side's own samples.

    Added noise or a click is not predictable from the speech around it (a 20 ms burst of
    0.1-rms noise: 9-48 dB with the demo corpus's held-out clips); the model's improbable stretches
    of clean speech are predicted about as well as the louder side (an onset after digital
    silence: 10 dB, the rest below 5 dB; docs/enhance_convert.md). Each side's mean square is
    floored at one 16-bit LSB squared.

    Returns:
        dB (float).
    """
    T = audio.numel()
    lo, hi = max(0, s0 - context), min(T, s1 + context)
    x = audio[lo:hi].double()
    left, right = x[: s0 - lo], x[s1 - lo:]
    a, _ = ar_fit([left, right], order)

    def residual(seg: Tensor) -> Tensor:  # e_t for t = order .. len(seg) − 1
        if seg.numel() <= order:
            return torch.zeros(1, dtype=torch.float64)
        return seg[order:] - seg.unfold(0, order, 1)[:-1].flip(1) @ a

    inside = residual(x)[max(0, c0 - lo - order): max(1, c1 - lo - order)]
    ref = max(float(residual(left).pow(2).mean()), float(residual(right).pow(2).mean()), RESIDUAL_FLOOR ** 2)
    return 10.0 * math.log10(max(float(inside.pow(2).mean()), 1e-30) / ref)


def ar_fill(audio: Tensor, c0: int, c1: int, order: int = AR_ORDER, context: int = AR_CONTEXT) -> Tensor:
    """Samples [c0, c1) of `audio` [T] replaced by the least-squares AR interpolation from
    `context` samples on each side (Janssen et al.'s method for short gaps: it keeps the
    waveform's level and spectrum, and joins both sides without a crossfade).

    Returns:
        float32 [T] (a copy).
    """
    T = audio.numel()
    lo, hi = max(0, c0 - context), min(T, c1 + context)
    x = audio[lo:hi].double()
    a, _ = ar_fit([x[: c0 - lo], x[c1 - lo:]], order)
    missing = torch.zeros(x.numel(), dtype=torch.bool)
    missing[c0 - lo: c1 - lo] = True
    out = audio.clone()
    out[c0:c1] = ar_interpolate(x, missing, a)[c0 - lo: c1 - lo].float()
    return out
