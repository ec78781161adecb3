"""The evaluation's F0 tracker (`waveglow.eval.pitch`, librosa pYIN) on synthetic signals whose F0
and voicing are known frame by frame: a vibrato, a glide, an unvoiced noise burst and silence,
clean and in white noise; and the two pitch metrics built on it."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from waveglow.eval.pitch import HOP, Pitch, f0_rmse_cents, track, vuv_error

SR = 16000  # the rate the evaluation tracks at
pytestmark = pytest.mark.usefixtures("single_thread")

# (start s, end s, kind): the voiced parts, a fricative-like noise burst between them, silence around.
SEGMENTS = ((0.0, 0.10, "silence"), (0.10, 0.80, "voiced"), (0.80, 1.05, "noise"), (1.05, 1.60, "voiced"),
            (1.60, 1.80, "silence"))


def signal(f0_of_t, snr_db: float | None = None, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A harmonic voice with the F0 contour f0_of_t(t) in its voiced segments.

    Returns:
        audio [T] at 16 kHz, the true F0 [frames] (Hz), the true voicing [frames] and the frames
        to score [frames] (centre more than 32 ms, half a pYIN window, from a segment edge).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(SEGMENTS[-1][1] * SR)) / SR
    f0 = f0_of_t(t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.where(k * f0 < 7500, np.sin(k * phase) / k, 0.0) for k in range(1, 30))
    audio, voiced = np.zeros(t.size), np.zeros(t.size, bool)
    for start, end, kind in SEGMENTS:
        a, b = int(start * SR), int(end * SR)
        ramp = np.minimum(1.0, np.minimum(np.arange(b - a), np.arange(b - a)[::-1]) / (0.01 * SR))  # 10 ms fades
        if kind == "voiced":
            audio[a:b], voiced[a:b] = voice[a:b] * ramp, True
        elif kind == "noise":  # high-passed white noise, 6 dB below the voice
            burst = np.diff(rng.standard_normal(b - a + 1))
            audio[a:b] = burst / burst.std() * voice.std() * 0.5 * ramp
    if snr_db is not None:
        audio += rng.standard_normal(t.size) * np.sqrt(np.mean(audio[voiced] ** 2) / 10 ** (snr_db / 10))
    centre = np.arange(1 + t.size // HOP) * HOP / SR
    edges = np.array([s for s, _, _ in SEGMENTS[1:]])
    scored = np.abs(centre[:, None] - edges[None]).min(axis=1) > 0.032
    true_voiced = np.zeros(centre.size, bool)
    for start, end, kind in SEGMENTS:
        if kind == "voiced":
            true_voiced |= (centre >= start) & (centre < end)
    return (0.3 * audio / np.abs(audio).max()).astype(np.float32), np.interp(centre, t, f0), true_voiced, scored


def vibrato(t: np.ndarray) -> np.ndarray:
    return 150.0 * 2 ** (60 / 1200 * np.sin(2 * np.pi * 5.5 * t))  # +-60 cents at 5.5 Hz


def glide(t: np.ndarray) -> np.ndarray:
    return 90.0 * (300.0 / 90.0) ** (t / t[-1])  # 90 -> 300 Hz, exponential


@functools.cache
def tracked(contour, snr_db: float | None = None) -> tuple[Pitch, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """track() of signal(contour, snr_db), with the signal's audio and truth (each tracked once per module)."""
    audio, f0, voiced, scored = signal(contour, snr_db)
    return track(audio, SR), audio, f0, voiced, scored


def errors(p: Pitch, f0: np.ndarray, voiced: np.ndarray, scored: np.ndarray) -> tuple[np.ndarray, float]:
    """Cents off the true F0 on frames voiced in truth and track, and the V/UV error (%)."""
    assert p.f0.shape == p.voiced.shape == f0.shape  # one value per 10 ms frame, centred
    both = voiced & p.voiced & scored
    assert both.sum() > 0.8 * (voiced & scored).sum()  # nearly every voiced frame is found
    return 1200 * np.log2(p.f0[both] / f0[both]), float(100 * np.mean(p.voiced[scored] != voiced[scored]))


@pytest.mark.parametrize("contour, snr_db", [(vibrato, None), (glide, None), (vibrato, 10.0)])
def test_pyin_follows_a_known_contour_and_finds_the_unvoiced_parts(contour, snr_db):
    p, _, f0, voiced, scored = tracked(contour, snr_db)
    cents, vuv = errors(p, f0, voiced, scored)
    # Measured: 3-8 cents RMS (the 10-cent grid and a 64 ms window across the vibrato), no gross error.
    assert np.sqrt(np.mean(cents**2)) < 15.0
    assert np.max(np.abs(cents)) < 50.0
    assert vuv < 3.0  # the noise burst and the silence are unvoiced, the voice voiced


def test_pitch_metrics_on_tracks_of_a_shifted_and_a_gapped_copy():
    ref, audio, _, _, _ = tracked(vibrato)
    shifted, _, _, _ = signal(lambda t: vibrato(t) * 2 ** (50 / 1200))
    out = track(shifted, SR)
    assert f0_rmse_cents(ref, ref) == 0.0 and vuv_error(ref, ref) == 0.0
    assert f0_rmse_cents(ref, out) == pytest.approx(50.0, abs=10.0)  # the shift, within the grid and edges
    assert vuv_error(ref, out) < 3.0
    # The second voiced part silenced: those frames count as V/UV errors, the F0 error stays on the first.
    gapped = audio.copy()
    gapped[int(1.05 * SR):] = 0.0
    gap = track(gapped, SR)
    share = 100 * np.mean(ref.voiced & (np.arange(ref.voiced.size) * HOP / SR > 1.05))
    assert vuv_error(ref, gap) == pytest.approx(share, abs=3.0)
    assert f0_rmse_cents(ref, gap) < 5.0


def test_f0_error_is_undefined_without_a_frame_voiced_in_both():
    noise = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    p = track(noise, SR)
    assert not p.voiced.any()
    with pytest.raises(ValueError, match="no frame voiced in both"):
        f0_rmse_cents(p, p)
