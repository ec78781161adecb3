"""`waveglow-eval checkpoint=<ckpt | [a,b] | run dir> output_dir=<dir>`: how good is a vocoder.

Copy synthesis of held-out clips (data=<corpus> split=test, or input=<wavs>) by each checkpoint,
next to the ground truth and Griffin-Lim, measured with PESQ, STOI, F0/V-UV error, MCD, log-mel
L1, MR-STFT, the exact log-likelihood and the real-time factor (`waveglow.eval`).

Exit status: 0 when at least one clip was evaluated (skipped clips are listed); 2 on a user
error or when nothing could be evaluated.
"""

from __future__ import annotations

import logging
import platform
import time
from pathlib import Path

from waveglow.cli.common import Script, app, save_config_beside
from waveglow.cli.synthesize import input_spec
from waveglow.config.apps import EvalApp
from waveglow.eval import METRICS, evaluate
from waveglow.eval.sources import corpus_clips
from waveglow.eval.summary import SHORT, summarize, table, write_csv, write_json

log = logging.getLogger("waveglow.eval")

SCRIPT = Script(
    name="waveglow-eval", config="waveglow_eval",
    summary="Evaluate checkpoints the way vocoders are compared: each held-out clip is vocoded from its own "
            "mel, and every checkpoint, Griffin-Lim and the ground truth are measured with PESQ, STOI/ESTOI, "
            "F0 RMSE and V/UV error, MCD, log-mel L1, MR-STFT, the exact log-likelihood and the real-time "
            "factor. Writes metrics.csv, summary.json, report.html (listen and look) and the WAVs.",
    usage="checkpoint=<ckpt | [a.pt,b.pt] | run dir> output_dir=<dir> [data=<corpus> split=test | input=<wavs>]",
    examples=("waveglow-eval checkpoint=checkpoints/demo-tiny/checkpoints/best.pt data=demo output_dir=outputs/eval",
              "waveglow-eval checkpoint=checkpoints/demo-tiny data=demo output_dir=outputs/eval-run",
              "waveglow-eval checkpoint=[a.pt,b.pt] input=held_out/ output_dir=outputs/eval max_files=20"),
)


@app(SCRIPT)
def main(cfg: EvalApp) -> None:
    """Evaluate, write the outputs and print the table."""
    from waveglow.eval.report import write_report
    from waveglow.eval.tensorboard import write_run_scalars

    t0 = time.perf_counter()
    if cfg.input is not None:
        clips = input_spec(cfg.input)
        source = f"input={cfg.input}"
    else:
        clips = corpus_clips(cfg.data, cfg.split)
        source = f"data={cfg.data.name} split={cfg.split}"
    checkpoint = input_spec(cfg.checkpoint)
    out = Path(cfg.output_dir)
    records = evaluate(checkpoint, clips, metrics=list(cfg.metrics), baselines=list(cfg.baselines),
                       sigma=cfg.sigma, seed=cfg.seed, max_files=cfg.max_files, output_dir=out,
                       workers=cfg.workers, device=cfg.device, precision=cfg.precision,
                       chunk_frames=cfg.chunk_frames, progress=cfg.progress)
    metrics = records.metrics
    summary = summarize(records, records.systems, metrics)
    clips_done = sorted({r["clip"] for r in records})
    written = [write_csv(out / "metrics.csv", records, metrics)]
    meta = {"checkpoint": checkpoint, "clips": source, "n_clips": len(clips_done), "sigma": cfg.sigma,
            "seed": cfg.seed, "sampling_rate": records.sampling_rate, "steps": records.steps,
            "skipped": [{"item": k, "reason": r} for k, r in records.skipped],
            "seconds_per_clip": records.metric_seconds, "cpu_seconds_per_clip": records.metric_cpu_seconds,
            "wall_seconds": records.wall_seconds,
            "machine": f"{platform.machine()}, {_cores()} cores"}
    written.append(write_json(out / "summary.json", summary, metrics, meta))
    if cfg.report:
        from waveglow.mel import MelSpectrogram

        mel_fn = MelSpectrogram(**records.audio).eval()
        written.append(write_report(out, records, summary, mel_fn, title=f"waveglow-eval: {source}"))
    save_config_beside(cfg, out, "eval", is_dir=True)
    if cfg.tensorboard and records.run_dirs:
        for run_dir in write_run_scalars(summary, records.steps, records.run_dirs, metrics):
            log.info("wrote eval/<metric> at %d checkpoint steps into %s (TensorBoard)", len(records.steps), run_dir)
    if records.skipped:
        log.warning("skipped %d:", len(records.skipped))
        for _, reason in records.skipped:
            log.warning("  %s", reason)
    print(f"\n{len(clips_done)} clips ({source}), mean ± 95% interval over clips, * best checkpoint or "
          "Griffin-Lim per column:", flush=True)
    print(table(summary, metrics), flush=True)
    print("\n".join(f"  {SHORT.get(m, m)}: {METRICS[m].label}; {METRICS[m].source}" for m in metrics))
    print(f"evaluated in {time.perf_counter() - t0:.1f} s; wrote {', '.join(map(str, written))}", flush=True)


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
