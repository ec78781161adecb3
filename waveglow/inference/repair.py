"""The pieces of one span's repair (`waveglow.inference.enhance`): the interpolated mel, the
noise-removing envelope fill, the level match and the crossfade.

All work on float32 mono audio [T]; a span is [s0, s1) in samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from waveglow.mel import MelSpectrogram

# The fill of a noise burst: passes of the attenuating envelope match, and the crossfade (ms)
# on each side of the burst's own samples (every changed sample outside the damage is error).
BURST_PASSES = 3
BURST_MARGIN_MS = 2.0
# Gain limit of the rms level match: +12 dB (silence around the span gives a silent span).
MAX_LEVEL_GAIN = 4.0


def interpolated_mel(mel: Tensor, s0: int, s1: int, hop: int, n_fft: int, upper: bool = False) -> Tensor:
    """`mel` [n_mels, F] with the frames whose analysis window touches [s0, s1) interpolated
    linearly (in log-mel) between the nearest untouched frames; at a file edge the one side is held.
    With `upper`, every such frame takes the larger of the two sides per channel instead: an
    onset or offset inside the span is not under-estimated (a burst's fill only removes what
    exceeds this; measured in docs/enhance_convert.md)."""
    half = n_fft // 2
    F = mel.shape[-1]
    fa = max(0, math.floor((s0 - half) / hop) + 1)
    fb = min(F - 1, math.ceil((s1 + half) / hop) - 1)
    left, right = fa - 1, fb + 1
    out = mel.clone()
    if left < 0 and right >= F:
        return out  # the whole recording is one span: nothing clean to interpolate from
    a = mel[:, left] if left >= 0 else mel[:, right]
    b = mel[:, right] if right < F else mel[:, left]
    if upper:
        out[:, fa: fb + 1] = torch.maximum(a, b)[:, None]
        return out
    t = (torch.arange(fa, fb + 1, dtype=torch.float32) - left) / (right - left)
    out[:, fa: fb + 1] = a[:, None] * (1 - t) + b[:, None] * t
    return out


def attenuate_toward(audio: Tensor, mel: Tensor, mel_fn: MelSpectrogram, passes: int = BURST_PASSES) -> Tensor:
    """`audio` [T] with its STFT magnitude lowered, bin by bin, where it exceeds what the log-mel
    `mel` [n_mels, 1 + T // hop] says (never raised): additive noise over speech is removed and
    the speech keeps its phase. The gain per mel channel and frame is min(0, mel − mel_fn(audio))
    nats of magnitude, spread to the STFT bins by the filterbank (as `convert.match_envelope`).

    Returns:
        float32 [T].
    """
    window = mel_fn.window.to(audio.dtype)
    basis = mel_fn.mel_basis  # [n_mels, n_fft/2 + 1]
    weight = basis.sum(0)
    covered = (weight > 0).nonzero().flatten()
    nearest = covered[torch.searchsorted(covered, torch.arange(weight.numel())).clamp(max=covered.numel() - 1)]
    out = audio
    for _ in range(passes):
        spec = torch.stft(out, mel_fn.n_fft, mel_fn.hop_length, mel_fn.win_length, window=window,
                          center=True, pad_mode="reflect", return_complex=True)
        log_gain = (mel - mel_fn(out)).clamp(max=0.0)  # [n_mels, F]
        per_bin = ((basis.T @ log_gain) / weight.clamp_min(1e-12)[:, None])[nearest]
        out = torch.istft(spec * per_bin.exp(), mel_fn.n_fft, mel_fn.hop_length, mel_fn.win_length,
                          window=window, center=True, length=audio.numel()).float()
    return out


def level_matched(audio: Tensor, fill: Tensor, w0: int, s0: int, s1: int, reach: int,
                  at_most_input: bool = False) -> Tensor:
    """`fill` (a window of audio from sample w0) with its span [s0, s1) scaled to the rms of
    `audio` [T] over `reach` samples on each side of the span (the surrounding level; gain at
    most MAX_LEVEL_GAIN; with `at_most_input`, never above the rms of `audio` over the span:
    an additive defect only added energy)."""
    T = audio.numel()
    ref = torch.cat([audio[max(0, s0 - reach): s0], audio[s1: min(T, s1 + reach)]]).double()
    span = fill[s0 - w0: s1 - w0].double()
    if ref.numel() == 0 or span.numel() == 0:
        return fill
    target = ref.pow(2).mean().sqrt()
    if at_most_input:
        target = target.clamp(max=float(audio[s0:s1].double().pow(2).mean().sqrt()))
    gain = float(target / span.pow(2).mean().sqrt().clamp_min(1e-9))
    out = fill.clone()
    out[s0 - w0: s1 - w0] *= min(gain, MAX_LEVEL_GAIN)
    return out


def crossfade(audio: Tensor, repaired: Tensor, w0: int, s0: int, s1: int, margin: int) -> Tensor:
    """`audio` [T] with `repaired` (a window from sample w0 on) on [s0, s1) and raised-cosine
    crossfades over `margin` samples on each side: samples outside [s0 − margin, s1 + margin)
    are not touched."""
    T, M = audio.numel(), margin
    a, b = max(0, s0 - M), min(T, s1 + M, w0 + repaired.numel())
    pos = torch.arange(a, b, dtype=torch.float64)
    ramp_in = 0.5 - 0.5 * torch.cos(math.pi * (pos - (s0 - M)) / max(M, 1))
    ramp_out = 0.5 - 0.5 * torch.cos(math.pi * ((s1 + M) - pos) / max(M, 1))
    w = torch.where(pos < s0, ramp_in, torch.where(pos >= s1, ramp_out, torch.ones_like(pos))).float()
    out = audio.clone()
    out[a:b] = audio[a:b] * (1 - w) + repaired[a - w0: b - w0] * w
    return out
