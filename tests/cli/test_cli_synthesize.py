"""The console scripts waveglow-synthesize and waveglow-resynthesize, run as subprocesses on
real mel files written by waveglow-mel from the demo corpus."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf
import torch
from conftest import run_cli, run_script
from synth_helpers import HOP, active_model, write_bad_inputs

from waveglow.checkpoint import FORMAT_VERSION, save_checkpoint
from waveglow.inference import Synthesizer

CLIPS = ("DEMO001-0001", "DEMO001-0003", "DEMO001-0005")
# A tiny model's tensors are too small for a second intra-op thread to pay off; on a busy machine
# its synchronization dominates the run time.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, demo_root):
    """A checkpoint (tiny, active couplings) and mels of three demo clips made by waveglow-mel."""
    root = tmp_path_factory.mktemp("cli_synth")
    model, cfg = active_model(seed=2)
    ckpt = root / "tiny.pt"
    save_checkpoint(ckpt, {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": cfg,
                           "step": 0, "epoch": 0})
    wavs = root / "wavs"
    wavs.mkdir()
    for clip in CLIPS:
        shutil.copy(demo_root / "wavs" / f"{clip}.wav", wavs / f"{clip}.wav")
    run_script("waveglow-mel", f"input={wavs}", f"output_dir={root / 'mels'}", env=ONE_THREAD)
    return root, ckpt


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_synthesize_mel_files(workdir):
    root, ckpt = workdir
    mels, out = root / "mels", root / "out"
    proc = run_cli("waveglow-synthesize", f"checkpoint={ckpt}", f"input={mels}", f"output_dir={out}",
                   "batch_size=8", "format=FLOAT", "device=auto", "seed=5", env=ONE_THREAD)
    summary = proc.stdout.strip().splitlines()[-1]
    assert "synthesized 3 files" in summary and "real-time factor" in summary and "kHz" in summary
    assert "clipped samples" in summary
    assert (out / "synthesize.config.yaml").exists()  # the resolved config, beside the WAVs
    synth = Synthesizer(ckpt, device="cpu")
    for clip in CLIPS:
        mel = torch.load(mels / f"{clip}.pt", weights_only=True)
        audio, sr = sf.read(out / f"{clip}.wav", dtype="float32")
        assert sr == 22050 and audio.shape == (HOP * mel.shape[-1],)
        # The CLI batched all three; one at a time in process, with the file's own noise key,
        # gives the same samples (FLOAT output: no quantization, no clipping).
        alone = synth.from_mel(mel, seed=5, keys=[clip], batch_size=1)
        assert (torch.from_numpy(audio) - alone).abs().max().item() < 1e-5
    assert not list(out.glob(".*"))


def test_bad_mel_fails_with_one_line_and_no_wav(workdir, tmp_path):
    root, ckpt = workdir
    files = write_bad_inputs(tmp_path / "mels")
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(files["good"], d / "good.pt")
    shutil.copy(files["wrong_n_mels"], d / "wrong_n_mels.pt")
    out = tmp_path / "out"
    proc = run_script("waveglow-synthesize", f"checkpoint={ckpt}", f"input={d}", f"output_dir={out}",
                   check=False, env=ONE_THREAD)
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "wrong_n_mels.pt" in line and "80" in line
    assert not list(out.glob("*.wav")) and not list(out.glob(".*"))


def test_checkpoint_that_is_not_ours(workdir, tmp_path):
    root, _ = workdir
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}, "iteration": 10}, foreign)
    out = tmp_path / "out"
    proc = run_script("waveglow-synthesize", f"checkpoint={foreign}", f"input={root / 'mels'}",
                   f"output_dir={out}", check=False, env=ONE_THREAD)
    assert proc.returncode == 2
    assert "foreign.pt" in one_error_line(proc.stderr)
    assert not list(out.glob("*.wav"))


def test_on_error_skip_lists_every_bad_file(workdir, tmp_path):
    _, ckpt = workdir
    files = write_bad_inputs(tmp_path / "mels")
    listing = tmp_path / "mels.txt"
    listing.write_text("\n".join(str(p) for p in files.values()) + "\n")
    out = tmp_path / "out"
    proc = run_script("waveglow-synthesize", f"checkpoint={ckpt}", f"input={listing}", f"output_dir={out}",
                   "on_error=skip", "progress=false", env=ONE_THREAD)
    assert sorted(p.name for p in out.glob("*.wav")) == ["good.wav"]
    for name, path in files.items():
        if name != "good":
            assert str(path) in proc.stderr, name
    assert "8 files skipped" in proc.stdout


def test_resynthesize_reports_distances(workdir, demo_root):
    root, ckpt = workdir
    out = root / "resynth"
    proc = run_cli("waveglow-resynthesize", f"checkpoint={ckpt}", f"input={root / 'wavs'}",
                   f"output_dir={out}", "sigma=0.0", env=ONE_THREAD)
    assert "mel L1" in proc.stdout and "multi-resolution STFT distance" in proc.stdout
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [Path(r["file"]).stem for r in rows[:-1]] == list(CLIPS) and rows[-1]["file"] == "mean"
    doc = json.loads((out / "metrics.json").read_text())
    assert len(doc["files"]) == 3 and doc["mean"]["mel_l1"] > 0 and doc["mean"]["mrstft"] > 0
    for clip in CLIPS:
        ref = sf.info(str(root / "wavs" / f"{clip}.wav"))
        got = sf.info(str(out / f"{clip}.wav"))
        assert got.frames == ref.frames and got.samplerate == ref.samplerate


def test_input_convention_log10_and_quiet_logs(workdir, tmp_path):
    # TTS-style log10 mels: with input_convention=log10 they give the natural-log synthesis; the
    # progress bar (on by default) stays out of a redirected log; "1 file", never "1 files".
    root, ckpt = workdir
    clip = CLIPS[0]
    mel = torch.load(root / "mels" / f"{clip}.pt", weights_only=True)
    d = tmp_path / "log10"
    d.mkdir()
    torch.save(mel / torch.log(torch.tensor(10.0)), d / f"{clip}.pt")
    out = tmp_path / "out"
    proc = run_script("waveglow-synthesize", f"checkpoint={ckpt}", f"input={d}", f"output_dir={out}",
                   "input_convention=log10", "format=FLOAT", "seed=3", env=ONE_THREAD)
    assert "\r" not in proc.stderr and "looks like" not in proc.stderr, proc.stderr
    assert "synthesized 1 file," in proc.stdout and "1 files" not in proc.stdout
    audio, _ = sf.read(out / f"{clip}.wav", dtype="float32")
    natural = Synthesizer(ckpt, device="cpu").from_mel(mel, seed=3, key=clip)  # FLOAT: not clipped
    assert (torch.from_numpy(audio) - natural).abs().max().item() < 1e-4
