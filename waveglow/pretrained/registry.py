"""The registry of pretrained models: the shipped entries plus a user's own YAML.

A registry file is YAML with a `models:` list; each entry has the fields of `Entry`. The
shipped file is `waveglow/configs/pretrained/registry.yaml`; a user's file (`WAVEGLOW_REGISTRY`
or `registry=`) adds entries, and an entry of the same name replaces the shipped one.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from waveglow.errors import UserError

FORMATS = ("nvidia", "zip", "waveglow")
LAYOUTS = ("auto", "reference", "legacy")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
SHIPPED = Path(str(resources.files("waveglow") / "configs" / "pretrained" / "registry.yaml"))


@dataclass(frozen=True)
class Entry:
    """One pretrained model.

    Attributes:
        name: what `pretrained:NAME` and `waveglow-pretrained get NAME` take.
        url: http(s)://, file:// or a local path.
        format: nvidia (a torch file with an NVIDIA WaveGlow: pickled module or state_dict),
            zip (a zip archive holding one such file) or waveglow (a checkpoint of this toolkit).
        sha256: the published hex digest of the downloaded file, or None (not published: the
            first download records it).
        size: the published size in bytes, or None.
        member: the file inside a zip (None: the archive's only torch file).
        layout: the NVIDIA layout for bare state_dicts (auto | reference | legacy).
        description, model, sample_rate, training_data, source, licence: what `list` shows.
        registry: the YAML the entry came from.
    """

    name: str
    url: str
    format: str
    sha256: str | None = None
    size: int | None = None
    member: str | None = None
    layout: str = "auto"
    description: str = ""
    model: str = ""
    sample_rate: int | None = None
    training_data: str = ""
    source: str = ""
    licence: str = ""
    registry: str = ""

    @property
    def filename(self) -> str:
        """The downloaded file's name in the cache (the URL's last part, made safe)."""
        tail = self.url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]
        tail = re.sub(r"[^A-Za-z0-9_.-]", "_", tail).lstrip(".") or "download"
        if self.format == "zip" and not tail.endswith(".zip"):
            tail += ".zip"
        return tail


_FIELDS = {f.name for f in fields(Entry)} - {"registry"}


def _entry(raw: Any, where: str, path: Path) -> Entry:
    """Validate one YAML entry; errors name the file, the entry and the field."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping with name, url, format, got {type(raw).__name__}")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise UserError(f"{where}.name: expected letters, digits, '_', '-' or '.' (up to 64), got {name!r}")
    where = f"{where} ({name})"
    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise UserError(f"{where}: unknown field {unknown[0]!r}; expected {', '.join(sorted(_FIELDS))}")
    for key in ("url", "format"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise UserError(f"{where}.{key}: required (a string)")
    if raw["format"] not in FORMATS:
        raise UserError(f"{where}.format: expected one of {', '.join(FORMATS)}, got {raw['format']!r}")
    sha = raw.get("sha256")
    if sha is not None and (not isinstance(sha, str) or not _SHA256.match(sha.strip().lower())):
        raise UserError(f"{where}.sha256: expected 64 hex digits or null (not published), got {sha!r}")
    size = raw.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size <= 0):
        raise UserError(f"{where}.size: expected a positive number of bytes or null, got {size!r}")
    layout = raw.get("layout", "auto")
    if layout not in LAYOUTS:
        raise UserError(f"{where}.layout: expected one of {', '.join(LAYOUTS)}, got {layout!r}")
    member = raw.get("member")
    if member is not None and (raw["format"] != "zip" or not isinstance(member, str)):
        raise UserError(f"{where}.member: only for format: zip (the file inside the archive)")
    rate = raw.get("sample_rate")
    if rate is not None and (not isinstance(rate, int) or rate <= 0):
        raise UserError(f"{where}.sample_rate: expected a positive integer (Hz), got {rate!r}")
    text = {k: str(raw.get(k) or "") for k in ("description", "model", "training_data", "source", "licence")}
    return Entry(name=name, url=raw["url"], format=raw["format"], sha256=sha.strip().lower() if sha else None,
                 size=size, member=member, layout=layout, sample_rate=rate, registry=str(path), **text)


def read_registry(path: str | os.PathLike, setting: str = "registry") -> list[Entry]:
    """The entries of one registry YAML.

    Raises:
        UserError: a missing or unreadable file, or an entry with a bad field (named).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{setting}={path}: registry file not found (expected a YAML with a models: list)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the registry ({' '.join(str(e).split())[:200]})") from None
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list):
        raise UserError(f"{path}: expected a YAML mapping with a 'models:' list of entries")
    entries = [_entry(raw, f"{path}: models[{i}]", path) for i, raw in enumerate(models)]
    names = [e.name for e in entries]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{path}: model {twice[0]!r} is listed twice")
    return entries


def load_registry(user: str | os.PathLike | None = None) -> dict[str, Entry]:
    """Shipped entries, then the user's (same name: the user's wins), by name in listing order."""
    out = {e.name: e for e in read_registry(SHIPPED)}
    if user:
        out.update({e.name: e for e in read_registry(user)})
    return out


def find(name: str, registry: dict[str, Entry]) -> Entry:
    """The entry called `name`, or a one-line error listing the known names."""
    if name in registry:
        return registry[name]
    import difflib

    close = difflib.get_close_matches(name, list(registry), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise UserError(f"pretrained:{name}: no such model{hint}; known: {', '.join(registry)} "
                    "(waveglow-pretrained list; add your own with WAVEGLOW_REGISTRY=<yaml>)")
