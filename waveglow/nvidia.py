"""Import NVIDIA/waveglow checkpoints without running anything the file asks for.

The published NVIDIA files (`waveglow_256channels_universal_v5.pt`, the original
`waveglow_old.pt`, ...) are pickles of a dict `{'model': <whole WaveGlow module object>,
'iteration', 'optimizer', 'learning_rate'}`. Loading them the usual way imports NVIDIA's
`glow` / `glow_old` modules and lets the pickle call any function it names. Here they are read
by a restricted unpickler instead:

* globals come from a fixed allowlist (`find_class`): tensor and storage rebuilds (our own
  re-implementations, which only slice validated byte buffers), `collections.OrderedDict`,
  `set`/`frozenset`, and the module classes a WaveGlow pickle names (`torch.nn` convs and
  containers, the weight-norm hook, anything from `glow` / `glow_old`). Those classes are
  replaced by inert records that keep the pickled `__dict__` and run no code. Every other
  global (`os.system`, `builtins.eval`, `subprocess.Popen`, `functools.partial`, ...) stops
  the load with a `UserError` naming the file and the global;
* tensors are bounds-checked views into buffers read straight from the file, in both
  containers `torch.save` has written: the zip format (torch >= 1.6: `<archive>/data.pkl` +
  `<archive>/data/<key>`) and the older stream format (magic number, sys info, pickle, storage
  keys, raw storages). Declared sizes are checked against the file before anything is
  allocated. (The tar container of torch < 0.4 predates WaveGlow and is not read.)

The module tree is then flattened into the reference's state_dict names
(`upsample.*`, `convinv.{k}.conv.weight`, `WN.{k}.*`), the model config is inferred from the
weight shapes, legacy layouts are fused into the current one (see `waveglow.model` for the
key correspondence), and a checkpoint of this project is written atomically.

Legacy layouts:
    * per-layer `cond_layers.i` (2C rows each) -> one `cond_layer`, rows concatenated in layer
      order (weight_g, weight_v and bias alike: weight norm is per output row, so this is exact);
    * separate `res_layers.i` / `skip_layers.i` -> `res_skip_layers.i` (residual rows then skip
      rows; the last layer skip only);
    * a `glow_old.WaveGlow` root: the coupling alternates which half conditions
      (`condition_half: alternate`) and early outputs happen every 4 flows.
"""

from __future__ import annotations

import _compat_pickle
import logging
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from waveglow.checkpoint import FORMAT_VERSION, build_model, save_checkpoint
from waveglow.errors import UserError

log = logging.getLogger("waveglow")

# torch's stream-format header: a pickled magic number, then the protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Hard limits for hostile files: tensors are never larger than this many elements.
MAX_TENSOR_NUMEL = 1 << 31
MAX_MODULE_DEPTH = 16

_STORAGE_DTYPES: dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}

# torch.nn classes a WaveGlow module tree contains; they become inert records.
_TORCH_MODULE_CLASSES = frozenset({
    ("torch.nn.modules.conv", "Conv1d"),
    ("torch.nn.modules.conv", "ConvTranspose1d"),
    ("torch.nn.modules.container", "ModuleList"),
    ("torch.nn.modules.container", "Sequential"),
    ("torch.nn.utils.weight_norm", "WeightNorm"),
})

_KEY_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,200}$")


# ---------------------------------------------------------------------------------- records


class InertObject:
    """Stand-in for a class a checkpoint names: keeps what the pickle hands it, runs nothing.

    Attributes:
        global_name: "module.Name" of the class the pickle asked for.
        args: arguments of the (pretended) construction.
        state: what the pickle's BUILD passed (the module's `__dict__`), or None.
    """

    global_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


_INERT_CLASSES: dict[str, type[InertObject]] = {}


def _inert_class(module: str, name: str) -> type[InertObject]:
    """One inert subclass per global name (so the class name survives for layout decisions)."""
    key = f"{module}.{name}"
    if key not in _INERT_CLASSES:
        _INERT_CLASSES[key] = type(f"Inert_{name}", (InertObject,), {"global_name": key})
    return _INERT_CLASSES[key]


