"""What every console script shares: config location, one-line user errors, logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

# The YAML configs ship inside the package.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

log = logging.getLogger("waveglow")


def setup_logging(level: int = logging.INFO) -> None:
    """Plain console logging: `message` lines on stderr, no Hydra decorations."""
    root = logging.getLogger("waveglow")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def fail(message: str, code: int = 2) -> None:
    """Print a one-line error and exit."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def hydra_app(config_name: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Turn `fn(cfg)` into a console-script `main()` backed by `configs/<config_name>.yaml`.

    A `UserError` (bad path, bad file, bad value) becomes `error: ...` on one line and exit
    status 2; Ctrl-C exits 130. Other exceptions are bugs and keep their traceback.
    """

    def decorate(fn: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        if not CONFIG_DIR.is_dir():  # pragma: no cover - only on a broken install
            raise RuntimeError(f"config directory not found: {CONFIG_DIR} (install with `make install`)")

        @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
        def _main(cfg: DictConfig) -> Any:
            setup_logging()
            try:
                return fn(cfg)
            except UserError as e:
                fail(str(e))
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                sys.exit(130)

        _main.__doc__ = fn.__doc__
        return _main

    return decorate


def number(cfg: DictConfig, key: str, kind: type = float, *, minimum: float | None = None,
           default: Any = None) -> Any:
    """Read setting `key` as an int or float, or raise a UserError that names it.

    Hydra passes `sigma=abc` through as a string; checking every number before any slow work
    turns that into `error: sigma='abc': expected a number` instead of a traceback.
    """
    value = OmegaConf.select(cfg, key, default=default)
    try:
        if isinstance(value, bool) or value is None:
            raise ValueError
        out = kind(value)
        if kind is int and float(value) != out:
            raise ValueError
    except (TypeError, ValueError):
        expected = "an integer" if kind is int else "a number"
        raise UserError(f"{key}={value!r}: expected {expected}") from None
    if minimum is not None and out < minimum:
        raise UserError(f"{key}={value!r}: expected a value >= {minimum}")
    return out


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain dicts/lists (what checkpoints store)."""
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_resolved_config(cfg: DictConfig | dict, directory: str | os.PathLike,
                         name: str = "config.yaml") -> Path:
    """Write the resolved config as `directory/name` (default `config.yaml`), atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    conf = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    text = OmegaConf.to_yaml(conf, resolve=True)
    return write_text_atomic(directory / name, text)
