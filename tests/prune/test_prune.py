"""waveglow-prune: the surgery is exact, keep=1 copies the model, the result is an ordinary smaller
checkpoint, and bad input is one error line with nothing written.

The models are the `tiny` config with random conditioner end layers (a fresh model's zero end
layers would make every conditioner output zero, and any surgery look exact).
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import compose, run_cli

from waveglow.checkpoint import (
    build_checkpoint,
    build_model,
    load_checkpoint,
    load_model,
    save_checkpoint,
)
from waveglow.cli.prune import main as prune_main
from waveglow.config import to_dict
from waveglow.prune import (
    WNPlan,
    kept_channels,
    magnitude_scores,
    mask_model,
    plan_from_scores,
    prune,
    prune_model,
    taylor_scores,
)
from waveglow.prune.surgery import conditioners

pytestmark = pytest.mark.usefixtures("single_thread")

SR, HOP = 22050, 256


@functools.cache
def _tiny() -> dict:
    return to_dict(compose("waveglow_train", "model=tiny", "data=demo"))


def tiny_config(**wn) -> dict:
    cfg = copy.deepcopy(_tiny())
    cfg["model"]["wn"].update(wn)
    return cfg


def random_model(seed: int = 0, **wn):
    """tiny with random end layers and gains (every channel does something)."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(**wn))
    with torch.no_grad():
        for wn_ in conditioners(model):
            wn_.end.weight.normal_(0, 0.05)
            wn_.end.bias.normal_(0, 0.05)
    return model.eval()


def inputs(seed: int = 1, frames: int = 8):
    gen = torch.Generator().manual_seed(seed)
    mel = torch.randn(2, 80, frames, generator=gen) - 4
    audio = 0.1 * torch.randn(2, frames * HOP, generator=gen)
    return audio, mel


def random_plan(model, n_keep: int, seed: int = 0) -> list[WNPlan]:
    gen = torch.Generator().manual_seed(seed)

    def pick(c: int) -> torch.Tensor:
        return torch.sort(torch.randperm(c, generator=gen)[:n_keep]).values

    return [WNPlan(pick(w.n_channels), pick(w.n_channels), tuple(pick(w.n_channels) for _ in range(w.n_layers)))
            for w in conditioners(model)]


def test_kept_channels_even_and_at_least_two():
    assert [kept_channels(32, k) for k in (1.0, 0.5, 0.25, 0.3, 0.01)] == [32, 16, 8, 10, 2]


def test_keep_one_reproduces_the_original_exactly():
    model = random_model()
    for importance in ("magnitude", "taylor"):
        batches = [inputs(3)] if importance == "taylor" else None
        same = prune(model, 1.0, importance, batches)
        assert same.model_config == model.model_config
        a, b = model.state_dict(), same.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        audio, mel = inputs()
        with torch.no_grad():
            assert torch.equal(same.log_prob(audio, mel), model.log_prob(audio, mel))
            out_a = model.infer(mel, generator=torch.Generator().manual_seed(7))
            out_b = same.infer(mel, generator=torch.Generator().manual_seed(7))
        assert torch.equal(out_a, out_b)


@pytest.mark.parametrize("variant", ["dense", "depthwise", "folded"])
def test_removing_channels_equals_masking_them(variant):
    model = random_model(depthwise=variant == "depthwise")
    if variant == "folded":
        model.remove_weight_norm()
    plan = random_plan(model, 10)
    small, masked = prune_model(model, plan), mask_model(model, plan)
    assert small.model_config["wn"]["n_channels"] == 10
    assert all(w.n_channels == 10 for w in conditioners(small))
    audio, mel = inputs()
    with torch.no_grad():
        lp_small, lp_masked, lp_full = (m.log_prob(audio, mel) for m in (small, masked, model))
        z = small.encode(audio, mel)
        z_masked = masked.encode(audio, mel)
    # Same function up to float32 summation order (nats per 2048-sample item).
    assert torch.allclose(lp_small, lp_masked, rtol=1e-5, atol=1e-3), (lp_small, lp_masked)
    assert torch.allclose(z, z_masked, rtol=1e-5, atol=1e-5)
    # ... and not the original's: the removed channels mattered.
    assert (lp_small - lp_full).abs().min() > 1.0


def test_smaller_model_has_fewer_parameters_and_a_config_that_builds_it():
    model = random_model()
    small = prune_model(model, random_plan(model, 16))
    rebuilt = build_model(small.config)
    rebuilt.load_state_dict(small.state_dict())  # the config describes exactly these tensors
    n = sum(p.numel() for p in small.parameters())
    assert n < sum(p.numel() for p in model.parameters())
    assert small.config["model"]["wn"]["n_channels"] == 16
    assert model.config["model"]["wn"]["n_channels"] == 32  # the original's config is not touched


