"""Unpack a tar (gz/bz2/xz/plain) or zip archive without trusting it.

Every member is checked before anything is written: absolute paths, `..`, links pointing out of
the destination, device files and zip members holding more data than they declare are refused
(one `UserError` naming the archive and the member). Corpus downloads and pretrained-model
archives both unpack through here.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
import zipfile

from tqdm import tqdm

from waveglow.errors import UserError

CHUNK = 1 << 20


def _name_reason(name: str) -> str | None:
    """Why a member name is unsafe wherever it is extracted (absolute, `..`), or None."""
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "path with '..'"
    return None


def _unsafe_reason(member: tarfile.TarInfo, root: str) -> str | None:
    """Why extracting `member` under directory `root` would be unsafe, or None if it is fine."""
    name = member.name
    if (reason := _name_reason(name)) is not None:
        return reason
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root:
        return "path outside the destination"
    if member.issym() or member.islnk():
        link = member.linkname
        if link.startswith("/") or ".." in posixpath.normpath(link).split("/"):
            # Relative links that stay inside could be allowed, but a corpus has no need for them.
            return f"link to {link!r}"
        base = os.path.dirname(target) if member.issym() else root
        if os.path.commonpath([root, os.path.realpath(os.path.join(base, link))]) != root:
            return f"link to {link!r} outside the destination"
    elif not (member.isfile() or member.isdir()):
        return "device, fifo or other special file"
    return None


def copy_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, archive: str | os.PathLike, out) -> int:
    """Stream member `info` of `zf` into the binary file `out`, counting its real size against
    the declared one (a lying header cannot inflate the output).

    Returns:
        The bytes written (equal to the declared size).

    Raises:
        UserError: the member holds more or fewer bytes than it declares.
    """
    written = 0
    with zf.open(info) as src:
        while block := src.read(CHUNK):
            written += len(block)
            if written > info.file_size:
                raise UserError(f"{archive}: member {info.filename!r} holds more data than the "
                                f"{info.file_size} bytes it declares; refusing it")
            out.write(block)
    if written != info.file_size:
        raise UserError(f"{archive}: member {info.filename!r} holds {written} bytes, declares {info.file_size}")
    return written


def _safe_extract_zip(archive: str | os.PathLike, root: str, progress: bool) -> int:
    """Extract a zip archive member by member into `root`, checking each before it is written:
    absolute paths, `..`, links and members that would land outside are refused, and no member
    may hold more data than it declares."""
    count = 0
    with zipfile.ZipFile(archive) as zf, tqdm(unit=" files", desc="extracting", disable=not progress,
                                              leave=False) as bar:
        for info in zf.infolist():
            name = info.filename
            reason = _name_reason(name)
            if reason is None and stat.S_ISLNK(info.external_attr >> 16):
                reason = "symbolic link"
            target = os.path.realpath(os.path.join(root, name))
            if reason is None and os.path.commonpath([root, target]) != root:
                reason = "path outside the destination"
            if reason is not None:
                raise UserError(f"{archive}: refusing to extract member {name!r} ({reason})")
            if info.is_dir():
                os.makedirs(target, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as out:
                    copy_zip_member(zf, info, archive, out)
            count += 1
            bar.update(1)
    return count


def safe_extract(archive: str | os.PathLike, into: str | os.PathLike, progress: bool = True) -> int:
    """Extract a tar (gz/bz2/xz/plain) or zip archive into the existing directory `into`.

    Every member is checked before it is written (and tarfile's "data" filter is applied on top
    where this Python has it). One pass over the archive, so a 2.6 GB tar.bz2 is decompressed once.

    Returns:
        Number of members extracted.

    Raises:
        UserError: unreadable archive or an unsafe member (nothing further is extracted).
    """
    root = os.path.realpath(into)
    count = 0
    if zipfile.is_zipfile(archive):
        try:
            return _safe_extract_zip(archive, root, progress)
        except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError) as e:
            raise UserError(f"{archive}: cannot extract ({e}); delete it and rerun to download it again") from e
    try:
        with tarfile.open(archive, "r:*") as tar, tqdm(unit=" files", desc="extracting",
                                                       disable=not progress, leave=False) as bar:
            for member in tar:
                reason = _unsafe_reason(member, root)
                if reason is not None:
                    raise UserError(f"{archive}: refusing to extract member {member.name!r} ({reason})")
                if hasattr(tarfile, "data_filter"):
                    tar.extract(member, root, filter="data")
                else:  # pragma: no cover - Pythons before the extraction filters; checked above
                    tar.extract(member, root)
                count += 1
                bar.update(1)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"{archive}: cannot extract ({e}); delete it and rerun to download it again") from e
    return count