class _Sealed:
    """Base of the reader's own records: a pickle may not BUILD into them."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"unexpected state for {type(self).__name__}")


class _StorageType(_Sealed):
    """What `torch.FloatStorage` & co. resolve to: just the element type."""

    def __init__(self, name: str, dtype: torch.dtype) -> None:
        self.name = name
        self.dtype = dtype


class _Storage(_Sealed):
    """A flat buffer of one dtype read from the file (filled later in the stream format)."""

    def __init__(self, flat: Tensor) -> None:
        self.flat = flat


class TensorRecord(_Sealed):
    """A tensor rebuilt from the file, wrapped so no pickle opcode can act on the tensor."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


def _int(v: Any, what: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool):
        raise pickle.UnpicklingError(f"{what} must be an integer, got {type(v).__name__}")
    return v


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> TensorRecord:
    """Our version of torch's tensor rebuild: a bounds-checked strided view of a file buffer."""
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("tensor data is not a storage from the file")
    if not isinstance(size, (tuple, list)) or not isinstance(stride, (tuple, list)) or len(size) != len(stride):
        raise pickle.UnpicklingError("tensor size/stride must be tuples of the same length")
    size = tuple(_int(s, "tensor size") for s in size)
    stride = tuple(_int(s, "tensor stride") for s in stride)
    offset = _int(storage_offset, "tensor offset")
    if len(size) > 8 or any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise pickle.UnpicklingError(f"invalid tensor geometry size={size} stride={stride}")
    numel = math.prod(size)
    flat = storage.flat
    if numel > MAX_TENSOR_NUMEL or numel > flat.numel():
        raise pickle.UnpicklingError(f"tensor of {numel} elements in a storage of {flat.numel()}")
    if numel > 0:
        last = offset + sum((n - 1) * st for n, st in zip(size, stride))
        if last >= flat.numel():
            raise pickle.UnpicklingError("tensor reaches past the end of its storage")
    return TensorRecord(flat.as_strided(size, stride, flat.storage_offset() + offset))


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> TensorRecord:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = True, backward_hooks: Any = None,
                       state: Any = None) -> TensorRecord:
    if not isinstance(data, TensorRecord):
        raise pickle.UnpicklingError("parameter data is not a tensor")
    return data


def _thnn_backend(*args: Any) -> InertObject:
    # Modules pickled by torch < 1.3 carry a `_backend` attribute rebuilt by this call.
    return _inert_class("torch.nn.backends.thnn", "THNNFunctionBackend")()