def test_both_importances_drop_a_dead_gate_channel():
    model = random_model()
    wn = conditioners(model)[0]
    C = wn.n_channels
    dead = 5
    with torch.no_grad():  # layer 0's gate 5: nothing writes it and nothing reads it
        rows = [dead, C + dead]  # tanh and sigmoid halves (layer 0's rows of cond_layer too)
        for conv in (wn.in_layers[0], wn.cond_layer):
            conv.weight_g[rows] = 0
            conv.bias[rows] = 0
        wn.res_skip_layers[0].weight_v[:, dead] = 0
    mag = magnitude_scores(model)[0]
    tay = taylor_scores(model, [inputs(2), inputs(3)])[0]
    assert mag.gates[0, dead] == 0 and tay.gates[0, dead] == 0
    assert (mag.gates[0] > 0).sum() == C - 1 and (tay.gates[0] > 0).sum() == C - 1
    for scores in (mag, tay):
        plan = plan_from_scores([scores], C - 2)[0]
        assert dead not in plan.gates[0].tolist() and plan.gates[0].numel() == C - 2


# ------------------------------------------------------------------------------- the console script
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, demo_root) -> Path:
    """A tiny random checkpoint whose data config is a 6-clip copy of the demo corpus."""
    root = tmp_path_factory.mktemp("prune")
    corpus = root / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    lines = (demo_root / "metadata.csv").read_text().strip().splitlines()[:6]
    for line in lines:
        cid = line.split("|", 1)[0]
        shutil.copy(demo_root / "wavs" / f"{cid}.wav", corpus / "wavs" / f"{cid}.wav")
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    model = random_model()
    cfg = copy.deepcopy(model.config)
    cfg["data"].update(root=str(corpus), cache_dir=None, segment_length=4096)
    cfg["data"]["splits"].update(n_val=1, n_test=2)
    path = root / "tiny.pt"
    save_checkpoint(path, build_checkpoint(model, cfg, step=5))
    return path


FAST = ("max_clips=1", "eval_segment_length=4096", "speed_seconds=0.1", "repeats=1", "batches=2",
        "batch_size=2", "threads=1")


