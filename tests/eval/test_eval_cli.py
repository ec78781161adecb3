"""waveglow-eval through the real console script: the ground-truth row hits the metrics' ceilings
on demo clips, outputs and report.html are complete, a run directory evaluates every checkpoint
and writes eval/* into its event files, and bad inputs are one line each (exit 2 when nothing is
left). The model is a tiny WaveGlow with random end layers: what is measured here is the
pipeline, not the model."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli
from synth_helpers import active_model

from waveglow.checkpoint import build_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")


def save_model(path: Path, seed: int, step: int) -> Path:
    model, cfg = active_model(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, build_checkpoint(model, cfg, step=step))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("eval-ckpt") / "tiny.pt", seed=0, step=7)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ground_truth_hits_the_ceilings_and_the_report_is_complete(checkpoint, tmp_path, demo_root):
    out = tmp_path / "eval"
    proc = run_cli("waveglow-eval", f"checkpoint={checkpoint}", "data=demo", "split=test", "max_files=2",
                   "baselines=[ground_truth,griffin_lim,noise]", f"output_dir={out}", "device=cpu")
    assert "Traceback" not in proc.stderr
    table = rows(out / "metrics.csv")
    systems = ["tiny", "griffin_lim", "noise", "ground_truth"]
    clips = (demo_root / "splits" / "test.txt").read_text().split()[:2]
    assert sorted((r["clip"], r["system"]) for r in table) == sorted((c, s) for c in clips for s in systems)
    for r in table:
        if r["system"] == "ground_truth":
            assert float(r["pesq"]) == pytest.approx(4.644, abs=0.001)
            assert float(r["stoi"]) == pytest.approx(1.0, abs=1e-6)
            assert float(r["estoi"]) == pytest.approx(1.0, abs=1e-6)
            assert float(r["f0_rmse"]) == 0.0 and float(r["vuv_error"]) == 0.0
            assert float(r["mcd"]) == 0.0 and float(r["mel_l1"]) == 0.0 and float(r["mr_stft"]) == 0.0
        if r["system"] == "noise":  # the floor sits far below the ceilings
            assert float(r["pesq"]) < 1.5 and float(r["mcd"]) > 3.0
        if r["system"] == "tiny":
            assert r["step"] == "7" and np.isfinite(float(r["log_likelihood"])) and float(r["rtf"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metrics"]["pesq"]["unit"].startswith("MOS-LQO") and summary["metrics"]["mcd"]["unit"] == "dB"
    assert summary["systems"]["ground_truth"]["pesq"]["n"] == 2
    assert set(summary["seconds_per_clip"]) >= {"pesq", "stoi", "f0_rmse", "mcd", "synthesis"}
    assert set(summary["cpu_seconds_per_clip"]) >= {"pesq", "f0_rmse", "synthesis", "log_likelihood", "griffin_lim"}
    assert "PESQ ↑" in proc.stdout and "MCD dB ↓" in proc.stdout

    # The model's WAV is what waveglow-synthesize gives for the clip's mel: same noise keying.
    from waveglow.inference import Synthesizer

    synth = Synthesizer(checkpoint, device="cpu")
    ref, sr = sf.read(demo_root / "wavs" / f"{clips[0]}.wav", dtype="float32")
    expect = synth.from_mel(synth.frontend()(torch.from_numpy(ref)), sigma=0.6, seed=0, key=clips[0])[: ref.size]
    got, _ = sf.read(out / "wavs" / "tiny" / f"{clips[0]}.wav", dtype="float32")
    assert np.abs(got - expect.clamp(-1, 1).numpy()).max() <= 1.0 / 32768 + 1e-6

    page = (out / "report.html").read_text()
    assert page.count("<audio") == len(clips) * len(systems)
    linked = re.findall(r"(?:src|href)='([^']+)'", page)
    assert linked and all((out / link).is_file() for link in linked)
    assert sum(link.endswith(".png") for link in linked) == len(clips)  # one mel panel image per clip
    assert "http" not in page  # nothing from the network


def test_run_directory_evaluates_every_checkpoint_into_tensorboard(tmp_path, demo_root):
    run = tmp_path / "run"
    for seed, step in ((1, 10), (2, 20)):
        save_model(run / "checkpoints" / f"step_{step}.pt", seed, step)
    shutil.copy(run / "checkpoints" / "step_20.pt", run / "checkpoints" / "best.pt")
    out = tmp_path / "eval"
    clip = demo_root / "wavs" / "DEMO001-0002.wav"
    proc = run_cli("waveglow-eval", f"checkpoint={run}", f"input={clip}", f"output_dir={out}", "device=cpu",
                   "metrics=[log_likelihood,mel_l1,mr_stft,stoi]", "baselines=[ground_truth]", "workers=0")
    assert [r["system"] for r in rows(out / "metrics.csv")] == ["step_10", "step_20", "best", "ground_truth"]
    assert "wrote eval/<metric>" in proc.stderr
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert tags == {"eval/log_likelihood", "eval/mel_l1", "eval/mr_stft", "eval/stoi"}
    summary = json.loads((out / "summary.json").read_text())
    for tag in tags:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [10, 20]
        metric = tag.split("/", 1)[1]
        assert [e.value for e in events] == pytest.approx(
            [summary["systems"][s][metric]["mean"] for s in ("step_10", "step_20")], rel=1e-6)
    page = (out / "report.html").read_text()
    assert "steps_mel_l1.png" in page and (out / "images" / "steps_mel_l1.png").is_file()


def test_bad_clips_are_one_line_each_and_skipped(checkpoint, tmp_path, demo_root):
    clips = tmp_path / "clips"
    clips.mkdir()
    shutil.copy(demo_root / "wavs" / "DEMO001-0002.wav", clips / "good.wav")
    rng = np.random.default_rng(0)
    sf.write(clips / "short.wav", 0.1 * rng.standard_normal(2205).astype(np.float32), 22050)  # 0.1 s
    sf.write(clips / "silent.wav", np.zeros(22050, np.float32), 22050)
    sf.write(clips / "rate16k.wav", 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
    (clips / "garbage.wav").write_bytes(b"not audio at all" * 20)
    out = tmp_path / "eval"
    proc = run_cli("waveglow-eval", f"checkpoint={checkpoint}", f"input={clips}", f"output_dir={out}",
                   "device=cpu", "metrics=[mel_l1,pesq]", "baselines=[ground_truth]", "workers=0")
    assert "Traceback" not in proc.stderr
    assert {r["clip"] for r in rows(out / "metrics.csv")} == {"good"}
    lines = proc.stderr.splitlines()
    for name, what in (("short.wav", "shorter than one PESQ window"), ("silent.wav", "silent"),
                       ("rate16k.wav", "rate mismatch"), ("garbage.wav", "unreadable")):
        hits = [line for line in lines if name in line and what in line]
        assert len(hits) >= 1, (name, proc.stderr)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["skipped"]) == 4


def test_nothing_to_evaluate_is_exit_2_with_one_line(checkpoint, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    sf.write(clips / "silent.wav", np.zeros(22050, np.float32), 22050)
    (clips / "garbage.wav").write_bytes(b"RIFF")
    out = tmp_path / "eval"
    proc = run_cli("waveglow-eval", f"checkpoint={checkpoint}", f"input={clips}", f"output_dir={out}",
                   "device=cpu", check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "nothing could be evaluated" in error[0]
    assert not (out / "metrics.csv").exists()
    proc = run_cli("waveglow-eval", f"checkpoint={tmp_path / 'missing.pt'}", f"input={clips}",
                   f"output_dir={out}", check=False)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    # The start line ("waveglow-eval: N threads ...") and then the one error line.
    assert proc.returncode == 2 and lines[-1].startswith("error:") and "missing.pt" in lines[-1], proc.stderr
    assert all(ln.startswith("waveglow-eval: ") for ln in lines[:-1]), proc.stderr
    assert "Traceback" not in proc.stderr
