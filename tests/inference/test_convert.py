"""waveglow-convert: the identity settings give the recording back, a formant shift moves the
spectral centroid the right way, a target recording's mel is DTW-aligned to the source, long
inputs convert in exact pieces, and bad inputs stop the CLI with one line and nothing written.

Uses the tiny model trained once per session by test_enhance.tiny_checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli
from test_enhance import SR, load, split, tiny_checkpoint

from waveglow.inference import Synthesizer
from waveglow.inference.convert import channel_centres_hz, convert, warp_formants
from waveglow.inference.dtw import align

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
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: target=") and "nope.wav" in lines[0], proc.stderr
    assert not out.exists() or not any(out.iterdir())
