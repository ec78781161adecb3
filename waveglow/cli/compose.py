"""Composing a script's typed config: Hydra's compose API, then the typed, checked objects.

`compose(config_name, overrides)` reads `key=value` settings, composes them with the YAML configs
shipped in `waveglow/configs/` (plus the user's `--config-dir`), checks every key against the
schema first (so a typo is one line naming the key and the nearest names, not Hydra's error),
and returns the validated dataclasses of `waveglow.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from waveglow import config as C
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

# The YAML configs ship inside the package, so a wheel or `pip install .` finds them too.
CONFIG_DIR = Path(str(resources.files("waveglow") / "configs"))


def _schema_field(cls: type, path: Sequence[str]) -> tuple[bool, list[str]]:
    """Whether `path` names a setting of schema `cls`; else the known names at the failing level."""
    current: Any = cls
    for i, part in enumerate(path):
        if current is Any or current is None:
            return True, []
        names = {f.name: f for f in dataclasses.fields(current)}
        if part not in names:
            return False, list(names)
        f = names[part]
        sub = C.dataclass_of(f)
        if i < len(path) - 1 and sub is None:
            return C.field_kind(f)[0] in (Any, dict), []
        current = sub
    return True, []


def group_names(group: str, config_dirs: Sequence[Path]) -> list[str]:
    names = set()
    for root in (*config_dirs, CONFIG_DIR):
        names.update(p.stem for p in (Path(root) / group).glob("*.yaml"))
    return sorted(names)


def _quoted(key: str, value: str) -> str:
    """`key=value` with the value as one quoted string (Hydra's grammar, escapes included)."""
    return f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


hydra_quoted = _quoted


def check_overrides(config_name: str, overrides: Sequence[str], config_dirs: Sequence[Path], *,
                    sweeps: bool = False) -> list[str]:
    """Refuse unknown keys and unknown group choices by name, before Hydra sees them.

    Hydra's own messages for these advise `+key=value`, which would run with the typo ignored.
    A text setting (a path, typically) whose value Hydra's grammar cannot take as it is (spaces,
    commas, parentheses, '=') is passed on quoted, so `input=my file (1).wav` just works.

    Args:
        sweeps: a sweep (`-m`): a comma, `range()`, `choice()`, `interval()` sweep a value as in
            Hydra (quote a value that holds a comma); else a comma in a text value is part of it.

    Returns:
        The settings to hand to Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    schema = C.APPS[config_name]
    parser = OverridesParser.create()
    out = []
    for text in overrides:
        key_text, _, raw = text.partition("=")
        try:
            parsed = parser.parse_override(text)
            if parsed.is_sweep_override() and not sweeps:
                if not _is_text(schema, key_text):
                    raise UserError(f"{text}: expected one value; a comma makes a sweep, which runs "
                                    "with -m (quote a value that holds a comma)")
                raise HydraException("a comma in a text value")
        except HydraException as e:
            if not _is_text(schema, key_text):
                first = str(e).strip().splitlines()[0] if str(e).strip() else "syntax error"
                raise UserError(f"cannot read the setting {text!r} ({first}); quote values that hold "
                                "spaces, commas, parentheses, '=' or glob brackets: key='a value' "
                                "(see the README, 'Paths and quoting')") from None
            text = _quoted(key_text, raw)
            parsed = parser.parse_override(text)
        out.append(text)
        key = parsed.key_or_group
        if key.startswith(("hydra.", "hydra/")) or key == "hydra":
            continue
        if parsed.package:
            raise UserError(f"{text}: packages (@) are not supported in settings")
        path = key.split(".")
        if len(path) == 1 and key in C.GROUPS and dataclasses.is_dataclass(_field_type(schema, key)):
            choices = group_names(key, config_dirs)
            values = list(parsed.sweep_string_iterator()) if parsed.is_discrete_sweep() else [parsed.value()]
            for value in values:
                if not isinstance(value, str) or value in choices:
                    continue
                close = difflib.get_close_matches(value, choices, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise UserError(f"{key}={value}: no such {key} config (available: {', '.join(choices)}"
                                f"{hint}); add your own with --config-dir DIR holding {key}/{value}.yaml")
            continue
        ok, known = _schema_field(schema, path)
        if not ok:
            raise C.unknown_key(key, known)
    return out


def _is_text(cls: type, key: str) -> bool:
    """Whether `key` is a text setting of schema `cls` (str or Any: paths, names)."""
    current: Any = cls
    for part in key.lstrip("+~").split("."):
        if current is None or not dataclasses.is_dataclass(current):
            return False
        f = {x.name: x for x in dataclasses.fields(current)}.get(part)
        if f is None:
            return False
        current = C.dataclass_of(f) or f
    return isinstance(current, dataclasses.Field) and C.field_kind(current)[0] in (str, Any)


def _field_type(cls: type, name: str) -> Any:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return C.dataclass_of(f)
    return None


_KIND = {"Float": "a number", "Integer": "an integer", "Boolean": "true or false", "String": "a string"}


def composition_error(e: BaseException) -> UserError:
    """A Hydra/OmegaConf composition failure as one line naming the key."""
    cause: BaseException | None = e
    while cause is not None and not hasattr(cause, "full_key"):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        key = getattr(cause, "full_key", "") or ""
        msg = str(getattr(cause, "msg", cause)).strip().splitlines()[0]
        m = re.match(r"Value '(.*?)'(?: of type '\w+')? could not be converted to (\w+)", msg)
        if m:
            return C.ConfigError(f"{key}={m.group(1)}: expected {_KIND.get(m.group(2), m.group(2).lower())}")
        m = re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", msg)
        if m:
            return C.ConfigError(f"{key}={m.group(1)}: expected one of {m.group(2)}")
        if "Missing mandatory value" in msg:
            return C.ConfigError(f"{key}=... is required")
        return C.ConfigError(f"{key}: {msg}" if key else msg)
    text = str(e).strip().splitlines()
    return UserError(text[0] if text else type(e).__name__)


def _missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    out = []
    for key in cfg:
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            out.append(path)
        else:
            value = cfg._get_node(key)
            if isinstance(value, DictConfig):
                out += _missing_keys(value, path + ".")
    return out


def compose(config_name: str, overrides: Sequence[str] = (), config_dirs: Sequence[str | os.PathLike] = (),
            usage: str = "") -> Any:
    """The typed, validated config of a console script.

    Args:
        config_name: `waveglow_<script>` (a YAML under waveglow/configs/ with a schema in
            `waveglow.config.APPS`).
        overrides: `key=value` settings as given on the command line.
        config_dirs: the user's extra config folders (searched after the package's).
        usage: the script's usage line, quoted in "is required" errors.

    Returns:
        An instance of the script's schema (e.g. `waveglow.config.TrainApp`).

    Raises:
        UserError: a syntax error, an unknown key or group choice, a wrong type, a value out of
            range, or a required key left unset; the message names the key.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    dirs = resolve_config_dirs(config_dirs)
    overrides = check_overrides(config_name, overrides, dirs)
    register_schemas()
    args = [a for a in overrides if not a.startswith("hydra.searchpath=")] + searchpath_override(overrides, dirs)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config_name):
            cfg = hydra_compose(config_name, overrides=args)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise composition_error(e) from None
    finally:
        GlobalHydra.instance().clear()
    return typed_config(config_name, cfg, usage)


