"""Corpus discovery, splits, preprocessing (cache, manifest, stats, bad files) and datasets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from waveglow.audio import INT16_SCALE, load_audio
from waveglow.cli.common import CONFIG_DIR
from waveglow.data import (
    ClipDataset,
    SegmentDataset,
    discover_corpus,
    ensure_splits,
    load_stats,
    preprocess_corpus,
    split_clips,
)
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram, load_mel

SR, HOP = 22050, 256


def make_cfg(root: Path, *overrides: str, data: str = "demo") -> DictConfig:
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("waveglow_preprocess", overrides=[f"data={data}", f"data.root={root}", "data.num_workers=1",
                                                         *overrides])


def add_clip(root: Path, clip_id: str, audio: np.ndarray | None = None, rate: int = SR, raw: bytes | None = None,
             subtype: str = "PCM_16", suffix: str = ".wav") -> Path:
    """Add a file to an LJSpeech-layout corpus (and its metadata line)."""
    path = root / "wavs" / f"{clip_id}{suffix}"
    if raw is not None:
        path.write_bytes(raw)
    else:
        sf.write(path, audio, rate, subtype=subtype)
    with open(root / "metadata.csv", "a") as f:
        f.write(f"{clip_id}|text|text\n")
    return path


def tone(n: int, freq: float = 220.0, rate: int = SR) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


# ------------------------------------------------------------------ discovery

def test_discover_ljspeech_reports_unusable_entries(corpus_copy) -> None:
    root = corpus_copy(4)
    good = discover_corpus(make_cfg(root).data).clips
    (root / "wavs" / "MP3-1.mp3").write_bytes(b"ID3")
    with open(root / "metadata.csv", "a") as f:
        f.write(f"GONE-1|missing|missing\nMP3-1|mp3|mp3\n{good[0].id}|again|again\n../evil|x|x\n\n")
    corpus = discover_corpus(make_cfg(root).data)
    assert [c.id for c in corpus.clips] == [c.id for c in good] and len(good) == 4
    reasons = {Path(b.path.split(":")[0]).name: b.reason for b in corpus.bad}
    assert reasons["GONE-1.wav"].startswith("missing (listed in metadata.csv line 5)")
    assert "wrong extension '.mp3'" in reasons["MP3-1.mp3"]
    assert any("duplicate clip id" in b.reason for b in corpus.bad)
    assert any("invalid clip id" in b.reason for b in corpus.bad)


def test_discover_folder(tmp_path: Path) -> None:
    root = tmp_path / "voice"
    for rel in ["a/x.wav", "b/y.FLAC", "top.wav", "cache/mels/z.wav", "splits/s.wav", ".hidden/h.wav"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / rel, tone(2000), SR, format="FLAC" if rel.lower().endswith("flac") else "WAV")
    (root / "c.mp3").write_bytes(b"ID3")
    (root / "notes.txt").write_text("not audio")
    sf.write(root / "top.flac", tone(2000), SR)
    corpus = discover_corpus(make_cfg(root, data="folder").data)
    assert [c.id for c in corpus.clips] == ["a/x", "b/y", "top"]
    reasons = sorted(b.reason for b in corpus.bad)
    assert any("wrong extension '.mp3'" in r for r in reasons) and any("duplicate clip id 'top'" in r for r in reasons)


def test_missing_corpus_names_path_and_layout(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nowhere: corpus directory not found; expected LJSpeech layout: metadata.csv"):
        discover_corpus(make_cfg(tmp_path / "nowhere").data)
    with pytest.raises(UserError, match=r"nowhere: corpus directory not found; expected a folder of .wav/.flac"):
        ensure_splits(make_cfg(tmp_path / "nowhere", data="folder").data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"metadata.csv: not found"):
        discover_corpus(make_cfg(tmp_path / "empty").data)
    with pytest.raises(UserError, match=r"no usable audio files"):
        discover_corpus(make_cfg(tmp_path / "empty", data="folder").data)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("waveglow_preprocess", overrides=["data=folder"])
    with pytest.raises(UserError, match=r"data.root is required"):
        discover_corpus(cfg.data)


# ------------------------------------------------------------------ splits

def test_splits_are_deterministic_and_written_once(corpus_copy, caplog: pytest.LogCaptureFixture) -> None:
    a, b = corpus_copy(16, "a"), corpus_copy(16, "b")
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        sa = ensure_splits(make_cfg(a).data)  # demo: n_val 4, n_test 4 -> fits 16 clips
    assert not [r for r in caplog.records if "holding out" in r.getMessage()]
    assert sa == ensure_splits(make_cfg(b).data)
    assert (len(sa["train"]), len(sa["val"]), len(sa["test"])) == (8, 4, 4)
    assert sorted(sa["train"] + sa["val"] + sa["test"]) == sorted(c.id for c in discover_corpus(make_cfg(a).data).clips)
    assert (a / "splits" / "val.txt").read_text().split() == sa["val"]
    # never redrawn: another seed gives the stored split back
    assert ensure_splits(make_cfg(a, "data.splits.seed=7").data) == sa
    assert ensure_splits(make_cfg(b, "data.splits.seed=7", "data.cache_dir=" + str(b / "c")).data) == sa
    other = corpus_copy(16, "c")
    assert ensure_splits(make_cfg(other, "data.splits.seed=7").data) != sa
    (a / "splits" / "test.txt").unlink()
    with pytest.raises(UserError, match="incomplete splits"):
        ensure_splits(make_cfg(a).data)


def test_small_corpus_shrinks_held_out_sets(corpus_copy, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        splits = ensure_splits(make_cfg(corpus_copy(5, "five")).data)
    assert len(splits["val"]) >= 1 and len(splits["val"]) + len(splits["test"]) <= 2 and len(splits["train"]) >= 3
    assert any("holding out" in r.getMessage() for r in caplog.records)
    one = ensure_splits(make_cfg(corpus_copy(1, "one")).data)
    assert one["train"] == one["val"] and len(one["val"]) == 1 and one["test"] == []


# ------------------------------------------------------------------ preprocessing

@pytest.fixture
def messy_corpus(corpus_copy) -> Path:
    """6 demo clips + a 48 kHz stereo clip (usable) + one file of each bad kind."""
    root = corpus_copy(6, "messy")
    add_clip(root, "HIRATE", np.stack([tone(48000, 330, 48000), tone(48000, 330, 48000) * 0.5], 1), rate=48000)
    add_clip(root, "BAD-text", raw=b"RIFF but not really a wave file")
    add_clip(root, "BAD-empty", np.zeros(0, np.float32))
    nan = tone(4000)
    nan[100] = np.nan
    add_clip(root, "BAD-nan", nan, subtype="FLOAT")
    add_clip(root, "BAD-zero", np.zeros(8000, np.float32))
    add_clip(root, "BAD-short", tone(300))
    (root / "wavs" / "BAD-mp3.mp3").write_bytes(b"ID3")
    with open(root / "metadata.csv", "a") as f:
        f.write("BAD-mp3|x|x\n")
    return root


def test_preprocess_cache_manifest_stats_and_bad_files(messy_corpus: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = make_cfg(messy_corpus)
    ids = [c.id for c in discover_corpus(cfg.data).clips]
    demo_ids = [i for i in ids if i.startswith("DEMO")]
    held_out = {"val": [*demo_ids[:2], "BAD-zero"], "test": [demo_ids[2]]}
    (messy_corpus / "splits").mkdir()
    for name, listed in [*held_out.items(), ("train", [i for i in ids if i not in sum(held_out.values(), [])])]:
        (messy_corpus / "splits" / f"{name}.txt").write_text("\n".join(listed) + "\n")
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        report = preprocess_corpus(cfg, progress=False)
    cache = messy_corpus / "cache"
    expected_bad = {"BAD-text": "cannot read audio", "BAD-empty": "empty audio", "BAD-nan": "NaN or Inf",
                    "BAD-zero": "all-zero", "BAD-short": "too short", "BAD-mp3": "wrong extension"}
    assert len(report.bad) == len(expected_bad)
    for b in report.bad:
        assert expected_bad[Path(b.path).stem] in b.reason
    tsv = (cache / "bad_files.tsv").read_text().splitlines()
    assert tsv[0] == "path\treason" and len(tsv) == 1 + len(expected_bad)
    assert sum("skipped" in r.getMessage() for r in caplog.records) == len(expected_bad)
    assert sum("resampled" in r.getMessage() for r in caplog.records) == 1  # 48 kHz, once

    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    assert report.n_ok == len(rows) == 7 and report.n_computed == 7 and report.n_reused == 0
    assert {"id", "path", "n_samples", "n_frames", "split"} <= set(rows[0])
    hirate = next(r for r in rows if r["id"] == "HIRATE")
    assert hirate["n_samples"] == 22050 and hirate["file_rate"] == 48000
    mel_fn = MelSpectrogram()
    for r in rows:
        mel = load_mel(cache / r["mel"], 80)
        assert mel.shape == (80, r["n_frames"]) and r["n_frames"] == 1 + r["n_samples"] // HOP
    wav = messy_corpus / rows[0]["path"]
    assert torch.allclose(load_mel(cache / rows[0]["mel"], 80), mel_fn(torch.from_numpy(load_audio(wav, SR))))

    # statistics: the training split only, equal to numpy over the concatenated frames
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 4 and report.split_counts == {"train": 4, "val": 2, "test": 1}
    frames = np.concatenate([load_mel(cache / r["mel"], 80).double().numpy() for r in train], axis=1)
    stats = torch.load(cache / "stats.pt", weights_only=True)
    assert set(stats) == {"mean", "std"} and stats["mean"].dtype == torch.float32
    np.testing.assert_allclose(stats["mean"].numpy(), frames.mean(axis=1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats["std"].numpy(), frames.std(axis=1), rtol=1e-5, atol=1e-6)
    mean, std = load_stats(cfg, compute_if_missing=False)
    assert torch.equal(mean, stats["mean"]) and torch.equal(std, stats["std"])
    assert "preprocessed 7/12 clips" in report.summary() and "x real time" in report.summary()

    # re-run: everything valid is reused
    again = preprocess_corpus(cfg, progress=False)
    assert (again.n_reused, again.n_computed, len(again.bad)) == (7, 0, len(expected_bad))

    # an interrupted run: a half-written mel and a leftover temp file are not trusted
    victim = cache / rows[1]["mel"]
    victim.write_bytes(victim.read_bytes()[:200])
    leftover = victim.with_name(f".{victim.name}.tmp999999999")
    leftover.write_bytes(b"partial")
    resumed = preprocess_corpus(cfg, progress=False)
    assert (resumed.n_reused, resumed.n_computed) == (6, 1) and not leftover.exists()
    assert load_mel(victim, 80).shape[1] == rows[1]["n_frames"]

    # other feature settings: nothing cached may be reused
    changed = preprocess_corpus(make_cfg(messy_corpus, "audio.fmax=7600"), progress=False)
    assert (changed.n_reused, changed.n_computed) == (0, 7)


def test_worker_pool_gives_the_same_result(corpus_copy) -> None:
    root = corpus_copy(6, "pool")
    one = preprocess_corpus(make_cfg(root, f"data.cache_dir={root / 'c1'}"), progress=False)
    two = preprocess_corpus(make_cfg(root, f"data.cache_dir={root / 'c2'}", "data.num_workers=2"), progress=False)
    assert two.workers == 2 and two.n_computed == one.n_computed == 6
    assert (root / "c1" / "manifest.jsonl").read_text() == (root / "c2" / "manifest.jsonl").read_text()
    s1, s2 = (torch.load(root / c / "stats.pt", weights_only=True) for c in ("c1", "c2"))
    assert torch.allclose(s1["mean"], s2["mean"], atol=1e-6) and torch.allclose(s1["std"], s2["std"], atol=1e-6)


def test_nothing_usable_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    sf.write(root / "zero.wav", np.zeros(5000, np.float32), SR)
    (root / "text.wav").write_text("hello")
    with pytest.raises(UserError, match="no usable clips"):
        preprocess_corpus(make_cfg(root, data="folder"), progress=False)
    assert "all-zero" in (root / "cache" / "bad_files.tsv").read_text()


def test_load_stats_computes_when_missing(corpus_copy) -> None:
    root = corpus_copy(4, "stats")
    cfg = make_cfg(root)
    with pytest.raises(UserError, match="stats.pt: .*run waveglow-preprocess"):
        load_stats(cfg, compute_if_missing=False)
    mean, std = load_stats(cfg, progress=False)
    assert mean.shape == std.shape == (80,) and (std > 0).all()
    assert (root / "cache" / "manifest.jsonl").is_file()


# ------------------------------------------------------------------ datasets

@pytest.fixture
def two_caches(corpus_copy) -> tuple[DictConfig, DictConfig]:
    """The same corpus with a filled cache and with none."""
    root = corpus_copy(6, "ds")
    cached = make_cfg(root)
    preprocess_corpus(cached, progress=False)
    return cached, make_cfg(root, f"data.cache_dir={root / 'absent'}")


def test_segments_match_with_and_without_cache(two_caches) -> None:
    cached, uncached = two_caches
    a = SegmentDataset(cached, segment_length=4096, dither=0.0)
    b = SegmentDataset(uncached, segment_length=4096, dither=0.0)
    assert all(c.mel_path is not None for c in a.clips) and all(c.mel_path is None for c in b.clips)
    mel_fn = MelSpectrogram()
    for i in range(len(a)):
        torch.manual_seed(i)
        x = a[i]
        torch.manual_seed(i)
        y = b[i]
        assert x["audio"].shape == (4096,) and x["mel"].shape == (80, 1 + 4096 // HOP)
        assert torch.equal(x["audio"], y["audio"]) and torch.allclose(x["mel"], y["mel"], atol=1e-5)
        # the segment sits at a hop multiple of the clip, and its mel is that slice of the clip's mel
        clip = load_audio(a.clips[i].path, SR)
        starts = [s for s in range(0, clip.size - 4096 + 1, HOP) if np.array_equal(clip[s:s + 4096], x["audio"].numpy())]
        assert starts, "segment not found at a hop-aligned offset"
        full = mel_fn(torch.from_numpy(clip))
        f0 = starts[0] // HOP
        assert torch.allclose(x["mel"], full[:, f0:f0 + 1 + 4096 // HOP], atol=1e-5)


def test_segments_are_dithered_and_random(two_caches) -> None:
    cached, _ = two_caches
    ds = SegmentDataset(cached, segment_length=2048)  # data.dither = 1.0 LSB
    clean = SegmentDataset(cached, segment_length=2048, dither=0.0)
    torch.manual_seed(0)
    x = ds[0]
    torch.manual_seed(0)
    y = clean[0]
    diff = (x["audio"] - y["audio"]).abs()
    assert 0 < diff.max() <= 0.5 / INT16_SCALE + 1e-9
    assert torch.equal(x["mel"], y["mel"])  # mels come from the undithered audio
    starts = {tuple(ds[0]["audio"][:4].tolist()) for _ in range(6)}
    assert len(starts) > 1


def test_dataloader_batches(two_caches) -> None:
    cached, _ = two_caches
    batch = next(iter(DataLoader(SegmentDataset(cached), batch_size=3, shuffle=True)))
    assert batch["audio"].shape == (3, 16000) and batch["mel"].shape == (3, 80, 63) and len(batch["id"]) == 3
    assert batch["audio"].dtype == batch["mel"].dtype == torch.float32


def test_short_clip_policies(tmp_path: Path) -> None:
    root = tmp_path / "short"
    root.mkdir()
    clip = tone(3000)
    sf.write(root / "short.wav", clip, SR, subtype="FLOAT")
    sf.write(root / "long.wav", tone(20000, 150), SR, subtype="FLOAT")
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("long\nshort\n")
    (root / "splits" / "val.txt").write_text("short\n")
    (root / "splits" / "test.txt").write_text("")
    base = ("data.segment_length=8192", "data.dither=0")

    noise = SegmentDataset(make_cfg(root, *base, data="folder"))
    item = noise[noise.clips.index(next(c for c in noise.clips if c.id == "short"))]
    tail = item["audio"][3000:]
    assert item["audio"].shape == (8192,) and item["mel"].shape == (80, 33)
    assert torch.allclose(item["audio"][:3000], torch.from_numpy(clip))
    assert (tail != 0).float().mean() > 0.99 and tail.abs().max() < 8 / INT16_SCALE  # low-level noise, not zeros

    repeat = SegmentDataset(make_cfg(root, *base, "data.short_clip_policy=repeat", data="folder"))
    item = repeat[[c.id for c in repeat.clips].index("short")]
    assert torch.allclose(item["audio"][3000:6000], torch.from_numpy(clip))

    drop = SegmentDataset(make_cfg(root, *base, "data.short_clip_policy=drop", data="folder"))
    assert [c.id for c in drop.clips] == ["long"]
    with pytest.raises(UserError, match="no usable clips in the val split"):
        ClipDataset(make_cfg(root, *base, "data.short_clip_policy=drop", data="folder"), segment_length=8192)
    with pytest.raises(UserError, match="short_clip_policy=zeros"):
        SegmentDataset(make_cfg(root, *base, "data.short_clip_policy=zeros", data="folder"))
    with pytest.raises(UserError, match="segment_length=100"):
        SegmentDataset(make_cfg(root, *base, data="folder"), segment_length=100)

    # validation pads deterministically
    val = ClipDataset(make_cfg(root, *base, data="folder"), segment_length=8192)
    assert torch.equal(val[0]["audio"], val[0]["audio"]) and val[0]["audio"].shape == (8192,)


def test_validation_dataset_is_deterministic(two_caches) -> None:
    cached, uncached = two_caches
    seg = ClipDataset(cached, segment_length=4096)
    first = [seg[i] for i in range(len(seg))]
    torch.manual_seed(123)
    assert all(torch.equal(a["audio"], seg[i]["audio"]) for i, a in enumerate(first))
    whole = ClipDataset(cached, multiple_of=8)
    whole_uncached = ClipDataset(uncached, multiple_of=8, max_clips=1)
    item = whole[0]
    n = split_clips(cached, "val")[0].n_samples
    assert item["audio"].shape == (n - n % 8,) and item["mel"].shape == (80, 1 + (n - n % 8) // HOP)
    assert item["id"] == whole_uncached[0]["id"] and len(whole_uncached) == 1
    assert torch.equal(item["audio"], whole_uncached[0]["audio"])
    assert torch.allclose(item["mel"], whole_uncached[0]["mel"], atol=1e-5)
    clip = load_audio(whole.clips[0].path, SR)
    assert torch.equal(item["audio"], torch.from_numpy(clip[:n - n % 8]))  # no dither
