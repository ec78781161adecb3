"""waveglow-distill: a few steps bring the student toward the teacher on held-out clips, a resumed
run is bit-identical to an uninterrupted one, the student is an ordinary checkpoint, and bad
input (teacher file, audio settings) is one error line with nothing written.

The teacher is the `tiny` model (short upsampler) fitted for a few steps on the demo clips; the
student is `micro` narrowed to 16 channels. Everything runs in process on one thread, except the
bad-input cases, which run the console script.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from conftest import assert_same_state, compose, fit_on_clips, run_cli
from conftest import load_state as load

from waveglow.checkpoint import build_checkpoint, build_model, load_model, save_checkpoint
from waveglow.cli.distill import rewrite_argv
from waveglow.config import to_dict
from waveglow.data import load_stats
from waveglow.data.audio import load_audio
from waveglow.distill import DistillObjective, distill, mr_stft_loss, teacher_distances
from waveglow.errors import UserError
from waveglow.inference.metrics import multi_resolution_stft_distance
from waveglow.mel import MelSpectrogram


def make_cfg(root: Path, teacher: Path | str, run_dir: Path, *overrides: str):
    """The waveglow-distill config of a short, one-thread CPU run on the corpus at `root`."""
    base = [
        f"teacher={teacher}", "data=demo", f"data.root={root}", "model=micro", "model.wn.n_channels=16",
        "data.segment_length=4096", "train.batch_size=2", "train.lr=1e-3", "train.log_every=1",
        "train.audio_every=0", "train.logdet_every=0", "train.val_every=1000", "train.checkpoint_every=1000",
        "train.val_segment_length=4096", "train.threads=1", "train.device=cpu", "distill.val_clips=2",
        f"run_dir={run_dir}",
    ]
    return compose("waveglow_distill", *rewrite_argv([*base, *overrides]))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    """A private copy of the demo corpus, its feature cache built once for the module."""
    root = tmp_path_factory.mktemp("distill") / "corpus"
    (root / "wavs").mkdir(parents=True)
    # 14 clips: 4 val, 4 test, 6 train (the demo config's splits).
    lines = (demo_root / "metadata.csv").read_text().strip().splitlines()[:14]
    for line in lines:
        clip_id = line.split("|", 1)[0]
        shutil.copy(demo_root / "wavs" / f"{clip_id}.wav", root / "wavs" / f"{clip_id}.wav")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    cfg = compose("waveglow_train", "data=demo", f"data.root={root}", "model=tiny")
    load_stats(cfg, progress=False)
    return root


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory, single_thread) -> Path:
    """A tiny teacher checkpoint fitted for a few steps on the corpus (a model whose output
    depends on its weights: a fresh one's zero end layers make every coupling the identity)."""
    cfg = compose("waveglow_train", "data=demo", f"data.root={corpus}", "model=tiny", "model.upsample_kernel=256")
    config = to_dict(cfg)
    torch.manual_seed(0)
    model = build_model(config)
    mean, std = load_stats(cfg, progress=False)
    model.set_mel_stats(mean, std)
    mel_fn = MelSpectrogram.from_config(cfg.audio)
    clips = [torch.as_tensor(load_audio(p, 22050)) for p in sorted((corpus / "wavs").glob("*.wav"))[:6]]
    fit_on_clips(model, mel_fn, clips, steps=20, segment=4096, lr=1e-3)
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    save_checkpoint(path, build_checkpoint(model, config, step=20))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def distances(run_dir: Path) -> dict[int, float]:
    """Student-vs-teacher MR-STFT distance on the val clips, by step."""
    return {m["step"]: m["distill_mr_stft_teacher"] for m in metrics(run_dir) if "distill_mr_stft_teacher" in m}


# --------------------------------------------------------------------------- the objective
def test_mr_stft_loss_is_the_metric_batched_and_differentiable(single_thread):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4096, generator=gen) * 0.1
    output = (target + 0.05 * torch.randn(2, 4096, generator=gen)).requires_grad_()
    loss = mr_stft_loss(target, output)
    for i in range(2):
        expected = multi_resolution_stft_distance(target[i], output[i].detach())["distance"]
        assert loss[i].item() == pytest.approx(expected, rel=1e-4)
    loss.sum().backward()
    assert output.grad is not None and output.grad.abs().sum() > 0
    assert mr_stft_loss(target, target.clone()).abs().max() < 1e-6


def test_student_settings_are_the_run_model():
    assert rewrite_argv(["student=squeeze", "student.wn.n_channels=64", "students=1", "teacher=x.pt"]) == [
        "model=squeeze", "model.wn.n_channels=64", "students=1", "teacher=x.pt"]


