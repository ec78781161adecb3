"""A mix of corpora (`data=mix`, `data.corpora`): the union of its corpora's clips.

Ids are prefixed by the corpus name (`vctk/p225/p225_001`), speakers `vctk:p225`, so they are
unique across the corpora; the mix's splits and cache live under its own `data.root`.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from waveglow.config import DataConfig, SplitsConfig
from waveglow.data.corpus import (
    HINTS,
    MIX_HINT,
    BadFile,
    Clip,
    Corpus,
    corpus_root,
    discover_corpus,
)
from waveglow.errors import UserError

log = logging.getLogger("waveglow.data")

@dataclass(frozen=True)
class MixPart:
    """One corpus of a mix: its name (the id prefix), weight, and its settings as a data config."""

    name: str
    weight: float
    cfg: DataConfig


def shipped_data_configs() -> dict[str, Path]:
    folder = Path(str(resources.files("waveglow") / "configs" / "data"))
    return {p.stem: p for p in sorted(folder.glob("*.yaml")) if p.stem != "mix"}


@functools.cache
def shipped_layout(name: str) -> dict:
    """The layout settings (layout, mic, subsets) of the shipped data config `name`."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(shipped_data_configs()[name]))
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
    known = shipped_data_configs()
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
        shipped = shipped_layout(name)
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


def mix_root(data_cfg: DataConfig) -> Path:
    """The mix's own folder (splits, cache), created on first use."""
    root = corpus_root(data_cfg)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"data.root={data_cfg.root}: cannot create the mix's folder ({e.strerror}); "
                        "it holds the mix's splits and cache") from None
    return root


def discover_mix(data_cfg: DataConfig) -> Corpus:
    """The union of the corpora's clips, ids prefixed `<name>/`, speakers `<name>:<speaker>`."""
    parts = mix_parts(data_cfg)
    root = mix_root(data_cfg)
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