def test_cli_writes_an_ordinary_smaller_checkpoint(checkpoint, tmp_path, capsys):
    """The script's entry point in this process (the installed wrapper runs in the slow test)."""
    out = tmp_path / "pruned" / "small.pt"
    assert prune_main([f"checkpoint={checkpoint}", "keep=0.5", f"output={out}", *FAST]) is None
    stdout = capsys.readouterr().out
    assert "held-out LL" in stdout and "model.wn.n_channels=16" in stdout
    small = load_model(out)
    assert small.model_config["wn"]["n_channels"] == 16
    state = load_checkpoint(out)
    assert state["step"] == 5 and state["source"]["pruned_from"] == str(checkpoint)
    report = json.loads((tmp_path / "pruned" / "small.prune.json").read_text())
    before, after = report["rows"]
    assert (before["n_channels"], after["n_channels"]) == (32, 16)
    assert after["params"] < before["params"] and after["gmac_per_second"] < before["gmac_per_second"]
    assert all(r["khz"] > 0 and abs(r["log_likelihood"]) < 50 for r in report["rows"])
    assert (tmp_path / "pruned" / "small.config.yaml").is_file()
    _, mel = inputs()
    with torch.no_grad():
        audio = small.infer(mel, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (2, 8 * HOP) and torch.isfinite(audio).all()


def _run_in_process(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        prune_main(list(args))
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize("keep", ["0", "-0.5", "1.5"])
def test_keep_outside_zero_one(checkpoint, tmp_path, capsys, keep):
    code, err = _run_in_process(capsys, f"checkpoint={checkpoint}", f"keep={keep}", f"output={tmp_path / 'o.pt'}")
    assert code == 2
    assert [x for x in err.splitlines() if x.startswith("error:")] == [
        f"error: keep={float(keep)}: expected a number in (0, 1]"], err
    assert list(tmp_path.iterdir()) == []


def test_not_a_checkpoint(demo_root, tmp_path, capsys):
    wav = sorted((demo_root / "wavs").glob("*.wav"))[0]
    code, err = _run_in_process(capsys, f"checkpoint={wav}", f"output={tmp_path / 'o.pt'}")
    assert code == 2
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: not a checkpoint: {wav} is a WAV file"), err
    assert list(tmp_path.iterdir()) == []


def test_output_is_the_input(checkpoint, capsys):
    before = checkpoint.read_bytes()
    code, err = _run_in_process(capsys, f"checkpoint={checkpoint}", f"output={checkpoint}")
    assert code == 2
    assert [x for x in err.splitlines() if x.startswith("error:")] == [
        f"error: output={checkpoint}: is the input checkpoint; write the pruned model to another file"]
    assert checkpoint.read_bytes() == before


def test_output_folder_cannot_be_created(checkpoint, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    out = blocker / "sub" / "o.pt"
    code, err = _run_in_process(capsys, f"checkpoint={checkpoint}", f"output={out}")
    assert code == 2
    errors = [x for x in err.splitlines() if x.startswith("error:")]
    assert errors == [f"error: output={out}: cannot create its folder ({blocker} is a file)"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_init_from_a_pruned_checkpoint_without_its_width_names_the_setting(checkpoint, tmp_path, capsys):
    """Fine-tuning a pruned file with the original width is refused in one line that names the
    checkpoint's model setting to repeat (model.wn.n_channels), before any training step."""
    from waveglow.cli.train import main as train_main

    out = tmp_path / "small.pt"
    assert prune_main([f"checkpoint={checkpoint}", "keep=0.5", f"output={out}", *FAST]) is None
    capsys.readouterr()
    corpus = load_checkpoint(checkpoint)["config"]["data"]["root"]
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        train_main(["data=demo", f"data.root={corpus}", "data.splits.n_val=1", "data.splits.n_test=2",
                    "data.segment_length=4096", "model=tiny", f"train.init_from={out}", "train.max_steps=1",
                    "train.threads=1", f"run_dir={run}"])
    assert exc.value.code == 2
    errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "do not fit model tiny" in errors[0], errors
    assert "model.wn.n_channels: 16 -> 32" in errors[0], errors
    assert not (run / "checkpoints").exists() or not any((run / "checkpoints").iterdir())


@pytest.mark.slow
def test_pruned_checkpoint_fine_tunes_with_init_from_and_synthesizes(checkpoint, tmp_path):
    """The documented fine-tuning command (printed by waveglow-prune) runs on the pruned file,
    and waveglow-synthesize reads it."""
    out = tmp_path / "small.pt"
    run_cli("waveglow-prune", f"checkpoint={checkpoint}", "keep=0.25", "importance=magnitude", f"output={out}",
            *FAST)
    corpus = load_checkpoint(checkpoint)["config"]["data"]["root"]
    run = tmp_path / "run"
    proc = run_cli("waveglow-train", "data=demo", f"data.root={corpus}", "data.splits.n_val=1",
                   "data.splits.n_test=2", "data.segment_length=4096", "model=tiny", "model.wn.n_channels=8",
                   f"train.init_from={out}", "train.max_steps=2", "train.batch_size=1", "train.val_every=2",
                   "train.checkpoint_every=2", "train.audio_every=0", "train.threads=1", f"run_dir={run}")
    assert "init_from" in proc.stderr
    tuned = load_model(run / "checkpoints" / "last.pt")
    assert tuned.model_config["wn"]["n_channels"] == 8
    mels = tmp_path / "mels"
    mels.mkdir()
    torch.save(inputs()[1][0], mels / "a.pt")
    run_cli("waveglow-synthesize", f"checkpoint={out}", f"input={mels}", f"output_dir={tmp_path / 'wavs'}",
            "threads=1")
    assert (tmp_path / "wavs" / "a.wav").is_file()


@pytest.mark.cuda
def test_cuda_surgery_and_scores_match_cpu():
    """On a GPU: the surgery copies the same tensors and the Taylor scores agree with the CPU's."""
    model = random_model()
    plan = random_plan(model, 10)
    cpu = prune_model(model, plan).state_dict()
    gpu = prune_model(copy.deepcopy(model).cuda(), plan).state_dict()
    assert all(torch.equal(cpu[k], gpu[k].cpu()) for k in cpu)
    batches = [inputs(2)]
    s_cpu = taylor_scores(model, batches)
    s_gpu = taylor_scores(copy.deepcopy(model).cuda(), batches)
    for a, b in zip(s_cpu, s_gpu):
        for x, y in ((a.residual, b.residual), (a.skip, b.skip), (a.gates, b.gates)):
            assert torch.allclose(x, y, rtol=1e-3, atol=1e-6 * float(x.abs().max()))
