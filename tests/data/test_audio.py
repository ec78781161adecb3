"""Audio I/O: scaling, channel mixing, resampling, bad files, atomic writes, dither."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from waveglow.data.audio import (
    INT16_SCALE,
    dither,
    load_audio,
    read_audio,
    resampled_length,
    save_audio,
    warn_once_per_rate,
)
from waveglow.errors import UserError

SR = 22050


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(audio: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, 1 / rate)[spec.argmax()])


def test_int16_is_scaled_to_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    sf.write(path, np.array([-32768, -16384, 0, 16384, 32767], dtype=np.int16), SR, subtype="PCM_16")
    audio = load_audio(path, SR)
    assert audio.dtype == np.float32
    np.testing.assert_allclose(audio, [-1.0, -0.5, 0.0, 0.5, 32767 / 32768], atol=1e-7)


@pytest.mark.parametrize("subtype", ["PCM_24", "PCM_32", "FLOAT"])
def test_other_subtypes_and_flac(tmp_path: Path, subtype: str) -> None:
    x = sine(440, 0.1, SR)
    sf.write(tmp_path / "a.wav", x, SR, subtype=subtype)
    np.testing.assert_allclose(load_audio(tmp_path / "a.wav", SR), x, atol=1e-4)
    sf.write(tmp_path / "a.flac", x, SR, subtype="PCM_16")
    np.testing.assert_allclose(load_audio(tmp_path / "a.flac", SR), x, atol=1e-4)


@pytest.mark.parametrize("channels", [2, 8])
def test_multichannel_is_mixed_to_mono_mean(tmp_path: Path, channels: int) -> None:
    x = sine(300, 0.2, SR)
    # Channel c carries x * c / channels: the mean is x * (channels + 1) / (2 * channels).
    data = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    sf.write(tmp_path / "m.wav", data, SR, subtype="FLOAT")
    audio = load_audio(tmp_path / "m.wav", SR)
    assert audio.shape == x.shape
    np.testing.assert_allclose(audio, x * (channels + 1) / (2 * channels), atol=1e-6)


@pytest.mark.parametrize("rate", [8000, 48000])
def test_resampling_keeps_length_and_pitch(tmp_path: Path, rate: int) -> None:
    x = sine(1000, 0.5, rate)
    sf.write(tmp_path / "r.wav", x, rate, subtype="PCM_16")
    calls = []
    audio = load_audio(tmp_path / "r.wav", SR, warn=lambda p, o, t: calls.append((p, o, t)))
    assert audio.shape == (resampled_length(x.size, rate, SR),) == (int(np.ceil(x.size * SR / rate)),)
    assert abs(peak_hz(audio, SR) - 1000) < 5
    assert calls == [(tmp_path / "r.wav", rate, SR)]


def test_resample_warning_once_per_rate(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for i, rate in enumerate([48000, 48000, 16000, 48000]):
        sf.write(tmp_path / f"{i}.wav", sine(200, 0.05, rate), rate)
    seen: set[int] = set()
    warn = warn_once_per_rate(seen)
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        for i in range(4):
            load_audio(tmp_path / f"{i}.wav", SR, warn=warn)
    messages = [r.getMessage() for r in caplog.records if "resampled" in r.getMessage()]
    assert len(messages) == 2 and seen == {48000, 16000}
    assert "48 kHz" in messages[0] and "22.05 kHz" in messages[0]


def test_partial_read(tmp_path: Path) -> None:
    x = sine(100, 0.2, SR)
    sf.write(tmp_path / "p.wav", np.stack([x, x], 1), SR, subtype="FLOAT")
    part, rate = read_audio(tmp_path / "p.wav", 100, 300)
    assert rate == SR
    np.testing.assert_allclose(part, x[100:300], atol=1e-7)


def test_bad_files_raise_user_errors(tmp_path: Path) -> None:
    (tmp_path / "text.wav").write_text("this is not audio\n")
    with pytest.raises(UserError, match=r"text\.wav: cannot read audio"):
        load_audio(tmp_path / "text.wav", SR)
    with pytest.raises(UserError, match=r"missing\.wav: no such audio file"):
        load_audio(tmp_path / "missing.wav", SR)
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.int16), SR, subtype="PCM_16")
    with pytest.raises(UserError, match=r"empty\.wav: empty audio"):
        load_audio(tmp_path / "empty.wav", SR)
    for bad in (np.nan, np.inf):
        x = sine(100, 0.05, SR)
        x[10] = bad
        sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
        with pytest.raises(UserError, match="NaN or Inf"):
            load_audio(tmp_path / "nan.wav", SR)


def test_save_audio_clips_counts_and_is_atomic(tmp_path: Path) -> None:
    x = np.array([0.0, 0.5, 1.5, -2.0, -0.25], dtype=np.float32)
    path = tmp_path / "out" / "o.wav"
    assert save_audio(path, torch.from_numpy(x), SR) == 2
    assert sorted(p.name for p in path.parent.iterdir()) == ["o.wav"]  # no temp file left
    back, rate = sf.read(path, dtype="float32")
    assert rate == SR
    np.testing.assert_allclose(back, np.clip(x, -1, 32767 / 32768), atol=1.5 / INT16_SCALE)
    assert save_audio(tmp_path / "o.flac", x[None, :2], SR) == 0
    with pytest.raises(UserError, match="expected .wav or .flac"):
        save_audio(tmp_path / "o.mp3", x, SR)
    with pytest.raises(UserError, match="mono"):
        save_audio(tmp_path / "s.wav", np.zeros((2, 10)), SR)


def test_dither_statistics() -> None:
    audio = torch.zeros(200_000)
    gen = torch.Generator().manual_seed(0)
    noisy = dither(audio, 1.0, gen)
    step = 1.0 / INT16_SCALE
    assert noisy.abs().max() <= 0.5 * step
    assert abs(noisy.mean().item()) < 0.01 * step
    assert noisy.std().item() == pytest.approx(step / np.sqrt(12), rel=0.01)  # uniform, width 1 LSB
    assert dither(audio, 4.0, gen).std().item() == pytest.approx(4 * step / np.sqrt(12), rel=0.01)
    # reproducible with a seeded generator, shape/dtype kept, off at 0
    a = dither(torch.zeros(2, 50, dtype=torch.float64), 1.0, torch.Generator().manual_seed(3))
    b = dither(torch.zeros(2, 50, dtype=torch.float64), 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 50) and a.dtype == torch.float64
    x = torch.randn(10)
    assert dither(x, 0.0) is x
