"""Fetch a corpus archive (resumable, checksum-verified) and unpack it safely.

`download_and_extract` is what `make ljspeech` runs (through `waveglow-download`):

1. download `url` into `<archive>.part`, resuming a partial file with an HTTP Range request
   (and starting over when the server ignores it), with a byte progress bar;
2. verify the sha256; on a mismatch the downloaded file is deleted and a `UserError` says so;
3. extract into a temporary folder next to the destination, refusing members that would land
   outside it (absolute paths, `..`, links pointing out, device files), then rename the corpus
   folder into place, so an interrupted extraction never looks like a finished corpus
   (`waveglow.data.extract`);
4. leave a completion marker in the corpus folder so a second run does nothing.

`fetch` (steps 1-2 with an optional checksum and size) is the one HTTP download of the toolkit:
the pretrained-model cache (`waveglow.pretrained`) uses it too.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from waveglow.config import DataConfig, to_dict
from waveglow.data.corpus import corpus_root
from waveglow.data.extract import CHUNK, safe_extract
from waveglow.data.splits import ensure_splits
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

log = logging.getLogger("waveglow")

# Written inside the corpus folder as the very last step of a successful extraction.
MARKER = ".download-complete.json"
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


class Unreachable(UserError):
    """The server could not be reached (no network, refused, timed out): callers that have a
    better next step to offer (e.g. an offline cache) catch this one."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def sha256_file(path: str | os.PathLike, chunk: int = CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float) -> tuple[IO[bytes], int | None, int]:
    """Open `url` for reading from byte `offset` (best effort).

    Returns:
        (stream, total size of the resource or None, offset the stream actually starts at:
        `offset` when resuming worked, 0 when the server sent the whole resource).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        # urllib's file handler ignores Range; a local file can simply be seeked.
        path = urllib.request.url2pathname(parsed.path)
        try:
            f = open(path, "rb")
        except OSError as e:
            raise UserError(f"{url}: cannot read the archive ({e.strerror})") from e
        total = os.fstat(f.fileno()).st_size
        start = offset if 0 < offset <= total else 0
        f.seek(start)
        return f, total, start

    request = urllib.request.Request(url, headers={"User-Agent": "waveglow-download"})
    if offset > 0:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset > 0:
            # The partial file is at least as long as the resource: start over to be safe.
            e.close()
            return _open(url, 0, timeout)
        raise UserError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise Unreachable(f"{url}: cannot connect ({reason}); check the URL or your network and rerun",
                          str(reason)) from e

    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if offset > 0 and response.status == 206:
        # Content-Range: bytes <start>-<end>/<total>
        m = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
        if m and int(m.group(1)) == offset:
            total = int(m.group(3)) if m.group(3) != "*" else (offset + length if length is not None else None)
            return response, total, offset
        response.close()  # a range we did not ask for: do not trust it
        return _open(url, 0, timeout)
    return response, length, 0


def download(url: str, dest: str | os.PathLike, sha256: str, *, retries: int = 3, timeout: float = 60.0,
             progress: bool = True) -> Path:
    """Download `url` to `dest`, resuming `<dest>.part`, and verify its sha256 (see `fetch`).

    Returns:
        `dest`.
    """
    fetch(url, dest, sha256=sha256, retries=retries, timeout=timeout, progress=progress)
    return Path(dest)


def fetch(url: str, dest: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
          md5: str | None = None, setting: str = "data.download", retries: int = 3, timeout: float = 60.0,
          progress: bool = True) -> str:
    """Download `url` to `dest`, resuming `<dest>.part`, checking its size and sha256.

    Args:
        url: http(s)://, file:// or a plain local path.
        dest: final file path; written only once the checks pass.
        sha256: expected hex digest (64 characters), or None when none is published (the
            digest is returned for the caller to record).
        size: expected size in bytes, or None. A server announcing another size is refused
            before anything is downloaded.
        md5: expected hex md5, for files whose publisher gives only that (checked as well).
        setting: the settings prefix the error messages name (`data.download`, `pretrained`).
        retries: how many times an interrupted transfer is resumed before giving up.
        timeout: socket timeout in seconds, for the connection and for each read alike.
        progress: show a tqdm bar (bytes).

    Returns:
        The hex sha256 of the file now at `dest`.

    Raises:
        Unreachable: the server cannot be reached (no network, refused, timed out).
        UserError: bad URL/checksum string, a size or checksum mismatch (the downloaded file is
            deleted first). An interrupted transfer that used up its retries keeps
            `<dest>.part` so the next run resumes it.
    """
    dest = Path(dest)
    expected = _check_sha256(sha256, setting) if sha256 is not None else None
    expected_md5 = _check_md5(md5, setting) if md5 is not None else None
    if "://" not in url:
        url = Path(url).resolve().as_uri()
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise UserError(f"{setting}.url: expected an http(s)://, file:// URL or a path, got {url!r}")
    _make_dir(dest.parent, f"{setting}.archive" if setting == "data.download" else setting)
    part = dest.with_name(dest.name + ".part")

    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        stream, total, start = _open(url, offset, timeout)
        if size is not None and total is not None and total != size:
            stream.close()
            part.unlink(missing_ok=True)
            raise UserError(f"{url}: the server offers {total} bytes, {setting}.size pins {size}; "
                            "nothing downloaded (check the URL and the size)")
        digest, md5_digest = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
        if start > 0:
            log.info("resuming %s at %.1f MiB", part, start / 2**20)
            with open(part, "rb") as f:  # the digest must cover the bytes already on disk
                while block := f.read(CHUNK):
                    digest.update(block)
                    md5_digest.update(block)
        elif offset > 0:
            log.info("the server ignored the resume request; downloading %s from the start", url)
        received = start
        try:
            with stream, open(part, "r+b" if start > 0 else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                desc=dest.name, disable=not progress, leave=False,
            ) as bar:
                out.seek(start)
                out.truncate()
                while block := stream.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    md5_digest.update(block)
                    received += len(block)
                    bar.update(len(block))
        except (OSError, http.client.HTTPException) as e:
            error: Exception | None = e
        else:
            error = None if total is None or received >= total else EOFError(
                f"connection closed after {received} of {total} bytes")
        if error is None:
            break
        if attempt == retries:
            raise UserError(f"{url}: download interrupted ({error}); {part} keeps the "
                            f"{received / 2**20:.1f} MiB received so far, rerun to resume") from error
        log.warning("download interrupted (%s); resuming (%d/%d)", error, attempt + 1, retries)
        time.sleep(min(2.0**attempt, 10.0))

    if size is not None and received != size:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: size mismatch: expected {size} bytes ({setting}.size), got {received}; "
                        f"deleted the downloaded file {part}")
    got = digest.hexdigest()
    if expected is not None and got != expected:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: sha256 mismatch: expected {expected}, got {got}; deleted the "
                        f"downloaded file {part} (check {setting}.url / {setting}.sha256)")
    if expected_md5 is not None and md5_digest.hexdigest() != expected_md5:
        part.unlink(missing_ok=True)
        raise UserError(f"{url}: md5 mismatch: expected {expected_md5}, got {md5_digest.hexdigest()}; deleted the "
                        f"downloaded file {part} (check {setting}.url / {setting}.md5)")
    os.replace(part, dest)
    log.info("downloaded %s (%.1f MiB, %s)", dest, received / 2**20,
             "sha256 verified" if expected is not None else f"sha256 {got}, no published checksum to check")
    return got


def _check_md5(md5: Any, setting: str) -> str:
    if not isinstance(md5, str) or not re.match(r"^[0-9a-fA-F]{32}$", md5.strip()):
        raise UserError(f"{setting}.md5: expected 32 hex digits, got {md5!r}")
    return md5.strip().lower()


def _check_sha256(sha256: Any, setting: str = "data.download") -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256.strip()):
        raise UserError(f"{setting}.sha256: expected 64 hex digits, got {sha256!r}")
    return sha256.strip().lower()


def download_and_extract(url: str, sha256: str | None, archive_path: str | os.PathLike,
                         extract_to: str | os.PathLike, expected_dir: str | None = None, *, keep_archive: bool = True,
                         progress: bool = True, marker_info: Mapping[str, Any] | None = None,
                         md5: str | None = None) -> Path:
    """Make `extract_to` hold the corpus from the archive at `url`; do nothing if it already does.

    Args:
        url: where the archive is (http(s)://, file:// or a local path).
        sha256: expected hex digest of the archive (None: none published; the digest is logged and
            recorded in the completion marker).
        archive_path: where the archive is stored (a finished, verified archive is not fetched again).
        extract_to: the corpus folder to create (e.g. data/LJSpeech-1.1).
        expected_dir: the folder inside the archive that holds the corpus (e.g. "LJSpeech-1.1");
            None: the archive's only top-level folder; ".": the archive's top level itself.
        keep_archive: keep the archive after a successful extraction.
        progress: show progress bars.
        marker_info: extra JSON-able facts recorded in the completion marker.
        md5: expected hex md5 of the archive, where only an md5 is published.

    Returns:
        `extract_to`.

    Raises:
        UserError: see `download` and `safe_extract`; also when `extract_to` exists but was not
        made by this function, or the archive lacks `expected_dir`.
    """
    extract_to = Path(extract_to)
    archive_path = Path(archive_path)
    if (extract_to / MARKER).is_file():
        log.info("%s is already there (downloaded and verified earlier); nothing to do", extract_to)
        return extract_to
    if extract_to.exists() and (not extract_to.is_dir() or any(extract_to.iterdir())):
        raise UserError(f"{extract_to.absolute()}: exists but was not made by waveglow-download (no {MARKER}); "
                        "use it as it is (skip this step) or move it away and rerun")
    expected = _check_sha256(sha256) if sha256 is not None else None
    if expected is None and md5 is None:
        log.warning("%s: no published checksum; the archive's sha256 is recorded in %s", url, extract_to / MARKER)
    got = None
    if archive_path.is_file() and expected is not None:
        log.info("verifying the existing %s", archive_path)
        got = sha256_file(archive_path)
        if got != expected:
            log.warning("%s does not match the expected sha256; deleting it and downloading again", archive_path)
            archive_path.unlink()
    if not archive_path.is_file():
        got = fetch(url, archive_path, sha256=expected, md5=md5, progress=progress)
    elif got is None:  # a finished archive without a published sha256: what it is gets recorded
        got = sha256_file(archive_path)

    parent = extract_to.parent
    _make_dir(parent, "data.root")
    prefix = f".{extract_to.name}.extracting-"
    for stale in parent.glob(prefix + "*"):  # left by a run that was killed mid-extraction
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        log.info("extracting %s", archive_path)
        safe_extract(archive_path, tmp, progress=progress)
        top = [p.name for p in tmp.iterdir()]
        if expected_dir is None:
            dirs = [p for p in tmp.iterdir() if p.is_dir()]
            if len(dirs) != 1:
                raise UserError(f"{archive_path.absolute()}: expected one top-level folder, found {sorted(top)}")
            source = dirs[0]
        elif expected_dir == ".":  # the archive's top level is the corpus (VCTK 0.92)
            source = tmp
        else:
            source = tmp / expected_dir
            if not source.is_dir():
                raise UserError(f"{archive_path.absolute()}: expected a top-level folder {expected_dir!r}, "
                                f"found {sorted(top)}")
        info = {"url": url, "sha256": got, "sha256_published": expected is not None, "md5": md5,
                "archive": str(archive_path), **(marker_info or {})}
        write_text_atomic(source / MARKER, json.dumps(info, indent=2) + "\n")
        source.chmod(0o755)  # mkdtemp's owner-only mode must not leak into the corpus
        # The rename is the commit point: before it there is no corpus folder, after it a complete one.
        if extract_to.is_dir():
            extract_to.rmdir()  # an empty folder (checked above)
        os.replace(source, extract_to)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        archive_path.unlink(missing_ok=True)
    log.info("extracted %s", extract_to)
    return extract_to


def _make_dir(path: Path, setting: str) -> None:
    """mkdir -p, or a one-line error naming the setting and the absolute path."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{setting}: cannot create the folder {path.absolute()} ({e.strerror})") from None


