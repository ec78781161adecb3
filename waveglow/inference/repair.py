"""The pieces of one span's repair (`waveglow.inference.enhance`): the interpolated mel, the
noise-removing attenuation of a burst, the level match and the crossfade.

All work on float32 mono audio [T]; a span is [s0, s1) in samples.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# The fill of a noise burst: the STFT it is attenuated on (window and hop in samples), the frames
# on each side that give the reference spectrum, and the crossfade (ms) on each side of the
# burst's own samples (every changed sample outside the damage is error).
NEAR_FFT = 256
NEAR_HOP = 64
NEAR_FRAMES = 2
BURST_MARGIN_MS = 2.0
# Gain limit of the rms level match: +12 dB (silence around the span gives a silent span).
MAX_LEVEL_GAIN = 4.0


def interpolated_mel(mel: Tensor, s0: int, s1: int, hop: int, n_fft: int) -> Tensor:
    """`mel` [n_mels, F] with the frames whose analysis window touches [s0, s1) interpolated
    linearly (in log-mel) between the nearest untouched frames; at a file edge the one side is held."""
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
    t = (torch.arange(fa, fb + 1, dtype=torch.float32) - left) / (right - left)
    out[:, fa: fb + 1] = a[:, None] * (1 - t) + b[:, None] * t
    return out


def attenuate_to_neighbours(audio: Tensor, b0: int, b1: int, n_fft: int = NEAR_FFT, hop: int = NEAR_HOP,
                            ref_frames: int = NEAR_FRAMES) -> Tensor:
    """`audio` [T] (a window around a burst [b0, b1)) with its short-time spectrum lowered, bin
    by bin, where it exceeds what the speech right next to the burst holds (never raised): in
    every STFT frame whose window touches [b0, b1), each bin's magnitude is capped at the larger
    of the rms magnitudes of the `ref_frames` frames just before and just after it (windows
    clear of the burst). Additive noise is removed and the speech under it keeps its phase.

    The short window (256 samples, 11.6 ms at 22.05 kHz) puts the reference within ~15 ms of
    the burst: a mel frame's 1024-sample window put it ~45 ms away, and speech that grew louder
    in between was removed with the noise (waveform error above the damage's in 2 of 16 bursts;
    docs/enhance_convert.md).

    Returns:
        float32 [T]; unchanged where no frame clear of the burst exists on either side.
    """
    window = torch.hann_window(n_fft, dtype=audio.dtype)
    spec = torch.stft(audio, n_fft, hop, window=window, center=True, return_complex=True)  # [bins, F]
    centers = torch.arange(spec.shape[1]) * hop
    touch = (centers + n_fft // 2 > b0) & (centers - n_fft // 2 < b1)
    idx = touch.nonzero().flatten()
    if idx.numel() == 0:
        return audio
    fa, fb = int(idx.min()), int(idx.max())
    sides = [spec[:, lo:hi].abs().pow(2).mean(1).sqrt()
             for lo, hi in ((max(0, fa - ref_frames), fa), (fb + 1, min(spec.shape[1], fb + 1 + ref_frames))) if hi > lo]
    if not sides:
        return audio
    ref = torch.stack(sides).amax(0)  # [bins]
    gain = (ref[:, None] / spec.abs().clamp_min(1e-12)).clamp(max=1.0)
    gain[:, ~touch] = 1.0
    return torch.istft(spec * gain, n_fft, hop, window=window, center=True, length=audio.numel()).float()


def level_matched(audio: Tensor, fill: Tensor, w0: int, s0: int, s1: int, reach: int,
                  at_most_input: bool = False, skip: int = 0) -> Tensor:
    """`fill` (a window of audio from sample w0) with its span [s0, s1) scaled to the rms of
    `audio` [T] over `reach` samples on each side of the span, beyond the first `skip` (the
    surrounding level; a burst's skips its crossfade, so the level is that of the samples its
    repair leaves as they are; gain at most MAX_LEVEL_GAIN; with `at_most_input`, never above
    the rms of `audio` over the span: an additive defect only added energy)."""
    T = audio.numel()
    ref = torch.cat([audio[max(0, s0 - skip - reach): max(0, s0 - skip)],
                     audio[min(T, s1 + skip): min(T, s1 + skip + reach)]]).double()
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