class _Call(_Sealed):
    """An allowed callable as the pickle sees it.

    Wrapped so that a BUILD opcode aimed at it cannot set attributes (`__defaults__`, ...) on
    the function itself, which would outlive the load.
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)


_FUNCTIONS: dict[tuple[str, str], _Call] = {
    ("collections", "OrderedDict"): _Call(OrderedDict),
    ("builtins", "set"): _Call(set),
    ("builtins", "frozenset"): _Call(frozenset),
    ("torch._utils", "_rebuild_tensor"): _Call(_rebuild_tensor),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
    ("torch.nn.parameter", "Parameter"): _Call(_rebuild_parameter),
    ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _Call(_thnn_backend),
}


def is_nvidia_module(module: str) -> bool:
    """True for the module names NVIDIA's classes are pickled under (`glow`, `glow_old`, and
    the same files used as a package, e.g. `waveglow.glow`)."""
    return module in ("glow", "glow_old") or module.endswith((".glow", ".glow_old"))


def allowed_global(module: str, name: str) -> Any:
    """What a global named in the pickle resolves to, or None when it is refused."""
    if (module, name) in _FUNCTIONS:
        return _FUNCTIONS[(module, name)]
    if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
        return _StorageType(name, _STORAGE_DTYPES[name])
    if (module, name) in _TORCH_MODULE_CLASSES or (is_nvidia_module(module) and name.isidentifier()):
        return _inert_class(module, name)
    return None


def _short(text: Any, n: int = 80) -> str:
    """Text from the file for a one-line message: printable characters only, at most n."""
    s = "".join(c if c.isprintable() else "?" for c in str(text)[: n + 1])
    return s if len(s) <= n else s[:n] + "..."


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves globals only through `allowed_global`.

    Args:
        file: binary stream positioned at a pickle.
        source: the file name, for error messages.
        load_storage: handler for persistent ids (torch storages), or None to refuse them.
    """

    def __init__(self, file: BinaryIO, source: str,
                 load_storage: Callable[[Any], Any] | None = None) -> None:
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles name Python 2 modules (`__builtin__`, `commands`, ...); judge and
        # report the Python 3 names they stand for, as the standard unpickler would load them.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        found = allowed_global(module, name)
        if found is None:
            raise UserError(
                f"{self._source}: refused to load: the pickle asks for the global "
                f"'{_short(module)}.{_short(name)}', which an NVIDIA WaveGlow checkpoint never "
                "contains (nothing from the file was run)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        if self._load_storage is None:
            raise pickle.UnpicklingError("unexpected persistent reference")
        return self._load_storage(pid)


# ---------------------------------------------------------------------------------- containers


def _ascii(v: Any) -> Any:
    return v.decode("ascii") if isinstance(v, bytes) else v


def _storage_type(v: Any) -> _StorageType:
    if not isinstance(v, _StorageType):
        raise pickle.UnpicklingError("storage reference without a storage type")
    return v


def _read_zip(path: Path) -> tuple[Any, str]:
    """Unpickle `<archive>/data.pkl` of a torch zip file, storages from `<archive>/data/<key>`."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            if any(n.endswith("/constants.pkl") for n in names):
                raise UserError(f"{path}: a TorchScript archive, not a pickled NVIDIA WaveGlow "
                                "checkpoint")
            raise UserError(f"{path}: a zip file without the data.pkl of a torch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and zf.read(prefix + "byteorder").strip() != b"little":
            raise UserError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        # torch stores its records uncompressed; allow some compression from repacking, but
        # never let declared sizes (a zip bomb) allocate far beyond the file itself.
        budget = [20 * path.stat().st_size]

        def load_storage(pid: Any) -> _Storage:
            if not isinstance(pid, tuple) or len(pid) != 5 or _ascii(pid[0]) != "storage":
                raise pickle.UnpicklingError(f"unknown persistent id {_short(repr(pid)[:60])}")
            stype = _storage_type(pid[1])
            key, numel = _ascii(pid[2]), _int(pid[4], "storage size")
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise pickle.UnpicklingError("invalid storage key")
            if key in storages:
                if storages[key].flat.dtype != stype.dtype:
                    raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
                return storages[key]
            item = f"{prefix}data/{key}"
            info = zf.getinfo(item)  # KeyError -> reported as a corrupt file
            itemsize = torch.empty(0, dtype=stype.dtype).element_size()
            if numel < 0 or info.file_size != numel * itemsize:
                raise pickle.UnpicklingError(f"storage {key}: {info.file_size} bytes for {numel} "
                                             f"elements of {stype.name}")
            budget[0] -= info.file_size
            if budget[0] < 0:
                raise pickle.UnpicklingError("the storages declare far more data than the file holds")
            raw = zf.read(item)
            flat = (torch.frombuffer(bytearray(raw), dtype=stype.dtype) if numel
                    else torch.empty(0, dtype=stype.dtype))
            storages[key] = _Storage(flat)
            return storages[key]

        with zf.open(pickles[0]) as f:
            obj = RestrictedUnpickler(f, str(path), load_storage).load()
    return obj, "zip"


def _read_stream(path: Path) -> tuple[Any, str]:
    """Read torch's pre-1.6 stream format: magic, protocol, sys info, pickle, keys, storages."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        if RestrictedUnpickler(f, str(path)).load() != LEGACY_MAGIC:
            raise UserError(f"{path}: not a PyTorch checkpoint (neither a torch zip archive nor "
                            "the legacy format's magic number)")
        if RestrictedUnpickler(f, str(path)).load() != LEGACY_PROTOCOL:
            raise UserError(f"{path}: unknown legacy torch protocol version")
        sys_info = RestrictedUnpickler(f, str(path)).load()
        if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
            raise UserError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        views: dict[str, _Storage] = {}
        budget = [file_size]  # every storage's bytes follow the pickle in this same file

        def load_storage(pid: Any) -> Any:
            if not isinstance(pid, tuple) or not pid:
                raise pickle.UnpicklingError("invalid persistent id")
            kind = _ascii(pid[0])
            if kind == "module" and len(pid) == 4:
                # The stream format records each module class with its source code; the class
                # is an inert record here and the source is never looked at.
                cls = pid[1]
                if not (isinstance(cls, type) and issubclass(cls, InertObject)):
                    raise pickle.UnpicklingError("module reference to a non-module")
                return cls
            if kind != "storage" or len(pid) != 6:
                raise pickle.UnpicklingError(f"unknown persistent id kind {_short(kind)}")
            stype = _storage_type(pid[1])
            key, numel, view = _ascii(pid[2]), _int(pid[4], "storage size"), pid[5]
            if not isinstance(key, str) or not _KEY_RE.match(key):
                raise pickle.UnpicklingError("invalid storage key")
            itemsize = torch.empty(0, dtype=stype.dtype).element_size()
            if numel < 0:
                raise pickle.UnpicklingError(f"storage {key} has a negative size")
            if key not in storages:
                budget[0] -= numel * itemsize
                if budget[0] < 0:
                    raise pickle.UnpicklingError("the storages declare more data than the file holds")
                storages[key] = _Storage(torch.zeros(numel, dtype=stype.dtype))
            root = storages[key]
            if root.flat.dtype != stype.dtype or root.flat.numel() != numel:
                raise pickle.UnpicklingError(f"storage {key} used with two types or sizes")
            if view is None:
                return root
            if not isinstance(view, tuple) or len(view) != 3:
                raise pickle.UnpicklingError("invalid storage view")
            view_key = _ascii(view[0])
            offset, size = _int(view[1], "view offset"), _int(view[2], "view size")
            if offset < 0 or size < 0 or offset + size > numel:
                raise pickle.UnpicklingError("storage view out of bounds")
            views.setdefault(view_key, _Storage(root.flat[offset: offset + size]))
            return views[view_key]

        obj = RestrictedUnpickler(f, str(path), load_storage).load()
        keys = RestrictedUnpickler(f, str(path)).load()
        if not isinstance(keys, list) or not all(isinstance(_ascii(k), str) for k in keys):
            raise pickle.UnpicklingError("invalid storage key list")
        # Storages follow in key order, each as an int64 element count and the raw bytes.
        for key in map(_ascii, keys):
            if key not in storages:
                raise pickle.UnpicklingError(f"data for unknown storage {_short(key)}")
            flat = storages[key].flat
            header = f.read(8)
            if len(header) != 8:
                raise EOFError("file ends before the tensor data")
            numel = struct.unpack("<q", header)[0]
            if numel != flat.numel():
                raise pickle.UnpicklingError(f"storage {key}: {numel} elements on disk, "
                                             f"{flat.numel()} expected")
            nbytes = numel * flat.element_size()
            raw = f.read(nbytes)
            if len(raw) != nbytes:
                raise EOFError("file ends inside the tensor data")
            if numel:
                flat.copy_(torch.frombuffer(bytearray(raw), dtype=flat.dtype))
        missing = set(storages) - set(map(_ascii, keys))
        if missing:
            raise EOFError(f"{len(missing)} storages have no data")
    return obj, "stream"


def read_pickle(path: str | os.PathLike) -> tuple[Any, str]:
    """Unpickle a torch file with the restricted unpickler.

    Returns:
        (object, container) with container "zip" or "stream". Module objects are
        `InertObject`s, tensors `TensorRecord`s.

    Raises:
        UserError: missing, unreadable, truncated or corrupt file, or a refused global.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if not head:
            raise UserError(f"{path}: empty file, expected an NVIDIA WaveGlow checkpoint")
        if head == b"PK\x03\x04":  # a zip's first local header, as torch checks it
            if not zipfile.is_zipfile(path):
                raise UserError(f"{path}: truncated or corrupt zip archive (not a readable torch "
                                "checkpoint)")
            return _read_zip(path)
        return _read_stream(path)
    except UserError:
        raise
    except MemoryError:
        raise UserError(f"{path}: the file asks for more memory than available") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, RuntimeError, AttributeError,
            KeyError, IndexError, OverflowError, zipfile.BadZipFile, struct.error,
            UnicodeDecodeError, RecursionError, OSError) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt: "
                        f"{_short(msg, 160)})") from None


# ---------------------------------------------------------------------------------- module tree


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
                raise UserError(f"{ck.path}: '{prefix}{_short(name)}' is not a tensor")
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


# ---------------------------------------------------------------------------------- conversion


class _Weights:
    """The reference tensors, tracking which ones the conversion used."""

    def __init__(self, ck: NvidiaCheckpoint) -> None:
        self.ck = ck
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.ck.tensors

    def get(self, key: str, dims: int | None = None) -> Tensor:
        t = self.ck.tensors.get(key)
        if t is None:
            raise UserError(f"{self.ck.path}: missing weight '{key}' (not a WaveGlow of the "
                            "NVIDIA layout?)")
        if dims is not None and t.dim() != dims:
            raise UserError(f"{self.ck.path}: '{key}' has shape {list(t.shape)}, expected "
                            f"{dims} dimensions")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise UserError(f"{self.ck.path}: '{key}' is not a finite floating-point tensor")
        self.used.add(key)
        return t

    def weight_norm(self, prefix: str) -> dict[str, Tensor]:
        """weight_g / weight_v / bias of conv `prefix` (a plain `weight` is split exactly)."""
        bias = self.get(f"{prefix}.bias", 1)
        if self.has(f"{prefix}.weight_v"):
            g, v = self.get(f"{prefix}.weight_g", 3), self.get(f"{prefix}.weight_v", 3)
        else:
            w = self.get(f"{prefix}.weight", 3)
            g = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
            # A zero row folds to zero for any direction: keep v finite.
            v = torch.where(g > 0, w, torch.ones_like(w))
        if g.shape != (v.shape[0], 1, 1) or bias.shape != (v.shape[0],):
            raise UserError(f"{self.ck.path}: '{prefix}' has inconsistent weight_g/weight_v/bias "
                            "shapes")
        return {"weight_g": g, "weight_v": v, "bias": bias}

    def plain(self, prefix: str, bias: bool = True) -> dict[str, Tensor]:
        """weight (and bias) of conv `prefix` (a weight-normed pair is folded)."""
        if self.has(f"{prefix}.weight_v"):
            g, v = self.get(f"{prefix}.weight_g", 3), self.get(f"{prefix}.weight_v", 3)
            w = v * (g / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))
        else:
            w = self.get(f"{prefix}.weight", 3)
        out = {"weight": w}
        if bias:
            out["bias"] = self.get(f"{prefix}.bias", 1)
        return out

    def count(self, prefix: str) -> int:
        """Number of consecutive indices i with some key `{prefix}.{i}.*`."""
        n = 0
        while any(k.startswith(f"{prefix}.{n}.") for k in self.ck.tensors):
            n += 1
        return n


def _cat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate weight-normed convs along their output rows (exact: the norm is per row)."""
    return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}


