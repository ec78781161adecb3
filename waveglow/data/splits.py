"""The train/val/test splits of a corpus: filelists of clip ids under `<root>/splits/`.

Drawn once by a seeded shuffle (the same on every machine) and never redrawn. Multi-speaker
corpora can hold out whole speakers (`data.splits.n_val_speakers`): `val_unseen.txt` then lists
clips of speakers training never sees. A mix draws each corpus's splits on its own.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from waveglow.config import DataConfig
from waveglow.data.corpus import corpus_root, discover_corpus, missing_root_error
from waveglow.data.mix import mix_parts, mix_root, shipped_data_configs, shipped_layout
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

log = logging.getLogger("waveglow.data")
T = TypeVar("T")

SPLITS = ("train", "val", "test")
# Held-out-speaker validation clips: an optional fourth filelist beside SPLITS.
UNSEEN = "val_unseen"

# At least this share of a corpus is kept for training, however small the corpus (issue: a
# 20-clip folder with the folder defaults held out half of its clips).
MIN_TRAIN_SHARE = 0.6


def _split_sizes(n: int, n_val: int, n_test: int) -> tuple[int, int, bool]:
    """Held-out sizes for a corpus of n clips: (n_val, n_test, shrunk).

    At most 40% of the clips are held out, so at least 60% train; a corpus too small to hold
    out even one clip (n <= 2) gets n_val 1 and validates on a training clip.
    """
    n_val, n_test = max(1, int(n_val)), max(0, int(n_test))
    budget = n - math.ceil(MIN_TRAIN_SHARE * n - 1e-9)  # the most clips that may be held out
    if n_val + n_test <= budget:
        return n_val, n_test, False
    if budget < 1:
        return 1, 0, True
    val = max(1, round(budget * n_val / (n_val + n_test)))
    return val, max(0, budget - val), True


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_files(data_cfg: DataConfig) -> dict[str, Path]:
    """The filelists of the splits: `<root>/splits/{train,val,test}.txt`."""
    split_dir = corpus_root(data_cfg) / "splits"
    return {name: split_dir / f"{name}.txt" for name in SPLITS}


def speaker_of(layout: str, clip_id: str) -> str | None:
    """The speaker of a clip id of a multi-speaker layout (None otherwise).

    VCTK ids are `<spk>/<spk>_<nnn>`, LibriTTS ids `<subset>/<spk>/<chapter>/<utt>`; a mix's
    ids `<corpus>/<id>` give `<corpus>:<speaker>`, unique across its corpora.
    """
    if layout == "mix" and "/" in clip_id:
        name, rest = clip_id.split("/", 1)
        if name not in shipped_data_configs():
            return None
        spk = speaker_of(shipped_layout(name)["layout"], rest)
        return None if spk is None else f"{name}:{spk}"
    parts = clip_id.split("/")
    if layout == "vctk" and len(parts) >= 2:
        return parts[0]
    if layout == "libritts" and len(parts) >= 4:
        return parts[1]
    return None


def read_splits(data_cfg: DataConfig) -> dict[str, list[str]] | None:
    """The written splits, or None when none are written yet.

    Raises:
        UserError: some but not all of the filelists exist, or train/val are empty.
    """
    files = split_files(data_cfg)
    split_dir = files["train"].parent
    present = [name for name, p in files.items() if p.is_file()]
    if not present:
        return None
    if len(present) != len(SPLITS):
        missing = ", ".join(f"{n}.txt" for n in SPLITS if n not in present)
        raise UserError(f"{split_dir.absolute()}: incomplete splits (no {missing}); restore the files or "
                        "delete the folder to draw new splits")
    splits = {name: _read_ids(p) for name, p in files.items()}
    if not splits["train"] or not splits["val"]:
        raise UserError(f"{split_dir.absolute()}: train.txt and val.txt must list at least one clip id each")
    unseen = split_dir / f"{UNSEEN}.txt"
    if unseen.is_file():  # held-out speakers (multi-speaker corpora); their clips are in test.txt too
        splits[UNSEEN] = _read_ids(unseen)
    return splits


def balance_by_speaker(clips: Sequence[T], layout: str) -> list[T]:
    """The training clips with each speaker's clips repeated (cycled in order) up to the largest
    speaker's count, so that a uniform draw picks every speaker equally often.

    Args:
        clips: objects with an `id` (clip id of a multi-speaker layout).
        layout: `data.layout` (the speaker is read from the id).

    Returns:
        n_speakers × (largest speaker's clip count) clips, grouped by speaker; `clips` unchanged
        when the ids name no speakers.
    """
    by_speaker: dict[str, list[T]] = {}
    for c in clips:
        spk = speaker_of(layout, c.id)
        if spk is None:
            return list(clips)
        by_speaker.setdefault(spk, []).append(c)
    if not by_speaker:
        return list(clips)
    most = max(len(v) for v in by_speaker.values())
    return [group[i % len(group)] for _, group in sorted(by_speaker.items()) for i in range(most)]


def _hold_out_speakers(data_cfg: DataConfig, ids: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Split the ids by speaker: (ids of the speakers training sees, ids of the held-out speakers,
    the held-out speakers). No held-out speakers for single-speaker layouts or n_val_speakers 0.

    Raises:
        UserError: n_val_speakers would leave no speaker for training.
    """
    n = int(getattr(data_cfg.splits, "n_val_speakers", 0) or 0)
    by_speaker: dict[str, list[str]] = {}
    for i in ids:
        spk = speaker_of(str(data_cfg.layout), i)
        if spk is not None:
            by_speaker.setdefault(spk, []).append(i)
    if n == 0 or not by_speaker:
        if n and not by_speaker:
            log.warning("data.splits.n_val_speakers=%d: data.layout=%s has no speakers; no speaker is held out",
                        n, data_cfg.layout)
        return ids, [], []
    speakers = sorted(by_speaker)
    if n >= len(speakers):
        raise UserError(f"data.splits.n_val_speakers={n}: the corpus has {len(speakers)} speakers and at least "
                        "one must remain for training")
    order = list(speakers)
    random.Random(int(data_cfg.splits.seed)).shuffle(order)
    held = sorted(order[:n])
    unseen = sorted(i for s in held for i in by_speaker[s])
    return [i for i in ids if speaker_of(str(data_cfg.layout), i) not in held], unseen, held


def _draw_splits(data_cfg: DataConfig, ids: list[str], where: Path) -> dict[str, list[str]]:
    """Draw train/val/test (and val_unseen when speakers are held out) from sorted clip ids.

    `where` names the corpus in the log lines.
    """
    ids, unseen, held = _hold_out_speakers(data_cfg, ids)
    split_cfg = data_cfg.splits
    n_val, n_test, shrunk = _split_sizes(len(ids), split_cfg.n_val, split_cfg.n_test)
    if shrunk:
        log.warning("%s: only %d usable clips; holding out %d for validation and %d for test instead of %s/%s "
                    "(at least %d%% train)", where, len(ids), n_val, n_test, split_cfg.n_val, split_cfg.n_test,
                    round(100 * MIN_TRAIN_SHARE))
    order = list(ids)
    random.Random(int(split_cfg.seed)).shuffle(order)
    val, test = order[:n_val], order[n_val:n_val + n_test]
    train = order[n_val + n_test:]
    if len(train) < MIN_TRAIN_SHARE * len(ids):  # too few to hold one out: validate on a training clip
        train = list(ids)
        log.warning("%s: %d clip(s) only; the validation clip is also a training clip", where, len(ids))
    splits = {"train": sorted(train), "val": sorted(val), "test": sorted(test + unseen)}
    if held:
        # Every clip of a held-out speaker is a test clip; n_val of them also validate during training.
        pick = list(unseen)
        random.Random(int(split_cfg.seed) + 1).shuffle(pick)
        splits[UNSEEN] = sorted(pick[: max(1, n_val)])
        log.info("%s: held out %d speaker(s) (%s): %d clips in test, %d in %s", where, len(held),
                 ", ".join(held[:8]), len(unseen), len(splits[UNSEEN]), UNSEEN)
    return splits


def _draw_mix_splits(data_cfg: DataConfig, ids: list[str]) -> dict[str, list[str]]:
    """A mix's splits: each corpus's drawn on its own (its layout, the mix's split settings), then
    unioned, so that every corpus is validated and held-out speakers stay per corpus."""
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for part in mix_parts(data_cfg):
        prefix = f"{part.name}/"
        mine = [i[len(prefix):] for i in ids if i.startswith(prefix)]
        if not mine:
            raise UserError(f"data.corpora ({part.name}): no usable clips in {corpus_root(part.cfg).absolute()}")
        try:
            drawn = _draw_splits(part.cfg, mine, Path(f"{part.name} ({part.cfg.root})"))
        except UserError as e:  # e.g. n_val_speakers too large for this corpus: say which
            raise UserError(f"data.corpora ({part.name}): {e}") from None
        for name, sub in drawn.items():
            out.setdefault(name, []).extend(prefix + i for i in sub)
    return {name: sorted(v) for name, v in out.items()}


def ensure_splits(data_cfg: DataConfig, usable: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Train/val/test clip ids, read from `<root>/splits/` or (first time only) written there.

    The split is a seeded shuffle of the sorted clip ids (`data.splits.seed`), so it is the same
    on every machine; once written it is never redrawn (delete the folder to redraw). Corpora
    too small for `data.splits.n_val`/`n_test` hold out at most 40% of their clips (at least
    one validation clip) and say so. A mix draws each corpus's splits on its own and writes
    their union under the mix's root.

    Args:
        data_cfg: `cfg.data`.
        usable: draw from these clip ids only (preprocessing passes the clips that decoded, so
            that unusable files take no place in the splits); default: every clip found.

    Returns:
        {"train": [...], "val": [...], "test": [...]} (ids, sorted).
    """
    root = corpus_root(data_cfg)
    if data_cfg.layout == "mix":
        mix_root(data_cfg)
    elif not root.is_dir():
        raise missing_root_error(data_cfg)
    written = read_splits(data_cfg)
    if written is not None:
        return written
    ids = sorted(usable) if usable is not None else [c.id for c in discover_corpus(data_cfg).clips]
    if not ids:
        raise UserError(f"{root.absolute()}: no usable clips to draw the splits from")
    if data_cfg.layout == "mix":
        splits = _draw_mix_splits(data_cfg, ids)
    else:
        splits = _draw_splits(data_cfg, ids, root)
    files = split_files(data_cfg)
    if UNSEEN in splits:
        if not splits[UNSEEN]:
            del splits[UNSEEN]
        else:
            files[UNSEEN] = files["train"].parent / f"{UNSEEN}.txt"
    try:
        # val_unseen first: the three SPLITS files are what marks the splits as written.
        for name in sorted(files, key=lambda n: n in SPLITS):
            write_text_atomic(files[name], "".join(f"{i}\n" for i in splits[name]))
    except OSError as e:
        raise UserError(f"{files['train'].parent.absolute()}: cannot write the split filelists ({e.strerror}); "
                        "the corpus folder must be writable") from None
    log.info("wrote splits to %s: train %d, val %d, test %d clips (seed %d)",
             files["train"].parent, len(splits["train"]), len(splits["val"]), len(splits["test"]),
             int(data_cfg.splits.seed))
    return splits