# --------------------------------------------------------------------------- runs
def test_distillation_lowers_the_distance_to_the_teacher(corpus, teacher, tmp_path, single_thread):
    run = tmp_path / "run"
    result = distill(make_cfg(corpus, teacher, run, "train.max_steps=15", "train.val_every=15"))
    assert result.step == 15
    d = distances(run)
    assert set(d) == {0, 15}
    # The student started far from the teacher and moved clearly toward it on held-out clips.
    assert d[15] < 0.9 * d[0], d
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"distill/loss", "distill/l1", "distill/mr_stft", "distill/val_mr_stft_teacher",
            "distill/val_mel_l1_truth", "distill/val_teacher_mr_stft_truth", "val/log_likelihood"} <= tags
    loss = [e.value for e in acc.Scalars("distill/loss")]
    assert len(loss) == 15 and sum(loss[-3:]) < sum(loss[:3])

    # The student is an ordinary checkpoint of the toolkit: load_model, the student's config.
    ckpt = load(run / "checkpoints/last.pt")
    assert ckpt["config"]["model"]["name"] == "micro" and ckpt["config"]["teacher"] == str(teacher)
    assert not any(k.startswith("_teacher") or k.startswith("teacher") for k in ckpt["model"])
    student = load_model(run / "checkpoints/last.pt")
    mel_fn = MelSpectrogram.from_config(compose("waveglow_train", "data=demo").audio)
    mel = mel_fn(torch.as_tensor(load_audio(sorted((corpus / "wavs").glob("*.wav"))[0], 22050)))
    audio = student.infer(mel[None, :, :32], sigma=0.6, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (1, 32 * 256) and torch.isfinite(audio).all() and audio.abs().max() > 0


@pytest.mark.slow
def test_resume_equals_uninterrupted_bit_exactly(corpus, teacher, tmp_path, single_thread):
    """The mixed objective (regression latents + real likelihood) resumed from step 3."""
    extra = ["train.deterministic=true", "train.checkpoint_every=3", "distill=mixed", "distill.val_clips=0",
             "train.val_max_clips=1"]
    distill(make_cfg(corpus, teacher, tmp_path / "full", "train.max_steps=6", *extra))
    distill(make_cfg(corpus, teacher, tmp_path / "split", "train.max_steps=3", *extra))
    resumed = distill(make_cfg(corpus, teacher, tmp_path / "split", "train.max_steps=6", *extra))
    assert resumed.step == 6
    a, b = load(tmp_path / "full/checkpoints/last.pt"), load(tmp_path / "split/checkpoints/last.pt")
    assert a["step"] == 6
    assert_same_state(a, b)


@pytest.mark.slow
def test_likelihood_objective_learns_teacher_samples(corpus, teacher, tmp_path, single_thread):
    """distill=likelihood: the student's NLL of fresh teacher samples falls."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    distill(make_cfg(corpus, teacher, run, "train.max_steps=12", "distill=likelihood", "distill.val_clips=0"))
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    nll = [e.value for e in acc.Scalars("distill/teacher_nll")]
    assert len(nll) == 12 and sum(nll[-3:]) < sum(nll[:3])


def test_objective_draws_the_same_latent_per_step_and_leaves_the_global_rng(teacher, single_thread):
    t = load_model(teacher)
    cfg = compose("waveglow_distill", "teacher=x", "model=micro", "data=demo")
    student = build_model(to_dict(cfg))
    obj = DistillObjective(student, t, cfg.distill, seed=1)
    state = torch.get_rng_state()
    obj.set_step(5)
    z1 = obj.latent(2, 64, torch.device("cpu"))
    obj.set_step(5)
    z2 = obj.latent(2, 64, torch.device("cpu"))
    obj.set_step(6)
    z3 = obj.latent(2, 64, torch.device("cpu"))
    assert torch.equal(z1, z2) and not torch.equal(z1, z3)
    assert torch.equal(torch.get_rng_state(), state)
    assert z1.std().item() == pytest.approx(0.6, rel=0.3)


def test_teacher_distances_of_the_teacher_to_itself_are_zero(corpus, teacher, single_thread):
    t = load_model(teacher)
    cfg = compose("waveglow_train", "data=demo")
    mel_fn = MelSpectrogram.from_config(cfg.audio)
    audio = torch.as_tensor(load_audio(sorted((corpus / "wavs").glob("*.wav"))[0], 22050))[:8192]
    clip = {"audio": audio, "mel": mel_fn(audio)}
    d = teacher_distances(t, t, [clip], sigma=0.6, seed=0, mel_fn=mel_fn)
    assert d["mel_l1_teacher"] == 0.0 and d["mr_stft_teacher"] == pytest.approx(0.0, abs=1e-6)
    assert d["mr_stft_truth"] == pytest.approx(d["teacher_mr_stft_truth"]) and d["mr_stft_truth"] > 0


def test_larger_student_is_a_warning_not_an_error(corpus, teacher, tmp_path, caplog, single_thread):
    run = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="waveglow"):
        result = distill(make_cfg(corpus, teacher, run, "student=tiny", "train.max_steps=0", "distill.val_clips=0",
                                  "train.val_max_clips=1"))
    assert result.exit_code == 0
    assert any("not smaller than its teacher" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    assert (run / "checkpoints/last.pt").is_file()


# --------------------------------------------------------------------------- bad input (console script)
def _bad(tmp_path: Path, corpus: Path, teacher: Path | str, *extra: str) -> str:
    run = tmp_path / "run"
    proc = run_cli("waveglow-distill", f"teacher={teacher}", "student=micro", "data=demo", f"data.root={corpus}",
                   f"run_dir={run}", "train.max_steps=1", *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    assert not run.exists(), "nothing may be written"
    return errors[0]


def test_bad_teacher_file(corpus, tmp_path):
    wav = next((corpus / "wavs").glob("*.wav"))
    line = _bad(tmp_path, corpus, wav)
    assert f"teacher={wav}" in line and "not a checkpoint" in line and "a WAV file" in line


def test_teacher_at_another_sample_rate(corpus, teacher, tmp_path):
    line = _bad(tmp_path, corpus, teacher, "audio=16k")
    assert "audio.sampling_rate=22050" in line and "the student's audio.sampling_rate=16000" in line


def test_teacher_with_other_mel_settings(corpus, teacher, tmp_path):
    """In process (the console script's path for this error is the one above)."""
    run = tmp_path / "run"
    with pytest.raises(UserError, match=r"trained with audio.n_mels=80, the student's audio.n_mels=64"):
        distill(make_cfg(corpus, teacher, run, "audio.n_mels=64"))
    with pytest.raises(UserError, match=r"audio.hop_length=256, the student's audio.hop_length=200"):
        distill(make_cfg(corpus, teacher, run, "audio.hop_length=200", "model.n_group=8"))
    assert not run.exists()
