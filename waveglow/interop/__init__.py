"""Reading other projects' files: a restricted torch-pickle reader and the NVIDIA/waveglow
checkpoint conversion built on it."""

from waveglow.interop.nvidia import (
    NvidiaLayout,
    convert_nvidia,
    convert_state,
    import_nvidia,
    infer_layout,
)
from waveglow.interop.nvidia_file import NvidiaCheckpoint, read_nvidia_checkpoint
from waveglow.interop.pickle_reader import (
    InertObject,
    RestrictedUnpickler,
    TensorRecord,
    allowed_global,
    read_pickle,
)

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
