"""Taking one model file out of a downloaded zip archive, refusing hostile archives.

Only one member is ever written, under a name this code chooses, inside the cache folder: a
member path never decides where bytes land. Before anything is written the whole listing is
checked (absolute paths, `..`, declared sizes and compression ratios), and while copying the
real size is counted against the declared one, so a lying header cannot inflate the output.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path, PurePosixPath

from waveglow.data.extract import copy_zip_member
from waveglow.errors import UserError
from waveglow.fileio import atomic_write

# A torch file of float weights barely compresses (about 1.1×); a ratio past this is a bomb.
MAX_RATIO = 50.0
# No published WaveGlow is near this; a declared size past it is refused before reading.
MAX_BYTES = 4 << 30
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
CHUNK = 1 << 20


def _unsafe(name: str) -> str | None:
    """Why the member path `name` is unsafe, or None."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "a path with '..'"
    return None


def _candidates(infos: list[zipfile.ZipInfo]) -> list[zipfile.ZipInfo]:
    """The members that can be the model: files with a model suffix, macOS metadata left out."""
    out = []
    for info in infos:
        path = PurePosixPath(info.filename)
        if info.is_dir() or path.parts[:1] == ("__MACOSX",) or path.name.startswith("._"):
            continue
        if path.suffix.lower() in MODEL_SUFFIXES:
            out.append(info)
    return out


def extract_model(archive: str | os.PathLike, into: str | os.PathLike, member: str | None = None, *,
                  max_ratio: float = MAX_RATIO, max_bytes: int = MAX_BYTES) -> Path:
    """Copy the model file out of a zip archive into the folder `into`.

    Args:
        archive: the zip file.
        into: an existing folder (the cache); the member is written as `into/<its base name>`.
        member: the member's path inside the archive (None: the archive's only model file,
            i.e. the only .pt/.pth/.ckpt/.bin member).
        max_ratio: largest declared uncompressed/compressed size ratio accepted.
        max_bytes: largest declared uncompressed size accepted.

    Returns:
        The extracted file.

    Raises:
        UserError: not a zip, an unsafe member path anywhere in the archive, a member that
            would be larger than `max_bytes` or compresses more than `max_ratio`, a member whose
            data is longer than declared, or not exactly one candidate model file.
    """
    archive = Path(archive)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            reason = _unsafe(info.filename)
            if reason is not None:
                raise UserError(f"{archive}: refusing the archive: member {info.filename!r} has {reason}")
        if member is not None:
            chosen = [i for i in infos if i.filename == member]
            if not chosen:
                names = ", ".join(i.filename for i in _candidates(infos)) or "none"
                raise UserError(f"{archive}: has no member {member!r} (model files in it: {names})")
        else:
            chosen = _candidates(infos)
            if len(chosen) != 1:
                what = ", ".join(i.filename for i in chosen) if chosen else "no .pt/.pth/.ckpt/.bin file"
                raise UserError(f"{archive}: expected exactly one model file, found {what} "
                                "(name the one to use with the registry entry's member: field)")
        info = chosen[0]
        if info.file_size > max_bytes:
            raise UserError(f"{archive}: member {info.filename!r} declares {info.file_size / 2**20:.0f} MiB, "
                            f"more than the {max_bytes / 2**20:.0f} MiB a model file may have")
        if info.file_size > CHUNK and info.file_size > max_ratio * max(info.compress_size, 1):
            raise UserError(f"{archive}: member {info.filename!r} compresses "
                            f"{info.file_size / max(info.compress_size, 1):.0f}:1 (more than {max_ratio:.0f}:1); "
                            "refusing a likely zip bomb")
        target = Path(into) / PurePosixPath(info.filename).name

        try:
            atomic_write(target, lambda out: copy_zip_member(zf, info, archive, out))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as e:
            raise UserError(f"{archive}: cannot read member {info.filename!r} ({e})") from None
    return target
