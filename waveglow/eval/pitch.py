"""F0 and voicing with librosa's pYIN, and the two pitch metrics of a vocoder evaluation.

pYIN (Mauch & Dixon 2014) rather than CREPE (torchcrepe), as measured on this task
(scripts/measure_pitch_trackers.py, docs/evaluation.md "Which pitch tracker"). On signals with
a known F0 at 10 dB SNR and cleaner, its F0 error is 3-9 cents RMS against torchcrepe's 10-16
and it makes no voicing error (torchcrepe calls 4 % of the unvoiced frames voiced); on speech
its voicing changes less under a harmless pitch shift than crepe-tiny's (9 % of frames against
14.5 %; crepe-full's a little less, 5.7 % against 7.5 % on two clips); it costs 0.3 CPU s per
audio second on one thread (torchcrepe: 0.5 tiny, 12 full); and it installs
with librosa, while torchcrepe does not import beside the CPU torch of `make install` (its
torchaudio dependency). Its weakness: in white noise at 0 dB SNR it calls most voiced frames
unvoiced. It is deterministic, and its voicing decision comes from the same HMM as its F0. Its
F0 lies on a grid of 0.1 semitone (10 cents, `RESOLUTION`). Signals are tracked at 16 kHz (the
PESQ copy, shared) with 64 ms frames and a 10 ms hop, over 50-550 Hz (speech).

    F0 RMSE  sqrt(mean((1200·log2(f_out / f_ref))²)) over frames voiced in both, in cents
    V/UV     share of frames where the two voicing decisions differ, in %
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

FMIN, FMAX = 50.0, 550.0
FRAME, HOP = 1024, 160  # at 16 kHz: 64 ms frames, 10 ms hop
RESOLUTION = 0.1  # semitones per pitch bin


class Pitch(NamedTuple):
    """f0 [frames] in Hz (NaN where unvoiced) and voiced [frames] (bool)."""

    f0: np.ndarray
    voiced: np.ndarray


def track(audio: np.ndarray, sampling_rate: int) -> Pitch:
    """pYIN F0 and voicing of audio [T].

    Args:
        audio: float [T].
        sampling_rate: Hz (16 kHz expected; the frame and hop are in samples at 16 kHz).

    Returns:
        A `Pitch` with one value per 10 ms frame.
    """
    import librosa

    scale = sampling_rate / 16000
    frame, hop = int(round(FRAME * scale)), int(round(HOP * scale))
    if audio.size < frame:
        audio = np.pad(audio, (0, frame - audio.size))
    f0, voiced, _ = librosa.pyin(audio.astype(np.float64), fmin=FMIN, fmax=FMAX, sr=sampling_rate,
                                 frame_length=frame, hop_length=hop, resolution=RESOLUTION)
    return Pitch(np.asarray(f0, dtype=np.float64), np.asarray(voiced, dtype=bool))


def _common(ref: Pitch, out: Pitch) -> tuple[Pitch, Pitch]:
    n = min(ref.f0.size, out.f0.size)
    return Pitch(ref.f0[:n], ref.voiced[:n]), Pitch(out.f0[:n], out.voiced[:n])


def f0_rmse_cents(ref: Pitch, out: Pitch) -> float:
    """RMS F0 difference in cents over the frames voiced in both.

    Raises:
        ValueError: no frame is voiced in both (the error is undefined).
    """
    ref, out = _common(ref, out)
    both = ref.voiced & out.voiced & np.isfinite(ref.f0) & np.isfinite(out.f0)
    if not both.any():
        raise ValueError("F0 RMSE undefined (no frame voiced in both)")
    cents = 1200.0 * np.log2(out.f0[both] / ref.f0[both])
    return float(np.sqrt(np.mean(cents**2)))


def vuv_error(ref: Pitch, out: Pitch) -> float:
    """Percentage of frames whose voiced/unvoiced decisions differ."""
    ref, out = _common(ref, out)
    if ref.voiced.size == 0:
        raise ValueError("V/UV error undefined (no frame)")
    return float(100.0 * np.mean(ref.voiced != out.voiced))
