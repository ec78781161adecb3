"""The metrics on synthetic signals with known answers: identical signals reach the ceilings, a
pure tone shifted by a known interval measures that many cents, a delayed copy has ≈ 0 dB MCD
once aligned, and the summary's interval is Student's t."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from waveglow.eval import metrics as M
from waveglow.eval.mcd import mcd_dtw, mel_cepstra
from waveglow.eval.pitch import f0_rmse_cents, track, vuv_error
from waveglow.eval.summary import best_systems, mean_ci95, summarize
from waveglow.mel import MelSpectrogram

SR = 22050
pytestmark = pytest.mark.usefixtures("single_thread")


def harmonic(f0: float, seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """A speech-like voiced sound: 8 harmonics of f0 with a falling spectrum, a little noise."""
    t = np.arange(int(seconds * sr)) / sr
    x = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 9))
    x = x + 0.01 * np.random.default_rng(seed).standard_normal(t.size)
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def task(ref: np.ndarray, outputs: dict[str, np.ndarray], metrics=M.PAIRWISE) -> M.ClipResult:
    from waveglow.config import to_dict
    from waveglow.config.groups import AudioConfig

    return M.measure_clip(M.ClipTask("clip", ref, outputs, SR, to_dict(AudioConfig()), tuple(metrics)))


def test_identical_signals_reach_every_ceiling():
    ref = np.concatenate([np.zeros(2205, np.float32), harmonic(150.0, 1.5), np.zeros(2205, np.float32)])
    res = task(ref, {"same": ref.copy(), "noisy": ref + 0.05 * np.random.default_rng(1).standard_normal(ref.size)
                     .astype(np.float32)})
    same, noisy = res.values["same"], res.values["noisy"]
    assert same["pesq"] == pytest.approx(4.644, abs=0.001)  # wide-band PESQ's maximum
    assert same["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert same["estoi"] == pytest.approx(1.0, abs=1e-6)
    assert same["f0_rmse"] == 0.0 and same["vuv_error"] == 0.0
    assert same["mcd"] == 0.0 and same["mel_l1"] == 0.0 and same["mr_stft"] == 0.0
    # The same measurements do move away from the ceilings for a degraded copy.
    assert noisy["pesq"] < 3.0 and noisy["stoi"] < 0.99 and noisy["mcd"] > 1.0 and noisy["mel_l1"] > 0.1
    assert set(res.seconds) == set(M.PAIRWISE)


@pytest.mark.parametrize("cents", [50.0, -200.0])
def test_pure_tone_shift_measures_that_many_cents(cents):
    f0 = 180.0
    ref, out = harmonic(f0, 1.0), harmonic(f0 * 2 ** (cents / 1200), 1.0, seed=1)
    import librosa

    p_ref = track(librosa.resample(ref, orig_sr=SR, target_sr=16000), 16000)
    p_out = track(librosa.resample(out, orig_sr=SR, target_sr=16000), 16000)
    assert p_ref.voiced.mean() > 0.9 and p_out.voiced.mean() > 0.9
    # pYIN's F0 lies on a 10-cent grid: within half a bin of the true shift.
    assert f0_rmse_cents(p_ref, p_out) == pytest.approx(abs(cents), abs=5.0)
    assert f0_rmse_cents(p_ref, p_ref) == 0.0
    assert vuv_error(p_ref, p_out) < 5.0


def test_voicing_error_counts_frames_that_lost_their_voice():
    ref = harmonic(150.0, 1.0)
    out = ref.copy()
    out[SR // 2:] = 0.001 * np.random.default_rng(2).standard_normal(SR // 2).astype(np.float32)
    res = task(ref, {"half": out}, metrics=("f0_rmse", "vuv_error"))
    assert 40.0 < res.values["half"]["vuv_error"] < 60.0  # the second half of the frames
    assert res.values["half"]["f0_rmse"] < 10.0  # the first half keeps its pitch


def test_delayed_copy_has_no_mel_cepstral_distortion_after_alignment():
    mel = MelSpectrogram().eval()
    x = np.concatenate([np.zeros(4410, np.float32), harmonic(140.0, 0.6), harmonic(220.0, 0.6),
                        np.zeros(4410, np.float32)])
    delayed = np.concatenate([np.zeros(10 * 256, np.float32), x])  # 10 frames later
    with torch.inference_mode():
        cx, cd = (mel_cepstra(mel(torch.from_numpy(a)).numpy()) for a in (x, delayed))
    assert mcd_dtw(cx, cd) < 0.05
    n = cx.shape[1]
    unaligned = float(np.mean(M.math.sqrt(2) * 10 / math.log(10) * np.sqrt(((cx - cd[:, :n]) ** 2).sum(0))))
    assert unaligned > 2.0  # frame by frame, the shift costs several dB
    other = np.concatenate([np.zeros(4410, np.float32), harmonic(300.0, 1.2), np.zeros(4410, np.float32)])
    with torch.inference_mode():
        co = mel_cepstra(mel(torch.from_numpy(other)).numpy())
    assert mcd_dtw(cx, co) > 1.0


def test_silent_reference_leaves_pesq_and_stoi_undefined_with_a_note():
    silent = np.zeros(SR, np.float32)
    res = task(silent, {"tone": harmonic(150.0, 1.0)}, metrics=("pesq", "stoi", "mel_l1"))
    row, notes = res.values["tone"], res.notes["tone"]
    assert row["pesq"] is None and row["stoi"] is None and row["mel_l1"] > 0
    assert any(n.startswith("pesq: PESQ undefined") for n in notes)
    assert any(n.startswith("stoi: STOI undefined") for n in notes)


def test_missing_package_is_one_warning_naming_the_extra(monkeypatch, caplog):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pystoi" else real(name, *a))
    with caplog.at_level(logging.WARNING, logger="waveglow.eval"):
        ok, missing = M.available(["pesq", "stoi", "estoi", "mcd"])
    assert ok == ["pesq", "mcd"] and missing == ["stoi", "estoi"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "waveglow[eval]" in lines[0] and "stoi, estoi" in lines[0]


def test_mean_interval_and_best():
    mean, ci, n = mean_ci95([1.0, 2.0, 3.0, None, float("nan")])
    assert (mean, n) == (2.0, 3)
    assert ci == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t(0.975, 2) · sd / √n
    records = [{"system": s, "pesq": v, "mcd": w} for s, v, w in
               [("a", 2.0, 5.0), ("a", 2.2, 5.0), ("griffin_lim", 2.5, 4.0), ("griffin_lim", 2.7, 4.0),
                ("ground_truth", 4.64, 0.0), ("ground_truth", 4.64, 0.0)]]
    summary = summarize(records, ["a", "griffin_lim", "ground_truth"], ["pesq", "mcd"])
    assert summary["a"]["pesq"]["mean"] == pytest.approx(2.1)
    assert best_systems(summary, ["pesq", "mcd"]) == {"pesq": "griffin_lim", "mcd": "griffin_lim"}
