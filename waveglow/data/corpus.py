"""Corpus discovery: which clips a corpus holds.

A corpus is LJSpeech layout (`metadata.csv` + `wavs/`), any folder of WAV/FLAC files, or a
multi-speaker corpus: VCTK 0.92 (`wav48_silence_trimmed/<spk>/<spk>_<nnn>_<mic>.flac`) or
LibriTTS / LibriTTS-R (`<subset>/<spk>/<chapter>/<utt>.wav`). Clip ids are stable names (the
metadata id, or the path below root without suffix; `<spk>/<spk>_<nnn>` for VCTK). A mix
(`data=mix`) is discovered in `waveglow.data.mix`; the train/val/test filelists are
`waveglow.data.splits`. Nothing here decodes audio.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from waveglow.config import DataConfig
from waveglow.data.audio import AUDIO_SUFFIXES, OTHER_AUDIO_SUFFIXES
from waveglow.errors import UserError

log = logging.getLogger("waveglow.data")

LJSPEECH_HINT = "LJSpeech layout: metadata.csv (id|text|normalized text) and wavs/<id>.wav"
FOLDER_HINT = "a folder of .wav/.flac files (any depth)"
VCTK_HINT = "VCTK 0.92 layout: wav48_silence_trimmed/<speaker>/<speaker>_<nnn>_mic1.flac and speaker-info.txt"
LIBRITTS_HINT = "LibriTTS layout: <subset>/<speaker>/<chapter>/<utterance>.wav (e.g. train-clean-100/19/198/...)"
MIX_HINT = ("data.corpora=[{name: ljspeech, root: ..., weight: 1}, {name: vctk, root: ..., weight: 2}] "
            "(each name a shipped data config)")
HINTS = {"ljspeech": LJSPEECH_HINT, "folder": FOLDER_HINT, "vctk": VCTK_HINT, "libritts": LIBRITTS_HINT,
         "mix": MIX_HINT}


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


def missing_root_error(data_cfg: DataConfig) -> UserError:
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
        from waveglow.data.mix import discover_mix  # a mix discovers its parts here

        return discover_mix(data_cfg)
    if not root.is_dir():
        raise missing_root_error(data_cfg)
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
