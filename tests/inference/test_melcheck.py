"""The mel-convention check on real mels of the demo corpus (natural, log10, dB, normalized, for a
model with stored statistics and for one with identity statistics), absurd values, the audio
settings recorded beside mel files, and silence (the log floor) synthesized as silence."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import run_cli
from synth_helpers import HOP, active_model, random_mel

from waveglow.checkpoint import build_checkpoint, save_checkpoint
from waveglow.data.audio import load_audio
from waveglow.errors import UserError
from waveglow.inference import Reference, Synthesizer
from waveglow.inference.melcheck import likely_convention, readings
from waveglow.mel import MelSpectrogram, MelStats, to_natural

pytestmark = pytest.mark.usefixtures("single_thread")
LN10 = float(np.log(10.0))


@pytest.fixture(scope="module")
def demo_mels(demo_root):
    fn = MelSpectrogram()
    wavs = sorted((demo_root / "wavs").glob("*.wav"))[:6]
    return [fn(torch.from_numpy(load_audio(p, 22050))) for p in wavs]


@pytest.fixture(scope="module")
def synth():
    model, cfg = active_model(seed=4)
    return Synthesizer.from_model(model, cfg, device="cpu")


def as_convention(mel: torch.Tensor, reading: str, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """A natural-log mel as another frontend would have written it."""
    return {"natural": mel, "log10": mel / LN10, "db": mel * 20 / LN10,
            "normalized": (mel - mean[:, None]) / std[:, None]}[reading]


@pytest.mark.parametrize("reference", ["stored", "identity"])
def test_each_convention_is_recognized_on_real_mels(demo_mels, reference):
    stats = MelStats(80)
    for m in demo_mels:
        stats.update(m)
    mean, std = stats.to_dict()["mean"], stats.to_dict()["std"]
    ref = (Reference.of_model(mean, std) if reference == "stored"
           else Reference.of_model(torch.zeros(80), torch.ones(80)))
    assert ref.source == ("the checkpoint's mel statistics" if reference == "stored" else "Tacotron 2 natural-log mels")
    for mel in demo_mels:
        for reading in ("natural", "log10", "db", "normalized"):
            given = as_convention(mel, reading, mean, std)
            for declared in ("natural", "log10", "db"):
                guess = likely_convention(given, declared, ref)
                expected = None if reading == declared else reading
                assert guess == expected, (reference, reading, declared, readings(given, declared, ref))


def test_conversion_gives_the_natural_synthesis(synth, demo_mels, caplog):
    mel = demo_mels[0][:, :60]
    ref = synth.from_mel(mel, seed=2, key="a")
    caplog.set_level(logging.WARNING, logger="waveglow.synthesize")
    for convention, given in (("log10", mel / LN10), ("db", mel * 20 / LN10)):
        assert torch.allclose(to_natural(given, convention), mel, atol=1e-5)
        out = synth.from_mel(given, seed=2, key="a", input_convention=convention)
        assert (out - ref).abs().max().item() < 1e-4, convention
    assert not caplog.records  # declared right: no advice
    # Declared wrong: the audio is still made, with ONE warning line naming the fix.
    synth.from_mel(torch.stack([mel / LN10, mel / LN10]), seed=2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "2 of 2 mels look" in lines[0] and "pass input_convention=log10" in lines[0], lines
    with pytest.raises(UserError, match="input_convention="):
        synth.from_mel(mel, input_convention="log2")


def test_absurd_values_are_errors(synth, demo_mels):
    mel = demo_mels[1][:, :20]
    for bad, match in ((torch.full((80, 20), -4.0), "constant"), (mel * 0 + 1e30, "beyond any"),
                       (torch.cat([mel, torch.full((80, 1), -2e4)], 1), "beyond any")):
        with pytest.raises(UserError, match=match):
            synth.from_mel(bad)


def _folder(root: Path, mel: torch.Tensor, **audio) -> Path:
    (root / "sub").mkdir(parents=True)
    torch.save(mel, root / "sub" / "a.pt")
    cfg = {"audio": {"sampling_rate": 22050, "hop_length": HOP, "n_mels": 80, **audio}, "format": "pt"}
    (root / "mel.config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def test_recorded_audio_settings_must_match(tmp_path, demo_mels):
    model, cfg = active_model(seed=5)
    synth = Synthesizer.from_model(model, cfg, device="cpu")
    mel = demo_mels[2][:, :12]
    other = _folder(tmp_path / "at16k", mel, sampling_rate=16000, hop_length=200)
    with pytest.raises(UserError) as e:
        synth.to_files(other, tmp_path / "out16", progress=False)
    msg = str(e.value)
    assert "16000 Hz" in msg and "22050 Hz" in msg and str(other / "mel.config.yaml") in msg and "\n" not in msg
    assert not (tmp_path / "out16").exists() or not list((tmp_path / "out16").rglob("*.wav"))
    same = _folder(tmp_path / "same", mel)
    report = synth.to_files(same, tmp_path / "out", progress=False)
    audio, sr = sf.read(report.written[0])
    assert sr == 22050 and audio.shape == (HOP * 12,)


def test_to_files_warns_once_per_run(tmp_path, synth, demo_mels, caplog):
    d = tmp_path / "db"
    d.mkdir()
    for i, m in enumerate(demo_mels[:3]):
        torch.save(m[:, :30] * 20 / LN10, d / f"m{i}.pt")
    caplog.set_level(logging.WARNING, logger="waveglow.synthesize")
    report = synth.to_files(d, tmp_path / "out", progress=False)
    assert len(report.written) == 3
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "3 of 3 mels look" in lines[0] and "dB" in lines[0] and "input_convention=db" in lines[0]
    caplog.clear()
    converted = synth.to_files(d, tmp_path / "out2", progress=False, input_convention="db")
    assert len(converted.written) == 3 and not caplog.records


FLOOR = math.log(1e-5)  # log(audio.log_clamp): what the frontend gives digital silence


def test_silence_is_synthesized_as_silence(synth):
    """A mel at the log floor everywhere, in any declared convention, gives hop · frames zeros;
    beside speech in a batch it changes nothing for the other item."""
    for convention, value in (("natural", FLOOR), ("log10", FLOOR / LN10), ("db", FLOOR * 20 / LN10)):
        out = synth.from_mel(torch.full((80, 30), value), seed=1, input_convention=convention)
        assert out.shape == (30 * HOP,) and not out.any(), convention
    speech = random_mel(30, 1)
    both = synth.from_mel(torch.stack([speech, torch.full((80, 30), FLOOR)]), seed=1)
    assert not both[1].any() and both[0].abs().max() > 0.01
    assert (both[0] - synth.from_mel(speech, seed=1, key=0)).abs().max() < 1e-5
    # A stream cannot know it is all silence: accepted, the model's output, every sample there.
    streamed = torch.cat(list(synth.stream([torch.full((80, 5), FLOOR)] * 4, seed=1)))
    assert streamed.shape == (20 * HOP,) and torch.isfinite(streamed).all()


@pytest.mark.parametrize("value", [-4.0, 0.0, FLOOR + 0.01, FLOOR / LN10])
def test_other_constants_stay_refused(synth, value):
    with pytest.raises(UserError, match=r"every value is .* \(a constant, not a spectrogram\); digital silence is "
                                        r"-11\.51\d* everywhere \(the log floor, natural log\)"):
        synth.from_mel(torch.full((80, 30), value))
    with pytest.raises(UserError, match="constant"):
        list(synth.stream([torch.full((80, 5), value)] * 4))


def test_cli_silent_wav_to_mel_to_silence(tmp_path):
    """`waveglow-mel` on a silent WAV, then `waveglow-synthesize`: no refusal, a WAV of hop · frames
    zero samples. A constant mel that is not the floor is still one error line, exit 2."""
    model, cfg = active_model(seed=6)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, build_checkpoint(model, cfg))
    sf.write(tmp_path / "silent.wav", np.zeros(11025, np.int16), 22050, subtype="PCM_16")
    run_cli("waveglow-mel", f"input={tmp_path / 'silent.wav'}", f"output_dir={tmp_path / 'mels'}")
    mel = torch.load(tmp_path / "mels" / "silent.pt", weights_only=True)
    assert mel.shape == (80, 1 + 11025 // HOP) and float(mel.min()) == float(mel.max())
    run_cli("waveglow-synthesize", f"checkpoint={ckpt}", f"input={tmp_path / 'mels'}",
            f"output_dir={tmp_path / 'out'}", "device=cpu")
    audio, sr = sf.read(tmp_path / "out" / "silent.wav", dtype="int16")
    assert sr == 22050 and audio.shape == (mel.shape[1] * HOP,) and not audio.any()
    torch.save(torch.full((80, 20), -5.0), tmp_path / "flat.pt")
    proc = run_cli("waveglow-synthesize", f"checkpoint={ckpt}", f"input={tmp_path / 'flat.pt'}",
                   f"output_dir={tmp_path / 'out2'}", "device=cpu", check=False)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "constant" in errors[0] and "flat.pt" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr and not list((tmp_path / "out2").glob("*.wav"))
