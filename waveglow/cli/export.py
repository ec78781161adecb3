"""`waveglow-export checkpoint=<ckpt> output=<model.onnx> [quantize=int8]`: the synthesis graph.

Writes an ONNX model with inputs `mel` [B, n_mels, F] (raw log-mel) and `z` [B, hop·F] (the
latent, already × sigma) and output `audio` [B, hop·F]; B and F dynamic; weight norm folded, mel
statistics inside. Before writing, onnxruntime runs the export at another shape and compares it
with eager decoding. `format=pt2` writes a torch.export program instead.

Exit status: 0 when the file was written; 2 on a user error (missing or invalid checkpoint, bad
output name, unwritable output, a refused option), with nothing written.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from waveglow.checkpoint import load_model
from waveglow.cli.common import Script, app
from waveglow.config import ExportApp
from waveglow.errors import UserError
from waveglow.export import (
    calibration_mels,
    check_output_path,
    default_calibration,
    export_int8,
    export_onnx,
    export_pt2,
)

log = logging.getLogger("waveglow.export")

SCRIPT = Script(
    name="waveglow-export", config="waveglow_export",
    summary="Export a checkpoint's synthesis graph for deployment: ONNX (onnxruntime) with inputs mel "
            "[B, n_mels, F] (raw log-mel, as waveglow-synthesize reads) and z [B, hop*F] (the latent, "
            "already multiplied by sigma), output audio [B, hop*F], B and F dynamic; weight norm folded "
            "and the mel statistics inside. The export is checked against eager synthesis before it is "
            "written. format=pt2 writes a torch.export program. See docs/deployment.md.",
    usage="checkpoint=<ckpt> output=<model.onnx | model.pt2> [format=onnx|pt2] [quantize=int8]",
    examples=("waveglow-export checkpoint=run/checkpoints/best.pt output=vocoder.onnx",
              "waveglow-export checkpoint=run/checkpoints/best.pt output=vocoder.pt2 format=pt2"),
)


@app(SCRIPT)
def main(cfg: ExportApp) -> None:
    """Check the settings, load the checkpoint, export, check parity, write."""
    output = check_output_path(cfg.output, ".pt2" if cfg.format == "pt2" else ".onnx")
    if cfg.quantize == "int8" and cfg.format != "onnx":
        raise UserError(f"quantize=int8: only with format=onnx (got format={cfg.format})")
    if cfg.calibration is not None and cfg.quantize != "int8":
        raise UserError(f"calibration={cfg.calibration}: only used with quantize=int8")
    checkpoint = Path(cfg.checkpoint)
    if output.exists() and checkpoint.exists() and output.resolve() == checkpoint.resolve():
        raise UserError(f"output={output}: would overwrite the checkpoint")
    t0 = time.perf_counter()
    model = load_model(checkpoint, device="cpu")
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    log.info("%s: %.2fM parameters; tracing and checking the %s export", checkpoint, n_params, cfg.format)
    if cfg.quantize == "int8":
        source = cfg.calibration if cfg.calibration is not None else default_calibration()
        mels = calibration_mels(str(source), model.config["audio"], model.n_mels)
        mels_text = f"{len(mels)} {'mel' if len(mels) == 1 else 'mels'} of {source}"
        log.info("int8: calibrating on %s (minutes for the large models)", mels_text)
        path, snr = export_int8(model, output, mels, opset=cfg.opset)
        check = f"int8, calibrated on {mels_text}; SNR against fp32 {snr:.1f} dB"
    elif cfg.format == "pt2":
        path, diff = export_pt2(model, output)
        check = f"pt2; relative max difference against eager synthesis {diff:.1e}"
    else:
        path, diff = export_onnx(model, output, opset=cfg.opset)
        check = f"onnx; relative max difference against eager synthesis {diff:.1e}"
    mib = path.stat().st_size / 2**20
    print(f"exported {checkpoint} -> {path} ({mib:.1f} MiB, {check}); "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