def resolve_config_dirs(dirs: Sequence[str | os.PathLike]) -> list[Path]:
    """The user's `--config-dir` folders, resolved; a missing one is a UserError."""
    out = [Path(d).expanduser().resolve() for d in dirs]
    for d in out:
        if not d.is_dir():
            raise UserError(f"--config-dir {d}: no such folder")
    return out


def searchpath_override(overrides: Sequence[str], dirs: Sequence[Path]) -> list[str]:
    """The `hydra.searchpath=[...]` setting that adds the user's config folders (none without).

    As Hydra's own --config-dir: the user's folders are searched after the shipped configs, so
    they add configs (model=mine) but cannot silently change what a shipped name means. A
    `hydra.searchpath=` the user gave is kept, first.
    """
    from omegaconf import OmegaConf

    given = [a for a in overrides if a.startswith("hydra.searchpath=")]
    if not dirs:
        return given[:1]
    paths = [f"file://{p}" for p in dirs]
    if given:
        paths = [*OmegaConf.create({"x": given[0].split("=", 1)[1]}).x, *paths]
    return ["hydra.searchpath=[" + ",".join(f"'{p}'" for p in paths) + "]"]


_registered = False


def register_schemas() -> None:
    """The schemas in Hydra's ConfigStore, once per process (`waveglow.config.register_schemas`),
    and the launcher plugins' settings as `schema/hydra_launcher_<name>`.

    The shipped `hydra/launcher/<name>.yaml` extend the plugin's settings of the same name. Hydra
    would also match a YAML against a ConfigStore entry of the same group and name (its
    deprecated automatic schema matching, with a warning), so each such plugin entry is moved
    under `schema/`, where the shipped YAML's defaults list takes it from. Plugins that are not
    installed are skipped (`hydra/launcher=<name>` then says which extra installs them).
    """
    global _registered
    if _registered:
        return
    from hydra.core.config_store import ConfigStore
    from hydra.core.plugins import Plugins

    C.register_schemas()
    Plugins.instance()  # discovers the installed plugins, which put their settings in the ConfigStore
    cs = ConfigStore.instance()
    launchers = cs.repo.get("hydra", {}).get("launcher", {})
    for name in ("joblib", "submitit_local", "submitit_slurm"):
        entry = launchers.pop(f"{name}.yaml", None)
        if entry is not None:
            cs.store(group="schema", name=f"hydra_launcher_{name}", node=entry.node, provider=entry.provider)
    _registered = True


