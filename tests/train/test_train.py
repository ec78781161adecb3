"""Training loop (in process, CPU, tiny model on the demo corpus): learning, TensorBoard tags,
checkpoint contents, bit-exact resume, NaN skipping, the divergence guards, fp16 on hostile
audio, fine-tuning from weights, and the small pure helpers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import assert_same_state, compose, copy_demo_corpus
from conftest import load_state as load

from waveglow.checkpoint import FORMAT_VERSION, build_model, load_model
from waveglow.config import TrainConfig, to_dict
from waveglow.data import load_stats
from waveglow.errors import UserError
from waveglow.runtime import resolve_loader_workers, resolve_precision
from waveglow.train import TrainHooks, lr_at, train
from waveglow.train.monitor import mel_comparison_image
from waveglow.train.step import Stepper

CHECKPOINT_KEYS = {"format_version", "model", "config", "step", "epoch", "optimizer", "scheduler",
                   "scaler", "rng", "sampler", "metrics"}


def make_cfg(root: Path, run_dir: Path, *overrides: str):
    """The waveglow-train config for a tiny, fast CPU run on the corpus at `root`."""
    base = [
        # tiny with a shorter upsampling kernel: 3x smaller checkpoints, faster steps.
        "data=demo", f"data.root={root}", "model=tiny", "model.upsample_kernel=256", "data.segment_length=4096",
        "train.batch_size=2", "train.log_every=1", "train.audio_every=0", "train.logdet_every=0",
        "train.val_every=1000", "train.checkpoint_every=1000", "train.val_segment_length=4096",
        # One thread: identical results in and out of process, no thread oversubscription. The
        # CPU also on a GPU host (the cuda tests below ask for CUDA themselves).
        "train.threads=1", "train.device=cpu",
        f"run_dir={run_dir}",
    ]
    return compose("waveglow_train", *base, *overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    """A private copy of the demo corpus with its feature cache built once for the module."""
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("train") / "corpus")
    load_stats(make_cfg(root, root / "unused"), progress=False)
    return root


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0, "audio": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def layout_of(acc):
    """The custom-scalars layout stored in a run's events."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    content = acc.PluginTagToContent("custom_scalars")
    tensor = acc.Tensors(next(iter(content)))[-1].tensor_proto
    return layout_pb2.Layout.FromString(tensor.string_val[0])


