"""Streaming latency of each shipped model on this machine (not a test; figures for docs/synthesis.md).

    .venv/bin/python tests/inference/stream_latency.py [--models tiny,squeeze,waveglow_256] [--threads 2]

For each model (random weights: the cost does not depend on them) it prints the receptive field
(the algorithmic latency: frames that must arrive after a frame before its audio is final) in
frames and ms, and the measured time to first audio when 1-frame pieces arrive as fast as they are
taken (pure compute: the first decode of rf + 1 frames), wall and process CPU time, median and
minimum of `--repeats` runs after one warm-up. On a shared machine the CPU time is the steadier
figure; with --threads 1 it is the wall time of an idle core.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import compose  # noqa: E402

from waveglow.checkpoint import build_model  # noqa: E402
from waveglow.config import to_dict  # noqa: E402
from waveglow.inference import Synthesizer  # noqa: E402


def first_audio_seconds(synth: Synthesizer, mel: torch.Tensor) -> tuple[float, float]:
    """(wall, process CPU) seconds until the stream's first chunk."""
    t0, c0 = time.perf_counter(), time.process_time()
    next(iter(synth.stream(mel[:, f: f + 1] for f in range(mel.shape[1]))))
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,squeeze,waveglow_256")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.models.split(","):
        cfg = to_dict(compose("waveglow_train", f"model={name}", "data=demo"))
        torch.manual_seed(0)
        synth = Synthesizer.from_model(build_model(cfg).eval(), cfg, device="cpu")
        rf, hop, sr = synth.receptive_field, synth.hop_length, synth.sampling_rate
        mel = torch.randn(synth.n_mels, rf + 2) - 5.0
        first_audio_seconds(synth, mel)  # warm-up
        runs = [first_audio_seconds(synth, mel) for _ in range(args.repeats)]
        wall, cpu = (sorted(r[i] for r in runs) for i in (0, 1))
        print(f"{name}: receptive field {rf} frames = {1000 * rf * hop / sr:.0f} ms; time to first audio "
              f"({args.threads} threads): wall median {1000 * statistics.median(wall):.0f} ms "
              f"(min {1000 * wall[0]:.0f}), process CPU median {1000 * statistics.median(cpu):.0f} ms "
              f"(min {1000 * cpu[0]:.0f}); first chunk {hop} samples", flush=True)


if __name__ == "__main__":
    main()
