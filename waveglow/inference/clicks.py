"""Short defects (clicks of a few samples) found on a finer time scale than one mel frame.

A single-sample click changes one mel frame's mean log-likelihood by little (it is one sample
of 256), but the flow's per-sample terms ℓ_t (`score.per_sample_log_likelihood`) drop sharply
at the samples it touches. The statistic here is the mean of ℓ_t over windows of
`WINDOW` samples, compared with its own neighbourhood: a robust z-score against the median
and MAD of the windows within ±`CONTEXT` windows. Local (not whole-file) statistics, because
ℓ_t is heavy-tailed and its typical value follows the loudness of the speech.
"""

from __future__ import annotations

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
