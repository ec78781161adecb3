"""Corpus discovery and the train/val/test splits.

A corpus is LJSpeech layout (`metadata.csv` + `wavs/`), any folder of WAV/FLAC files, or a
multi-speaker corpus: VCTK 0.92 (`wav48_silence_trimmed/<spk>/<spk>_<nnn>_<mic>.flac`) or
LibriTTS / LibriTTS-R (`<subset>/<spk>/<chapter>/<utt>.wav`). Clip ids are stable names (the
metadata id, or the path below root without suffix; `<spk>/<spk>_<nnn>` for VCTK); splits are
filelists of ids under `<root>/splits/`. Multi-speaker corpora can hold out whole speakers
(`data.splits.n_val_speakers`): `val_unseen.txt` then lists clips of speakers training never
sees. A mix (`data=mix`, `data.corpora`) is the union of its corpora's clips, ids prefixed by the
corpus name (`vctk/p225/p225_001`, speakers `vctk:p225`); its splits and cache live under its own
`data.root`. Nothing here decodes audio.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeVar

from waveglow.config import DataConfig, SplitsConfig
from waveglow.data.audio import AUDIO_SUFFIXES, OTHER_AUDIO_SUFFIXES
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

log = logging.getLogger("waveglow.data")
T = TypeVar("T")

SPLITS = ("train", "val", "test")
LJSPEECH_HINT = "LJSpeech layout: metadata.csv (id|text|normalized text) and wavs/<id>.wav"
FOLDER_HINT = "a folder of .wav/.flac files (any depth)"
VCTK_HINT = "VCTK 0.92 layout: wav48_silence_trimmed/<speaker>/<speaker>_<nnn>_mic1.flac and speaker-info.txt"
LIBRITTS_HINT = "LibriTTS layout: <subset>/<speaker>/<chapter>/<utterance>.wav (e.g. train-clean-100/19/198/...)"
MIX_HINT = ("data.corpora=[{name: ljspeech, root: ..., weight: 1}, {name: vctk, root: ..., weight: 2}] "
            "(each name a shipped data config)")
HINTS = {"ljspeech": LJSPEECH_HINT, "folder": FOLDER_HINT, "vctk": VCTK_HINT, "libritts": LIBRITTS_HINT,
         "mix": MIX_HINT}
# Held-out-speaker validation clips: an optional fourth filelist beside SPLITS.
UNSEEN = "val_unseen"


def corpus_root(data_cfg: DataConfig) -> Path:
    """The corpus directory (`data.root`; relative paths are relative to the working directory)."""
    return Path(str(data_cfg.root)).expanduser()


def cache_dir(data_cfg: DataConfig) -> Path:
    """Where mels, manifest and statistics live.

    `data.cache_dir`; by default `<root>/cache`, or `<root>/cache-<mel_dir's name>` with paired
    mels (`data.mel_dir`), so that training with and without them does not recompute one cache.
    """
    cache = data_cfg.cache_dir
    if cache:
        return Path(str(cache)).expanduser()
    if data_cfg.mel_dir:
        name = Path(str(data_cfg.mel_dir)).expanduser().absolute().name
        return corpus_root(data_cfg) / f"cache-{name}"
    return corpus_root(data_cfg) / "cache"


# ----------------------------------------------------------------------------- discovery

@dataclass(frozen=True)
class Clip:
    """One audio file of a corpus."""

    id: str
    path: Path
    speaker: str | None = None  # multi-speaker layouts


@dataclass(frozen=True)
class BadFile:
    """A file the pipeline cannot use, and why."""

    path: str
    reason: str
    clip_id: str | None = None  # the clip it stands for, when known


@dataclass
class Corpus:
    """The clips found under a corpus root, and the files that were skipped."""

    root: Path
    layout: str
    clips: list[Clip]
    bad: list[BadFile] = field(default_factory=list)

    def by_id(self) -> dict[str, Clip]:
        return {c.id: c for c in self.clips}

    def speakers(self) -> dict[str, list[str]]:
        """Speaker -> its clip ids (empty for single-speaker layouts)."""
        out: dict[str, list[str]] = {}
        for c in self.clips:
            if c.speaker is not None:
                out.setdefault(c.speaker, []).append(c.id)
        return out


def _missing_root_error(data_cfg: DataConfig) -> UserError:
    hint = HINTS.get(data_cfg.layout, FOLDER_HINT)
    return UserError(f"data.root={data_cfg.root}: corpus folder not found (looked in "
                     f"{corpus_root(data_cfg).absolute()}); expected {hint}")


def discover_corpus(data_cfg: DataConfig) -> Corpus:
    """List the clips of the corpus at `data.root` without decoding any audio.

    Args:
        data_cfg: `cfg.data` (root, layout, cache_dir).

    Returns:
        The clips (sorted by id) and the files already known to be unusable (missing, wrong
        extension, duplicate id).

    Raises:
        UserError: no such directory, no metadata.csv (LJSpeech layout), or no clips at all.
    """
    root = corpus_root(data_cfg)
    if data_cfg.layout == "mix":
        return _discover_mix(data_cfg)
    if not root.is_dir():
        raise _missing_root_error(data_cfg)
    if data_cfg.layout == "ljspeech":
        corpus = _discover_ljspeech(root)
    elif data_cfg.layout == "vctk":
        corpus = _discover_vctk(root, str(data_cfg.mic))
    elif data_cfg.layout == "libritts":
        corpus = _discover_libritts(root, [str(s) for s in data_cfg.subsets])
    else:
        corpus = _discover_folder(root, cache_dir(data_cfg))
    if not corpus.clips:
        hint = HINTS.get(data_cfg.layout, FOLDER_HINT)
        detail = ""
        if corpus.bad:
            detail = f" ({len(corpus.bad)} unusable, e.g. {corpus.bad[0].path}: {corpus.bad[0].reason})"
        raise UserError(f"{root.absolute()}: no usable audio files found{detail}; expected {hint}")
    return corpus


def _valid_id(clip_id: str) -> bool:
    parts = clip_id.split("/")
    return bool(clip_id) and not clip_id.startswith("/") and ".." not in parts and "" not in parts


def _discover_ljspeech(root: Path) -> Corpus:
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise UserError(f"{meta.absolute()}: not found; expected {LJSPEECH_HINT} "
                        "(or data.layout=folder for a plain folder)")
    wav_dir = root / "wavs"
    # One directory listing instead of a stat per clip (LJSpeech has 13,100).
    by_stem: dict[str, list[Path]] = {}
    if wav_dir.is_dir():
        with os.scandir(wav_dir) as entries:
            for entry in entries:
                if entry.is_file() and not entry.name.startswith("."):
                    p = Path(entry.path)
                    by_stem.setdefault(p.stem, []).append(p)
    clips: list[Clip] = []
    bad: list[BadFile] = []
    seen: set[str] = set()
    text = meta.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        clip_id = line.split("|", 1)[0].strip()
        where = f"{meta.name} line {lineno}"
        if not _valid_id(clip_id):
            bad.append(BadFile(f"{meta}:{lineno}", f"invalid clip id {clip_id!r}"))
            continue
        if clip_id in seen:
            bad.append(BadFile(f"{meta}:{lineno}", f"duplicate clip id {clip_id!r}"))
            continue
        seen.add(clip_id)
        if "/" in clip_id:  # an id naming a subfolder of wavs/
            candidates = [p for s in AUDIO_SUFFIXES if (p := wav_dir / f"{clip_id}{s}").is_file()]
        else:
            candidates = by_stem.get(clip_id, [])
        # .wav first when a clip exists in both formats
        usable = sorted((p for p in candidates if p.suffix.lower() in AUDIO_SUFFIXES),
                        key=lambda p: p.suffix.lower() != ".wav")
        if usable:
            clips.append(Clip(clip_id, usable[0]))
        elif candidates:
            p = candidates[0]
            bad.append(BadFile(str(p), f"wrong extension {p.suffix!r} (listed in {where}); expected .wav or .flac",
                               clip_id))
        else:
            bad.append(BadFile(str(wav_dir / f"{clip_id}.wav"), f"missing (listed in {where})", clip_id))
    clips.sort(key=lambda c: c.id)
    return Corpus(root, "ljspeech", clips, bad)


def _discover_folder(root: Path, cache: Path) -> Corpus:
    skip = {(root / "splits").resolve(), (root / "cache").resolve(), cache.resolve()}
    clips: dict[str, Clip] = {}
    bad: list[BadFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            suffix = path.suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                clip_id = path.relative_to(root).with_suffix("").as_posix()
                if clip_id in clips:
                    bad.append(BadFile(str(path), f"duplicate clip id {clip_id!r} (also {clips[clip_id].path.name})"))
                else:
                    clips[clip_id] = Clip(clip_id, path)
            elif suffix in OTHER_AUDIO_SUFFIXES:
                bad.append(BadFile(str(path), f"wrong extension {path.suffix!r}; expected .wav or .flac",
                                   path.relative_to(root).with_suffix("").as_posix()))
    return Corpus(root, "folder", [clips[k] for k in sorted(clips)], bad)


def _speaker_dirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))


def _discover_vctk(root: Path, mic: str) -> Corpus:
    """VCTK 0.92: `wav48_silence_trimmed/<spk>/<spk>_<nnn>_<mic>.flac` (48 kHz FLAC).

    Clip ids are `<spk>/<spk>_<nnn>` (the microphone is a setting, not part of the id). Speakers
    without transcripts (`txt/<spk>/` missing, as for p315) are kept: a vocoder needs no text.
    """
    audio = root / "wav48_silence_trimmed"
    if not audio.is_dir():
        raise UserError(f"{audio.absolute()}: not found; expected {VCTK_HINT}")
    info = root / "speaker-info.txt"
    listed: set[str] = set()
    if info.is_file():
        for line in info.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
            if line.strip() and not line.lstrip().startswith(";"):
                listed.add(line.split()[0])
    else:
        log.warning("%s: not found (VCTK lists its speakers there); using the speaker folders as found", info)
    clips: list[Clip] = []
    bad: list[BadFile] = []
    no_text = []
    suffix = f"_{mic}"
    for folder in _speaker_dirs(audio):
        spk = folder.name
        if listed and spk not in listed:
            log.info("%s: speaker %s is not in speaker-info.txt; using its clips", root, spk)
        if not (root / "txt" / spk).is_dir():
            no_text.append(spk)
        for path in sorted(folder.iterdir()):
            stem, ext = path.stem, path.suffix.lower()
            if path.name.startswith(".") or not stem.endswith(suffix):
                continue  # the other microphone, or not a recording
            clip_id = f"{spk}/{stem[: -len(suffix)]}"
            if ext in AUDIO_SUFFIXES:
                clips.append(Clip(clip_id, path, spk))
            elif ext in OTHER_AUDIO_SUFFIXES:
                bad.append(BadFile(str(path), f"wrong extension {path.suffix!r}; expected .flac or .wav", clip_id))
    if no_text:
        log.info("%s: %d speaker(s) without transcripts (%s); their audio is used", root, len(no_text),
                 ", ".join(no_text[:5]))
    clips.sort(key=lambda c: c.id)
    return Corpus(root, "vctk", clips, bad)


def _discover_libritts(root: Path, subsets: list[str]) -> Corpus:
    """LibriTTS / LibriTTS-R: `<subset>/<spk>/<chapter>/<utt>.wav` (24 kHz), each wav with its
    `.normalized.txt` / `.original.txt` beside it. Clip ids are `<subset>/<spk>/<chapter>/<utt>`.

    Raises:
        UserError: a subset named in `data.subsets` is not a folder under root.
    """
    found = _speaker_dirs(root)
    names = [p.name for p in found if p.name not in ("splits", "cache") and not p.name.startswith("cache-")]
    if subsets:
        missing = [s for s in subsets if s not in names]
        if missing:
            raise UserError(f"data.subsets: {missing[0]!r} is not a folder of {root.absolute()} "
                            f"(found: {', '.join(names) or 'none'}); expected {LIBRITTS_HINT}")
        names = list(subsets)
    clips: list[Clip] = []
    bad: list[BadFile] = []
    for subset in names:
        for spk_dir in _speaker_dirs(root / subset):
            for chapter in _speaker_dirs(spk_dir):
                for path in sorted(chapter.iterdir()):
                    ext = path.suffix.lower()
                    clip_id = path.relative_to(root).with_suffix("").as_posix()
                    if path.name.startswith("."):
                        continue
                    if ext in AUDIO_SUFFIXES:
                        clips.append(Clip(clip_id, path, spk_dir.name))
                    elif ext in OTHER_AUDIO_SUFFIXES:
                        bad.append(BadFile(str(path), f"wrong extension {path.suffix!r}; expected .wav or .flac",
                                           clip_id))
    clips.sort(key=lambda c: c.id)
    return Corpus(root, "libritts", clips, bad)


# ----------------------------------------------------------------------------- mixes

@dataclass(frozen=True)
class MixPart:
    """One corpus of a mix: its name (the id prefix), weight, and its settings as a data config."""

    name: str
    weight: float
    cfg: DataConfig


def _shipped_data_configs() -> dict[str, Path]:
    folder = Path(str(resources.files("waveglow") / "configs" / "data"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml")) if p.stem != "mix"}


@functools.cache
def _shipped(name: str) -> dict:
    """The layout settings (layout, mic, subsets) of the shipped data config `name`."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(_shipped_data_configs()[name]))
    return {"layout": str(raw.get("layout", "folder")), "mic": str(raw.get("mic") or "mic1"),
            "subsets": [str(x) for x in raw.get("subsets") or []]}


