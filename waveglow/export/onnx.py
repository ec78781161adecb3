"""ONNX export of the synthesis graph, and running it with onnxruntime.

The exported model (`export_onnx`):

    inputs   mel    float32 [B, n_mels, F]   raw log-mel, as `waveglow-synthesize` reads it
             z      float32 [B, hop·F]       the latent in the audio layout, already × sigma
    output   audio  float32 [B, hop·F]

B and F are dynamic. The noise is an input (as in NVIDIA's DeepLearningExamples export), so the
model is deterministic: the same (mel, z) give the same audio as `WaveGlow.decode(z, mel)`.
Weight norm is folded and the checkpoint's mel statistics are constants inside the graph. The
model's metadata (`metadata_props`) records sampling_rate, hop_length, n_mels and n_group.

The graph is traced with torch's TorchScript-based ONNX exporter (`dynamo=False`: the
torch.export-based one needs the onnxscript package) at one small example shape; before
anything is written, onnxruntime runs it at another batch size and length and the result is
compared with eager decoding (`check_parity`), so a graph that lost its dynamic axes or drifted
numerically is never written.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from waveglow import __version__
from waveglow.errors import UserError
from waveglow.export.graph import SynthesisGraph, traceable
from waveglow.fileio import atomic_write
from waveglow.model import WaveGlow
from waveglow.runtime import available_cores

try:  # the `export` extra; missing packages are reported by `require_onnx`
    import onnx
    import onnxruntime as ort
except ImportError:  # pragma: no cover - depends on the installation
    onnx = None  # type: ignore[assignment]
    ort = None  # type: ignore[assignment]

INPUTS = ("mel", "z")
OUTPUT = "audio"
# Relative max difference (max |onnx - eager| / max |eager|) an fp32 export must reach.
PARITY_TOLERANCE = 1e-4
# The shape the graph is traced at, and the other one it is checked at.
TRACE_SHAPE = (1, 8)  # (batch, frames)
CHECK_SHAPE = (3, 13)
MIN_OPSET = 13
try:  # the highest opset this torch's exporter writes (23 in torch 2.13); 20 where unknown
    from torch.onnx._constants import ONNX_MAX_OPSET as MAX_OPSET
except ImportError:  # pragma: no cover - depends on the torch version
    MAX_OPSET = 20


def require_onnx() -> None:
    """Raises UserError when onnx / onnxruntime are not installed."""
    if onnx is None or ort is None:
        raise UserError("ONNX export needs the onnx and onnxruntime packages: "
                        "pip install 'waveglow[export]' (make install installs them)")


def check_output_path(path: str | os.PathLike, suffix: str = ".onnx") -> Path:
    """The output file of an export, checked before any work.

    Raises:
        UserError: a wrong suffix, or a folder where a file name is expected.
    """
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UserError(f"output={out}: expected a file name ending in {suffix}")
    if out.is_dir():
        raise UserError(f"output={out}: is a folder; expected a file name ending in {suffix}")
    for parent in out.absolute().parents:  # the writer creates missing folders, not over files
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"output={out}: {parent} is a file, not a folder")
            break
    return out


def check_opset(opset: int) -> int:
    """The `opset=` setting, checked before any work (the exporter refuses one it does not
    know only after tracing, with a traceback).

    Raises:
        UserError: outside MIN_OPSET..MAX_OPSET.
    """
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise UserError(f"opset={opset}: this torch exports ONNX opsets {MIN_OPSET} to {MAX_OPSET}")
    return int(opset)


def example_inputs(n_mels: int, hop: int, batch: int, frames: int, seed: int = 0,
                   sigma: float = 0.6) -> tuple[Tensor, Tensor]:
    """Speech-like raw log-mels [batch, n_mels, frames] and z [batch, hop·frames] ~ N(0, sigma²)."""
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(batch, n_mels, frames, generator=gen) * 1.5 - 6.0
    z = torch.randn(batch, hop * frames, generator=gen) * sigma
    return mel, z


def eager_decode(model: WaveGlow, mel: Tensor, z: Tensor) -> Tensor:
    """The reference the export must match: `model.decode(z, mel)` in fp32, as synthesis runs it."""
    with torch.inference_mode():
        return model.decode(z.float(), mel.float())


def relative_max_diff(reference: np.ndarray | Tensor, other: np.ndarray | Tensor) -> float:
    """max |other − reference| / max |reference| (0 when both are all zeros)."""
    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(oth - ref).max()) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def snr_db(reference: np.ndarray | Tensor, other: np.ndarray | Tensor) -> float:
    """10·log10(Σ reference² / Σ (other − reference)²), in dB (inf when they are equal)."""
    ref = np.asarray(reference, dtype=np.float64)
    noise = float(np.sum((np.asarray(other, dtype=np.float64) - ref) ** 2))
    return math.inf if noise == 0 else 10.0 * math.log10(float(np.sum(ref**2)) / max(noise, 1e-300))


def onnx_model_bytes(model: WaveGlow, opset: int = 17) -> bytes:
    """Trace the synthesis graph of `model` and return the serialized, checked ONNX model.

    Args:
        model: a WaveGlow (not modified; weight norm folded or not).
        opset: ONNX opset (MIN_OPSET..MAX_OPSET).

    Returns:
        The model file's bytes.

    Raises:
        UserError: the `export` extra is missing, or an opset this torch does not export.
    """
    require_onnx()
    check_opset(opset)
    graph = SynthesisGraph(model)
    mel, z = example_inputs(graph.n_mels, graph.hop_length, *TRACE_SHAPE)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), traceable():
        # TracerWarnings: the model's input checks are Python conditions on shapes, evaluated
        # once at the example shape (they guard eager calls; the graph needs none of them).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph, (mel, z), buffer, dynamo=False, opset_version=opset,
            input_names=list(INPUTS), output_names=[OUTPUT],
            dynamic_axes={"mel": {0: "batch", 2: "frames"}, "z": {0: "batch", 1: "samples"},
                          OUTPUT: {0: "batch", 1: "samples"}})
    proto = onnx.load_from_string(buffer.getvalue())
    meta: dict[str, Any] = {"toolkit": f"waveglow {__version__}", "hop_length": graph.hop_length,
                            "n_mels": graph.n_mels, "n_group": graph.model.n_group,
                            "inputs": "mel: raw log-mel [B, n_mels, F]; z: latent [B, hop*F], x sigma"}
    if graph.sampling_rate is not None:
        meta["sampling_rate"] = graph.sampling_rate
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in meta.items()})
    proto.producer_name = "waveglow-export"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def session(model: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """An onnxruntime CPU session for an exported model (a path or the model's bytes).

    Args:
        threads: intra-op threads (None: the cores this process may use).

    Raises:
        UserError: the file is missing or not an ONNX model onnxruntime can load.
    """
    require_onnx()
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or available_cores())
    options.log_severity_level = 3  # errors only: no per-node provider chatter
    source = model if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise UserError(f"{model}: ONNX model not found")
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        where = "the exported model" if isinstance(model, bytes) else str(model)
        raise UserError(f"{where}: onnxruntime cannot load it ({str(e).splitlines()[0][:160]})") from None


def run(sess: Any, mel: np.ndarray | Tensor, z: np.ndarray | Tensor) -> np.ndarray:
    """audio [B, hop·F] = the exported model on mel [B, n_mels, F] and z [B, hop·F] (float32)."""
    feeds = {"mel": np.ascontiguousarray(np.asarray(mel, dtype=np.float32)),
             "z": np.ascontiguousarray(np.asarray(z, dtype=np.float32))}
    return sess.run([OUTPUT], feeds)[0]


def check_parity(model: WaveGlow, sess: Any, shape: tuple[int, int] = CHECK_SHAPE,
                 tolerance: float = PARITY_TOLERANCE) -> float:
    """The relative max difference of the exported model against eager decoding at `shape`.

    Args:
        model: the model that was exported.
        sess: a session of its export.
        shape: (batch, frames); differ from `TRACE_SHAPE` to exercise the dynamic axes.
        tolerance: the largest difference accepted.

    Returns:
        max |onnx − eager| / max |eager|.

    Raises:
        RuntimeError: above `tolerance` (an export bug, not a user error).
    """
    mel, z = example_inputs(model.n_mels, model.hop_length, *shape, seed=1)
    reference = eager_decode(model, mel, z)
    got = run(sess, mel, z)
    if got.shape != tuple(reference.shape):
        raise RuntimeError(f"ONNX export: output shape {list(got.shape)} at input shape "
                           f"{list(mel.shape)}, eager gives {list(reference.shape)}")
    diff = relative_max_diff(reference, got)
    if not diff <= tolerance:
        raise RuntimeError(f"ONNX export: relative max difference {diff:.3g} against eager "
                           f"decoding exceeds {tolerance:g}")
    return diff


def export_onnx(model: WaveGlow, output: str | os.PathLike, opset: int = 17) -> tuple[Path, float]:
    """Export `model`'s synthesis graph to `output` (.onnx), checked for parity first.

    Args:
        model: the WaveGlow to export (not modified).
        output: the file to write, atomically (nothing is written on any failure).
        opset: ONNX opset.

    Returns:
        (the written path, the relative max difference against eager decoding at
        `CHECK_SHAPE`).

    Raises:
        UserError: a bad output name or an unwritable output.
    """
    out = check_output_path(output)
    check_opset(opset)
    data = onnx_model_bytes(model, opset)
    diff = check_parity(model, session(data))
    write(out, data)
    return out, diff


def write(path: Path, data: bytes) -> Path:
    """Write an exported model atomically; an unwritable place is a UserError."""
    try:
        return atomic_write(path, lambda f: f.write(data))
    except OSError as e:
        raise UserError(f"output={path}: cannot write the model ({e.strerror or e})") from None
