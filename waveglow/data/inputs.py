"""The one resolver of `input=` (waveglow-mel, -synthesize, -resynthesize, -score).

`input=` may name a file, a folder (searched recursively), a glob (`**` allowed) or a filelist;
the library also takes a list of paths. Every input comes back with the name its output gets
below the output folder, so that all scripts lay out their outputs alike:

    input=a.wav                     -> a.wav              name a
    input=corpus/ (a folder)        -> corpus/x/b.flac    name x/b   (the sub-folder layout is kept)
    input='mels/**/*.pt' (a glob)   -> mels/y/c.pt        name c
    input=list.txt (a filelist)     -> each listed file   name <its stem>

Two different inputs that would write the same output are refused up front, naming both.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from waveglow.data.audio import AUDIO_SUFFIXES, OTHER_AUDIO_SUFFIXES
from waveglow.errors import UserError

# A text file listing one input per line (.csv: LJSpeech's metadata.csv, `id|text|text`).
FILELIST_SUFFIXES = (".txt", ".list", ".lst", ".scp", ".filelist", ".csv")

Spec = str | os.PathLike | Sequence[str | os.PathLike]
# Audio where mels are expected (waveglow-synthesize input=speech.wav): the two ways from audio.
AUDIO_FOR_MELS = ("make mel files from audio with waveglow-mel input=<audio> output_dir=<dir>, or vocode audio "
                  "directly with waveglow-resynthesize input=<audio>")


class InputFile(NamedTuple):
    """One input file and the name of its output.

    Attributes:
        path: the file (as given or found; a filelist entry may not exist: the reader reports it).
        name: its output path relative to the output folder, without suffix (`x/b` for
            `<folder>/x/b.flac`), so an output is `output_dir / name.with_suffix(".pt")`.
    """

    path: Path
    name: Path


def resolve_inputs(spec: Spec, suffixes: Sequence[str], *, kind: str = "audio") -> list[InputFile]:
    """Expand `input=` into the files to process and their output names.

    Args:
        spec: a file with one of `suffixes`; a folder (its files with those suffixes at any
            depth, hidden files and folders skipped, sorted); a glob (`mels/*.pt`, `**` allowed,
            sorted); a filelist (`.txt/.list/.lst/.scp/.filelist/.csv`: one path per line, `#`
            comments, `path|text` lines use the path; relative paths are looked up in the working
            directory, then next to the list; bare clip ids, as in a corpus's splits/*.txt, are
            found in the corpus's wavs/ or cache/mels/); or a sequence of paths.
        suffixes: accepted file suffixes, lower case, e.g. (".wav", ".flac").
        kind: what the files hold ("audio" or "mel"), for messages; with "audio", a file of a
            known audio type we do not read (.mp3, .ogg, ...) is refused as such.

    Returns:
        The inputs, in list order (folders and globs: sorted). Entries of a filelist or a
        sequence are returned even when missing, so that the reader reports (or skips) each one
        by name. The same file listed twice is kept once.

    Raises:
        UserError: one line naming the absolute path tried: no such file or folder, no matching
            file in a folder or glob, an unexpected file type, an empty or unreadable filelist,
            or two inputs with the same output name.
    """
    suffixes = tuple(s.lower() for s in suffixes)
    expected = f"expected input=<{'/'.join(suffixes)} file | folder | glob | filelist>"
    if not isinstance(spec, (str, os.PathLike)):
        return _unique([_named(Path(p).expanduser()) for p in spec])
    text = str(spec)
    if not text.strip():
        raise UserError(f"input is empty; {expected}")
    path = Path(text).expanduser()
    if path.is_dir():
        return _unique(_folder(path, suffixes, kind))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in suffixes:
            return [_named(path)]
        if suffix in FILELIST_SUFFIXES:
            return _unique(_read_filelist(path, suffixes))
        if kind == "audio" and suffix in OTHER_AUDIO_SUFFIXES:
            raise UserError(f"{_abs(path)}: unsupported audio type {path.suffix!r}; expected "
                            f"{' or '.join(suffixes)}")
        if kind == "mel" and _is_audio(path):
            raise UserError(f"{_abs(path)}: unexpected file type {path.suffix!r} (audio, not a mel spectrogram); {AUDIO_FOR_MELS}")
        raise UserError(f"{_abs(path)}: unexpected file type {path.suffix!r}; {expected} "
                        f"(filelists: {'/'.join(FILELIST_SUFFIXES)})")
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in suffixes)
        if not files:
            audio = kind == "mel" and any(_is_audio(Path(p)) for p in glob.glob(os.path.expanduser(text), recursive=True))
            raise UserError(f"{_abs(os.path.expanduser(text))}: the pattern matches no "
                            f"{'/'.join(suffixes)} files" + (f" but audio files; {AUDIO_FOR_MELS}" if audio else ""))
        return _unique([_named(p) for p in files])
    raise UserError(f"{_abs(path)}: no such file or folder; {expected}")


def _abs(path: str | os.PathLike) -> str:
    """The absolute, normalised form of `path` (what messages show: no `..`, no cwd guessing)."""
    return os.path.abspath(path)


def _named(path: Path) -> InputFile:
    return InputFile(path, Path(path.stem))


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_SUFFIXES or path.suffix.lower() in OTHER_AUDIO_SUFFIXES


def _folder(folder: Path, suffixes: tuple[str, ...], kind: str = "audio") -> list[InputFile]:
    """The matching files below `folder` at any depth, named by their path below it."""
    found: list[InputFile] = []
    audio = False  # a folder of audio where mels are expected gets the hint
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        for name in filenames:
            p = here / name
            if not name.startswith(".") and p.suffix.lower() in suffixes and p.is_file():
                rel = p.relative_to(folder)
                found.append(InputFile(p, rel.with_suffix("")))
            audio = audio or (kind == "mel" and _is_audio(p))
    if not found:
        raise UserError(f"{_abs(folder)}: the folder holds no {'/'.join(suffixes)} files (searched recursively)"
                        + (f" but audio files; {AUDIO_FOR_MELS}" if audio else ""))
    return sorted(found, key=lambda f: f.name.as_posix())


def _read_filelist(path: Path, suffixes: tuple[str, ...]) -> list[InputFile]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise UserError(f"{_abs(path)}: cannot read the filelist ({reason}); expected one path per line") from None
    # Bare clip ids (metadata.csv, splits/*.txt) are looked up next to the list and in the
    # corpus root (the list's folder or the one above it): its wavs/ (LJSpeech layout) and its
    # cache/mels/ (the feature cache).
    parent = path.parent
    id_dirs = [d / sub for d in (parent, parent.parent) for sub in (".", "wavs", "cache/mels")]
    out: list[InputFile] = []
    for line in lines:
        entry = line.split("|", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry).expanduser()
        if not p.is_absolute() and not p.exists() and (parent / p).exists():
            p = parent / p
        if not p.exists() and not p.is_absolute() and p.suffix.lower() not in suffixes:
            found = [d / f"{entry}{s}" for d in id_dirs for s in suffixes if (d / f"{entry}{s}").is_file()]
            p = found[0] if found else p
        out.append(_named(p))
    if not out:
        raise UserError(f"{_abs(path)}: the filelist is empty; expected one path per line")
    return out


def _unique(inputs: list[InputFile]) -> list[InputFile]:
    """Drop repeats of the same file; refuse two files that would write the same output."""
    owner: dict[str, InputFile] = {}
    out: list[InputFile] = []
    for item in inputs:
        key = item.name.as_posix()
        first = owner.get(key)
        if first is None:
            owner[key] = item
            out.append(item)
        elif _abs(first.path) != _abs(item.path):
            raise UserError(f"{_abs(first.path)} and {_abs(item.path)} would both be written as "
                            f"{key}.*; give the files distinct names")
    return out
