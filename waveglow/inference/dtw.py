"""Dynamic time warping of one mel spectrogram onto another's time axis (for `waveglow-convert
target=`).

Conversion keeps the source's latent, which is laid out on the source's time axis, so the
target's mel must be re-timed to the source: every source frame gets exactly one target frame.
The warping path is monotone, starts at (0, 0), ends at (F_s − 1, F_t − 1), and advances the
target by 0 … k frames per source frame (k = 2, or more when the target is much longer), which
is the "symmetric" DTW's step set seen from the source side. Frames are compared by Euclidean
distance after each mel's per-channel mean is removed (cepstral-mean-style normalization), so
a different recording level or channel colour does not pull the path.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from waveglow.errors import UserError

# The cost matrix takes eight bytes per (source frame, target frame) and the back-pointers one:
# 2.5·10^7 cells ≈ 215 MiB, i.e. two recordings of up to 5,000 frames (58 s at hop 256) each.
MAX_CELLS = 25_000_000


def align(source: Tensor, target: Tensor) -> Tensor:
    """The target frame aligned to each source frame.

    Args:
        source: log-mel [n_mels, F_s].
        target: log-mel [n_mels, F_t].

    Returns:
        int64 indices [F_s] into the target's frames, non-decreasing, first 0, last F_t − 1.

    Raises:
        UserError: the two mels do not have the same channels, or are too long to align
            (F_s · F_t above `MAX_CELLS`).
    """
    if source.dim() != 2 or target.dim() != 2 or source.shape[0] != target.shape[0]:
        raise UserError(f"target: expected a mel with the source's {source.shape[0]} channels, got shape "
                        f"{list(target.shape)}")
    n_s, n_t = source.shape[1], target.shape[1]
    if n_s * n_t > MAX_CELLS:
        raise UserError(f"target: {n_s} × {n_t} frames is too long to align (at most {MAX_CELLS:,} "
                        "frame pairs); expected recordings of one sentence or paragraph")
    s = (source - source.mean(dim=1, keepdim=True)).double().T  # [F_s, n_mels]
    t = (target - target.mean(dim=1, keepdim=True)).double().T  # [F_t, n_mels]
    cost = torch.cdist(s[None], t[None])[0].numpy()  # [F_s, F_t]
    # The longest step must let the path reach the target's last frame.
    max_step = max(2, math.ceil((n_t - 1) / max(n_s - 1, 1)))
    if max_step > 100:
        raise UserError(f"target: {n_t} frames against the source's {n_s}; expected recordings of "
                        "comparable length (at most 100× longer)")
    acc = np.full(n_t, np.inf)
    acc[0] = cost[0, 0]
    back = np.zeros((n_s, n_t), dtype=np.int8)
    for i in range(1, n_s):
        best = acc.copy()
        step = np.zeros(n_t, dtype=np.int8)
        for k in range(1, max_step + 1):
            shifted = np.full(n_t, np.inf)
            shifted[k:] = acc[:-k]
            better = shifted < best
            best[better] = shifted[better]
            step[better] = k
        acc = best + cost[i]
        back[i] = step
    if not np.isfinite(acc[-1]):
        raise UserError(f"target: {n_t} frames cannot be aligned to the source's {n_s}")
    path = np.empty(n_s, dtype=np.int64)
    j = n_t - 1
    for i in range(n_s - 1, -1, -1):
        path[i] = j
        j -= int(back[i, j])
    return torch.from_numpy(path)