def _put(out: dict[str, Tensor], prefix: str, params: Mapping[str, Tensor]) -> None:
    for k, v in params.items():
        out[f"{prefix}.{k}"] = v


@dataclass
class NvidiaLayout:
    """The model an NVIDIA file describes (inferred from its weight shapes)."""

    n_mels: int
    hop_length: int
    upsample_kernel: int
    n_group: int
    n_flows: int
    n_early_every: int
    n_early_size: int
    n_layers: int
    n_channels: int
    kernel_size: int
    legacy: bool
    cond_fused: bool
    res_skip_fused: bool

    def model_config(self, sigma: float = 1.0) -> dict[str, Any]:
        return {
            "name": f"nvidia_{self.n_channels}ch" + ("_legacy" if self.legacy else ""),
            "n_group": self.n_group,
            "n_flows": self.n_flows,
            "n_early_every": self.n_early_every,
            "n_early_size": self.n_early_size,
            "coupling": "affine",
            "sigma": float(sigma),
            "condition_half": "alternate" if self.legacy else "first",
            "upsample": "conv_transpose",
            "upsample_kernel": self.upsample_kernel,
            "wn": {"n_layers": self.n_layers, "n_channels": self.n_channels,
                   "kernel_size": self.kernel_size, "depthwise": False},
        }

    def describe(self) -> str:
        fused = []
        if not self.cond_fused:
            fused.append("per-layer cond layers fused")
        if not self.res_skip_fused:
            fused.append("res/skip layers fused")
        kind = "legacy glow_old layout (alternating halves)" if self.legacy else "reference layout"
        extra = f", {', '.join(fused)}" if fused else ""
        return (f"{kind}{extra}: {self.n_flows} flows, n_group {self.n_group}, early "
                f"{self.n_early_size} every {self.n_early_every}, WN {self.n_layers} layers × "
                f"{self.n_channels} channels (kernel {self.kernel_size}), {self.n_mels} mels")


