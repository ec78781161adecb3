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

import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from waveglow.errors import UserError
from waveglow.fileio import atomic_write
from waveglow.model import WaveGlow

FORMAT_VERSION = 1


def build_checkpoint(model: Mapping[str, torch.Tensor] | torch.nn.Module, config: Mapping[str, Any], *,
                     step: int = 0, epoch: int = 0, optimizer: Mapping[str, Any] | None = None,
                     scheduler: Mapping[str, Any] | None = None, scaler: Mapping[str, Any] | None = None,
                     rng: Mapping[str, Any] | None = None, sampler: Mapping[str, Any] | None = None,
                     metrics: Mapping[str, Any] | None = None, source: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """The one place a checkpoint dict is put together (trainer and NVIDIA importer alike).

    Args:
        model: a WaveGlow or its state_dict; tensors are detached and copied to the CPU.
        config: the resolved config as plain dicts (needs `model` and `audio`).
        step, epoch: training progress.
        optimizer, scheduler, scaler, rng, sampler, metrics: resume state (None when absent).
        source: where the weights came from (imports), stored as is.

    Returns:
        A dict that `save_checkpoint` writes and `load_checkpoint` accepts.
    """
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    out: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().cpu().clone() for k, v in state.items()},
        "config": dict(config),
        "step": int(step),
        "epoch": int(epoch),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "scaler": scaler,
        "rng": rng,
        "sampler": sampler,
        "metrics": dict(metrics or {}),
    }
    if source is not None:
        out["source"] = dict(source)
    return out


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any],
                    write: Callable[[IO[bytes], dict], None] | None = None) -> Path:
    """Write `state` to `path` atomically and durably (temp file, fsync, rename).

    A crash (or a full disk) at any point leaves either the old file or the new one, never a
    truncated file.

    Args:
        path: destination, e.g. `run/checkpoints/last.pt`.
        state: the checkpoint dict (`build_checkpoint`).
        write: how the bytes are written (default `torch.save(state, f)`); tests inject a slow
            writer to kill the process in the middle of a write.

    Returns:
        The destination path.

    Raises:
        OSError: the write failed (disk full, read-only directory); `path` is untouched.
    """
    writer = write or _torch_save
    return atomic_write(path, lambda f: writer(f, dict(state)), durable=True)


def _torch_save(f: IO[bytes], state: dict) -> None:
    torch.save(state, f)


def _pretrained_hook(path: str | os.PathLike) -> Path:
    """`pretrained:NAME` -> the cached, downloaded-on-first-use checkpoint (waveglow.pretrained);
    any other path as it is. Every checkpoint setting goes through here."""
    if str(path).startswith("pretrained:"):
        from waveglow.pretrained import resolve_checkpoint  # network code only when asked for

        return resolve_checkpoint(str(path))
    return Path(path)


# What a file that is not a checkpoint starts with (first bytes -> what it is), for messages.
_MAGIC = ((b"fLaC", "a FLAC file"), (b"OggS", "an Ogg audio file"), (b"ID3", "an MP3 file"),
          (b"\xff\xfb", "an MP3 file"), (b"\xff\xf3", "an MP3 file"), (b"\x93NUMPY", "a NumPy .npy array"),
          (b"\x1f\x8b", "a gzip-compressed file"), (b"\x89PNG", "a PNG image"), (b"%PDF", "a PDF document"))
_TEXT_BYTES = bytes(range(32, 127)) + b"\t\n\r\f"


def file_kind(path: str | os.PathLike) -> str | None:
    """What a file holds when its first bytes show it is no torch file ("a WAV file", "an empty
    file", "a text file", "a zip archive without a torch checkpoint in it", ...), else None (a
    torch zip archive or a pickle: only loading can tell more). Reads at most 4 KiB (and a zip's
    directory).
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head:
        return "an empty file"
    if head[:4] == b"RIFF":
        return "a WAV file" if head[8:12] == b"WAVE" else "a RIFF file (not a checkpoint)"
    if head[:4] == b"RF64" or head[:4] == b"FORM":
        return "an audio file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return "a truncated or damaged zip archive"
        if any(n.endswith("data.pkl") for n in names):
            return None  # torch's own zip format: let the loader judge it
        return "a zip archive without a torch checkpoint in it"
    if head[:1] == b"\x80":
        return None  # a pickle (torch's legacy format starts with one)
    try:
        head.decode("utf-8")
        text = True
    except UnicodeDecodeError as e:
        text = e.start >= len(head) - 3  # cut inside a multi-byte character at the end
    if text and sum(b in _TEXT_BYTES or b >= 0x80 for b in head) >= 0.95 * len(head):
        return "a text file"
    return None


def not_a_checkpoint(path: str | os.PathLike, kind: str | None) -> UserError:
    """The one-line error for a `checkpoint=` file that cannot be a checkpoint (no internals)."""
    what = kind or "truncated or not a torch file"
    return UserError(f"not a checkpoint: {path} is {what}; expected a .pt checkpoint written by waveglow-train "
                     "(NVIDIA/waveglow files: convert them with waveglow-import-nvidia)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint of this project safely (`weights_only=True`) and check its format.

    Raises:
        UserError: missing file, not a torch file, a pickle that asks for anything beyond
            tensors and plain containers, or a dict that is not a checkpoint of this format.
    """
    path = _pretrained_hook(path)
    if not path.is_file():
        where = "" if path.is_absolute() else f" (looked in {path.resolve()})"
        what = "a folder, not a checkpoint file" if path.is_dir() else "checkpoint not found"
        raise UserError(f"{path}: {what}{where}")
    kind = file_kind(path)
    if kind is not None:  # a WAV, a text file, an archive: say what it is, not how torch.load fails
        raise not_a_checkpoint(path, kind)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported operand" in str(e) or "invalid load key" in str(e):  # bytes that are no pickle
            raise not_a_checkpoint(path, None) from None
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f"the global {found.group(1)!r}" if found else "an object outside the allowlist"
        raise UserError(
            f"{path}: refused to load: the pickle asks for {what}, which a checkpoint of this "
            "project never contains (NVIDIA/waveglow files are converted with waveglow-import-nvidia)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, IndexError, KeyError,
            TypeError, AttributeError, MemoryError):
        # torch.load of random bytes or a cut file fails in many ways (IndexError: pop from empty
        # list, KeyError: 101 ...); all of them mean the same thing to the user.
        raise not_a_checkpoint(path, None) from None
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


def build_model(config: Mapping[str, Any]) -> WaveGlow:
    """Instantiate an (untrained) WaveGlow from a resolved config with `model` and `audio`."""
    return WaveGlow.from_config(config)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> WaveGlow:
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
