"""The machinery of typed settings: the `setting` field, validation against ranges and
choices, conversion to and from plain dicts, and "did you mean" for unknown keys.

The setting classes themselves are in `waveglow.config.groups` (config groups) and
`waveglow.config.apps` (console scripts).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from waveglow.errors import UserError

MISSING: Any = "???"  # OmegaConf's marker of a mandatory value


class ConfigError(UserError):
    """A setting with a wrong type, range or choice; the message names the key."""


def setting(default: Any = MISSING, help: str = "", *, min: float | None = None, gt: float | None = None,
            max: float | None = None, choices: tuple[Any, ...] | None = None, factory: Any = None) -> Any:
    """A dataclass field with its one-line help and its allowed values (for a list: of each item)."""
    meta = {"help": help, "min": min, "gt": gt, "max": max, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------- validation
def _describe(meta: Mapping[str, Any], kind: Any) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    noun = "an integer" if kind is int else "a number"
    if meta.get("gt") is not None and meta.get("max") is not None:
        return f"{noun} in ({meta['gt']:g}, {meta['max']:g}]"
    if meta.get("gt") is not None:
        return f"{noun} > {meta['gt']:g}"
    if meta.get("min") is not None and meta.get("max") is not None:
        return f"{noun} in [{meta['min']:g}, {meta['max']:g}]"
    if meta.get("min") is not None:
        return f"{noun} >= {meta['min']:g}"
    return f"{noun} <= {meta['max']:g}"


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_NOUNS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the base type, whether it is a list) of `X`, `X | None`, `list[X]`, `list[X] | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def field_kind(f: dataclasses.Field) -> tuple[Any, bool]:
    """(base type, is a list) of a settings field: e.g. (int, False) for `int | None`."""
    return _unwrap(f.type)


def _kind(f: dataclasses.Field) -> type | None:
    base, _ = field_kind(f)
    return base if base in (int, float, bool, str) else None


def _check_value(key: str, value: Any, meta: Mapping[str, Any], kind: Any) -> None:
    if value is None or value == MISSING:
        return
    # Settings built from plain dicts (a checkpoint's config, the Python API) are not typed by
    # OmegaConf: check the type here too. An int is a fine float; a bool is not a number.
    if kind is not None:
        ok = isinstance(value, kind) if kind is not float else isinstance(value, (int, float))
        if not ok or (kind in (int, float) and isinstance(value, bool)):
            raise ConfigError(f"{key}={value!r}: expected {_NOUNS[kind]}")
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}={value}: expected {_describe(meta, kind)}{hint}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, gt, hi = meta.get("min"), meta.get("gt"), meta.get("max")
        if (lo is not None and value < lo) or (gt is not None and value <= gt) or (hi is not None and value > hi):
            raise ConfigError(f"{key}={value}: expected {_describe(meta, kind)}")


def validate(obj: Any, prefix: str = "") -> Any:
    """Check every setting of a config object against its range/choices, then its own rules.

    Args:
        obj: an instance of one of the dataclasses above (nested ones are walked).
        prefix: the key path of `obj` in messages (`train`, `model.wn`).

    Returns:
        `obj`, for chaining.

    Raises:
        ConfigError: naming the first offending key, e.g. `train.batch_size=-4: expected an
            integer >= 1`.
    """
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, key)
            continue
        kind = _kind(f)
        if isinstance(value, list):
            for item in value:
                _check_value(key, item, f.metadata, kind)
        else:
            _check_value(key, value, f.metadata, kind)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(prefix) if prefix else check()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config object (dataclass, OmegaConf DictConfig or Mapping) as plain nested dicts."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return {k: (to_dict(v) if isinstance(v, Mapping) or dataclasses.is_dataclass(v) else
                    list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    raise TypeError(f"not a config: {type(cfg).__name__}")


def from_dict(cls: type, values: Mapping[str, Any] | None, prefix: str = "", strict: bool = True) -> Any:
    """Build config object `cls` from plain values (e.g. the config stored in a checkpoint).

    Keys missing from `values` take the class defaults, so a checkpoint written before a key
    existed still loads. With `strict`, an unknown key is a ConfigError that suggests the
    closest known one.
    """
    values = dict(values or {})
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            if strict:
                nested = [f"{n}.{key}" for n, f in names.items()
                          if (sub := dataclass_of(f)) and key in {x.name for x in dataclasses.fields(sub)}]
                raise unknown_key(f"{prefix}.{key}" if prefix else key, list(names), nested)
            continue
        f = names[key]
        sub = dataclass_of(f)
        path = f"{prefix}.{key}" if prefix else key
        kwargs[key] = from_dict(sub, value, path, strict) if sub and isinstance(value, Mapping) else value
    return cls(**kwargs)


def dataclass_of(f: dataclasses.Field) -> type | None:
    """The settings class a field holds (`DataConfig` for `data`, also when optional), or None."""
    base, is_list = field_kind(f)
    return base if not is_list and isinstance(base, type) and dataclasses.is_dataclass(base) else None


def unknown_key(key: str, known: list[str], nested: list[str] = ()) -> ConfigError:
    """`unknown setting 'model.n_flowz' (did you mean model.n_flows?)`.

    Args:
        key: the full key given.
        known: the names at its level.
        nested: deeper keys that end like it (`wn.n_layers` for `model.n_layers`), preferred.
    """
    leaf = key.rsplit(".", 1)[-1]
    parent = key[: -len(leaf)]
    close = list(nested[:1]) or difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    hint = f" (did you mean {parent}{close[0]}?)" if close else ""
    return ConfigError(f"unknown setting '{key}'{hint}")