def _is_legacy(ck: NvidiaCheckpoint, layout: str) -> bool:
    if layout == "legacy":
        return True
    if layout == "reference":
        return False
    if layout != "auto":
        raise UserError(f"layout: expected auto, reference or legacy, got {layout!r}")
    root = ck.root_class
    if root is None:
        log.warning("%s: a bare state_dict names no class; assuming the reference (glow.WaveGlow) "
                    "layout (pass layout=legacy for a glow_old model)", ck.path)
        return False
    module = root.rsplit(".", 1)[0]
    return module == "glow_old" or module.endswith(".glow_old")


def infer_layout(ck: NvidiaCheckpoint, layout: str = "auto") -> NvidiaLayout:
    """Infer the model settings from the weight shapes.

    Raises:
        UserError: shapes that no WaveGlow of the NVIDIA layout has.
    """
    w = _Weights(ck)
    p = ck.path
    up = w.get("upsample.weight", 3)
    n_mels, k_up = up.shape[0], up.shape[2]
    if up.shape[1] != n_mels:
        raise UserError(f"{p}: upsample.weight {list(up.shape)} is not [n_mels, n_mels, kernel]")
    stride = ck.attributes.get("upsample", {}).get("stride", (256,))
    hop = stride[0] if isinstance(stride, tuple) and stride else stride
    if not isinstance(hop, int) or not 0 < hop <= k_up:
        raise UserError(f"{p}: upsample stride {stride!r} is not a hop length <= kernel {k_up}")

    n_flows = w.count("convinv")
    if n_flows == 0:
        raise UserError(f"{p}: no flows (convinv.0.conv.weight missing)")
    channels = []
    for k in range(n_flows):
        c = w.get(f"convinv.{k}.conv.weight", 3)
        if c.shape[0] != c.shape[1] or c.shape[2] != 1 or c.shape[0] % 2:
            raise UserError(f"{p}: convinv.{k}.conv.weight {list(c.shape)} is not [c, c, 1] "
                            "with c even")
        channels.append(c.shape[0])
    n_group = channels[0]
    legacy = _is_legacy(ck, layout)
    exits = [k for k in range(1, n_flows) if channels[k] != channels[k - 1]]
    sizes = {channels[k - 1] - channels[k] for k in exits}
    if not exits:
        every, size = 4, 0
    else:
        every = exits[0]
        size = sizes.pop() if len(sizes) == 1 else -1
        expected = [k for k in range(1, n_flows) if k % every == 0]
        if size <= 0 or size % 2 or exits != expected or (legacy and every != 4):
            raise UserError(f"{p}: the flows' channel counts {channels} do not follow an early "
                            "output pattern (every n flows, the same even count)")

    n_layers = w.count("WN.0.in_layers")
    if n_layers == 0 or w.count("WN") != n_flows:
        raise UserError(f"{p}: expected one WN per flow ({n_flows}) with in_layers")
    start = w.plain("WN.0.start")["weight"]
    n_channels = start.shape[0]
    kernel = w.plain("WN.0.in_layers.0")["weight"].shape[2]
    cond_fused = w.has("WN.0.cond_layer.bias")
    res_skip_fused = w.has("WN.0.res_skip_layers.0.bias")
    return NvidiaLayout(n_mels=n_mels, hop_length=hop, upsample_kernel=k_up, n_group=n_group,
                        n_flows=n_flows, n_early_every=every, n_early_size=size, n_layers=n_layers,
                        n_channels=n_channels, kernel_size=kernel, legacy=legacy,
                        cond_fused=cond_fused, res_skip_fused=res_skip_fused)


