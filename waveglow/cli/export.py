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
    check_opset,
    check_output_path,
    default_calibration,
    export_int8,
    export_onnx,
    export_pt2,
    require_onnx,
    resolve_calibration,
    split_held_out,
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
    """Check every setting (int8 calibration files included), load the checkpoint, export,
    check parity, write."""
    output = check_output_path(cfg.output, ".pt2" if cfg.format == "pt2" else ".onnx")
    if cfg.quantize == "int8" and cfg.format != "onnx":
        raise UserError(f"quantize=int8: only with format=onnx (got format={cfg.format})")
    if cfg.calibration is not None and cfg.quantize != "int8":
        raise UserError(f"calibration={cfg.calibration}: only used with quantize=int8")
    if cfg.format == "onnx":
        require_onnx()
        check_opset(cfg.opset)
    # The calibration files are found before the checkpoint is loaded or anything is traced.
    source = None
    if cfg.quantize == "int8":
        source = resolve_calibration(str(cfg.calibration if cfg.calibration is not None else default_calibration()))
    checkpoint = Path(cfg.checkpoint)
    if output.exists() and checkpoint.exists() and output.resolve() == checkpoint.resolve():
        raise UserError(f"output={output}: would overwrite the checkpoint")
    t0 = time.perf_counter()
    model = load_model(checkpoint, device="cpu")
    mels = None
    if source is not None:  # read with the checkpoint's mel settings; split checked before tracing
        mels = calibration_mels(source, model.config["audio"], model.n_mels)
        calibrate, held_out = split_held_out(mels)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    log.info("%s: %.2fM parameters; tracing and checking the %s export", checkpoint, n_params, cfg.format)
    if mels is not None:
        log.info("int8: calibrating on %s of %s, checking on %s (minutes for the large models)",
                 _count(len(calibrate), "mel"), source.spec, _count(len(held_out), "held-out mel"))
        result = export_int8(model, output, mels, opset=cfg.opset)
        path = result.path
        check = (f"int8, calibrated on {_count(result.calibration_mels, 'mel')} of {source.spec}; SNR against "
                 f"fp32 {result.snr_db:.1f} dB on {_count(result.held_out_mels, 'held-out mel')}")
    elif cfg.format == "pt2":
        path, diff = export_pt2(model, output)
        check = f"pt2; relative max difference against eager synthesis {diff:.1e}"
    else:
        path, diff = export_onnx(model, output, opset=cfg.opset)
        check = f"onnx; relative max difference against eager synthesis {diff:.1e}"
    mib = path.stat().st_size / 2**20
    print(f"exported {checkpoint} -> {path} ({mib:.1f} MiB, {check}); "
          f"{time.perf_counter() - t0:.1f} s", flush=True)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
