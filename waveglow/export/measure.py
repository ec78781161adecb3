"""`python -m waveglow.export.measure --model waveglow_256`: the int8 verdict's figures.

Exports a model (a config name: untrained, coupling end layers randomized as the benchmark
does; or a checkpoint), quantizes it to int8 (`quantize_int8`, calibrated on demo-corpus mels),
and measures on the same mel and the same z:

    eager fp32 (`WaveGlow.decode` under inference_mode, the toolkit's synthesis path),
    ONNX fp32 and ONNX int8 in onnxruntime (CPU provider), for each of `--threads` (e.g. 1,2),

each the median of `--repeats` timed runs after one warm-up, in kHz (audio samples per second
/ 1000); and the SNR of ONNX fp32 and int8 against eager fp32, on a random speech-like mel and
on a real demo mel. Prints one JSON line. A development measurement, not a console script.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from waveglow.bench.cases import resolve_model
from waveglow.bench.timing import CLOCKS
from waveglow.config import AudioConfig, to_dict
from waveglow.export.onnx import (
    eager_decode,
    example_inputs,
    onnx_model_bytes,
    relative_max_diff,
    run,
    session,
    snr_db,
)
from waveglow.export.quantize import calibration_feeds, calibration_mels, quantize_int8


def _median_seconds(fn: Callable[[], Any], repeats: int, clock: str) -> float:
    now = CLOCKS[clock]
    fn()
    times = []
    for _ in range(repeats):
        t0 = now()
        fn()
        times.append(now() - t0)
    return statistics.median(times)


def measure(model_spec: str, threads: Sequence[int] = (1,), seconds: float = 1.0, repeats: int = 3,
            calibration: str = "data/demo/wavs", clock: str = "wall") -> dict[str, Any]:
    """The figures of the module docstring for one model, as a dict (kHz per thread count)."""
    torch.set_num_threads(max(threads))
    model, _, audio, weights = resolve_model(model_spec, AudioConfig())
    model.remove_weight_norm()
    hop, sr = audio.hop_length, audio.sampling_rate
    frames = max(1, round(seconds * sr / hop))
    t0 = time.perf_counter()
    fp32 = onnx_model_bytes(model)
    export_s = time.perf_counter() - t0
    mels = calibration_mels(calibration, to_dict(audio), audio.n_mels, files=9)
    held_out, mels = mels[-1], mels[:-1]  # the SNR's real mel is not a calibration mel
    t0 = time.perf_counter()
    int8 = quantize_int8(fp32, calibration_feeds(mels, hop))
    quantize_s = time.perf_counter() - t0

    mel, z = example_inputs(audio.n_mels, hop, 1, frames, seed=5)
    real = held_out[None, :, :frames]
    z_real = z[:, :hop * real.shape[2]]
    s32, s8 = session(fp32, max(threads)), session(int8, max(threads))
    ref, ref_real = eager_decode(model, mel, z), eager_decode(model, real, z_real)
    out32 = run(s32, mel, z)
    row: dict[str, Any] = {
        "model": model_spec, "weights": weights, "clock": clock, "audio_seconds": hop * frames / sr,
        "export_s": export_s, "quantize_s": quantize_s, "calibration_mels": len(mels),
        "fp32_mib": len(fp32) / 2**20, "int8_mib": len(int8) / 2**20,
        "onnx_fp32_rel_max_diff": relative_max_diff(ref, out32),
        "snr_db_onnx_fp32": snr_db(ref, out32), "snr_db_int8": snr_db(ref, run(s8, mel, z)),
        "snr_db_int8_real_mel": snr_db(ref_real, run(s8, real, z_real)),
    }
    for n in threads:
        torch.set_num_threads(n)
        sessions = {"onnx_fp32": session(fp32, n), "onnx_int8": session(int8, n)}
        fns: dict[str, Callable[[], Any]] = {"eager_fp32": lambda: eager_decode(model, mel, z)}
        fns.update({k: functools.partial(run, s, mel, z) for k, s in sessions.items()})
        for name, fn in fns.items():
            row[f"khz_{name}_t{n}"] = hop * frames / _median_seconds(fn, repeats, clock) / 1e3
    return row


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m waveglow.export.measure", description=__doc__)
    parser.add_argument("--model", default="waveglow_256", help="model config name or checkpoint")
    parser.add_argument("--threads", default="1", help="thread counts to time, e.g. 1,2")
    parser.add_argument("--seconds", type=float, default=1.0, help="audio seconds of mel timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    parser.add_argument("--calibration", default="data/demo/wavs", help="mels or audio for calibration")
    args = parser.parse_args(argv)
    threads = [int(t) for t in str(args.threads).split(",") if t.strip()]
    print(json.dumps(measure(args.model, threads, args.seconds, args.repeats, args.calibration,
                             args.clock)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