def convert_state(ck: NvidiaCheckpoint, lay: NvidiaLayout) -> dict[str, Tensor]:
    """The reference tensors under this project's state_dict names (legacy layouts fused).

    Shapes are checked by loading the result into the model afterwards; here only the
    structure is decided. Every tensor of the file must be used (or be the unused residual
    conv of a legacy last layer), so a layout we do not understand is refused, not guessed.
    """
    w = _Weights(ck)
    L = lay.n_layers
    out: dict[str, Tensor] = {}
    _put(out, "upsample", w.plain("upsample"))
    for k in range(lay.n_flows):
        out[f"flows.convinv_{k}.weight"] = w.get(f"convinv.{k}.conv.weight", 3)
        src, dst = f"WN.{k}", f"flows.coupling_{k}.wn"
        if w.count(f"{src}.in_layers") != L:
            raise UserError(f"{ck.path}: {src} has {w.count(f'{src}.in_layers')} layers, "
                            f"WN.0 has {L}")
        _put(out, f"{dst}.start", w.weight_norm(f"{src}.start"))
        _put(out, f"{dst}.end", w.plain(f"{src}.end"))
        if w.has(f"{src}.cond_layer.bias"):
            _put(out, f"{dst}.cond_layer", w.weight_norm(f"{src}.cond_layer"))
        else:
            _put(out, f"{dst}.cond_layer",
                 _cat([w.weight_norm(f"{src}.cond_layers.{i}") for i in range(L)]))
        for i in range(L):
            _put(out, f"{dst}.in_layers.{i}", w.weight_norm(f"{src}.in_layers.{i}"))
            if w.has(f"{src}.res_skip_layers.{i}.bias"):
                rs = w.weight_norm(f"{src}.res_skip_layers.{i}")
            elif i < L - 1:
                rs = _cat([w.weight_norm(f"{src}.res_layers.{i}"),
                           w.weight_norm(f"{src}.skip_layers.{i}")])
            else:
                rs = w.weight_norm(f"{src}.skip_layers.{i}")
                # The last layer's residual (if the file has one) feeds nothing.
                w.used.update(k for k in ck.tensors if k.startswith(f"{src}.res_layers.{i}."))
            _put(out, f"{dst}.res_skip_layers.{i}", rs)
    unused = sorted(set(ck.tensors) - w.used)
    if unused:
        raise UserError(f"{ck.path}: weights this importer does not understand: "
                        f"{', '.join(_short(u) for u in unused[:5])}{' ...' if len(unused) > 5 else ''}")
    out["mel_mean"] = torch.zeros(lay.n_mels)
    out["mel_std"] = torch.ones(lay.n_mels)
    return out