def _entry(e: object, key: str) -> object:
    return e.get(key) if isinstance(e, Mapping) else getattr(e, key, None)


def mix_parts(data_cfg: DataConfig) -> list[MixPart]:
    """The corpora of a mix (`data.corpora`), each checked and as its own data config.

    Each entry names a shipped data config (its layout: ljspeech, vctk, libritts, folder, demo)
    and the corpus folder; the mix's split settings (`data.splits`) apply to each corpus.

    Raises:
        UserError: an empty list, or an entry with an unknown name, a name used twice, a
            missing root or a weight that is not a number > 0 (the message names the entry).
    """
    entries = list(getattr(data_cfg, "corpora", None) or [])
    if not entries:
        raise UserError(f"data.corpora: empty; data=mix expects {MIX_HINT}")
    known = _shipped_data_configs()
    parts: list[MixPart] = []
    for i, e in enumerate(entries):
        name = str(_entry(e, "name") or "")
        where = f"data.corpora[{i}] ({name or 'no name'})"
        if name not in known:
            raise UserError(f"{where}: unknown corpus name {name!r}; expected one of {', '.join(known)}")
        if name in {p.name for p in parts}:
            raise UserError(f"{where}: {name} is already in the mix (each corpus once)")
        weight = _entry(e, "weight")
        try:
            w = float(1.0 if weight is None else weight)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            w = float("nan")
        if not w > 0 or math.isinf(w):
            raise UserError(f"{where}: weight={weight}: expected a number > 0")
        root = _entry(e, "root")
        if not root:
            raise UserError(f"{where}: root=... is required (the corpus folder)")
        shipped = _shipped(name)
        subsets = _entry(e, "subsets")
        splits = data_cfg.splits
        if shipped["layout"] not in ("vctk", "libritts"):  # one speaker: none to hold out
            splits = SplitsConfig(n_val=int(splits.n_val), n_test=int(splits.n_test), seed=int(splits.seed))
        sub = DataConfig(name=name, root=str(root), layout=shipped["layout"], mic=shipped["mic"],
                         subsets=[str(s) for s in subsets] if subsets is not None else list(shipped["subsets"]),
                         splits=splits)
        if not corpus_root(sub).is_dir():
            raise UserError(f"{where}: root={root}: corpus folder not found (looked in "
                            f"{corpus_root(sub).absolute()}); expected {HINTS[sub.layout]}")
        parts.append(MixPart(name, w, sub))
    return parts


