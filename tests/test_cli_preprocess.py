"""`waveglow-preprocess` as a subprocess, and composition of every config group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from conftest import run_cli
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from waveglow.cli.common import CONFIG_DIR

DATA_KEYS = {"name", "root", "layout", "cache_dir", "splits", "segment_length", "dither", "short_clip_policy",
             "num_workers", "loader_workers"}
MODEL_KEYS = {"name", "n_group", "n_flows", "n_early_every", "n_early_size", "coupling", "sigma", "condition_half",
              "upsample", "upsample_kernel", "wn"}
AUDIO_KEYS = {"sampling_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax", "log_clamp"}


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
    for name in ("manifest.jsonl", "stats.pt", "bad_files.tsv", "features.json", "config.yaml"):
        assert (cache / name).is_file(), name
    bad = (cache / "bad_files.tsv").read_text()
    assert "silence.wav\tall-zero" in bad and "voice memo.m4a\twrong extension" in bad
    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} >= {"session0/take0", "session1/take3"} and len(rows) == 8
    splits = {n: (root / "splits" / f"{n}.txt").read_text().split() for n in ("train", "val", "test")}
    assert len(splits["val"]) >= 1 and sum(map(len, splits.values())) == 9
    stats = torch.load(cache / "stats.pt", weights_only=True)
    assert stats["mean"].shape == stats["std"].shape == (80,)
    config = yaml.safe_load((cache / "config.yaml").read_text())
    assert config["data"]["root"] == str(root) and config["audio"]["hop_length"] == 256


def test_missing_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    proc = run_cli("waveglow-preprocess", "data=ljspeech", f"data.root={tmp_path / 'LJSpeech-1.1'}", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "LJSpeech-1.1: corpus directory not found" in line
    assert "metadata.csv" in line and "wavs/" in line


# ------------------------------------------------------------------ config composition

def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _compose(config: str, *overrides: str):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(config, overrides=list(overrides))


def test_every_app_config_composes() -> None:
    apps = sorted(p.stem for p in CONFIG_DIR.glob("waveglow_*.yaml"))
    assert {"waveglow_mel", "waveglow_preprocess"} <= set(apps)
    for app in apps:
        cfg = _compose(app)
        assert AUDIO_KEYS <= set(cfg.audio), app
        OmegaConf.to_container(cfg, resolve=True)  # interpolations resolve


@pytest.mark.parametrize("name", _names("data"))
def test_data_group_composes(name: str) -> None:
    cfg = _compose("waveglow_preprocess", f"data={name}")
    assert DATA_KEYS <= set(cfg.data) and cfg.data.name == name
    assert cfg.data.layout in ("ljspeech", "folder") and cfg.data.short_clip_policy in ("noise", "repeat", "drop")
    assert {"n_val", "n_test", "seed"} <= set(cfg.data.splits)
    assert cfg.data.segment_length >= cfg.audio.n_fft


@pytest.mark.parametrize("name", _names("model"))
def test_model_group_composes(name: str) -> None:
    if not (CONFIG_DIR / "waveglow_train.yaml").is_file():
        pytest.skip("no training app config yet")
    cfg = _compose("waveglow_train", f"model={name}", "data=demo")
    assert MODEL_KEYS <= set(cfg.model) and cfg.model.name == name
    assert {"n_layers", "n_channels", "kernel_size", "depthwise"} <= set(cfg.model.wn)


@pytest.mark.parametrize("name", _names("train"))
def test_train_group_composes(name: str) -> None:
    if not (CONFIG_DIR / "waveglow_train.yaml").is_file():
        pytest.skip("no training app config yet")
    cfg = _compose("waveglow_train", f"train={name}")
    assert "train" in cfg and len(cfg.train) > 0


def test_overrides_reach_the_config() -> None:
    cfg = _compose("waveglow_preprocess", "data=folder", "data.root=/x", "audio.fmax=7600", "data.num_workers=3")
    assert (cfg.data.root, cfg.audio.fmax, cfg.data.num_workers) == ("/x", 7600, 3)
    mel = _compose("waveglow_mel", "input=a.wav", "output_dir=o", "format=npy")
    assert (mel.input, mel.output_dir, mel.format, mel.dither) == ("a.wav", "o", "npy", 0.0)
