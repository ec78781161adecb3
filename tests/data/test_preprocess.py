"""Preprocessing: the mel cache, manifest, statistics and bad-file report; load_stats."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from data_helpers import HOP, SR, add_clip, make_cfg, tone

from waveglow.data import discover_corpus, load_stats, preprocess_corpus
from waveglow.data.audio import load_audio
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram, load_mel

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
    leftover = victim.with_name(f".{victim.name}.999999999.x1y2.tmp")  # a dead writer's temp file
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
