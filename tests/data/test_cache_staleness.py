"""The feature cache notices its sources changing: the manifest records each audio file's and
paired mel's size and modification time, and every start (`load_stats`, as `waveglow-train`
calls it) compares them with one stat per source. A changed source gets its clip's mel
recomputed (even when its new time is older than the cache), a gone one is listed in
bad_files.tsv and the log; an unchanged corpus reads no audio; older manifests still work."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_script
from data_helpers import SR, make_cfg

import waveglow.data.clipwork as clipwork
import waveglow.data.preprocess as preprocess
from waveglow.data import discover_corpus, load_stats, preprocess_corpus
from waveglow.data.audio import load_audio
from waveglow.data.datasets import split_clips
from waveglow.mel import MelSpectrogram, load_mel, save_mel

OFFSET = 0.75  # paired mels = the audio's mel + this


@pytest.fixture
def cached(corpus_copy, monkeypatch: pytest.MonkeyPatch):
    """6 demo clips with paired mels, preprocessed once; audio reads are counted from then on."""
    root = corpus_copy(6, "stale")
    mel_dir = root.parent / "paired"
    mel_fn = MelSpectrogram()
    ids = [c.id for c in discover_corpus(make_cfg(root).data).clips]
    for cid in ids:
        save_mel(mel_dir / f"{cid}.pt", mel_fn(torch.from_numpy(load_audio(root / "wavs" / f"{cid}.wav", SR))) + OFFSET)
    cfg = make_cfg(root, f"data.mel_dir={mel_dir}")
    assert preprocess_corpus(cfg, progress=False).n_computed == 6
    reads: list[str] = []

    def counting_load_audio(path, *args, **kwargs):
        reads.append(Path(path).stem)
        return load_audio(path, *args, **kwargs)

    monkeypatch.setattr(clipwork, "load_audio", counting_load_audio)
    return cfg, root, mel_dir, ids, reads


def manifest(cfg) -> dict[str, dict]:
    return preprocess.read_manifest(preprocess.cache_dir(cfg.data))


def backdate(path: Path, seconds: float = 3600.0) -> None:
    """Give a regenerated file a modification time older than the cache (as `cp -p` or an archive
    would): a newer-than-the-cache rule alone would keep the old mel."""
    t = path.stat().st_mtime_ns - int(seconds * 1e9)
    os.utime(path, ns=(t, t))


def test_manifest_records_sizes_and_times(cached) -> None:
    cfg, root, mel_dir, ids, _ = cached
    rows = manifest(cfg)
    for cid in ids:
        wav, mel = root / "wavs" / f"{cid}.wav", mel_dir / f"{cid}.pt"
        assert rows[cid]["audio_stat"] == [wav.stat().st_size, wav.stat().st_mtime_ns]
        assert rows[cid]["paired"] == str(mel.resolve())
        assert rows[cid]["paired_stat"] == [mel.stat().st_size, mel.stat().st_mtime_ns]


def test_unchanged_corpus_reads_no_audio(cached, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, _, _, _, reads = cached
    # A start: one stat per source, no preprocessing at all.
    monkeypatch.setattr(preprocess, "preprocess_corpus", lambda *a, **k: pytest.fail("preprocessed again"))
    load_stats(cfg, progress=False)
    assert preprocess.stale_sources(cfg) is None
    monkeypatch.undo()
    # An explicit waveglow-preprocess: every mel reused, no audio decoded.
    report = preprocess_corpus(cfg, progress=False)
    assert (report.n_reused, report.n_computed, reads) == (6, 0, [])


def test_deleted_paired_mel_is_reported_at_the_next_start(cached, caplog: pytest.LogCaptureFixture) -> None:
    cfg, root, mel_dir, ids, reads = cached
    gone = ids[1]
    (mel_dir / f"{gone}.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        load_stats(cfg, progress=False)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"1 gone (e.g. {mel_dir / gone}.pt)" in text and f"skipped {root / 'wavs' / gone}.wav: no paired mel" in text
    tsv = (preprocess.cache_dir(cfg.data) / "bad_files.tsv").read_text()
    assert f"{gone}.wav\tno paired mel {gone}.pt" in tsv
    assert gone not in manifest(cfg) and len(manifest(cfg)) == 5
    assert gone not in [c.id for s in ("train", "val", "test") for c in split_clips(cfg, s)]
    assert reads == []  # the other clips' mels were reused


def test_regenerated_paired_mel_is_recomputed(cached) -> None:
    cfg, _, mel_dir, ids, reads = cached
    cid = ids[2]
    new = load_mel(mel_dir / f"{cid}.pt", 80) + 1.0  # same shape, same file size
    save_mel(mel_dir / f"{cid}.pt", new)
    backdate(mel_dir / f"{cid}.pt")
    assert "1 changed" in preprocess.stale_sources(cfg)
    load_stats(cfg, progress=False)
    cache = preprocess.cache_dir(cfg.data)
    assert torch.equal(load_mel(cache / "mels" / f"{cid}.pt", 80), new)
    assert reads == [cid] and preprocess.stale_sources(cfg) is None


def test_regenerated_wav_is_recomputed(cached) -> None:
    cfg, root, mel_dir, ids, reads = cached
    cfg = make_cfg(root)  # mels computed from the audio this time
    preprocess_corpus(cfg, progress=False)
    reads.clear()
    cid = ids[3]
    wav = root / "wavs" / f"{cid}.wav"
    audio, _ = sf.read(wav, dtype="int16")
    sf.write(wav, (audio // 2).astype(np.int16), SR, subtype="PCM_16")  # same length and size, 6 dB down
    backdate(wav)
    load_stats(cfg, progress=False)
    cache = preprocess.cache_dir(cfg.data)
    expected = MelSpectrogram()(torch.from_numpy(load_audio(wav, SR)))
    assert torch.allclose(load_mel(cache / "mels" / f"{cid}.pt", 80), expected, atol=1e-5)
    assert reads == [cid]


def test_vanished_wav_is_reported(cached, caplog: pytest.LogCaptureFixture) -> None:
    cfg, root, _, ids, reads = cached
    gone = root / "wavs" / f"{ids[0]}.wav"
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        load_stats(cfg, progress=False)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"1 gone (e.g. {gone})" in text and f"skipped {gone}" in text
    tsv = (preprocess.cache_dir(cfg.data) / "bad_files.tsv").read_text()
    assert str(gone) in tsv and ids[0] not in manifest(cfg) and reads == []


def test_manifest_of_an_older_version_is_upgraded_once(cached, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows without sizes and times: the next start preprocesses once, reusing every cached mel
    newer than its sources (nothing decoded), and records them; the start after does nothing."""
    cfg, _, _, _, reads = cached
    path = preprocess.cache_dir(cfg.data) / "manifest.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if not k.endswith("stat") and k != "paired"})
                            + "\n" for r in rows))
    assert "6 without a recorded size and time" in preprocess.stale_sources(cfg)
    load_stats(cfg, progress=False)
    assert reads == [] and preprocess.stale_sources(cfg) is None
    assert all("audio_stat" in r and "paired_stat" in r for r in manifest(cfg).values())
    monkeypatch.setattr(preprocess, "preprocess_corpus", lambda *a, **k: pytest.fail("preprocessed again"))
    load_stats(cfg, progress=False)


