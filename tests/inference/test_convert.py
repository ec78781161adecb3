"""waveglow-convert: the identity settings give the recording back, a formant shift moves the
spectral envelope's peaks by the factor while the pitch stays (a synthetic vowel with known
formants), a target recording's mel is DTW-aligned to the source, long inputs convert in exact
pieces, an input at another rate comes back at its own rate, non-mono tensors are refused, and
bad inputs stop the CLI with one line and nothing written.

Uses the tiny model trained once per session by test_enhance.tiny_checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli
from scipy.signal import lfilter
from test_enhance import SR, load, split, tiny_checkpoint

import waveglow
from waveglow.data.audio import resample
from waveglow.errors import UserError
from waveglow.inference import Synthesizer
from waveglow.inference.convert import (
    channel_centres_hz,
    convert,
    mel_envelope,
    shift_formants,
    warp_formants,
)
from waveglow.inference.dtw import align
from waveglow.mel import MelSpectrogram

F0 = 120.0
FORMANTS = ((700.0, 80.0), (1200.0, 90.0), (2600.0, 120.0))  # (centre, bandwidth) in Hz

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_root) -> Path:
    return tiny_checkpoint(tmp_path_factory, demo_root)


@pytest.fixture(scope="module")
def synth(checkpoint) -> Synthesizer:
    return Synthesizer(checkpoint, device="cpu")


def centroid_hz(audio: torch.Tensor) -> float:
    """Energy-weighted mean spectral centroid over the frames (1024-point STFT)."""
    spec = torch.stft(audio, 1024, 256, window=torch.hann_window(1024), return_complex=True).abs() ** 2
    freqs = torch.linspace(0, SR / 2, spec.shape[0])
    return float((spec * freqs[:, None]).sum() / spec.sum())


def test_identity_round_trip(synth, demo_root):
    audio = load(demo_root, split(demo_root, "test")[1])
    out = convert(synth, audio)
    assert out.shape == audio.shape
    assert (out - audio).abs().max() < 1e-5  # float rounding of encode -> decode
    # In pieces (chunk_frames=16, receptive-field context) it is the same exact inverse.
    chunked = Synthesizer(synth.checkpoint, device="cpu", chunk_frames=16, crossfade_frames=0)
    assert audio.numel() > 3 * 16 * 256
    assert (convert(chunked, audio, latent_scale=0.5) - convert(synth, audio, latent_scale=0.5)).abs().max() < 1e-4


def test_formant_shift_moves_the_centroid(synth, demo_root):
    audio = load(demo_root, split(demo_root, "val")[1])
    base = centroid_hz(convert(synth, audio))
    down, up = (centroid_hz(convert(synth, audio, formant_shift=f)) for f in (0.8, 1.2))
    assert down < base < up, (down, base, up)


def test_warp_is_identity_at_one_and_moves_a_peak(synth):
    mel_fn = synth.frontend()
    centres = channel_centres_hz(mel_fn)
    assert torch.all(centres[1:] > centres[:-1])
    mel = torch.full((80, 3), -8.0)
    k = int(torch.argmin((centres - 1000).abs()))
    mel[k] = 0.0  # a "formant" at 1 kHz
    assert warp_formants(mel, 1.0, centres) is mel
    peak = float(centres[int(warp_formants(mel, 1.3, centres)[:, 0].argmax())])
    assert abs(peak - 1300) < 0.1 * 1300


def test_dtw_recovers_a_time_stretch(synth, demo_root):
    mel = synth.frontend()(load(demo_root, split(demo_root, "val")[0]))
    idx = torch.arange(0, mel.shape[1] * 1.5).div(1.5).floor().long()  # the target: 1.5 × slower
    path = align(mel, mel[:, idx])
    # Source frame f should land on a target frame that holds f (within a frame).
    assert path[0] == 0 and path[-1] == idx.numel() - 1 and torch.all(path[1:] >= path[:-1])
    assert (idx[path] - torch.arange(mel.shape[1])).abs().float().mean() < 1.0


def test_cli_target_and_identity(checkpoint, demo_root, tmp_path):
    val = split(demo_root, "val")
    src, tgt = demo_root / "wavs" / f"{val[0]}.wav", demo_root / "wavs" / f"{val[1]}.wav"
    run_cli("waveglow-convert", f"checkpoint={checkpoint}", f"input={src}", f"output_dir={tmp_path / 'id'}",
            "device=cpu")
    a, b = sf.read(src, dtype="int16")[0], sf.read(tmp_path / "id" / src.name, dtype="int16")[0]
    assert a.shape == b.shape and np.abs(a.astype(int) - b).max() <= 1  # PCM_16 rounding at most
    run_cli("waveglow-convert", f"checkpoint={checkpoint}", f"input={src}", f"output_dir={tmp_path / 't'}",
            f"target={tgt}", "formant_shift=1.1", "device=cpu")
    out = sf.read(tmp_path / "t" / src.name, dtype="float32")[0]
    assert out.shape == a.shape and np.isfinite(out).all() and np.abs(out).max() > 0.01


def test_cli_missing_target_is_one_line_and_nothing_written(checkpoint, demo_root, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    sf.write(src / "a.wav", load(demo_root, split(demo_root, "val")[0]).numpy(), SR, subtype="PCM_16")
    out = tmp_path / "out"
    proc = run_cli("waveglow-convert", f"checkpoint={checkpoint}", f"input={src}", f"output_dir={out}",
                   "device=cpu", f"target={tmp_path / 'nope.wav'}", check=False)
    assert proc.returncode == 2
    # The start line ("waveglow-<script>: N threads ...") may precede the error.
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("waveglow-")]
    assert len(lines) == 1 and lines[0].startswith("error: target=") and "nope.wav" in lines[0], proc.stderr
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ formants on a synthetic vowel
def vowel(seconds: float = 0.8) -> torch.Tensor:
    """An impulse train at F0 through three two-pole resonators at FORMANTS, peak 0.5."""
    src = np.zeros(int(SR * seconds))
    src[np.round(np.arange(0, src.size - 1, SR / F0)).astype(int)] = 1.0
    x = src
    for f, bw in FORMANTS:
        r, th = math.exp(-math.pi * bw / SR), 2 * math.pi * f / SR
        x = lfilter([1 - r], [1, -2 * r * math.cos(th), r * r], x)
    return torch.from_numpy((0.5 * x / np.abs(x).max()).astype(np.float32))


def envelope_peaks_hz(mel: torch.Tensor, centres: torch.Tensor) -> list[float]:
    """The three strongest local maxima of the time-averaged liftered envelope, in Hz (parabolic
    interpolation between channel centres), sorted by frequency."""
    v = mel_envelope(mel).mean(1).double()
    found = []
    for k in range(1, v.numel() - 1):
        if v[k] > v[k - 1] and v[k] >= v[k + 1]:
            d = float(0.5 * (v[k - 1] - v[k + 1]) / (v[k - 1] - 2 * v[k] + v[k + 1]))
            step = centres[k + 1] - centres[k] if d > 0 else centres[k] - centres[k - 1]
            found.append((float(v[k]), float(centres[k] + d * step)))
    return sorted(f for _, f in sorted(found, reverse=True)[:3])


def ripple_f0_hz(mel: torch.Tensor, centres: torch.Tensor, fmax: float = 1000.0) -> float:
    """The spacing of the harmonic ripple below fmax: the f0 (80-200 Hz, 0.5 Hz steps) whose
    harmonic comb exp(2πi·centre/f0) correlates best with the time-averaged fine structure
    (log-mel − envelope)."""
    fine = (mel - mel_envelope(mel)).mean(1).double()
    sel = centres < fmax
    grid = torch.arange(80.0, 200.0, 0.5, dtype=torch.float64)
    comb = torch.exp(2j * math.pi * centres[sel][None, :] / grid[:, None])
    return float(grid[int((comb * fine[sel]).sum(1).abs().argmax())])


@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_shift_formants_moves_the_envelope_and_keeps_the_harmonics(factor):
    mel_fn = MelSpectrogram()
    centres = channel_centres_hz(mel_fn)
    mel = mel_fn(vowel())[:, 8:-8]  # frames away from the reflect-padded edges
    peaks = envelope_peaks_hz(mel, centres)
    assert [abs(p - f) / f for p, (f, _) in zip(peaks, FORMANTS, strict=True)] < [0.05] * 3, peaks
    assert ripple_f0_hz(mel, centres) == pytest.approx(F0, abs=1.0)
    shifted = shift_formants(mel, factor, centres)
    for p, q in zip(peaks, envelope_peaks_hz(shifted, centres), strict=True):
        assert q / p == pytest.approx(factor, abs=0.01), (peaks, q)
    assert ripple_f0_hz(shifted, centres) == pytest.approx(F0, abs=1.0)
    # The check can fail: a warp of the whole log-mel moves the harmonic ripple with the envelope.
    assert ripple_f0_hz(warp_formants(mel, factor, centres), centres) == pytest.approx(F0 * factor, abs=2.0)


def test_converted_vowel_keeps_its_pitch_and_moves_its_formants(synth):
    """Through the vocoder: the output's analysed envelope peaks move by the factor (within 1.5 %)
    and the ripple's F0 stays within 1 Hz."""
    mel_fn = synth.frontend()
    centres = channel_centres_hz(mel_fn)
    x = vowel()
    peaks = envelope_peaks_hz(mel_fn(x)[:, 8:-8], centres)
    for factor in (0.85, 1.15):
        out = mel_fn(convert(synth, x, formant_shift=factor))[:, 8:-8]
        moved = envelope_peaks_hz(out, centres)
        assert [abs(q / p / factor - 1) for p, q in zip(peaks, moved, strict=True)] < [0.015] * 3, (peaks, moved)
        assert ripple_f0_hz(out, centres) == pytest.approx(F0, abs=1.0)