# --------------------------------------------------------------------------- learning + files
def test_learns_and_writes_every_tag_and_file(corpus, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = make_cfg(corpus, run, "train.max_steps=36", "train.lr=1e-3", "train.val_every=12",
                   "train.checkpoint_every=12", "train.keep_checkpoints=2", "train.audio_every=36",
                   "train.logdet_every=12", "train.audio_clips=1", "data.segment_length=4100")
    result = train(cfg)
    assert result.exit_code == 0 and result.step == 36

    # Held-out likelihood rises from the step-0 value; train NLL falls.
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 12, 24, 36]
    assert lines[-1]["val_log_likelihood"] > lines[0]["val_log_likelihood"] + 0.05
    values = scalars(run)
    nll = [v for _, v in values["zz_optim/nll"]]
    assert np.mean(nll[-6:]) < np.mean(nll[:6]) - 0.05

    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "images": 0, "audio": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ["train/log_likelihood", "val/log_likelihood", "zz_optim/nll", "zz_optim/lr", "zz_optim/grad_norm",
                "zz_optim/samples_per_sec", "zz_optim/skipped_steps"]:
        assert tag in tags["scalars"], tag
    n_flows = int(cfg.model.n_flows)
    for k in range(n_flows):
        for part in ("log_s", "W", "W_cond"):
            assert f"zz_logdet/flow_{k}/{part}" in tags["scalars"]
    assert "audio/val_0" in tags["audio"] and "val_mel/val_0" in tags["images"]
    # TensorBoard sorts chart groups by code point: likelihoods and quality first, log-dets last.
    groups = sorted({tag.split("/")[0] for tag in tags["scalars"] + tags["images"]})
    assert groups[:2] == ["train", "val"] and groups[-2:] == ["zz_logdet", "zz_optim"]
    assert [tag for tag in tags["scalars"] if tag.startswith("train/")] == ["train/log_likelihood"]
    assert {"audio/val_0_target", "audio/val_0_griffinlim"} <= set(tags["audio"])
    # The quality report at every audio_every step, beside its Griffin-Lim reference line.
    for tag in ("val/mel_l1", "val/mr_stft", "val/mel_l1_griffinlim", "val/mr_stft_griffinlim"):
        assert [step for step, _ in values[tag]] == [0, 36], tag
        assert all(0 < v < 100 for _, v in values[tag]), tag
    assert values["val/mel_l1_griffinlim"][0][1] == values["val/mel_l1_griffinlim"][1][1]  # computed once
    assert values["val/mel_l1"][0][1] != values["val/mel_l1"][1][1]
    layout = layout_of(acc)
    assert [c.title for c in layout.category][:3] == [
        "1 likelihood", "2 quality of resynthesized val clips (lower is better)", "3 log-determinants per flow"]
    assert list(layout.category[0].chart[0].multiline.tag) == ["train/log_likelihood", "val/log_likelihood"]
    assert "_hparams_/experiment" in acc.PluginTagToContent("hparams")
    image = acc.Images("val_mel/val_0")[-1]
    assert image.height == 2 * 80 + 2 and image.width > 1
    assert values["train/log_likelihood"][-1][1] == pytest.approx(-values["zz_optim/nll"][-1][1])

    # Run layout and checkpoint contents.
    assert (run / "config.yaml").is_file()
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["best.pt", "last.pt", "step_24.pt", "step_36.pt"]
    state = load(ckpts / "last.pt")
    assert CHECKPOINT_KEYS <= state.keys()
    assert state["format_version"] == FORMAT_VERSION and state["step"] == 36
    assert state["config"]["model"]["name"] == "tiny" and state["config"]["run_dir"] == str(run)
    assert state["metrics"]["best_val_log_likelihood"] == pytest.approx(lines[-1]["val_log_likelihood"])
    # The segment length was rounded down to a multiple of n_group (4100 -> 4096).
    assert state["config"]["data"]["segment_length"] == 4100
    stats = torch.load(corpus / "cache" / "stats.pt", weights_only=True)
    assert torch.equal(state["model"]["mel_mean"], stats["mean"])
    model = load_model(ckpts / "best.pt")
    assert torch.equal(model.mel_std, stats["std"])
    # Re-running a finished run does nothing and leaves it alone.
    assert train(make_cfg(corpus, run, "train.max_steps=36")).step == 36


def test_resume_equals_uninterrupted_bit_exactly(corpus, tmp_path):
    extra = ["train.deterministic=true", "train.checkpoint_every=3", "train.val_every=4"]
    train(make_cfg(corpus, tmp_path / "full", "train.max_steps=10", *extra))
    train(make_cfg(corpus, tmp_path / "split", "train.max_steps=5", *extra))
    resumed = train(make_cfg(corpus, tmp_path / "split", "train.max_steps=10", *extra))
    assert resumed.step == 10
    assert_same_state(load(tmp_path / "full/checkpoints/last.pt"), load(tmp_path / "split/checkpoints/last.pt"))


