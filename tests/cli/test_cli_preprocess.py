"""`waveglow-preprocess` as a subprocess, and composition of every config group."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import run_cli, run_script


def test_preprocess_a_folder_corpus_it_has_never_seen(demo_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "my voice"  # a space in the path, nested folders, FLAC, a stereo 48 kHz file
    wavs = sorted((demo_root / "wavs").glob("*.wav"))[:8]
    for i, wav in enumerate(wavs):
        x, rate = sf.read(wav, dtype="float32")
        sub = root / f"session{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        if i == 0:
            y = np.stack([x, x], 1)
            import librosa

            sf.write(sub / "take0.wav", librosa.resample(y.T, orig_sr=rate, target_sr=48000).T, 48000)
        else:
            sf.write(sub / f"take{i}.{'flac' if i % 3 == 0 else 'wav'}", x, rate)
    sf.write(root / "silence.wav", np.zeros(10000, np.int16), 22050)
    (root / "voice memo.m4a").write_bytes(b"\x00\x00\x00 ftypM4A ")

    proc = run_cli("waveglow-preprocess", "data=folder", f"data.root={root}", "data.num_workers=2")
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith("preprocessed 8/9 clips") and "x real time on 2 worker(s)" in summary
    assert "2 bad" in summary and "48 kHz audio is resampled to 22.05 kHz" in proc.stderr
    cache = root / "cache"
    for name in ("manifest.jsonl", "stats.pt", "bad_files.tsv", "features.json", "preprocess.config.yaml"):
        assert (cache / name).is_file(), name
    bad = (cache / "bad_files.tsv").read_text()
    assert "silence.wav\tall-zero" in bad and "voice memo.m4a\twrong extension" in bad
    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} >= {"session0/take0", "session1/take3"} and len(rows) == 8
    splits = {n: (root / "splits" / f"{n}.txt").read_text().split() for n in ("train", "val", "test")}
    # the silent file takes no place in the splits (drawn from the 8 usable clips; 60% train)
    assert sorted(sum(splits.values(), [])) == sorted(r["id"] for r in rows)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (5, 2, 1)
    stats = torch.load(cache / "stats.pt", weights_only=True)
    assert stats["mean"].shape == stats["std"].shape == (80,)
    config = yaml.safe_load((cache / "preprocess.config.yaml").read_text())
    assert config["data"]["root"] == str(root) and config["audio"]["hop_length"] == 256


def test_missing_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_script("waveglow-preprocess", "data=ljspeech", f"data.root={tmp_path / 'LJSpeech-1.1'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "LJSpeech-1.1: corpus folder not found" in line
    assert "metadata.csv" in line and "wavs/" in line


@pytest.mark.parametrize("preset, rate, hop, own_steps", [
    ("16k", 16000, 256, False),
    pytest.param("48k", 48000, 512, True, marks=pytest.mark.slow),  # ~30 s; 16k covers the path
])
def test_other_rates_preprocess_train_and_synthesize(preset: str, rate: int, hop: int, own_steps: bool, corpus_copy,
                                                     tmp_path: Path) -> None:
    """The 22.05 kHz demo clips, resampled on load, through the console scripts at another rate.

    At 48 kHz every step is its own script; at 16 kHz (to keep the suite fast) training
    preprocesses the corpus itself and the cached mels are synthesized.
    """
    root = corpus_copy(5, f"c{preset}")
    if own_steps:
        proc = run_script("waveglow-preprocess", f"audio={preset}", "data=demo", f"data.root={root}",
                       "data.num_workers=1")
        assert f"22.05 kHz audio is resampled to {rate / 1000:g} kHz" in proc.stderr
    run = tmp_path / "run"
    run_script("waveglow-train", f"audio={preset}", "data=demo", f"data.root={root}", "model=tiny", "train=demo",
            "train.max_steps=2", "train.batch_size=2", "data.segment_length=4096", "train.val_max_clips=1",
            "train.audio_every=0", "train.threads=1", f"run_dir={run}")
    assert json.loads((root / "cache" / "features.json").read_text())["sampling_rate"] == rate
    ckpt = run / "checkpoints" / "last.pt"
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["config"]["audio"]["sampling_rate"] == rate
    wav = sorted((root / "wavs").glob("*.wav"))[0]
    mels = tmp_path / "mels"
    if own_steps:
        run_script("waveglow-mel", f"audio={preset}", f"input={wav}", f"output_dir={mels}")
    else:
        mels.mkdir()
        (mels / f"{wav.stem}.pt").write_bytes((root / "cache" / "mels" / f"{wav.stem}.pt").read_bytes())
    mel = torch.load(mels / f"{wav.stem}.pt", weights_only=True)
    assert mel.shape == (80, 1 + math.ceil(sf.info(wav).frames * rate / 22050) // hop)
    run_script("waveglow-synthesize", f"checkpoint={ckpt}", f"input={mels}", f"output_dir={tmp_path / 'out'}")
    info = sf.info(tmp_path / "out" / f"{wav.stem}.wav")
    assert info.samplerate == rate and info.frames == hop * mel.shape[1]
