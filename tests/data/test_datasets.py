"""The datasets: training segments and validation clips, with and without the mel cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from data_helpers import HOP, SR, make_cfg, tone
from torch.utils.data import DataLoader

from waveglow.config import PreprocessApp
from waveglow.data import ClipDataset, SegmentDataset, preprocess_corpus, split_clips
from waveglow.data.audio import INT16_SCALE, load_audio
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram

# ------------------------------------------------------------------ datasets

@pytest.fixture
def two_caches(corpus_copy) -> tuple[PreprocessApp, PreprocessApp]:
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
    with pytest.raises(UserError, match="short_clip_policy=zeros"):  # the schema refuses it
        make_cfg(root, *base, "data.short_clip_policy=zeros", data="folder")
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
