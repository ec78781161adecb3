"""What every console script shares: composing its typed config, one-line errors, `--help`.

A script is `fn(cfg)` wrapped by `app(config_name, ...)`. The wrapper reads `key=value`
settings from the command line, composes them with the YAML configs shipped in
`waveglow/configs/` (plus the user's `--config-dir`) through Hydra's compose API
(`waveglow.cli.compose`), turns the result into the typed objects of `waveglow.config`, checks
every range and choice, and only then calls `fn`. Any mistake in a setting, and any `UserError` raised later, is one
`error: ...` line and exit status 2; Ctrl-C is exit 130. Other exceptions are bugs and keep
their traceback.

`-m` / `--multirun` runs a sweep (one job per combination of the swept values, through Hydra's
sweepers and launchers; see `waveglow.cli.sweep`) for the scripts that declare a `Sweep`;
`--cfg job` prints the resolved, validated config and runs nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from waveglow import __version__
from waveglow import config as C
from waveglow.cli.compose import (  # the scripts import these from here too
    CONFIG_DIR,
    check_overrides,  # noqa: F401 (re-exported)
    compose,
    composition_error,  # noqa: F401 (re-exported)
    register_schemas,
    resolve_config_dirs,  # noqa: F401 (re-exported)
    resolved_yaml,
    save_config_beside,  # noqa: F401 (re-exported)
    searchpath_override,  # noqa: F401 (re-exported)
)
from waveglow.cli.compose import group_names as _group_names
from waveglow.errors import UserError

log = logging.getLogger("waveglow")

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
