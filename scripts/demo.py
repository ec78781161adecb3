#!/usr/bin/env python
"""`make demo`: the five-minute tour on a CPU.

Preprocesses the bundled demo corpus, trains the `tiny` model on it for a few minutes, turns the
held-out clips into mel files, vocodes them to outputs/demo/*.wav, repairs one held-out clip
with clicks and a noise burst injected (outputs/demo/repaired/), converts one with a formant
shift (outputs/demo/converted/), evaluates the model on the test clips next to Griffin-Lim and the
ground truth (outputs/demo/eval/report.html), and prints the validation log-likelihood before and
after training and the evaluation table. Every step runs the real console scripts, so what the
demo shows is what a user gets.

Environment overrides: DEMO_STEPS (training steps), DEMO_RUN_DIR, DEMO_OUT, DEMO_THREADS (`make demo
THREADS=N`: the thread setting of every step that has one; unset, each takes the cores free at its start).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from waveglow.data.audio import save_audio

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
STEPS = int(os.environ.get("DEMO_STEPS", "300"))
RUN_DIR = Path(os.environ.get("DEMO_RUN_DIR", REPO / "checkpoints" / "demo-tiny"))
OUT = Path(os.environ.get("DEMO_OUT", REPO / "outputs" / "demo"))
CORPUS = REPO / "data" / "demo"
THREADS = os.environ.get("DEMO_THREADS", "").strip()
THREAD_KEYS = {"waveglow-train": "train.threads", "waveglow-synthesize": "threads", "waveglow-enhance": "threads",
               "waveglow-convert": "threads", "waveglow-eval": "threads"}


def step(title: str, *cmd: str) -> None:
    if THREADS and cmd[0] in THREAD_KEYS:
        cmd = (*cmd, f"{THREAD_KEYS[cmd[0]]}={THREADS}")
    print(f"\n==> {title}\n    $ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([str(BIN / cmd[0]), *cmd[1:]], cwd=REPO)
    if proc.returncode != 0:
        sys.exit(f"demo: `{cmd[0]}` failed with exit status {proc.returncode}")
    print(f"    ({time.perf_counter() - t0:.0f} s)", flush=True)


def damage(src: Path, dst: Path) -> None:
    """Write `src` with three 8-sample full-scale clicks and 20 ms of 0.1-rms noise to `dst`."""
    audio, sr = sf.read(src, dtype="float32")
    n = audio.size
    for frac in (0.25, 0.5, 0.75):
        i = int(frac * n)
        audio[i: i + 8] = [0.9, -0.9] * 4
    i, burst = int(0.4 * n), int(0.020 * sr)
    audio[i: i + burst] += 0.1 * np.random.default_rng(0).standard_normal(burst).astype(np.float32)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_audio(dst, audio, sr, subtype="PCM_16")  # rounded to the int16 grid, clipped at full scale


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    t_start = time.perf_counter()
    step("1/7 preprocess the demo corpus (mels, splits, statistics)", "waveglow-preprocess", "data=demo")

    step(f"2/7 train model=tiny for {STEPS} steps on CPU (resumes if {RUN_DIR.name} exists)",
         "waveglow-train", "data=demo", "model=tiny", "train=demo", "data.segment_length=8192",
         f"train.max_steps={STEPS}", f"run_dir={RUN_DIR}")

    val_ids = (CORPUS / "splits" / "val.txt").read_text().split()
    test_ids = (CORPUS / "splits" / "test.txt").read_text().split()
    held_out = val_ids + test_ids
    OUT.mkdir(parents=True, exist_ok=True)
    filelist = OUT / "held_out_wavs.txt"
    filelist.write_text("".join(f"{CORPUS / 'wavs' / (i + '.wav')}\n" for i in held_out))
    mel_dir = OUT / "mels"
    step(f"3/7 mel files for the {len(held_out)} held-out clips", "waveglow-mel",
         f"input={filelist}", f"output_dir={mel_dir}")

    ckpt = RUN_DIR / "checkpoints" / "best.pt"
    if not ckpt.exists():
        ckpt = RUN_DIR / "checkpoints" / "last.pt"
    step("4/7 synthesize WAVs from the mel files", "waveglow-synthesize", f"checkpoint={ckpt}",
         f"input={mel_dir}", f"output_dir={OUT}")

    # A damaged copy of one held-out clip: three full-scale clicks and 20 ms of noise.
    clip = test_ids[0]
    damaged = OUT / "damaged" / f"{clip}.wav"
    damage(CORPUS / "wavs" / f"{clip}.wav", damaged)
    step("5/7 repair a held-out clip with clicks and a noise burst injected (outputs: repaired/)",
         "waveglow-enhance", f"checkpoint={ckpt}", f"input={damaged}", f"output_dir={OUT / 'repaired'}")
    step("6/7 convert a held-out clip with formants shifted up 15% (outputs: converted/)",
         "waveglow-convert", f"checkpoint={ckpt}", f"input={CORPUS / 'wavs' / (clip + '.wav')}",
         f"output_dir={OUT / 'converted'}", "formant_shift=1.15")
    step("7/7 evaluate on the test clips next to Griffin-Lim and the ground truth (outputs: eval/)",
         "waveglow-eval", f"checkpoint={ckpt}", "data=demo", "split=test", f"output_dir={OUT / 'eval'}")

    metrics = read_metrics(RUN_DIR)
    print("\n==> done in %.1f min" % ((time.perf_counter() - t_start) / 60))
    if metrics:
        first, last = metrics[0], metrics[-1]
        best = max(m["val_log_likelihood"] for m in metrics)
        print(f"    validation log-likelihood: {first['val_log_likelihood']:.3f} nats/sample at step "
              f"{first['step']} -> {last['val_log_likelihood']:.3f} at step {last['step']} "
              f"(best {best:.3f}; higher is better)")
    wavs = sorted(OUT.glob("*.wav"))
    shown = OUT.relative_to(REPO) if OUT.is_relative_to(REPO) else OUT
    print(f"    {len(wavs)} WAVs in {shown}/")
    print(f"    repair:     {shown}/damaged/{clip}.wav -> {shown}/repaired/{clip}.wav "
          f"(regions: {shown}/repaired/enhance_report.csv)")
    print(f"    conversion: {shown}/converted/{clip}.wav (formant_shift=1.15)")
    print(f"    checkpoint: {ckpt.relative_to(REPO) if ckpt.is_relative_to(REPO) else ckpt}")
    print("    curves:     make tensorboard   (then open http://127.0.0.1:6006)")
    print_eval_table(OUT / "eval", shown)


def print_eval_table(eval_dir: Path, shown: Path) -> None:
    """The evaluation's table again, read back from its summary.json (the last thing the demo says)."""
    import math

    from waveglow.eval.summary import table

    doc = json.loads((eval_dir / "summary.json").read_text())
    summary = {s: {m: {k: math.nan if v is None else v for k, v in vals.items()} for m, vals in per.items()}
               for s, per in doc["systems"].items()}
    print(f"\n==> the demo model on {doc['n_clips']} test clips (mean ± 95% interval; * best of model and "
          f"Griffin-Lim; report: {shown}/eval/report.html)")
    print(table(summary, list(doc["metrics"])))


if __name__ == "__main__":
    main()
