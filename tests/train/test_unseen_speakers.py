"""Training on multi-speaker corpora in their real layouts (VCTK 0.92 FLAC at 48 kHz, LibriTTS at
24 kHz): speakers held out of training are validated as `val_unseen/log_likelihood` beside val,
in the log, metrics.jsonl and TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import compose
from speaker_corpora import make_libritts, make_vctk

from waveglow.train import train


def _scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.parametrize("kind", ["vctk", "libritts"])
def test_three_steps_report_unseen_speakers(kind, tmp_path, caplog, single_thread):
    if kind == "vctk":
        root = make_vctk(tmp_path / "VCTK-Corpus-0.92", clips_per_speaker=3, seconds=0.5)
        extra = []
    else:
        root = make_libritts(tmp_path / "LibriTTS", seconds=0.5)
        extra = ["audio=24k", "data.subsets=[]"]
    run = tmp_path / "run"
    cfg = compose("waveglow_train", f"data={kind}", f"data.root={root}", "data.num_workers=1",
                  "data.splits.n_val_speakers=1", "data.splits.n_val=2", "data.splits.n_test=1",
                  "model=tiny", "model.upsample_kernel=256", "data.segment_length=4096", "train.batch_size=2",
                  "train.log_every=1", "train.audio_every=0", "train.logdet_every=0", "train.val_every=3",
                  "train.checkpoint_every=1000", "train.val_segment_length=4096", "train.max_steps=3",
                  "train.threads=1", "train.device=cpu", f"run_dir={run}", *extra)
    with caplog.at_level(logging.INFO, logger="waveglow"):
        assert train(cfg).step == 3
    unseen_ids = (root / "splits" / "val_unseen.txt").read_text().split()
    assert unseen_ids and not set(unseen_ids) & set((root / "splits" / "train.txt").read_text().split())
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    unseen = [(r["step"], r["val_unseen_log_likelihood"]) for r in lines if "val_unseen_log_likelihood" in r]
    seen = [r["step"] for r in lines if "val_log_likelihood" in r]
    assert [s for s, _ in unseen] == seen == [0, 3]
    assert "val_unseen log-likelihood" in caplog.text and "speakers held out of training" in caplog.text
    tb = _scalars(run)
    assert [s for s, _ in tb["val_unseen/log_likelihood"]] == [0, 3]
    assert [v for _, v in tb["val_unseen/log_likelihood"]] == pytest.approx([v for _, v in unseen], rel=1e-6)


def test_balance_speaker_draws_every_speaker_equally(tmp_path, single_thread):
    from collections import Counter

    from waveglow.train.sampling import load_datasets

    root = make_vctk(tmp_path / "VCTK-Corpus-0.92", clips_per_speaker=4, seconds=0.3)
    for f in (root / "wav48_silence_trimmed" / "p226").glob("p226_00[234]_mic*.flac"):
        f.unlink()  # p226 keeps one clip, the others four
    over = ["data=vctk", f"data.root={root}", "data.num_workers=1", "data.splits.n_val_speakers=0",
            "data.splits.n_val=1", "data.splits.n_test=0", "model=tiny", "train.val_segment_length=4096"]
    plain = load_datasets(compose("waveglow_train", *over), 4096, 8, progress=False)[1]
    balanced = load_datasets(compose("waveglow_train", *over, "data.balance=speaker"), 4096, 8, progress=False)[1]
    count = Counter(c.id.split("/")[0] for c in balanced.reader.clips)
    assert len(set(count.values())) == 1 and set(count) == {c.id.split("/")[0] for c in plain.reader.clips}
    assert Counter(c.id.split("/")[0] for c in plain.reader.clips)["p226"] in (0, 1)
    assert len(balanced) == len(count) * max(Counter(c.id.split("/")[0] for c in plain.reader.clips).values())