def _default_audio() -> dict[str, Any]:
    from omegaconf import OmegaConf

    from waveglow.cli.common import CONFIG_DIR

    return OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "audio" / "default.yaml"),
                                  resolve=True)  # type: ignore[return-value]


def convert_nvidia(ck: NvidiaCheckpoint, audio: Mapping[str, Any] | None = None,
                   layout: str = "auto", sigma: float = 1.0) -> dict[str, Any]:
    """Build a checkpoint dict of this project from a read NVIDIA file.

    Args:
        ck: from `read_nvidia_checkpoint`.
        audio: the audio config (defaults: configs/audio/default.yaml); n_mels and hop_length
            are set from the weights.
        layout: "auto" (from the pickled root class: `glow_old.WaveGlow` is legacy),
            "reference" or "legacy".
        sigma: the prior std stored as model.sigma (the reference trains with 1.0).

    Returns:
        The checkpoint dict (format_version, model, config, step, ..., source).

    Raises:
        UserError: the weights do not describe a WaveGlow this project can run.
    """
    lay = infer_layout(ck, layout)
    audio_cfg = dict(audio) if audio is not None else _default_audio()
    for key, value in (("n_mels", lay.n_mels), ("hop_length", lay.hop_length)):
        if audio_cfg.get(key) != value:
            log.warning("%s: the weights need audio.%s=%s (config had %s); using %s",
                        ck.path, key, value, audio_cfg.get(key), value)
            audio_cfg[key] = value
    config = {"audio": audio_cfg, "model": lay.model_config(sigma), "data": {}, "train": {}}
    state = convert_state(ck, lay)
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise UserError(f"{ck.path}: the weights do not fit the inferred model "
                        f"({lay.describe()}): {_short(msg, 300)}") from None
    source = {
        "kind": "nvidia-waveglow",
        "file": ck.path.name,
        "class": ck.root_class or "state_dict",
        "container": ck.container,
        "layout": lay.describe(),
        "learning_rate": ck.learning_rate,
    }
    return {
        "format_version": FORMAT_VERSION,
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "config": config,
        "step": ck.iteration or 0,
        "epoch": 0,
        "optimizer": None,
        "scheduler": None,
        "scaler": None,
        "rng": None,
        "sampler": None,
        "metrics": {},
        "source": source,
    }


