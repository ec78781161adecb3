"""What every console script shares: composing its typed config, one-line errors, `--help`.

A script is `fn(cfg)` wrapped by `app(config_name, ...)`. The wrapper reads `key=value`
settings from the command line, composes them with the YAML configs shipped in
`waveglow/configs/` (plus the user's `--config-dir`) through Hydra's compose API, turns the
result into the typed objects of `waveglow.config`, checks every range and choice, and only
then calls `fn`. Any mistake in a setting, and any `UserError` raised later, is one
`error: ...` line and exit status 2; Ctrl-C is exit 130. Other exceptions are bugs and keep
their traceback.

`-m` / `--multirun` runs a sweep (one job per combination of the swept values, through Hydra's
sweepers and launchers; see `waveglow.cli.sweep`) for the scripts that declare a `Sweep`;
`--cfg job` prints the resolved, validated config and runs nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from waveglow import __version__
from waveglow import config as C
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

log = logging.getLogger("waveglow")

# The YAML configs ship inside the package, so a wheel or `pip install .` finds them too.
CONFIG_DIR = Path(str(resources.files("waveglow") / "configs"))


@dataclass(frozen=True)
class Sweep:
    """How a script runs as a sweep job (`-m`).

    Attributes:
        dir_key: the setting that gets each job's own folder (`run_dir`, `output_dir`) unless the
            job sets it.
        default_dir: the sweep folder when `hydra.sweep.dir` is not given, from the first job's
            typed config and a `YYYYmmdd-HHMMSS` stamp.
        objective: the job's return value for optimizing sweepers, from what the script's
            function returned (training: the best validation log-likelihood); None: no objective.
        nested: `dir_key` given once names the sweep folder, and each job writes in a folder
            inside it (synthesis: `output_dir`); else a `dir_key` given once is refused for
            several jobs (training: two runs cannot share a run directory).
    """

    dir_key: str
    default_dir: Callable[[Any, str], str]
    objective: Callable[[Any], float | None] | None = None
    nested: bool = False


@dataclass(frozen=True)
class Script:
    """What `--help` says about a console script."""

    name: str            # waveglow-synthesize
    config: str          # waveglow_synthesize (waveglow/configs/<config>.yaml)
    summary: str         # one paragraph
    usage: str           # the required keys, e.g. "checkpoint=<ckpt> input=<mels> output_dir=<dir>"
    examples: tuple[str, ...] = ()
    sweep: Sweep | None = None  # runs sweeps (-m) when set


class Failed(Exception):
    """A run that could not go on, though the settings were fine (e.g. training diverged
    beyond its guards): one `error:` line and exit status `code` (1)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Stopped(BaseException):
    """A run stopped by a signal after saving its state (re-running resumes): exit status
    `code` (130 SIGINT, 143 SIGTERM). A BaseException, like KeyboardInterrupt, so that it ends a
    sweep instead of counting as one failed job."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever `sys.stderr` is at the time of each record, not the
    stream it was created with: a script called in-process (the Python API, a test capturing
    stderr) may have replaced and closed the one there was at setup."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(level: int = logging.INFO) -> None:
    """Plain console logging: `message` lines on stderr, no Hydra decorations."""
    root = logging.getLogger("waveglow")
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr, flush=True)
    sys.exit(code)


# ------------------------------------------------------------------------------------ compose
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


def _group_names(group: str, config_dirs: Sequence[Path]) -> list[str]:
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
            choices = _group_names(key, config_dirs)
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


# --------------------------------------------------------------------------------------- help
def _help_lines(cls: type, values: Any, prefix: str = "") -> list[str]:
    lines = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(values, f.name, None) if values is not None else None
        sub = C.dataclass_of(f)
        if sub is not None and not prefix and f.name in C.GROUPS:
            continue  # groups are listed after the script's own keys
        if sub is not None:
            lines += _help_lines(sub, value, key + ".")
            continue
        if value == C.MISSING:
            shown = "(required)"
        elif isinstance(value, bool) or value is None:
            shown = {True: "true", False: "false", None: "null"}[value]
        else:
            shown = str(value)
        lines.append(f"  {key}={shown}".ljust(36) + f"  {f.metadata.get('help', '')}")
    return lines


def help_text(script: Script, config_dirs: Sequence[str | os.PathLike] = ()) -> str:
    """The `--help` page: name, summary, usage, required keys, every key with default and help."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=script.config):
        raw = hydra_compose(script.config)
    GlobalHydra.instance().clear()
    cls = C.APPS[script.config]
    # Defaults as composed (the YAML's values), without resolving `${...}` or requiring `???`.
    values = _Defaults(OmegaConf.to_container(raw, resolve=False))
    out = [f"{script.name} (waveglow {__version__})", "", script.summary, "",
           f"usage: {script.name} {script.usage} [key=value ...]", ""]
    required = [f.name for f in dataclasses.fields(cls) if getattr(values, f.name, None) == C.MISSING]
    if required:
        out += ["required: " + ", ".join(required), ""]
    out += ["settings (key=default  meaning):", *_help_lines(cls, values)]
    group_fields = [f.name for f in dataclasses.fields(cls) if f.name in C.GROUPS]
    for group in group_fields:
        choices = _group_names(group, [Path(d) for d in config_dirs])
        sub = getattr(values, group)
        chosen = f" (choices: {', '.join(choices)})" if choices and group != "audio" else ""
        out += ["", f"{group} settings{chosen}:", *_help_lines(C.GROUPS[group], sub, f"{group}.")]
    if script.examples:
        out += ["", "examples:", *[f"  {e}" for e in script.examples]]
    out += ["", "Values with spaces, commas, parentheses or '=' are quoted: key='my file (1).wav'.",
            "--config-dir DIR adds a folder of your own YAML configs (e.g. DIR/model/mine.yaml -> model=mine).",
            "--cfg job prints the resolved, validated config and runs nothing."]
    if script.sweep is not None:
        out += [f"-m / --multirun runs a sweep: one job per combination of the swept values (key=a,b,c; "
                f"range(); glob()), every job validated before any runs; each job's {script.sweep.dir_key} is "
                f"<sweep dir>/<job number>-<overrides>; sweep_summary.csv/.json in the sweep dir.",
                "  hydra.sweep.dir=DIR sets the sweep dir; hydra/launcher=basic (one after another) | joblib "
                "(parallel local processes) | submitit_local | submitit_slurm (cluster.* settings); "
                "hydra/sweeper=optuna searches (key=interval(a,b), key=choice(a,b)) for the best objective."]
    out += ["--version prints the toolkit's version."]
    return "\n".join(out) + "\n"