def typed_config(config_name: str, cfg: Any, usage: str = "") -> Any:
    """A composed config (OmegaConf, without its `hydra` node) as the script's typed, validated
    settings: the one conversion of single runs and sweep jobs alike.

    Raises:
        UserError: a required key left unset, a wrong type, a value out of range.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    missing = _missing_keys(cfg)
    if missing:
        need = " ".join(f"{k}=..." for k in missing)
        raise C.ConfigError(f"{need} {'is' if len(missing) == 1 else 'are'} required"
                            + (f": {usage}" if usage else ""))
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise composition_error(e) from None
    if not isinstance(typed, C.APPS[config_name]):
        raise UserError(f"{config_name}.yaml: its defaults list must start with schema/{config_name}@_here_")
    return C.validate(typed)


def resolved_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what runs and outputs record)."""
    import yaml

    return yaml.safe_dump(C.to_dict(cfg), sort_keys=False, allow_unicode=True)


def save_config_beside(cfg: Any, output: str | os.PathLike, script: str, *, is_dir: bool) -> Path:
    """Record the resolved config next to an output, under a name no other command writes.

    `<output_dir>/<script>.config.yaml` for an output folder (e.g. `synthesize.config.yaml`),
    `<output stem>.config.yaml` for an output file. Never `config.yaml`: that name belongs to a
    training run directory, which a synthesis or scoring output may share.

    Args:
        cfg: the typed config.
        output: the output folder or file.
        script: the script's short name (`synthesize`).
        is_dir: whether `output` is a folder.
    """
    path = Path(output)
    target = path / f"{script}.config.yaml" if is_dir else path.with_name(f"{path.stem}.config.yaml")
    try:
        return write_text_atomic(target, resolved_yaml(cfg))
    except OSError as e:
        raise UserError(f"{target}: cannot write the resolved config ({e.strerror or e})") from None