def import_nvidia(input_path: str | os.PathLike, output_path: str | os.PathLike,
                  audio: Mapping[str, Any] | None = None, layout: str = "auto",
                  sigma: float = 1.0) -> dict[str, Any]:
    """Convert an NVIDIA/waveglow file into a checkpoint of this project, written atomically.

    Args:
        input_path: the NVIDIA file (zip or stream format).
        output_path: the checkpoint to write (nothing is written if anything fails).
        audio, layout, sigma: see `convert_nvidia`.

    Returns:
        The written checkpoint dict.

    Raises:
        UserError: bad input (nothing written) or an unwritable output.
    """
    src, dst = Path(input_path), Path(output_path)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UserError(f"{dst}: output would overwrite the input file")
    if dst.is_dir():
        raise UserError(f"{dst}: output is a directory, expected a file name (e.g. nvidia.pt)")
    ck = read_nvidia_checkpoint(src)
    state = convert_nvidia(ck, audio=audio, layout=layout, sigma=sigma)
    try:
        save_checkpoint(dst, state)
    except OSError as e:
        raise UserError(f"{dst}: cannot write the checkpoint ({e.strerror or e})") from None
    n_params = sum(v.numel() for k, v in state["model"].items() if not k.startswith("mel_"))
    log.info("%s: %s %s, %.2fM parameters, iteration %s -> %s", src, ck.root_class or "state_dict",
             state["source"]["layout"], n_params / 1e6, ck.iteration, dst)
    return state


__all__ = [
    "InertObject",
    "NvidiaCheckpoint",
    "NvidiaLayout",
    "RestrictedUnpickler",
    "TensorRecord",
    "allowed_global",
    "convert_nvidia",
    "convert_state",
    "import_nvidia",
    "infer_layout",
    "read_nvidia_checkpoint",
    "read_pickle",
]