def _mix_root(data_cfg: DataConfig) -> Path:
    """The mix's own folder (splits, cache), created on first use."""
    root = corpus_root(data_cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.root={data_cfg.root}: cannot create the mix's folder ({e.strerror}); "
                        "it holds the mix's splits and cache") from None
    return root


def _discover_mix(data_cfg: DataConfig) -> Corpus:
    """The union of the corpora's clips, ids prefixed `<name>/`, speakers `<name>:<speaker>`."""
    parts = mix_parts(data_cfg)
    root = _mix_root(data_cfg)
    clips: list[Clip] = []
    bad: list[BadFile] = []
    for part in parts:
        found = discover_corpus(part.cfg)
        # Absolute paths: the manifest under the mix's root would read a relative one from there.
        clips += [Clip(f"{part.name}/{c.id}", c.path.absolute(), f"{part.name}:{c.speaker}" if c.speaker else None)
                  for c in found.clips]
        bad += [BadFile(b.path, b.reason, f"{part.name}/{b.clip_id}" if b.clip_id else None) for b in found.bad]
        log.info("data=mix: %s (%s) at %s: %d clips, weight %g", part.name, part.cfg.layout, part.cfg.root,
                 len(found.clips), part.weight)
    clips.sort(key=lambda c: c.id)
    return Corpus(root, "mix", clips, bad)


def corpus_of(clip_id: str) -> str:
    """The corpus name of a mix's clip id (its first path part)."""
    return clip_id.split("/", 1)[0]


# ----------------------------------------------------------------------------- splits

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
        if name not in _shipped_data_configs():
            return None
        spk = speaker_of(_shipped(name)["layout"], rest)
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
        _mix_root(data_cfg)
    elif not root.is_dir():
        raise _missing_root_error(data_cfg)
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
