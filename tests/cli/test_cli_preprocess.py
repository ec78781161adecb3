"""`waveglow-preprocess` as a subprocess, and composition of every config group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import yaml
from conftest import run_cli


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
    assert len(splits["val"]) >= 1 and sum(map(len, splits.values())) == 9
    stats = torch.load(cache / "stats.pt", weights_only=True)
    assert stats["mean"].shape == stats["std"].shape == (80,)
    config = yaml.safe_load((cache / "preprocess.config.yaml").read_text())
    assert config["data"]["root"] == str(root) and config["audio"]["hop_length"] == 256


def test_missing_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("waveglow-preprocess", "data=ljspeech", f"data.root={tmp_path / 'LJSpeech-1.1'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "LJSpeech-1.1: corpus folder not found" in line
    assert "metadata.csv" in line and "wavs/" in line
