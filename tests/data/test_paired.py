"""Paired (GTA) mels as the conditioning (`data.mel_dir`), and unusable files kept out of the splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import HOP, SR, add_clip, make_cfg, tone

from waveglow.data import (
    ClipDataset,
    SegmentDataset,
    discover_corpus,
    load_stats,
    preprocess_corpus,
)
from waveglow.data.audio import load_audio
from waveglow.data.paired import MEL_FRAME_TOLERANCE, fit_frames
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram, load_mel, save_mel

OFFSET = 0.75  # paired mels = the audio's mel + this, so that the tests can tell which one was used


@pytest.fixture
def gta(corpus_copy) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """8 demo clips and paired mels: 2 trimmed, 1 padded, 1 beyond tolerance, 1 missing, .npy and .pt."""
    root = corpus_copy(8, "gta")
    mel_dir = root.parent / "gta mels"  # a space in the folder name
    mel_fn = MelSpectrogram()
    ids = [c.id for c in discover_corpus(make_cfg(root).data).clips]
    diffs = {ids[0]: 2, ids[1]: 1, ids[2]: -3, ids[3]: MEL_FRAME_TOLERANCE + 6}
    paired = {}
    for i, cid in enumerate(ids[:-1]):  # the last clip has no paired mel
        mel = mel_fn(torch.from_numpy(load_audio(root / "wavs" / f"{cid}.wav", SR))) + OFFSET
        d = diffs.get(cid, 0)
        mel = torch.cat([mel, mel[:, -1:] + torch.arange(1, d + 1)], 1) if d > 0 else mel[:, :mel.shape[1] + d]
        paired[cid] = mel
        save_mel(mel_dir / f"{cid}.{'npy' if i % 2 else 'pt'}", mel)
    return root, mel_dir, paired


def test_preprocess_uses_paired_mels(gta, caplog: pytest.LogCaptureFixture) -> None:
    root, mel_dir, paired = gta
    ids = sorted(paired) + [c.id for c in discover_corpus(make_cfg(root).data).clips if c.id not in paired]
    too_long, missing = ids[3], ids[-1]
    cfg = make_cfg(root, f"data.mel_dir={mel_dir}")
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        report = preprocess_corpus(cfg, progress=False)
    assert (report.n_trimmed, report.n_padded, report.max_frame_diff) == (2, 1, 3)
    assert "paired mels from" in report.summary() and "2 trimmed, 1 padded (at most 3 frames)" in report.summary()
    bad = {Path(b.path).stem: b.reason for b in report.bad}
    assert set(bad) == {too_long, missing}
    assert bad[missing] == f"no paired mel {missing}.pt or {missing}.npy in data.mel_dir ({mel_dir})"
    assert bad[too_long].startswith(f"paired mel has {paired[too_long].shape[1]} frames, the audio needs "
                                    f"{paired[too_long].shape[1] - MEL_FRAME_TOLERANCE - 6}")
    cache = root / "cache-gta mels"  # a cache of its own: the audio mels' cache stays valid
    assert report.cache_dir == cache
    tsv = (cache / "bad_files.tsv").read_text()
    assert f"{missing}.wav\tno paired mel" in tsv and f"{too_long}.wav\tpaired mel has" in tsv

    # the splits were drawn from the 6 usable clips: the two unusable ones take no place in them
    splits = {n: (root / "splits" / f"{n}.txt").read_text().split() for n in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(set(ids) - {too_long, missing})
    assert not [r for r in caplog.records if "in no split" in r.getMessage()]

    # the cache holds the paired mels fitted to the audio: trimmed at the end or last frame repeated
    rows = [json.loads(line) for line in (cache / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == report.n_ok == 6
    for r in rows:
        cached = load_mel(cache / r["mel"], 80)
        need = 1 + r["n_samples"] // HOP
        src = paired[r["id"]]
        assert cached.shape == (80, need) == (80, r["n_frames"])
        k = min(need, src.shape[1])
        assert torch.equal(cached[:, :k], src[:, :k])
        assert torch.equal(cached[:, k:], src[:, -1:].expand(-1, need - k))
    # the statistics are those of the paired mels of the training split
    frames = torch.cat([load_mel(cache / r["mel"], 80) for r in rows if r["split"] == "train"], 1).double()
    mean, std = load_stats(cfg, compute_if_missing=False)
    np.testing.assert_allclose(mean.numpy(), frames.mean(1).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), frames.std(1, unbiased=False).numpy(), rtol=1e-5, atol=1e-6)

    # without mel_dir: the statistics of the audio's mels, from the usual cache; the paired cache stays
    audio_mean, _ = load_stats(make_cfg(root), progress=False)
    assert abs(float((mean - audio_mean).mean()) - OFFSET) < 0.05
    assert preprocess_corpus(cfg, progress=False).n_reused == 6
    # one cache shared by both: switching mel source recomputes (never reuses the other's mels)
    shared = f"data.cache_dir={root / 'shared'}"
    preprocess_corpus(make_cfg(root, shared), progress=False)
    switched = preprocess_corpus(make_cfg(root, shared, f"data.mel_dir={mel_dir}"), progress=False)
    assert switched.n_computed == 6 and torch.equal(load_stats(make_cfg(root, shared, f"data.mel_dir={mel_dir}"),
                                                                compute_if_missing=False)[0], mean)


def test_datasets_condition_on_paired_mels(gta) -> None:
    root, mel_dir, paired = gta
    cached = make_cfg(root, f"data.mel_dir={mel_dir}")
    preprocess_corpus(cached, progress=False)
    uncached = make_cfg(root, f"data.mel_dir={mel_dir}", f"data.cache_dir={root / 'absent'}")
    assert all(c.mel_path and c.mel_path.parent.name == "mels" for c in SegmentDataset(cached, "train").clips)
    for cfg in (cached, uncached):
        ds = SegmentDataset(cfg, "train", segment_length=4096, dither=0.0)
        torch.manual_seed(0)
        for i, clip in enumerate(ds.clips):
            item = ds[i]
            want = fit_frames(paired[clip.id], 1 + clip.n_samples // HOP)
            audio = load_audio(clip.path, SR)
            start = next(s for s in range(0, audio.size - 4096 + 1, HOP)
                         if np.array_equal(audio[s:s + 4096], item["audio"].numpy()))
            assert torch.equal(item["mel"], want[:, start // HOP:start // HOP + 1 + 4096 // HOP])
        val = ClipDataset(cfg, "val", multiple_of=8)
        item = val[0]
        assert torch.equal(item["mel"], fit_frames(paired[item["id"]], 1 + item["audio"].numel() // HOP))
    # a clip shorter than the segment: its own frames are paired, the padding's are computed
    short = SegmentDataset(cached, "train", segment_length=2 ** 16, dither=0.0)
    item, clip = short[0], short.clips[0]
    own = 1 + clip.n_samples // HOP
    assert torch.equal(item["mel"][:, :own], fit_frames(paired[clip.id], own))
    assert item["mel"].shape == (80, 1 + 2 ** 16 // HOP)


def test_paired_mel_errors(gta, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, mel_dir, paired = gta
    first = sorted(paired)[4]  # not the first clip: found by a worker, not by the up-front check
    wrong = mel_dir / f"{first}.pt"
    save_mel(wrong, torch.zeros(100, paired[first].shape[1]))
    with pytest.raises(UserError, match=rf"^{wrong}: expected 80 mel channels"):
        preprocess_corpus(make_cfg(root, f"data.mel_dir={mel_dir}"), progress=False)
    assert not (root / "cache-gta mels" / "manifest.jsonl").exists() and not (root / "splits").exists()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^data.mel_dir=nowhere/mels: folder of paired mels not found "
                                        rf"\(looked in {tmp_path}/nowhere/mels\)"):
        preprocess_corpus(make_cfg(root, "data.mel_dir=nowhere/mels"), progress=False)


def test_unusable_files_take_no_place_in_the_splits(corpus_copy, caplog: pytest.LogCaptureFixture) -> None:
    root = corpus_copy(5, "bad-in-splits")
    add_clip(root, "SILENT", np.zeros(8000, np.float32))
    add_clip(root, "SHORT", tone(300))
    report = preprocess_corpus(make_cfg(root), progress=False)
    splits = {n: (root / "splits" / f"{n}.txt").read_text().split() for n in ("train", "val", "test")}
    assert {Path(b.path).stem for b in report.bad} == {"SILENT", "SHORT"}
    assert sorted(sum(splits.values(), [])) == sorted(c.id for c in discover_corpus(make_cfg(root).data).clips
                                                      if c.id not in ("SILENT", "SHORT"))
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (3, 1, 1)  # of 5 usable: 60%
    # splits written by hand that list a bad file: it is left out, and the warning says how to redraw
    (root / "splits" / "val.txt").write_text("SILENT\n" + "\n".join(splits["val"]) + "\n")
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        again = preprocess_corpus(make_cfg(root), progress=False)
    assert again.split_counts == {"train": 3, "val": 1, "test": 1}
    assert any("the splits list 1 unusable clips (val 1" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "in no split" in r.getMessage()]
