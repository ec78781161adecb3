"""Corpus discovery (LJSpeech layout, folders) and the train/val/test splits."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import soundfile as sf
from conftest import compose
from data_helpers import SR, make_cfg, tone
from speaker_corpora import VCTK_SPEAKERS, make_libritts, make_vctk

from waveglow.data import discover_corpus, ensure_splits
from waveglow.errors import UserError

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


def test_missing_corpus_names_path_and_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=r"nowhere: corpus folder not found \(looked in /.*/nowhere\); "
                                        r"expected LJSpeech layout: metadata.csv"):
        discover_corpus(make_cfg(tmp_path / "nowhere").data)
    with pytest.raises(UserError, match=r"nowhere: corpus folder not found .*; expected a folder of .wav/.flac"):
        ensure_splits(make_cfg(tmp_path / "nowhere", data="folder").data)
    # a relative data.root: the message shows where it was looked for
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^data.root=rel/demo: corpus folder not found \(looked in /\S+/rel/demo\)"):
        discover_corpus(make_cfg(Path("rel/demo")).data)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"metadata.csv: not found"):
        discover_corpus(make_cfg(tmp_path / "empty").data)
    with pytest.raises(UserError, match=r"no usable audio files"):
        discover_corpus(make_cfg(tmp_path / "empty", data="folder").data)
    with pytest.raises(UserError, match=r"data.root=... is required"):  # refused before the core runs
        compose("waveglow_preprocess", "data=folder")


# ------------------------------------------------------------------ splits

def test_splits_are_deterministic_and_written_once(corpus_copy, caplog: pytest.LogCaptureFixture) -> None:
    a, b = corpus_copy(20, "a"), corpus_copy(20, "b")
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        sa = ensure_splits(make_cfg(a).data)  # demo: n_val 4, n_test 4 -> fits 20 clips (60% train)
    assert not [r for r in caplog.records if "holding out" in r.getMessage()]
    assert sa == ensure_splits(make_cfg(b).data)
    assert (len(sa["train"]), len(sa["val"]), len(sa["test"])) == (12, 4, 4)
    assert sorted(sa["train"] + sa["val"] + sa["test"]) == sorted(c.id for c in discover_corpus(make_cfg(a).data).clips)
    assert (a / "splits" / "val.txt").read_text().split() == sa["val"]
    # never redrawn: another seed gives the stored split back
    assert ensure_splits(make_cfg(a, "data.splits.seed=7").data) == sa
    assert ensure_splits(make_cfg(b, "data.splits.seed=7", "data.cache_dir=" + str(b / "c")).data) == sa
    other = corpus_copy(20, "c")
    assert ensure_splits(make_cfg(other, "data.splits.seed=7").data) != sa
    (a / "splits" / "test.txt").unlink()
    with pytest.raises(UserError, match="incomplete splits"):
        ensure_splits(make_cfg(a).data)


def test_small_corpus_shrinks_held_out_sets(corpus_copy, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="waveglow"):
        splits = ensure_splits(make_cfg(corpus_copy(5, "five")).data)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (3, 1, 1)
    assert any("holding out 1 for validation and 1 for test instead of 4/4" in r.getMessage() for r in caplog.records)
    # a 20-clip folder with the folder defaults (20/20 held out): 60% train, not half
    twenty = ensure_splits(make_cfg(corpus_copy(20, "twenty"), data="folder").data)
    assert (len(twenty["train"]), len(twenty["val"]), len(twenty["test"])) == (12, 4, 4)
    for n in (3, 4, 7, 10, 13):  # at least 60% train and one validation clip, disjoint
        s = ensure_splits(make_cfg(corpus_copy(n, f"c{n}"), "data.splits.n_val=50").data)
        assert len(s["train"]) >= 0.6 * n and len(s["val"]) >= 1
        assert len(s["train"]) + len(s["val"]) + len(s["test"]) == n
    two = ensure_splits(make_cfg(corpus_copy(2, "two")).data)  # no clip to spare: val is a train clip
    assert two["train"] == sorted(two["train"]) and len(two["train"]) == 2 and set(two["val"]) < set(two["train"])
    one = ensure_splits(make_cfg(corpus_copy(1, "one")).data)
    assert one["train"] == one["val"] and len(one["val"]) == 1 and one["test"] == []


# ------------------------------------------------------------------ multi-speaker corpora

def test_discover_vctk_mics_and_speakers(tmp_path: Path, caplog) -> None:
    root = make_vctk(tmp_path / "VCTK-Corpus-0.92")
    with caplog.at_level(logging.INFO, logger="waveglow.data"):
        corpus = discover_corpus(make_cfg(root, data="vctk").data)
    assert len(corpus.clips) == 3 * len(VCTK_SPEAKERS) and not corpus.bad
    assert corpus.clips[0].id == "p225/p225_001" and corpus.clips[0].path.name == "p225_001_mic1.flac"
    assert set(corpus.speakers()) == set(VCTK_SPEAKERS)
    assert "without transcripts (p315)" in caplog.text
    mic2 = discover_corpus(make_cfg(root, "data.mic=mic2", data="vctk").data)
    assert [c.id for c in mic2.clips] == [c.id for c in corpus.clips]
    assert all(c.path.name.endswith("_mic2.flac") for c in mic2.clips)
    with pytest.raises(UserError, match="wav48_silence_trimmed: not found; expected VCTK 0.92 layout"):
        discover_corpus(make_cfg(tmp_path, data="vctk").data)


def test_discover_libritts_subsets(tmp_path: Path) -> None:
    root = make_libritts(tmp_path / "LibriTTS")
    train = discover_corpus(make_cfg(root, data="libritts").data)  # data.subsets=[train-clean-100]
    assert len(train.clips) == 8 and set(train.speakers()) == {"19", "26", "32"}
    assert train.clips[0].id == "train-clean-100/19/198/19_198_000000_000000"
    both = discover_corpus(make_cfg(root, "data.subsets=[]", data="libritts").data)
    assert len(both.clips) == 10 and "84" in both.speakers()
    with pytest.raises(UserError, match=r"data.subsets: 'train-clean-360' is not a folder .*found: dev-clean, "
                                        "train-clean-100"):
        discover_corpus(make_cfg(root, "data.subsets=[train-clean-360]", data="libritts").data)


@pytest.mark.parametrize("kind", ["vctk", "libritts"])
def test_speaker_held_out_splits(kind: str, tmp_path: Path) -> None:
    root = make_vctk(tmp_path / "c") if kind == "vctk" else make_libritts(tmp_path / "c")
    over = ["data.splits.n_val_speakers=1", "data.splits.n_val=2", "data.splits.n_test=1"]
    if kind == "libritts":
        over.append("data.subsets=[]")
    cfg = make_cfg(root, *over, data=kind)
    splits = ensure_splits(cfg.data)
    corpus = discover_corpus(cfg.data)
    spk = {c.id: c.speaker for c in corpus.clips}
    unseen = set(splits["val_unseen"])
    held = {spk[i] for i in unseen}
    assert len(held) == 1 and unseen <= set(splits["test"])
    assert not held & {spk[i] for i in splits["train"] + splits["val"]}  # never trained or validated on
    assert {i for s in splits.values() for i in s} == set(spk)  # every clip somewhere
    assert len(splits["val"]) == 2 and (root / "splits" / "val_unseen.txt").is_file()
    assert ensure_splits(cfg.data) == splits  # read back, not redrawn
    n = len(set(spk.values()))
    shutil.rmtree(root / "splits")
    too_many = make_cfg(root, *over[1:], f"data.splits.n_val_speakers={n}", *over[3:], data=kind)
    with pytest.raises(UserError, match=f"n_val_speakers={n}: the corpus has {n} speakers"):
        ensure_splits(too_many.data)
    assert not (root / "splits").exists()


@pytest.mark.parametrize("kind", ["vctk", "libritts"])
def test_preprocess_multi_speaker_corpus(kind: str, tmp_path: Path, single_thread) -> None:
    from waveglow.data import preprocess_corpus

    root = make_vctk(tmp_path / "c", clips_per_speaker=2) if kind == "vctk" else make_libritts(tmp_path / "c")
    over = ["data.splits.n_val_speakers=1", "data.splits.n_val=1", "data.splits.n_test=1"]
    if kind == "libritts":
        over += ["audio=24k"]
    cfg = make_cfg(root, *over, data=kind)
    report = preprocess_corpus(cfg, num_workers=1, progress=False)
    assert report.n_ok == report.n_clips == len(discover_corpus(cfg.data).clips) and not report.bad
    rows = [line for line in (root / "cache" / "manifest.jsonl").read_text().splitlines() if line]
    unseen = (root / "splits" / "val_unseen.txt").read_text().split()
    assert unseen and all(any(f'"{u}"' in r and '"test"' in r for r in rows) for u in unseen)


def test_balance_by_speaker() -> None:
    from types import SimpleNamespace

    from waveglow.data.splits import balance_by_speaker

    ids = ["p1/p1_001", "p1/p1_002", "p1/p1_003", "p1/p1_004", "p2/p2_001", "p3/p3_001", "p3/p3_002"]
    out = [c.id for c in balance_by_speaker([SimpleNamespace(id=i) for i in ids], "vctk")]
    assert out == ids[:4] + ["p2/p2_001"] * 4 + ["p3/p3_001", "p3/p3_002"] * 2
    assert [c.id for c in balance_by_speaker([SimpleNamespace(id="LJ001-0001")], "ljspeech")] == ["LJ001-0001"]
