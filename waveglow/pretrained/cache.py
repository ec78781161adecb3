"""The download cache: `pretrained:NAME` -> a verified checkpoint of this toolkit on disk.

Layout under the cache folder (`$WAVEGLOW_HOME`, default `~/.cache/waveglow`):

    pretrained/<name>/model.pt        the converted checkpoint (loaded with weights_only=True)
    pretrained/<name>/model.json      where it came from: url, format, size, the download's
                                      sha256 (published or recorded by the first download) and
                                      the checkpoint's own sha256, which every later load verifies
    pretrained/<name>/download/       the download (resumable `.part`) and, for a zip, the one
                                      member taken out of it; emptied once the model is converted

The model is converted from the downloaded file through the restricted reader of
`waveglow.interop` (nothing in the file runs) and written atomically; `model.json` is written
last, so a folder without it holds no finished model.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from waveglow.data.download import Unreachable, fetch, sha256_file
from waveglow.errors import UserError
from waveglow.fileio import atomic_write, write_text_atomic
from waveglow.pretrained.registry import Entry, find, load_registry

log = logging.getLogger("waveglow")

PREFIX = "pretrained:"


@dataclass(frozen=True)
class Settings:
    """Where the cache is and how downloads behave (the CLI/API layer fills it, e.g. from the
    environment with `settings_from_env`).

    Attributes:
        home: the cache folder.
        registry: a user registry YAML added to the shipped entries (None: none).
        offline: never touch the network; a model not in the cache is an error.
        timeout: seconds allowed for connecting and for each read.
        progress: byte progress bar while downloading.
    """

    home: Path
    registry: Path | None = None
    offline: bool = False
    timeout: float = 30.0
    progress: bool = True


def settings_from_env(environ: os._Environ | dict[str, str], **overrides: Any) -> Settings:
    """`Settings` from WAVEGLOW_HOME, WAVEGLOW_REGISTRY and WAVEGLOW_OFFLINE (given, not read here).

    Args:
        environ: the process environment (`os.environ`) or a dict.
        overrides: non-None values replace what the environment says (the CLI's settings).
    """
    home = environ.get("WAVEGLOW_HOME") or "~/.cache/waveglow"
    registry = environ.get("WAVEGLOW_REGISTRY") or None
    offline = environ.get("WAVEGLOW_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    settings = Settings(home=Path(home).expanduser(), registry=Path(registry).expanduser() if registry else None,
                        offline=offline)
    given = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(given.get("home"), str):
        given["home"] = Path(given["home"]).expanduser()
    if isinstance(given.get("registry"), str):
        given["registry"] = Path(given["registry"]).expanduser()
    return replace(settings, **given)


def is_pretrained(spec: Any) -> bool:
    """Whether a checkpoint setting names a registry model (`pretrained:NAME`)."""
    return isinstance(spec, (str, os.PathLike)) and str(spec).startswith(PREFIX)


def model_dir(entry: Entry, settings: Settings) -> Path:
    return settings.home / "pretrained" / entry.name


def is_cached(entry: Entry, settings: Settings) -> bool:
    """Whether a finished model is in the cache (cheap: no checksum is computed)."""
    folder = model_dir(entry, settings)
    return (folder / "model.pt").is_file() and (folder / "model.json").is_file()


def cached(entry: Entry, settings: Settings) -> Path | None:
    """The verified cached checkpoint of `entry`, or None when it is not downloaded yet.

    Raises:
        UserError: the cached checkpoint no longer matches the sha256 recorded when it was
            made, or the registry now pins another download than the one cached.
    """
    folder = model_dir(entry, settings)
    ckpt, record_path = folder / "model.pt", folder / "model.json"
    if not record_path.is_file() or not ckpt.is_file():
        return None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        recorded, ckpt_sha = str(record["sha256"]), str(record["checkpoint_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{record_path}: unreadable cache record; delete {folder} and run "
                        f"waveglow-pretrained get {entry.name}") from None
    if entry.sha256 is not None and recorded != entry.sha256:
        log.warning("pretrained:%s: the registry pins sha256 %s, the cached download had %s; downloading again",
                    entry.name, entry.sha256, recorded)
        return None
    if sha256_file(ckpt) != ckpt_sha:
        raise UserError(f"{ckpt}: changed since it was downloaded (sha256 differs from {record_path}); "
                        f"delete {folder} and run waveglow-pretrained get {entry.name}")
    return ckpt


def _recorded_sha(entry: Entry, settings: Settings) -> str | None:
    """The download sha256 a previous download recorded for an entry without a published one."""
    try:
        return json.loads((model_dir(entry, settings) / "model.json").read_text(encoding="utf-8"))["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _convert(entry: Entry, source: Path, out: Path) -> None:
    """Write the checkpoint of this toolkit that `source` holds to `out` (atomically)."""
    if entry.format == "waveglow":
        from waveglow.checkpoint import load_checkpoint

        load_checkpoint(source)  # a checkpoint of this toolkit, checked like any other
        with open(source, "rb") as src:
            atomic_write(out, lambda f: shutil.copyfileobj(src, f), durable=True)
        return
    from waveglow.interop import import_nvidia

    import_nvidia(source, out, layout=entry.layout)


def get(entry: Entry, settings: Settings) -> Path:
    """Make sure `entry` is in the cache (download, check, convert) and return its checkpoint.

    Returns:
        `<home>/pretrained/<name>/model.pt`.

    Raises:
        UserError: offline or unreachable without a cached copy (the line names the file it
            needs and the `get` command), a size or sha256 mismatch (nothing cached), a hostile
            archive, or a file the importer refuses.
    """
    found = cached(entry, settings)
    if found is not None:
        return found
    folder = model_dir(entry, settings)
    if settings.offline:
        return _download(entry, settings, folder)  # says what it would need, touches nothing
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / ".lock", "a+b")  # noqa: SIM115 - held for the whole download
    except OSError as e:
        raise UserError(f"WAVEGLOW_HOME={settings.home}: cannot write the cache ({e.strerror or e})") from None
    with lock:
        # Several processes (the ranks of a training run) asking at once: one downloads, the
        # others wait here and then find the finished model.
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        found = cached(entry, settings)
        return found if found is not None else _download(entry, settings, folder)


def _download(entry: Entry, settings: Settings, folder: Path) -> Path:
    """Download, check and convert `entry` into `folder` (the caller holds its lock)."""
    ckpt = folder / "model.pt"
    if settings.offline:
        raise UserError(f"pretrained:{entry.name}: not in the cache ({ckpt} is missing) and WAVEGLOW_OFFLINE=1; "
                        f"run `waveglow-pretrained get {entry.name}` with network access (it downloads "
                        f"{entry.url}) or copy {folder} from a machine that has it")
    downloads = folder / "download"
    raw = downloads / entry.filename
    expected = entry.sha256 or _recorded_sha(entry, settings)
    try:
        got = fetch(entry.url, raw, sha256=expected, size=entry.size, setting=f"pretrained:{entry.name}",
                    timeout=settings.timeout, progress=settings.progress)
    except Unreachable as e:
        raise UserError(f"pretrained:{entry.name}: cannot download {entry.url} ({e.reason}); "
                        f"run `waveglow-pretrained get {entry.name}` where the network is reachable, or set "
                        f"WAVEGLOW_HOME to a cache that has {folder.relative_to(settings.home)}") from None
    if entry.sha256 is None and expected is None:
        log.warning("pretrained:%s: no published checksum; recorded the download's sha256 %s in %s "
                    "(later downloads are checked against it)", entry.name, got, folder / "model.json")
    try:
        source = raw
        if entry.format == "zip":
            from waveglow.pretrained.archive import extract_model

            source = extract_model(raw, downloads, entry.member)
        _convert(entry, source, ckpt)
    except UserError:
        ckpt.unlink(missing_ok=True)
        shutil.rmtree(downloads, ignore_errors=True)  # nothing half-made stays in the cache
        raise
    record = {"name": entry.name, "url": entry.url, "format": entry.format, "size": raw.stat().st_size,
              "sha256": got, "sha256_published": entry.sha256 is not None,
              "checkpoint_sha256": sha256_file(ckpt), "registry": entry.registry}
    write_text_atomic(folder / "model.json", json.dumps(record, indent=2) + "\n")
    shutil.rmtree(downloads, ignore_errors=True)
    log.info("pretrained:%s -> %s", entry.name, ckpt)
    return ckpt


def resolve(spec: str | os.PathLike, settings: Settings) -> Path:
    """`pretrained:NAME` -> the cached checkpoint (downloaded on first use)."""
    name = str(spec)[len(PREFIX):].strip()
    if not name:
        raise UserError(f"checkpoint={spec}: expected pretrained:NAME (waveglow-pretrained list shows the names)")
    return get(find(name, load_registry(settings.registry)), settings)