class _Defaults:
    """Attribute access over the composed (unresolved) defaults, for the help page."""

    def __init__(self, data: Any) -> None:
        self._data = data if isinstance(data, dict) else {}

    def __getattr__(self, name: str) -> Any:
        value = self._data.get(name)
        return _Defaults(value) if isinstance(value, dict) else value


# ---------------------------------------------------------------------------------- entry point
class Argv(NamedTuple):
    """A console script's command line, split."""

    settings: list[str]        # key=value
    dirs: list[str]            # --config-dir folders
    action: str | None         # help | version | None (run)
    multirun: bool = False     # -m / --multirun: a sweep
    show_config: bool = False  # --cfg job: print the resolved config, run nothing


def parse_argv(argv: Sequence[str], name: str) -> Argv:
    """Split the command line into settings, `--config-dir` folders, an action (help/version)
    and the flags `-m`/`--multirun` and `--cfg job`."""
    settings: list[str] = []
    dirs: list[str] = []
    action = None
    multirun = show_config = False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            action = "help"
        elif arg == "--version":
            action = "version"
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("--cfg", "-c") or arg.startswith("--cfg="):
            what = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else "")
            if what != "job":
                raise UserError(f"--cfg {what}: expected --cfg job (prints the resolved, validated config)")
            show_config = True
        elif arg in ("--config-dir", "-cd"):
            if not args:
                raise UserError("--config-dir needs a folder: --config-dir DIR")
            dirs.append(args.pop(0))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        elif arg.startswith("-"):
            key = arg.lstrip("-").split("=", 1)[0]
            hint = f" (did you mean {key}=...?)" if key else ""
            raise UserError(f"unknown option {arg!r}: settings are given as key=value{hint}; "
                            f"see {name} --help")
        else:
            if "=" not in arg:
                raise UserError(f"{arg!r}: expected a key=value setting; see {name} --help")
            settings.append(arg)
    return Argv(settings, dirs, action, multirun, show_config)


def app(script: Script) -> Callable[[Callable[[Any], Any]], Callable[[list[str] | None], Any]]:
    """Turn `fn(cfg)` into the console script's `main(argv=None)`.

    `fn` may raise `UserError` (exit 2), `Failed` (its code, 1) or `Stopped` (its code, after a
    signal). The returned `main` carries `script` and `run` (`fn` with the process setup a
    run needs), which each sweep job calls with its typed config.
    """

    def decorate(fn: Callable[[Any], Any]) -> Callable[[list[str] | None], Any]:
        def run(cfg: Any) -> Any:
            if hasattr(cfg, "threads"):  # the scripts that compute (training: train.threads, in the trainer)
                from waveglow.runtime import configure_threads

                log.info(f"{script.name}: {configure_threads(cfg.threads).describe()}")
            return fn(cfg)

        def main(argv: list[str] | None = None) -> Any:
            setup_logging()
            try:
                args = parse_argv(sys.argv[1:] if argv is None else argv, script.name)
                if args.action == "version":
                    print(f"waveglow {__version__}")
                    return None
                if args.action == "help":
                    sys.stdout.write(help_text(script, args.dirs))
                    return None
                if args.multirun:
                    from waveglow.cli.sweep import run_sweep

                    code = run_sweep(script, main, args.settings, args.dirs, show_config=args.show_config)
                    if code:
                        sys.exit(code)
                    return None
                cfg = compose(script.config, args.settings, args.dirs, usage=f"{script.name} {script.usage}")
                if args.show_config:
                    sys.stdout.write(resolved_yaml(cfg))
                    return None
                run(cfg)  # its result is for sweep jobs; a console script exits 0
                return None
            except UserError as e:
                fail(str(e))
            except Failed as e:
                fail(str(e), e.code)
            except Stopped as e:
                sys.exit(e.code)
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)

        main.__doc__ = fn.__doc__
        # Where sweep jobs find it again (they import it by name in their own processes).
        main.__module__, main.__name__, main.__qualname__ = fn.__module__, fn.__name__, fn.__qualname__
        main.script = script  # type: ignore[attr-defined]
        main.run = run  # type: ignore[attr-defined]
        return main

    return decorate