# ------------------------------------------------------------------------- channels and rates
@pytest.mark.parametrize("shape", [(2, 4096), (4096, 2), (), (1, 2, 4096)])
def test_api_refuses_non_mono_tensors(synth, shape):
    audio = torch.zeros(shape) if shape else torch.tensor(0.1)
    with pytest.raises(UserError, match=r"expected mono audio \[T\] or \[1, T\]") as e:
        waveglow.convert(synth, audio)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=r"expected mono audio"):
        waveglow.enhance(synth, audio)
    with pytest.raises(UserError, match=r"^target: .*expected mono audio"):
        waveglow.convert(synth, torch.zeros(4096), target=torch.zeros(shape))


def test_api_takes_one_channel_rows(synth, demo_root):
    audio = load(demo_root, split(demo_root, "val")[2])[:8192]
    assert torch.equal(waveglow.convert(synth, audio[None], latent_scale=0.9),
                       waveglow.convert(synth, audio, latent_scale=0.9))
    assert torch.equal(waveglow.enhance(synth, audio[None], dry_run=True).audio, audio)


def test_cli_writes_at_the_inputs_rate(checkpoint, demo_root, tmp_path):
    """A 16 kHz input is converted at the model's 22.05 kHz and written back at 16 kHz with its
    own length; the identity conversion then differs from the input only by the two resamplings."""
    clip = load(demo_root, split(demo_root, "val")[0]).numpy()
    src = tmp_path / "in16k.wav"
    sf.write(src, resample(clip, SR, 16000), 16000, subtype="PCM_16")
    run_cli("waveglow-convert", f"checkpoint={checkpoint}", f"input={src}", f"output_dir={tmp_path / 'out'}",
            "device=cpu")
    info, out = sf.info(tmp_path / "out" / src.name), sf.read(tmp_path / "out" / src.name, dtype="float32")[0]
    a = sf.read(src, dtype="float32")[0]
    assert (info.samplerate, info.frames, info.subtype) == (16000, a.size, "PCM_16")
    snr = 10 * np.log10(np.sum(a**2) / np.sum((out - a) ** 2))
    assert snr > 30, snr