def download_corpus(data_cfg: DataConfig, *, keep_archive: bool = True, progress: bool = True) -> Path:
    """Download and extract the corpus of a data config (its `download` block), then write its splits.

    A URL with `{subset}` (LibriTTS) is fetched once per entry of `data.subsets`, each archive's
    `download.folder` becoming `<root>/<subset>`; checksums come from `download.sha256` or, by the
    file name the URL ends in, `download.checksums`.

    Args:
        data_cfg: `cfg.data` with `root`, `name` and `download: {url, archive, sha256 | md5 |
            checksums, folder}`.

    Returns:
        The corpus root.
    """
    dl = data_cfg.download
    if dl is None:
        raise UserError(f"data={data_cfg.name} has no download section (data.download.url/sha256/archive); "
                        "only corpora with a public archive can be downloaded")
    for key in ("url", "archive"):
        if not getattr(dl, key):
            raise UserError(f"data.download.{key}: must be set for data={data_cfg.name}")
    root = corpus_root(data_cfg)
    url, archive = str(dl.url), str(dl.archive)
    checksums = dict(getattr(dl, "checksums", None) or {})
    folder = getattr(dl, "folder", None)
    if "{subset}" in url:
        subsets = [str(s) for s in data_cfg.subsets]
        if not subsets:
            raise UserError(f"data.subsets: list the subsets to download for data={data_cfg.name} "
                            "(e.g. data.subsets=[train-clean-100])")
        jobs = [(s, url.replace("{subset}", s), archive.replace("{subset}", s),
                 root / s, str(folder).replace("{subset}", s) if folder else None) for s in subsets]
    else:
        jobs = [(None, url, archive, root, str(folder) if folder else None)]
    for subset, job_url, job_archive, target, inner in jobs:
        sha = dl.sha256 if subset is None and dl.sha256 else checksums.get(job_url.rsplit("/", 1)[-1])
        download_and_extract(job_url, str(sha) if sha else None, job_archive, target, inner,
                             keep_archive=keep_archive, progress=progress, md5=str(dl.md5) if dl.md5 else None,
                             marker_info={"data": to_dict(data_cfg), "subset": subset})
    splits = ensure_splits(data_cfg)
    log.info("splits in %s: %s", root / "splits", ", ".join(f"{k} {len(v)}" for k, v in splits.items()))
    return root