# --------------------------------------------------------------------------- guards
def test_injected_nan_is_skipped_and_counted(corpus, tmp_path):
    before: dict[str, torch.Tensor] = {}

    def poison(trainer, batch):
        if trainer.state.step == 2:  # the third step
            batch["audio"][0, 100] = float("nan")
            before.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    def check(trainer):
        if trainer.state.step == 3:  # the poisoned step left the weights alone
            for k, v in trainer.model.state_dict().items():
                assert torch.equal(v, before[k]), k

    run = tmp_path / "run"
    result = train(make_cfg(corpus, run, "train.max_steps=5"), TrainHooks(before_step=poison, after_step=check))
    assert result.skipped_steps == 1 and result.recoveries == 0
    skipped = dict(scalars(run)["zz_optim/skipped_steps"])
    assert skipped[2] == 0 and skipped[3] == 1 and skipped[5] == 1
    state = load(run / "checkpoints/last.pt")
    assert state["metrics"]["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_guard_recovers_from_divergence_and_logdets_show_it(corpus, tmp_path, caplog):
    """W of flow 0 blown up at step 6: every step is non-finite until the guard reloads last.pt."""

    def diverge(trainer, batch):
        if trainer.state.step == 6:
            with torch.no_grad():
                trainer.model.flows["convinv_0"].weight.mul_(1e15)

    run = tmp_path / "run"
    cfg = make_cfg(corpus, run, "train.max_steps=14", "train.checkpoint_every=4", "train.logdet_every=2",
                   "train.guard.max_bad_steps=3", "train.lr=2e-4")
    with caplog.at_level("WARNING", logger="waveglow"):
        result = train(cfg, TrainHooks(before_step=diverge))
    assert result.recoveries == 1 and result.skipped_steps == 3
    assert any("3 consecutive non-finite steps" in r.message and "last.pt" in r.message for r in caplog.records)
    values = scalars(run)
    w = dict(values["zz_logdet/flow_0/W"])
    # log|det(1e15·W)| per audio sample = log(1e15) (n_group channels over n_group samples).
    assert w[7] > w[6] + 30 and abs(w[10] - w[6]) < 1.0
    assert values["zz_optim/lr"][-1][1] == pytest.approx(1e-4)  # halved by the recovery
    state = load(run / "checkpoints/last.pt")
    assert state["scheduler"]["lr_mult"] == 0.5 and state["scheduler"]["recoveries"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_validation_collapse_reloads_best(corpus, tmp_path, caplog):
    def shrink(trainer, batch):
        if trainer.state.step == 4:  # W · 0.01 costs log(100) ≈ 4.6 nats per sample
            with torch.no_grad():
                trainer.model.flows["convinv_0"].weight.mul_(0.01)

    run = tmp_path / "run"
    cfg = make_cfg(corpus, run, "train.max_steps=8", "train.val_every=2", "train.guard.val_drop=1.0")
    with caplog.at_level("WARNING", logger="waveglow"):
        result = train(cfg, TrainHooks(before_step=shrink))
    assert result.recoveries == 1
    assert any("fell more than 1.0 nats/sample below the best" in r.message and "best.pt" in r.message
               for r in caplog.records)
    vals = [json.loads(x)["val_log_likelihood"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    # Steps 0, 2, 4, 6, 8: collapsed at step 6, back to normal at step 8 (best.pt of step 4 reloaded).
    assert vals[3] < vals[2] - 3 and abs(vals[4] - vals[2]) < 0.5


@pytest.fixture(scope="module")
def hostile_corpus(tmp_path_factory, demo_root) -> Path:
    """Demo clips, some replaced by digital silence and some by hard full-scale clipping."""
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("hostile") / "corpus")
    for i, wav in enumerate(sorted((root / "wavs").glob("*.wav"))):
        audio, sr = sf.read(wav, dtype="float32")
        if i % 3 == 0:
            audio[: len(audio) * 2 // 3] = 0.0  # long stretches of exact zeros
        elif i % 3 == 1:
            audio = np.clip(audio * 50.0, -1.0, 1.0)  # full-scale square-ish waves
        sf.write(wav, audio, sr, subtype="PCM_16")
    return root


def test_fp16_on_silence_and_clipping_stays_finite(hostile_corpus, tmp_path):
    run = tmp_path / "run"
    # Short segments: fp16 convolutions are slow on a CPU.
    result = train(make_cfg(hostile_corpus, run, "train.precision=fp16", "train.max_steps=8",
                            "train.lr=1e-3", "train.val_every=4", "data.segment_length=2048",
                            "train.val_segment_length=2048"))
    values = scalars(run)
    assert all(math.isfinite(v) for _, v in values["zz_optim/nll"])
    assert all(math.isfinite(v) for _, v in values["val/log_likelihood"])
    assert result.skipped_steps <= 3  # at most a few GradScaler overflow steps
    state = load(run / "checkpoints/last.pt")
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    assert all(torch.isfinite(v).all() for v in state["model"].values())


# --------------------------------------------------------------------------- fine-tuning
def test_init_from_loads_weights_only(corpus, tmp_path):
    src = tmp_path / "src"
    train(make_cfg(corpus, src, "train.max_steps=2"))
    source = load(src / "checkpoints/last.pt")
    # A non-shape setting differs (the prior sigma): accepted; the new run starts at step 0
    # with exactly the source weights (and its mel statistics), and its own settings.
    run = tmp_path / "ft"
    init = f"train.init_from={src / 'checkpoints/last.pt'}"
    assert train(make_cfg(corpus, run, "train.max_steps=0", "model.sigma=0.9", init)).step == 0
    first = load(run / "checkpoints/last.pt")
    assert first["step"] == 0 and first["config"]["model"]["sigma"] == 0.9
    for k, v in source["model"].items():
        assert torch.equal(first["model"][k], v), k
    # Re-running resumes the fine-tuning run (init_from is not applied twice).
    assert train(make_cfg(corpus, run, "train.max_steps=1", "model.sigma=0.9", init)).step == 1
    # Weights of another shape are refused with the file named.
    with pytest.raises(UserError, match="init_from weights do not fit"):
        train(make_cfg(corpus, tmp_path / "bad", "train.max_steps=1", "model.wn.n_channels=48",
                       f"train.init_from={src / 'checkpoints/last.pt'}"))


def test_resume_refuses_other_model_settings(corpus, tmp_path):
    train(make_cfg(corpus, tmp_path / "run", "train.max_steps=1"))
    with pytest.raises(UserError, match="other model/audio settings"):
        train(make_cfg(corpus, tmp_path / "run", "train.max_steps=2", "model.n_flows=2"))


# --------------------------------------------------------------------------- helpers
def test_precision_and_lr_schedule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision("auto", cpu) is None
    assert resolve_precision("auto", cuda) is torch.float16
    assert resolve_precision("bf16", cpu) is torch.bfloat16
    with pytest.raises(UserError, match="train.precision"):
        resolve_precision("fp8", cpu, key="train.precision")
    t = TrainConfig(lr=1e-4, warmup_steps=4, lr_decay_steps=[10], lr_decay_factor=0.5)
    assert [lr_at(s, t) for s in (0, 3, 9, 10)] == pytest.approx([2.5e-5, 1e-4, 1e-4, 5e-5])
    assert lr_at(20, t, lr_mult=0.5) == pytest.approx(2.5e-5)


def test_stepper_skips_a_non_finite_batch_and_steps_a_finite_one(tmp_path, single_thread):
    """The step the trainer and the benchmark share: a NaN batch leaves weights and Adam alone
    (and reports the per-flow terms), a finite one moves the weights at the given lr."""
    torch.manual_seed(0)
    model = build_model(to_dict(make_cfg(tmp_path, tmp_path / "run")))
    optimizer = torch.optim.Adam(model.parameters(), lr=1.0)
    step = Stepper(model, optimizer, device=torch.device("cpu"), amp_dtype=None, grad_clip=100.0)
    audio, mel = 0.1 * torch.randn(2, 2048), torch.randn(2, 80, 1 + 2048 // 256)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = audio.clone()
    bad[0, 5] = float("nan")
    out = step(bad, mel, 1e-3)
    assert out.skipped and not out.overflow and not out.stop and "flow_0/W" in out.stats
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not optimizer.state
    out = step(audio, mel, 1e-3, stop=True)
    assert not out.skipped and math.isfinite(out.loss) and out.stop and out.lr == 1e-3 and not out.stats
    assert optimizer.param_groups[0]["lr"] == 1e-3
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("override, message", [
    ("train.val_every=0", "train.val_every=0: expected an integer >= 1"),
    ("train.precision=fp8", "train.precision=fp8"),
    ("train.guard.lr_factor=2.0", "train.guard.lr_factor=2.0"),
    ("train.device=tpu", "train.device=tpu"),
])
def test_bad_settings_are_user_errors(override, message, tmp_path):
    """Caught by the schema (compose) or, for the device, when training resolves it."""
    with pytest.raises(UserError, match=re.escape(message)):
        train(make_cfg(tmp_path / "no-corpus", tmp_path / "run", override))


def test_mel_image_is_target_over_resynthesis():
    target = torch.linspace(-10, 0, 80)[:, None].repeat(1, 7)
    img = mel_comparison_image(target, target[:, :5])
    assert img.shape == (3, 162, 7) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    # Low mel channels at the bottom of each half: the top row is the brightest (highest value).
    assert img[:, 0].sum() > img[:, 79].sum()


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_mixed_precision_applies_steps_and_learns(corpus, tmp_path, precision):
    run = tmp_path / "run"
    result = train(make_cfg(corpus, run, "train.max_steps=30", "train.device=cuda", f"train.precision={precision}",
                            "train.lr=1e-3", "train.val_every=30", "train.checkpoint_every=30"))
    assert result.step == 30
    assert result.skipped_steps <= (4 if precision == "fp16" else 0)  # fp16: loss-scale calibration only
    nll = [v for _, v in scalars(run)["zz_optim/nll"]]
    assert all(math.isfinite(v) for v in nll) and np.mean(nll[-5:]) < np.mean(nll[:5]) - 0.05
    lines = [json.loads(x)["val_log_likelihood"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1] > lines[0] + 0.02
    first, last = load(run / "checkpoints/best.pt"), load(run / "checkpoints/last.pt")
    assert (last["scaler"] is not None) == (precision == "fp16")
    adam_steps = {int(s["step"]) for s in last["optimizer"]["state"].values()}
    assert adam_steps == {30 - result.skipped_steps}  # every applied step reached Adam
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert first["step"] in (0, 30)


@pytest.mark.cuda
def test_cuda_resume_continues_from_the_right_step(corpus, tmp_path):
    extra = ["train.device=cuda", "train.precision=fp32", "train.deterministic=true", "train.checkpoint_every=3"]
    train(make_cfg(corpus, tmp_path / "full", "train.max_steps=6", *extra))
    assert train(make_cfg(corpus, tmp_path / "split", "train.max_steps=3", *extra)).step == 3
    resumed = train(make_cfg(corpus, tmp_path / "split", "train.max_steps=6", *extra))
    assert resumed.step == 6
    a, b = load(tmp_path / "full/checkpoints/last.pt"), load(tmp_path / "split/checkpoints/last.pt")
    assert b["step"] == 6 and b["sampler"]["position"] == a["sampler"]["position"]
    assert {int(s["step"]) for s in b["optimizer"]["state"].values()} == {6}
    assert [step for step, _ in scalars(tmp_path / "split")["zz_optim/nll"]] == list(range(1, 7))
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-5, atol=1e-7, msg=k)


# --------------------------------------------------------------------------- beyond the reference
def test_grad_accum_trains_like_the_whole_batch_and_resumes_bit_exactly(corpus, tmp_path):
    """batch_size=2 × grad_accum=2 sees the examples of batch_size=4 in the same order: the same
    first-step NLL (per sample) and nearly the same weights after 4 Adam steps; and a run with
    micro-batches resumes to the bit."""
    extra = ["train.deterministic=true", "train.checkpoint_every=2", "train.val_every=1000", "train.max_steps=4"]
    accum = train(make_cfg(corpus, tmp_path / "accum", "train.batch_size=2", "train.grad_accum=2", *extra))
    whole = train(make_cfg(corpus, tmp_path / "whole", "train.batch_size=4", *extra))
    assert accum.step == whole.step == 4
    nll_a, nll_w = (dict(scalars(tmp_path / name)["zz_optim/nll"]) for name in ("accum", "whole"))
    assert nll_a[1] == pytest.approx(nll_w[1], rel=1e-6)
    a, w = load(tmp_path / "accum/checkpoints/last.pt"), load(tmp_path / "whole/checkpoints/last.pt")
    for k, v in w["model"].items():
        torch.testing.assert_close(a["model"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    assert a["sampler"]["batch_size"] == 4
    split = tmp_path / "split"
    train(make_cfg(corpus, split, "train.batch_size=2", "train.grad_accum=2", *extra[:-1], "train.max_steps=2"))
    train(make_cfg(corpus, split, "train.batch_size=2", "train.grad_accum=2", *extra))
    assert_same_state(a, load(split / "checkpoints/last.pt"))


def test_small_corpus_draws_clips_with_replacement(corpus_copy, tmp_path, caplog):
    """3 training clips, a global batch of 4: it trains, with one warning, and the repeated clips
    of a batch are different random crops. (Also: the DataLoader workers used are logged.)"""
    root = corpus_copy(5)
    batches = []
    cfg = make_cfg(root, tmp_path / "run", "train.batch_size=4", "train.max_steps=3", "data.splits.n_val=1",
                   "data.splits.n_test=1")
    with caplog.at_level("INFO", logger="waveglow"):
        result = train(cfg, TrainHooks(before_step=lambda trainer, batch: batches.append(batch["audio"].clone())))
    assert result.step == 3
    # data.loader_workers=auto (the default) and the value it gave are logged.
    workers = resolve_loader_workers("auto", processes=1)
    assert any(r.message.startswith(f"data loading: {workers} DataLoader worker(s) per process "
                                    "(data.loader_workers=auto; ") for r in caplog.records)
    warnings = [r.message for r in caplog.records if "with replacement" in r.message]
    assert len(warnings) == 1 and "the train split has 3 clips, fewer than one global batch of 4" in warnings[0]
    for audio in batches:
        assert audio.shape == (4, 4096)
        assert len({tuple(row[:64].tolist()) for row in audio}) == 4


def test_fp16_recovery_restores_the_loss_scale(corpus, tmp_path):
    """Non-finite losses leave the fp16 loss scale alone; the guard's reload of last.pt brings
    back the scale saved with it (a scale shrunk by overflows would stall fp16 learning)."""
    scales: dict[int, float] = {}

    def poison(trainer, batch):
        if trainer.state.step == 2:  # last.pt of step 2 is written; now the scale collapses
            trainer.scaler.update(new_scale=2.0**-10)
        if 2 <= trainer.state.step < 5:
            batch["audio"][0, 100] = float("nan")

    def record(trainer):
        scales[trainer.state.step] = trainer.scaler.get_scale()

    run = tmp_path / "run"
    cfg = make_cfg(corpus, run, "train.precision=fp16", "train.max_steps=6", "train.checkpoint_every=2",
                   "train.guard.max_bad_steps=3", "data.segment_length=2048", "train.val_segment_length=2048")
    result = train(cfg, TrainHooks(before_step=poison, after_step=record))
    assert result.recoveries == 1 and result.skipped_steps == 3
    saved = load(run / "checkpoints/step_2.pt")["scaler"]["scale"]
    assert saved >= 1.0
    assert scales[3] == scales[4] == scales[5] == 2.0**-10  # NaN losses did not halve it further
    assert scales[6] == saved  # the reload after step 5 restored it
