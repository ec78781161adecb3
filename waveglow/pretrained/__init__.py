"""Pretrained models by name: a registry (shipped + your own YAML), a download cache and
`pretrained:NAME` wherever a checkpoint is taken.

    waveglow-pretrained list | get NAME
    waveglow-synthesize checkpoint=pretrained:nvidia_256 ...
    waveglow.load_model("pretrained:nvidia_256")

Environment (read by `from_environment`, which the entry points call):
    WAVEGLOW_HOME      cache folder (default ~/.cache/waveglow)
    WAVEGLOW_REGISTRY  a registry YAML adding entries to the shipped ones
    WAVEGLOW_OFFLINE   1: never download; a model not in the cache is a one-line error
"""

from __future__ import annotations

import os
from pathlib import Path

from waveglow.pretrained.cache import (
    PREFIX,
    Settings,
    cached,
    get,
    is_cached,
    is_pretrained,
    resolve,
    settings_from_env,
)
from waveglow.pretrained.registry import Entry, find, load_registry, read_registry


def from_environment(**overrides: object) -> Settings:
    """The settings of this process: WAVEGLOW_* variables, then non-None `overrides`."""
    return settings_from_env(os.environ, **overrides)


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A checkpoint setting as a file: `pretrained:NAME` -> its cached checkpoint (downloaded
    on first use, settings from the environment); anything else unchanged."""
    if is_pretrained(spec):
        return resolve(str(spec), from_environment())
    return Path(spec)


__all__ = ["Entry", "PREFIX", "Settings", "cached", "find", "from_environment", "get", "is_cached", "is_pretrained",
           "load_registry", "read_registry", "resolve", "resolve_checkpoint", "settings_from_env"]