@pytest.mark.slow  # a real training start (about 1-2 minutes on a busy 2-core machine)
def test_train_notices_a_deleted_paired_mel(cached, tmp_path: Path) -> None:
    """The way it was found: delete `data.mel_dir/<id>.pt` after caching and train again. The run
    says so before training, lists the clip in bad_files.tsv and trains without it."""
    cfg, root, mel_dir, ids, _ = cached
    gone = ids[4]
    (mel_dir / f"{gone}.pt").unlink()
    proc = run_script("waveglow-train", "data=demo", f"data.root={root}", f"data.mel_dir={mel_dir}", "data.num_workers=1",
                   "model=tiny", "data.segment_length=4096", "train.batch_size=2", "train.max_steps=1",
                   "train.val_segment_length=4096", "train.val_max_clips=1", "train.audio_every=0",
                   "train.logdet_every=0", "train.threads=1", "train.device=cpu", f"run_dir={tmp_path / 'run'}",
                   timeout=240)
    assert f"1 gone (e.g. {mel_dir / gone}.pt)" in proc.stderr and "preprocessing again" in proc.stderr, proc.stderr
    assert f"skipped {root / 'wavs' / gone}.wav: no paired mel" in proc.stderr
    assert f"{gone}.wav\tno paired mel" in (preprocess.cache_dir(cfg.data) / "bad_files.tsv").read_text()
    assert gone not in manifest(cfg)
