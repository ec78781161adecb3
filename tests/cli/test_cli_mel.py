"""`waveglow-mel` run as a subprocess on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import run_cli, run_script

from waveglow.data.audio import load_audio
from waveglow.mel import MelSpectrogram


def test_single_file_matches_the_frontend_and_is_deterministic(demo_root: Path, tmp_path: Path) -> None:
    wav = sorted((demo_root / "wavs").glob("*.wav"))[1]
    out = tmp_path / "mels"
    proc = run_cli("waveglow-mel", f"input={wav}", f"output_dir={out}")
    assert "wrote 1 mel file " in proc.stdout and "x real time" in proc.stdout
    mel = torch.load(out / f"{wav.stem}.pt", weights_only=True)
    assert type(mel) is torch.Tensor and mel.dtype == torch.float32
    audio = load_audio(wav, 22050)
    assert mel.shape == (80, 1 + audio.size // 256)
    assert torch.equal(mel, MelSpectrogram()(torch.from_numpy(audio)))  # no dither by default
    config = yaml.safe_load((out / "mel.config.yaml").read_text())
    assert config["audio"]["n_mels"] == 80 and config["input"] == str(wav) and config["dither"] == 0.0


def test_filelist_input_with_stereo_flac_at_another_rate(demo_root: Path, tmp_path: Path) -> None:
    wavs = sorted((demo_root / "wavs").glob("*.wav"))[:2]
    x, rate = sf.read(wavs[0], dtype="float32")
    sf.write(tmp_path / "stereo.flac", np.stack([x, x], 1), 44100)
    filelist = tmp_path / "lists" / "list.txt"
    filelist.parent.mkdir()
    # Tacotron 2 style: `path|text`; relative entries resolve against the list's folder
    filelist.write_text(f"# comment\n{wavs[1]}|some text\n\n../stereo.flac\n")
    run_script("waveglow-mel", f"input={filelist}", f"output_dir={tmp_path / 'out'}", "format=npy")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [f"{wavs[1].stem}.npy", "stereo.npy", "mel.config.yaml"])
    stereo = np.load(tmp_path / "out" / "stereo.npy")
    assert stereo.dtype == np.float32 and stereo.shape == (80, 1 + int(np.ceil(x.size * 22050 / 44100)) // 256)


def test_folder_expansion_keeps_layout(tmp_path: Path) -> None:
    from waveglow.data.audio import AUDIO_SUFFIXES
    from waveglow.data.inputs import resolve_inputs
    from waveglow.errors import UserError

    def collect_inputs(spec: str) -> list:
        return resolve_inputs(spec, AUDIO_SUFFIXES)

    for rel in ["a.wav", "sub/b.flac", ".hidden/c.wav", "notes.txt"]:
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_bytes(b"")
    pairs = collect_inputs(str(tmp_path / "in"))
    assert [(p.name, str(rel)) for p, rel in pairs] == [("a.wav", "a"), ("b.flac", "sub/b")]
    (tmp_path / "dup.txt").write_text("x/a.wav\ny/a.wav\n")
    with pytest.raises(UserError, match="both be written as a"):
        collect_inputs(str(tmp_path / "dup.txt"))
    (tmp_path / "song.mp3").write_bytes(b"ID3")
    with pytest.raises(UserError, match="expected .wav or .flac"):
        collect_inputs(str(tmp_path / "song.mp3"))


def test_bad_inputs_give_one_line_errors(tmp_path: Path) -> None:
    missing = run_script("waveglow-mel", f"input={tmp_path / 'nope.wav'}", f"output_dir={tmp_path / 'o'}", check=False)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: ") and "nope.wav" in missing.stderr
    assert "Traceback" not in missing.stderr

    fake = tmp_path / "fake.wav"
    fake.write_text("not audio")
    bad = run_script("waveglow-mel", f"input={fake}", f"output_dir={tmp_path / 'o'}", check=False)
    assert bad.returncode == 2 and "fake.wav: cannot read audio" in bad.stderr and "Traceback" not in bad.stderr
