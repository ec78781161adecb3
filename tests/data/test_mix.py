"""`data=mix`: several corpora (each in its real layout, at its own rate) trained on at once, with
weights applied by the training sampler and speakers unique per corpus (`vctk:p225`)."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import pytest
from conftest import compose, run_script
from speaker_corpora import make_libritts, make_vctk

from waveglow.data import discover_corpus, ensure_splits, preprocess_corpus
from waveglow.data.mix import corpus_of
from waveglow.data.splits import speaker_of
from waveglow.errors import UserError
from waveglow.train.sampling import ResumableDistributedSampler, load_datasets


def corpora(*entries: tuple[str, Path | str, float, str]) -> str:
    """The `data.corpora=[...]` override of (name, root, weight, extra keys) entries."""
    return "data.corpora=[" + ", ".join(f"{{name: {n}, root: '{r}', weight: {w}{x}}}" for n, r, w, x in entries) + "]"


def small_splits(n_val_speakers: int = 1) -> list[str]:
    return ["data.splits.n_val=1", "data.splits.n_test=1", f"data.splits.n_val_speakers={n_val_speakers}",
            "data.num_workers=1"]


def test_a_mix_of_corpora_at_other_rates_is_their_union_with_one_resample_warning_per_corpus(
        tmp_path, caplog, single_thread):
    vctk = make_vctk(tmp_path / "VCTK-Corpus-0.92", clips_per_speaker=3, seconds=0.2)       # 48 kHz FLAC
    libri = make_libritts(tmp_path / "LibriTTS", seconds=0.2)                               # 24 kHz WAV
    # A second corpus at 48 kHz: the warning is per corpus, not per rate.
    more = make_vctk(tmp_path / "more", clips_per_speaker=1, seconds=0.2) / "wav48_silence_trimmed"
    mix_root = tmp_path / "mix"
    cfg = compose("waveglow_preprocess", "data=mix", f"data.root={mix_root}", *small_splits(),
                  corpora(("vctk", vctk, 1, ""), ("libritts", libri, 3, ", subsets: []"), ("folder", more, 1, "")))
    corpus = discover_corpus(cfg.data)
    own = {name: discover_corpus(compose("waveglow_preprocess", f"data={name}", f"data.root={root}", *extra).data)
           for name, root, extra in [("vctk", vctk, []), ("libritts", libri, ["data.subsets=[]"]), ("folder", more, [])]}
    assert sorted(c.id for c in corpus.clips) == sorted(f"{n}/{c.id}" for n, cs in own.items() for c in cs.clips)
    speakers = corpus.speakers()
    assert "vctk:p225" in speakers and "libritts:19" in speakers and len(speakers) == 5 + 4
    assert all(speaker_of("mix", i) == s for s, ids in speakers.items() for i in ids)
    assert not [c for c in corpus.clips if c.id.startswith("folder/") and c.speaker is not None]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="waveglow"):
        report = preprocess_corpus(cfg, progress=False)
    resampled = [r.getMessage() for r in caplog.records if "is resampled to 22.05 kHz" in r.getMessage()]
    assert len(resampled) == 3, resampled
    # Each names a file of its corpus (the folder under tmp_path).
    assert sorted(Path(m.split(": ")[0]).relative_to(tmp_path).parts[0] for m in resampled) == \
        ["LibriTTS", "VCTK-Corpus-0.92", "more"]
    assert report.n_ok == len(corpus.clips) and not report.bad
    rows = [json.loads(x) for x in (mix_root / "cache" / "manifest.jsonl").read_text().splitlines()]
    assert {r["file_rate"] for r in rows} == {48000, 24000} and {r["n_samples"] for r in rows} == {4410}
    # Splits per corpus, unioned: each corpus validates; each multi-speaker corpus holds one speaker out.
    splits = {p.stem: p.read_text().split() for p in (mix_root / "splits").glob("*.txt")}
    assert {corpus_of(i) for i in splits["val"]} == {"vctk", "libritts", "folder"}
    assert sorted(corpus_of(i) for i in splits["val_unseen"]) == ["libritts", "vctk"]
    held = {speaker_of("mix", i) for i in splits["val_unseen"]}
    assert not held & {speaker_of("mix", i) for i in splits["train"]}
    # Held-out speakers are per corpus: too many for one corpus is an error naming it.
    too_many = compose("waveglow_preprocess", "data=mix", f"data.root={tmp_path / 'mix2'}", *small_splits(4),
                       corpora(("vctk", vctk, 1, ""), ("libritts", libri, 3, ", subsets: []")))
    with pytest.raises(UserError, match=r"^data.corpora \(libritts\): data.splits.n_val_speakers=4: the corpus "
                       r"has 4 speakers"):
        ensure_splits(too_many.data)
    # The corpora's own folders are only read.
    assert not [p for root in (vctk, libri, more) for p in root.rglob("*") if p.name in ("splits", "cache")]


def test_weights_set_each_corpus_share_of_the_draws_and_balance_is_per_speaker(tmp_path, corpus_copy, single_thread):
    demo = corpus_copy(12, "demo")  # one speaker, 22.05 kHz
    vctk = make_vctk(tmp_path / "VCTK-Corpus-0.92", clips_per_speaker=4, seconds=0.2)
    for f in (vctk / "wav48_silence_trimmed" / "p226").glob("p226_00[234]_mic*.flac"):
        f.unlink()  # p226 keeps one clip, the other speakers four
    over = ["data=mix", f"data.root={tmp_path / 'mix'}", *small_splits(0), "model=tiny",
            "train.val_segment_length=4096", corpora(("ljspeech", demo, 1, ""), ("vctk", vctk, 3, ""))]
    plain = load_datasets(compose("waveglow_train", *over), 4096, 8, progress=False)[1].reader.clips
    balanced = load_datasets(compose("waveglow_train", *over, "data.balance=speaker"), 4096, 8,
                             progress=False)[1].reader.clips
    sizes = Counter(corpus_of(c.id) for c in {c.id: c for c in plain}.values())
    assert set(sizes) == {"ljspeech", "vctk"}

    share = 3 / 4  # vctk's weight / the sum of the weights
    for epoch_clips in (plain, balanced):
        sampler = ResumableDistributedSampler(len(epoch_clips), num_replicas=1, rank=0, seed=7)
        drawn = Counter()
        for epoch in range(40):
            sampler.set_epoch(epoch)
            drawn.update(corpus_of(epoch_clips[i].id) for i, _ in sampler)
        n = sum(drawn.values())
        std = math.sqrt(n * share * (1 - share))  # of the vctk count, were the draws independent
        assert abs(drawn["vctk"] - n * share) <= 3 * std, (drawn, n)
        # Drawing clips uniformly would give vctk its share of the clips, far outside that band.
        by_size = sizes["vctk"] / (sizes["vctk"] + sizes["ljspeech"])
        assert abs(n * by_size - n * share) > 10 * std
        assert {c.id for c in epoch_clips} == {c.id for c in plain}  # every training clip is drawn

    per_speaker = Counter(speaker_of("mix", c.id) for c in balanced if corpus_of(c.id) == "vctk")
    assert set(per_speaker) == {f"vctk:{s}" for s in ("p225", "p226", "p227", "p315", "s5")}
    assert max(per_speaker.values()) - min(per_speaker.values()) <= 1, per_speaker
    plain_speakers = Counter(speaker_of("mix", c.id) for c in plain if corpus_of(c.id) == "vctk")
    assert plain_speakers["vctk:p226"] < plain_speakers["vctk:p225"]  # p226 has fewer clips: drawn less without it


def test_three_training_steps_on_a_mix_report_unseen_speakers(tmp_path):
    demo = "data/demo"  # the committed demo corpus, relative to the working directory (only read)
    vctk = make_vctk(tmp_path / "VCTK-Corpus-0.92", clips_per_speaker=3, seconds=0.5)
    run = tmp_path / "run"
    proc = run_script("waveglow-train", "data=mix", f"data.root={tmp_path / 'mix'}", *small_splits(1),
                   corpora(("demo", demo, 1, ""), ("vctk", vctk, 2, "")), "data.balance=speaker",
                   "model=tiny", "model.upsample_kernel=256", "data.segment_length=4096", "train.batch_size=2",
                   "train.log_every=1", "train.audio_every=0", "train.logdet_every=0", "train.val_every=3",
                   "train.checkpoint_every=1000", "train.val_segment_length=4096", "train.max_steps=3",
                   "train.threads=1", "train.device=cpu", "data.loader_workers=0", f"run_dir={run}", timeout=240)
    log = proc.stdout + proc.stderr
    assert "data=mix:" in log and "(demo 33%, vctk 67%)" in log, log
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    unseen = [r["step"] for r in lines if math.isfinite(r.get("val_unseen_log_likelihood", math.nan))]
    assert unseen == [r["step"] for r in lines if "val_log_likelihood" in r] == [0, 3]
    assert "val_unseen log-likelihood" in log
    held = (tmp_path / "mix" / "splits" / "val_unseen.txt").read_text().split()
    assert held and all(i.startswith("vctk/") for i in held)


@pytest.mark.parametrize("entries, expected", [
    ("data.corpora=[]", "data.corpora: empty"),
    ("data.corpora=[{name: ljspeech, root: DEMO, weight: 1}, {name: timit, root: DEMO, weight: 1}]",
     "data.corpora[1] (timit): unknown corpus name 'timit'"),
    ("data.corpora=[{name: ljspeech, root: DEMO, weight: 1}, {name: vctk, root: NOWHERE, weight: 2}]",
     "data.corpora[1] (vctk): root=NOWHERE: corpus folder not found"),
    ("data.corpora=[{name: ljspeech, root: DEMO, weight: 0}]", "data.corpora[0] (ljspeech): weight=0.0: expected a number > 0"),
    ("data.corpora=[{name: ljspeech, root: DEMO, weight: -1}]", "data.corpora[0] (ljspeech): weight=-1.0: expected"),
    ("data.corpora=[{name: ljspeech, root: DEMO}, {name: ljspeech, root: DEMO}]",
     "data.corpora[1] (ljspeech): ljspeech is already in the mix"),
])
def test_a_bad_mix_entry_is_one_line_naming_it(entries, expected, tmp_path, demo_root):
    nowhere = tmp_path / "nowhere"
    args = entries.replace("DEMO", str(demo_root)).replace("NOWHERE", str(nowhere))
    proc = run_script("waveglow-preprocess", "data=mix", f"data.root={tmp_path / 'mix'}", args, check=False, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert expected.replace("NOWHERE", str(nowhere)) in errors[0], errors[0]
    assert not (tmp_path / "mix" / "splits").exists() and not (tmp_path / "mix" / "cache").exists()
