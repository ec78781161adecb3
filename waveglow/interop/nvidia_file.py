"""An NVIDIA/waveglow file as plain data: its module tree flattened into reference state_dict
names (`upsample.*`, `convinv.{k}.conv.weight`, `WN.{k}.*`), the classes and plain attributes
of each module, and the stored step and learning rate. Read through the restricted unpickler
(`waveglow.interop.pickle_reader`), so nothing in the file runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from waveglow.errors import UserError
from waveglow.interop.pickle_reader import InertObject, TensorRecord, printable, read_pickle

# Hard limit for hostile files: module trees nest no deeper than this.
MAX_MODULE_DEPTH = 16

@dataclass
class NvidiaCheckpoint:
    """What an NVIDIA file holds, as plain data.

    Attributes:
        path: the file.
        tensors: reference state_dict names -> float32 tensors (e.g. "WN.0.start.weight_g").
        classes: module path ("" = root, "WN.0", ...) -> pickled class name ("glow.WN").
        attributes: module path -> its plain attributes (ints, floats, strings, tuples).
        iteration: the training step stored in the file, if any.
        learning_rate: the stored learning rate, if any.
        container: "zip" or "stream".
    """

    path: Path
    tensors: dict[str, Tensor]
    classes: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)
    iteration: int | None = None
    learning_rate: float | None = None
    container: str = "zip"

    @property
    def root_class(self) -> str | None:
        return self.classes.get("")


def _plain_attrs(state: Mapping) -> dict[str, Any]:
    keep = (int, float, str, bool, tuple)
    return {k: v for k, v in state.items()
            if isinstance(k, str) and not k.startswith("_") and isinstance(v, keep)}


def _walk(ck: NvidiaCheckpoint, obj: Any, path: str, depth: int, seen: set[int]) -> None:
    """Collect parameters and buffers of an inert module tree under state_dict names."""
    where = path or "model"
    if not isinstance(obj, InertObject):
        raise UserError(f"{ck.path}: '{where}' is a {type(obj).__name__}, expected a module")
    if id(obj) in seen or depth > MAX_MODULE_DEPTH:
        raise UserError(f"{ck.path}: the module tree at '{where}' is cyclic or too deep")
    seen.add(id(obj))
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2:  # (dict, slot state)
        state = state[0]
    if not isinstance(state, Mapping):
        raise UserError(f"{ck.path}: module '{where}' ({obj.global_name}) has no state")
    ck.classes[path] = obj.global_name
    ck.attributes[path] = _plain_attrs(state)
    prefix = f"{path}." if path else ""
    for group in ("_parameters", "_buffers"):
        entries = state.get(group) or {}
        if not isinstance(entries, Mapping):
            raise UserError(f"{ck.path}: module '{where}' has an invalid {group}")
        for name, value in entries.items():
            if value is None:
                continue
            if not isinstance(name, str) or not isinstance(value, TensorRecord):
                raise UserError(f"{ck.path}: '{prefix}{printable(name)}' is not a tensor")
            ck.tensors[prefix + name] = value.tensor
    children = state.get("_modules") or {}
    if not isinstance(children, Mapping):
        raise UserError(f"{ck.path}: module '{where}' has invalid submodules")
    for name, child in children.items():
        if child is None:
            continue
        if not isinstance(name, str) or not name.isidentifier() and not name.isdigit():
            raise UserError(f"{ck.path}: module '{where}' has a submodule with an invalid name")
        _walk(ck, child, prefix + name, depth + 1, seen)


def _as_number(v: Any) -> Any:
    if isinstance(v, TensorRecord) and v.tensor.numel() == 1:
        return v.tensor.item()
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def read_nvidia_checkpoint(path: str | os.PathLike) -> NvidiaCheckpoint:
    """Read an NVIDIA/waveglow file into plain tensors and attributes, running nothing from it.

    Accepts `{'model': <WaveGlow module>, 'iteration': ..., ...}` (what NVIDIA's train.py
    writes), a bare pickled module, or a plain state_dict (`{'state_dict': {...}}` or a dict of
    tensors, an optional `module.` prefix removed).

    Raises:
        UserError: unreadable or hostile file, or no WaveGlow inside.
    """
    path = Path(path)
    obj, container = read_pickle(path)
    ck = NvidiaCheckpoint(path=path, tensors={}, container=container)
    model: Any = obj
    if isinstance(obj, Mapping):
        if "format_version" in obj and "config" in obj:
            raise UserError(f"{path}: already a checkpoint of this toolkit; use it directly")
        it = _as_number(obj.get("iteration"))
        ck.iteration = int(it) if isinstance(it, (int, float)) else None
        lr = _as_number(obj.get("learning_rate"))
        ck.learning_rate = float(lr) if isinstance(lr, (int, float)) else None
        if "model" in obj:
            model = obj["model"]
        elif isinstance(obj.get("state_dict"), Mapping):
            model = obj["state_dict"]
    if isinstance(model, InertObject):
        _walk(ck, model, "", 0, set())
    elif isinstance(model, Mapping) and model and all(isinstance(v, TensorRecord) for v in model.values()):
        for name, value in model.items():
            if not isinstance(name, str):
                raise UserError(f"{path}: state_dict with a non-string key")
            ck.tensors[name.removeprefix("module.")] = value.tensor
    else:
        raise UserError(f"{path}: holds no WaveGlow model (expected a dict with 'model': "
                        "<WaveGlow module> as NVIDIA's train.py writes)")
    # Detach from the file buffers; float16 files become float32.
    ck.tensors = {k: (t.to(torch.float32) if t.is_floating_point() else t).clone().contiguous()
                  for k, t in ck.tensors.items()}
    return ck
