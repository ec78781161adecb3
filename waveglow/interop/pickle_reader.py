"""Read a torch pickle (`torch.save` output) without running anything the file asks for.

A restricted unpickler replaces `torch.load` for files we do not trust:

* globals come from a fixed allowlist (`allowed_global`): tensor and storage rebuilds (our own
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
"""

from __future__ import annotations

import _compat_pickle
import math
import os
import pickle
import re
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from waveglow.checkpoint import file_kind
from waveglow.errors import UserError

# torch's stream-format header: a pickled magic number, then the protocol version.
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# Hard limits for hostile files: tensors are never larger than this many elements.
MAX_TENSOR_NUMEL = 1 << 31

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


def printable(text: Any, n: int = 80) -> str:
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
                f"'{printable(module)}.{printable(name)}', which an NVIDIA WaveGlow checkpoint never "
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
                raise pickle.UnpicklingError(f"unknown persistent id {printable(repr(pid)[:60])}")
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
                raise pickle.UnpicklingError(f"unknown persistent id kind {printable(kind)}")
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
                raise pickle.UnpicklingError(f"data for unknown storage {printable(key)}")
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
    kind = file_kind(path)
    if kind is not None:  # a WAV, a text file, an archive: say what it is, not how unpickling fails
        raise UserError(f"not a readable PyTorch checkpoint: {path} is {kind}; expected an NVIDIA WaveGlow "
                        "checkpoint (.pt)")
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
                        f"{printable(msg, 160)})") from None


__all__ = [
    "InertObject",
    "RestrictedUnpickler",
    "TensorRecord",
    "allowed_global",
    "is_nvidia_module",
    "printable",
    "read_pickle",
]
