"""Checkpoints: atomic writes, safe loads, and turning a checkpoint back into a model.

A checkpoint is a plain dict saved with `torch.save` and loadable with
`torch.load(path, weights_only=True)` — tensors, numbers, strings, lists and dicts only, so
loading one never executes code:

    format_version  int, FORMAT_VERSION
    model           state_dict of WaveGlow (includes the mel_mean / mel_std buffers)
    config          the resolved run config as plain containers (audio, data, model, train, ...)
    step, epoch     ints
    optimizer, scheduler, scaler   state_dicts (or None)
    rng             {"torch": ByteTensor, "cuda": [ByteTensor], "numpy": ..., "python": ...}
    sampler         data sampler position
    metrics         {"val_log_likelihood": float, "best_val_log_likelihood": float, ...}

Inference reads the model's settings from `config`, never from the user.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import tempfile
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from waveglow.errors import UserError

FORMAT_VERSION = 1


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Write `state` to `path` atomically: temp file in the same directory, fsync, rename.

    A crash (or a full disk) at any point leaves either the old file or the new one, never a
    truncated file. The temp file is removed if the write fails.

    Args:
        path: destination, e.g. `run/checkpoints/last.pt`.
        state: the checkpoint dict (see module docstring).

    Returns:
        The destination path.

    Raises:
        OSError: the write failed (disk full, read-only directory); `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make checkpoints private
        with os.fdopen(fd, "wb") as f:
            _write(f, dict(state))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        tmp.unlink(missing_ok=True)
        # torch.save reports a failed write (disk full) as a RuntimeError around the OSError.
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write(f: Any, state: dict) -> None:
    """torch.save into `f`, with a test hook for fault injection.

    `WAVEGLOW_TEST_SLOW_SAVE=<seconds>` writes half the bytes, prints `checkpoint write in
    progress` on stderr and sleeps, so a crash-safety test can SIGKILL the process while a temp
    file holds half a checkpoint. Unset (always, outside the tests), this is plain torch.save.
    """
    delay = float(os.environ.get("WAVEGLOW_TEST_SLOW_SAVE") or 0)
    if delay <= 0:
        torch.save(state, f)
        return
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    print("checkpoint write in progress", file=sys.stderr, flush=True)
    time.sleep(delay)
    f.write(data[len(data) // 2:])


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint of this project safely (`weights_only=True`) and check its format.

    Raises:
        UserError: missing file, not a torch file, a pickle that asks for anything beyond
            tensors and plain containers, or a dict that is not a checkpoint of this format.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the global {found.group(1)!r}" if found else "an object outside the allowlist"
        raise UserError(
            f"{path}: refused to load: the pickle asks for {what}, which a checkpoint of this "
            "project never contains (NVIDIA/waveglow files are converted with waveglow-import-nvidia)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{path}: not a readable checkpoint (truncated or not a torch file: {e})") from None
    if not isinstance(state, dict) or "format_version" not in state or "model" not in state:
        raise UserError(
            f"{path}: not a checkpoint of this project (expected a dict with format_version, "
            "model and config; NVIDIA/waveglow files are converted with waveglow-import-nvidia)"
        )
    version = state["format_version"]
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: checkpoint format version {version!r}, this version of the toolkit reads "
            f"version {FORMAT_VERSION}"
        )
    if not isinstance(state.get("config"), dict) or "model" not in state["config"]:
        raise UserError(f"{path}: checkpoint has no model config")
    return state


def build_model(config: Mapping[str, Any]):
    """Instantiate an (untrained) WaveGlow from a resolved config with `model` and `audio`."""
    from waveglow.model import WaveGlow

    return WaveGlow.from_config(config)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a checkpoint into an eval-mode WaveGlow (with its mel statistics) on `device`.

    Raises:
        UserError: the file is not a loadable checkpoint, or its weights do not fit the model
            its config describes.
    """
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(state["config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise UserError(f"{path}: weights do not match the model config stored in it ({msg[:300]})") from None
    model.config = state["config"]
    return model.to(device).eval()
