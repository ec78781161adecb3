"""Deployment exports of the synthesis graph: ONNX (fp32, optionally int8) for onnxruntime.

`onnx` (trace, check, run, parity), `graph` (the traceable synthesis module), `quantize`
(static int8 of the conditioners, calibrated on a few mels and checked on held-out ones). Needs the `export` extra
(onnx, onnxruntime); importing this package without them works, using it raises a UserError.
"""

from waveglow.export.graph import SynthesisGraph, traceable
from waveglow.export.onnx import (
    PARITY_TOLERANCE,
    check_opset,
    check_output_path,
    check_parity,
    eager_decode,
    example_inputs,
    export_onnx,
    onnx_model_bytes,
    relative_max_diff,
    require_onnx,
    run,
    session,
    snr_db,
    write,
)
from waveglow.export.pt2 import export_pt2, pt2_bytes
from waveglow.export.quantize import (
    MIN_SNR_DB,
    CalibrationSource,
    Int8Export,
    calibration_feeds,
    calibration_mels,
    conditioner_convs,
    default_calibration,
    export_int8,
    quantize_int8,
    resolve_calibration,
    split_held_out,
)

__all__ = [
    "MIN_SNR_DB",
    "PARITY_TOLERANCE",
    "CalibrationSource",
    "Int8Export",
    "SynthesisGraph",
    "calibration_feeds",
    "calibration_mels",
    "check_opset",
    "check_output_path",
    "check_parity",
    "conditioner_convs",
    "default_calibration",
    "eager_decode",
    "example_inputs",
    "export_onnx",
    "export_pt2",
    "export_int8",
    "onnx_model_bytes",
    "pt2_bytes",
    "quantize_int8",
    "relative_max_diff",
    "require_onnx",
    "resolve_calibration",
    "run",
    "session",
    "snr_db",
    "split_held_out",
    "traceable",
    "write",
]
