"""The `engine=onnxruntime` synthesis case: the exported fp32 ONNX model timed in onnxruntime.

Same inputs as the eager case (`engine=model`): the case's random mel and the latent
`model.infer` would draw from a generator seeded with `case.seed` (z = N(0, 1)·sigma), batch
`case.batch`, `case.seconds` of mel. The export (`waveglow.export.onnx_model_bytes`, the graph
`waveglow-export` writes) happens before timing; the session gets the case's thread count.
The row's `snr_db_vs_fp32` compares the ONNX output with eager fp32 decoding of the same z,
so the table shows speed and fidelity side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from waveglow.bench.case import Case
from waveglow.bench.cost import count_macs
from waveglow.bench.memory import PeakMemory
from waveglow.bench.report import fill_peak, fill_speed
from waveglow.bench.timing import time_runs
from waveglow.config import ModelConfig, from_dict
from waveglow.errors import UserError
from waveglow.export import eager_decode, onnx_model_bytes, run, session, snr_db
from waveglow.model import WaveGlow


def bench_onnxruntime(case: Case, peak: Mapping[str, float] | None, model: WaveGlow,
                      row: dict[str, Any], mel: Tensor) -> dict[str, Any]:
    """Time the ONNX export of `model` in onnxruntime (CPU execution provider, fp32).

    Args:
        case: the synthesis case (device cpu, precision fp32).
        peak: the machine's measured peak (`measure_machine_peak`), or None.
        model: the case's model (`resolve_model`), not modified.
        row: the case's row so far (identity, weights, params).
        mel: [batch, n_mels, frames] the case's raw log-mel.

    Returns:
        The row with speed (kHz, RTF), peak memory, cost and `snr_db_vs_fp32` filled in.

    Raises:
        UserError: a device or precision that onnxruntime's CPU provider does not run.
    """
    if torch.device(case.device).type != "cpu":
        raise UserError(f"engine=onnxruntime: device={case.device}: the export is timed on the "
                        "CPU execution provider; use device=cpu")
    if case.precision != "fp32":
        raise UserError(f"engine=onnxruntime: precision={case.precision}: the exported model is "
                        "fp32; use precision=fp32")
    audio = model.config["audio"]
    sr, hop = int(audio["sampling_rate"]), int(audio["hop_length"])
    B, frames = mel.shape[0], mel.shape[2]
    gen = torch.Generator().manual_seed(case.seed)
    z = torch.randn(B, hop * frames, generator=gen).mul_(case.sigma)  # as model.infer draws it
    sess = session(onnx_model_bytes(model), threads=torch.get_num_threads())
    mel_np, z_np = mel.numpy(), z.numpy()
    row["engine"] = "onnxruntime"
    with PeakMemory(torch.device("cpu")) as mem:
        times = time_runs(lambda: run(sess, mel_np, z_np), case.repeats, case.warmup,
                          torch.device("cpu"), case.clock)
    row["peak_mem_mib"] = mem.peak_mib
    model_cfg = from_dict(ModelConfig, model.model_config, prefix="model", strict=False)
    macs = count_macs(model_cfg, model.n_mels, hop, sr)["total"]
    fill_speed(row, times, B * hop * frames, sr, macs)
    fill_peak(row, peak)
    if case.snr:
        row["snr_db_vs_fp32"] = snr_db(eager_decode(model, mel, z), run(sess, mel_np, z_np))
    return row
