"""Likelihood scoring: the per-sample decomposition is exact, chunked scoring equals whole-file
scoring, and an injected click / noise burst in held-out demo speech is flagged at its time
(by a tiny model trained briefly here on other demo clips), through the API and the CLI."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
import soundfile as sf
import torch
from conftest import fit_on_clips, run_cli
from synth_helpers import tiny_config

from waveglow.checkpoint import FORMAT_VERSION, build_model, save_checkpoint
from waveglow.errors import UserError
from waveglow.inference import (
    Scorer,
    Synthesizer,
    frame_means,
    per_sample_log_likelihood,
    robust_z,
    suspect_regions,
    write_scores,
)
from waveglow.mel import MelSpectrogram

SR, HOP = 22050, 256
TEST_CLIP = "DEMO001-0001"  # held out from the brief training below
TRAIN_CLIPS = [f"DEMO001-{i:04d}" for i in range(2, 9)]
CLICK_S, BURST_S = 0.30, 0.45


# Tiny tensors: one intra-op thread (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


def load(demo_root, clip: str) -> torch.Tensor:
    audio, sr = sf.read(demo_root / "wavs" / f"{clip}.wav", dtype="float32")
    assert sr == SR
    return torch.from_numpy(audio)


def with_click(audio: torch.Tensor, at_s: float) -> torch.Tensor:
    """A full-scale 8-sample click (alternating ±0.9) at `at_s` seconds."""
    out = audio.clone()
    i = int(at_s * SR)
    out[i: i + 8] = torch.tensor([0.9, -0.9] * 4)
    return out


def with_burst(audio: torch.Tensor, at_s: float) -> torch.Tensor:
    """20 ms of white noise (0.1 rms) added at `at_s` seconds."""
    out = audio.clone()
    i = int(at_s * SR)
    out[i: i + 441] += 0.1 * torch.randn(441, generator=torch.Generator().manual_seed(1))
    return out


@pytest.fixture(scope="module")
def trained(demo_root):
    """tiny, 40 Adam steps on 2 x 4096-sample dithered segments of other demo clips (~1 nat/sample)."""
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg)
    mel_fn = MelSpectrogram.from_config(cfg["audio"])
    clips = [load(demo_root, c) for c in TRAIN_CLIPS]
    fit_on_clips(model, mel_fn, clips, steps=40, segment=4096, lr=3e-3)
    return model.eval(), cfg


@pytest.fixture(scope="module")
def scorer(trained):
    model, cfg = trained
    return Scorer(Synthesizer.from_model(copy.deepcopy(model), cfg, device="cpu"))


def test_per_sample_values_sum_to_log_prob(trained, demo_root):
    model, cfg = trained
    audio = load(demo_root, TEST_CLIP)
    T = audio.numel() - audio.numel() % 8
    x = audio[:T][None]
    mel = MelSpectrogram.from_config(cfg["audio"])(x)
    with torch.inference_mode():
        ll = per_sample_log_likelihood(model, x, mel)
        lp = model.log_prob(x, mel)
    assert ll.shape == x.shape
    assert abs(ll.double().sum().item() - lp.item()) < 1e-5 * abs(lp.item()) + 1e-2


def test_chunked_scoring_equals_whole_file(trained, scorer, demo_root):
    model, cfg = trained
    audio = load(demo_root, "DEMO001-0009")
    mel = scorer.mel_fn(audio)
    whole = scorer.per_sample(audio, mel)
    chunked = Scorer(Synthesizer.from_model(copy.deepcopy(model), cfg, device="cpu", chunk_frames=20,
                                            crossfade_frames=0))
    assert mel.shape[-1] > 3 * 20
    assert (chunked.per_sample(audio, mel) - whole).abs().max().item() < 1e-4


def test_click_and_noise_burst_are_flagged_at_their_time(scorer, demo_root):
    clean = load(demo_root, TEST_CLIP)
    base = scorer.score_audio(clean, "clean")
    assert not any(r.start_s <= t <= r.end_s for r in base.regions for t in (CLICK_S, BURST_S))
    for name, audio, at in (("click", with_click(clean, CLICK_S), CLICK_S),
                            ("burst", with_burst(clean, BURST_S), BURST_S)):
        result = scorer.score_audio(audio, name)
        hits = [r for r in result.regions if r.start_s - 0.012 <= at <= r.end_s]
        assert hits, (name, result.regions)
        # The injected event is the least likely part of the file, far below the threshold.
        assert hits[0].min_z == min(r.min_z for r in result.regions) < -2 * scorer.threshold
        assert hits[0].end_s - hits[0].start_s < 0.1
        # Away from the event the frames score as before.
        f = int(at * SR / HOP)
        far = [i for i in range(len(base.frame_nats)) if abs(i - f) > 12]
        assert max(abs(result.frame_nats[i] - base.frame_nats[i]) for i in far) < 1e-4


def test_robust_z_and_regions():
    frames = torch.tensor([2.0, 2.1, 1.9, 2.0, -5.0, -4.0, 2.0, 2.05, 1.95, -3.0, 2.0, 2.0])
    z, med, mad = robust_z(frames)
    assert med == pytest.approx(2.0) and mad == pytest.approx(0.05)
    regions = suspect_regions(frames, z, threshold=5.0, merge_gap=0, hop=HOP, sampling_rate=SR)
    assert [(r.first_frame, r.last_frame) for r in regions] == [(4, 5), (9, 9)]
    assert regions[0].start_s == pytest.approx(3.5 * HOP / SR) and regions[0].end_s == pytest.approx(5.5 * HOP / SR)
    merged = suspect_regions(frames, z, threshold=5.0, merge_gap=3, hop=HOP, sampling_rate=SR)
    assert [(r.first_frame, r.last_frame) for r in merged] == [(4, 9)]
    # Frame means: frame f covers samples [f·hop − hop/2, f·hop + hop/2).
    values = torch.arange(1024, dtype=torch.float32)
    assert frame_means(values, HOP, 5).tolist() == pytest.approx([63.5, 255.5, 511.5, 767.5, 959.5])


def test_score_cli_writes_json_and_csv(trained, demo_root, tmp_path):
    model, cfg = trained
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": cfg,
                           "step": 40, "epoch": 0})
    wavs = tmp_path / "wavs"
    wavs.mkdir()
    clean = load(demo_root, TEST_CLIP)
    sf.write(wavs / "clean.wav", clean.numpy(), SR, subtype="FLOAT")
    sf.write(wavs / "clicked.wav", with_click(clean, CLICK_S).numpy(), SR, subtype="FLOAT")
    out = tmp_path / "scores" / "scores.json"
    proc = run_cli("waveglow-score", f"checkpoint={ckpt}", f"input={wavs}", f"output={out}",
                   env={"OMP_NUM_THREADS": "1"})
    assert "nats/sample" in proc.stdout and "suspect" in proc.stdout
    doc = json.loads(out.read_text())
    by_name = {f["file"].rsplit("/", 1)[-1]: f for f in doc["files"]}
    clicked = by_name["clicked.wav"]
    assert any(r["start_s"] - 0.012 <= CLICK_S <= r["end_s"] for r in clicked["regions"])
    assert not any(r["start_s"] <= CLICK_S <= r["end_s"] for r in by_name["clean.wav"]["regions"])
    assert clicked["nats_per_sample"] < by_name["clean.wav"]["nats_per_sample"]
    assert len(clicked["frame_nats"]) == 1 + clean.numel() // HOP
    assert doc["unit"] == "nats per sample" and (out.parent / "scores.config.yaml").exists()
    # CSV: one row per file plus a per-frame table (written in process from the same scores).
    scores = [Scorer(Synthesizer(ckpt, device="cpu")).score_audio(clean, "clean.wav")]
    written = write_scores(tmp_path / "s.csv", scores, [], {"hop_length": HOP, "sampling_rate": SR,
                                                            "threshold": 8.0})
    assert [p.name for p in written] == ["s.csv", "s_frames.csv"]
    assert written[0].read_text().splitlines()[0].startswith("file,seconds,samples,nats_per_sample")
    assert len(written[1].read_text().splitlines()) == 1 + len(scores[0].frame_nats)


def test_given_mels_in_another_convention(scorer, demo_root, tmp_path):
    # A mel given for the audio (e.g. a TTS's, here the frontend's own in dB) scores like the
    # audio's own mel once its convention is declared; mel_dir finds it by the input's name.
    audio = load(demo_root, "DEMO001-0002")
    own = scorer.score_audio(audio, "a")
    mel_db = scorer.mel_fn(audio) * 20 / math.log(10.0)
    given = scorer.score_audio(audio, "a", mel=mel_db, input_convention="db")
    assert abs(given.nats_per_sample - own.nats_per_sample) < 1e-4
    wav = tmp_path / "wavs" / "DEMO001-0002.wav"
    wav.parent.mkdir()
    shutil.copy(demo_root / "wavs" / "DEMO001-0002.wav", wav)
    (tmp_path / "mels").mkdir()
    torch.save(mel_db, tmp_path / "mels" / "DEMO001-0002.pt")
    scores, _ = scorer.score_files(tmp_path / "wavs", progress=False, mel_dir=tmp_path / "mels",
                                   input_convention="db")
    assert abs(scores[0].nats_per_sample - own.nats_per_sample) < 1e-4
    with pytest.raises(UserError, match="mel_dir"):
        scorer.score_files(tmp_path / "wavs", progress=False, input_convention="db")
    with pytest.raises(UserError, match="at least"):
        scorer.score_audio(audio, "a", mel=mel_db[:, :10], input_convention="db")
