"""`train.compile`: the conditioners compiled with torch.compile in place.

Fast (the "eager" backend: dynamo's graph capture without code generation, injected through
`TrainHooks.compile_backend`): the setting is validated, the start line says compile on/off,
a compiled run writes the same checkpoint keys, and compiled and uncompiled runs resume from
each other (bit-exactly, deterministic CPU runs), and no C++ compiler is one error line. Slow (inductor, the real backend, tens of
seconds of compiling each): a few Adam steps of a small WaveGlow with random end layers give the
uncompiled loss and every parameter's gradient within relative 1e-5 (fp32), in standard and
invertible backprop; a 2-process gloo DDP run with `train.compile=true` keeps its ranks
identical. CUDA-marked: a compiled conditioner on CUDA against the uncompiled one on the CPU.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import assert_same_state, compose, copy_demo_corpus
from conftest import load_state as load

from waveglow.conditioner import WN
from waveglow.data import load_stats
from waveglow.errors import UserError
from waveglow.model import WaveGlow
from waveglow.train import TrainHooks, train
from waveglow.train.compile import compile_conditioners
from waveglow.train.step import Stepper

REL = 1e-5  # fp32: loss and gradients equal to float rounding
EAGER = TrainHooks(compile_backend="eager")


def make_cfg(root: Path, run_dir: Path, *overrides: str):
    """A tiny deterministic CPU run on the corpus at `root` (as tests/train/test_train.py)."""
    return compose("waveglow_train", "data=demo", f"data.root={root}", "model=tiny", "model.upsample_kernel=256",
                   "data.segment_length=4096", "train.batch_size=2", "train.log_every=1", "train.audio_every=0",
                   "train.logdet_every=0", "train.val_every=1000", "train.checkpoint_every=1000",
                   "train.val_segment_length=4096", "train.val_max_clips=2", "train.threads=1", "train.device=cpu",
                   "train.deterministic=true", f"run_dir={run_dir}", *overrides)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("compile") / "corpus")
    load_stats(make_cfg(root, root / "unused"), progress=False)
    return root


def small_model(seed: int = 0) -> WaveGlow:
    """A small WaveGlow with early outputs (conditioners of two input sizes) and random end
    layers (zero ones would make every coupling the identity and most gradients zero)."""
    torch.manual_seed(seed)
    model = WaveGlow({"n_group": 8, "n_flows": 4, "n_early_every": 2, "n_early_size": 2, "upsample_kernel": 64,
                      "wn": {"n_layers": 3, "n_channels": 16, "kernel_size": 3}}, n_mels=5, hop_length=16)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WN):
                m.end.weight.normal_(0, 0.2)
                m.end.bias.normal_(0, 0.2)
    return model


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return 0.5 * torch.randn(2, 128, generator=g), torch.randn(2, 5, 9, generator=g)


def assert_close(ref: float, got: float, what: str) -> None:
    assert abs(got - ref) <= REL * abs(ref), f"{what}: {got} vs {ref}"


def loss_and_grads(model: WaveGlow, memory: str) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss (nats per sample) and every parameter's gradient on `batch()`."""
    audio, mel = batch()
    model.zero_grad(set_to_none=True)
    loss = -model(audio, mel, memory=memory).sum() / audio.numel()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def steps_and_grads(ref: WaveGlow, model: WaveGlow, memory: str, steps: int = 3) -> tuple[list, list]:
    """Loss and gradients of `ref` and `model` at `steps` successive weights: Adam steps of
    `ref`, each copied into `model` (compared on the same weights: two separate trajectories
    would drift apart through Adam's normalization of float-rounding differences; the copy
    also checks that the compiled graphs read the current weights)."""
    optimizer = torch.optim.Adam(ref.parameters(), lr=1e-3)
    out_ref, out = [], []
    for _ in range(steps):
        model.load_state_dict(ref.state_dict())
        out_ref.append(loss_and_grads(ref, memory))
        out.append(loss_and_grads(model, memory))
        optimizer.step()
    return out_ref, out


def assert_same_steps(ref, got) -> None:
    for step, ((loss_ref, grads_ref), (loss, grads)) in enumerate(zip(ref, got)):
        assert_close(loss_ref, loss, f"step {step} loss")
        assert grads.keys() == grads_ref.keys()
        for name, g_ref in grads_ref.items():
            err = (grads[name] - g_ref).norm().item()
            assert err <= REL * g_ref.norm().item() + 1e-12, f"step {step} {name}: |Δgrad| {err:.3g}"
        assert any(g.abs().sum() > 0 for g in grads_ref.values())


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: dynamo's caches (and its recompile limit per code
    object) are process-wide, and another test's graphs would otherwise be reused or exhaust it."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


# ------------------------------------------------------------------------------ fast
def test_the_setting_is_validated_and_off_by_default(tmp_path):
    assert compose("waveglow_train").train.compile is False
    with pytest.raises(UserError, match=re.escape("train.compile")):
        train(make_cfg(tmp_path / "no-corpus", tmp_path / "run", "train.compile=sometimes"))


def test_no_cpp_compiler_is_one_user_error_before_training(corpus, tmp_path, monkeypatch):
    from torch._inductor import cpp_builder

    def missing() -> str:
        raise RuntimeError("no working C++ compiler found in ('g++',)")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(UserError, match=r"^train\.compile=true: torch\.compile \(inductor\) on the CPU needs a C\+\+ "
                       r"compiler .*use train\.compile=false$"):
        train(make_cfg(corpus, tmp_path / "run", "train.max_steps=1", "train.compile=true"))
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was written


@pytest.mark.parametrize("memory", ["standard", "invertible"])
def test_compiled_in_place_same_keys_same_steps_with_the_eager_backend(memory, single_thread):
    ref, model = small_model(), small_model()
    assert compile_conditioners(model, backend="eager") == 4  # one per flow
    assert list(model.state_dict()) == list(ref.state_dict())
    assert_same_steps(*steps_and_grads(ref, model, memory))


def test_compiled_run_checkpoints_and_resumes_either_way(corpus, tmp_path, caplog):
    """Compiled and uncompiled runs write the same keys and continue each other's checkpoints,
    landing on the uninterrupted uncompiled run's state to the bit (eager backend)."""
    full = train(make_cfg(corpus, tmp_path / "full", "train.max_steps=4"))
    assert full.step == 4
    graphs: list[int] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(len(gm.graph.nodes))
        return gm.forward  # run the captured graph as is

    with caplog.at_level(logging.INFO, logger="waveglow"):
        train(make_cfg(corpus, tmp_path / "a", "train.max_steps=2", "train.compile=true"),
              TrainHooks(compile_backend=counting))
    assert ", compile on (train.compile=true" in caplog.text
    # The training step's conditioners were captured: tiny's two conditioner input sizes (the
    # second capture makes that size dynamic), no graph break. Validation at steps 0 and 2 ran
    # eager: with autograd off it would have been captured again.
    assert len(graphs) == 2, graphs
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="waveglow"):
        train(make_cfg(corpus, tmp_path / "a", "train.max_steps=4"))  # resume without compile
    assert ", compile off" in caplog.text
    train(make_cfg(corpus, tmp_path / "b", "train.max_steps=2"))
    train(make_cfg(corpus, tmp_path / "b", "train.max_steps=4", "train.compile=true"), EAGER)

    reference = load(tmp_path / "full/checkpoints/last.pt")
    for name in ("a", "b"):
        state = load(tmp_path / name / "checkpoints/last.pt")
        assert list(state["model"]) == list(reference["model"]), name
        assert state["config"]["train"]["compile"] is (name == "b")  # the latest start's settings
        assert_same_state(reference, state, name)


# ------------------------------------------------------------------------------ slow: inductor
@pytest.mark.slow
@pytest.mark.parametrize("memory", ["standard", "invertible"])
def test_inductor_compiled_conditioners_match_uncompiled_steps(memory, single_thread):
    ref, model = small_model(), small_model()
    compile_conditioners(model)  # inductor: generated C++
    assert_same_steps(*steps_and_grads(ref, model, memory))


@pytest.mark.slow
def test_inductor_compiled_trainer_step_matches_under_bf16_autocast(single_thread):
    """The trainer's own Stepper under CPU bf16 autocast: compiled and not within bf16
    rounding of each other (the two differ in which roundings inductor fuses away)."""
    results = []
    for compiled in (False, True):
        model = small_model()
        if compiled:
            compile_conditioners(model)
        stepper = Stepper(model, torch.optim.Adam(model.parameters(), lr=1e-3), device=torch.device("cpu"),
                          amp_dtype=torch.bfloat16, grad_clip=0.0)
        audio, mel = batch()
        results.append([stepper(audio, mel, 1e-3) for _ in range(2)])
    for ref, got in zip(*results):
        assert not got.skipped
        assert got.loss == pytest.approx(ref.loss, rel=2e-2)
        assert got.grad_norm == pytest.approx(ref.grad_norm, rel=5e-2)


@pytest.mark.slow
def test_two_gloo_ranks_with_compile_stay_identical(demo_root, tmp_path):
    from test_train_ddp import overrides, torchrun

    corpus = copy_demo_corpus(demo_root, tmp_path / "corpus")
    proc = torchrun(2, overrides(corpus, tmp_path / "ddp", "train.batch_size=1", "train.max_steps=2",
                                 "train.val_every=2", "train.compile=true"))
    log = proc.stdout + proc.stderr
    assert "compile on (train.compile=true" in log
    assert "ranks in sync: max |parameter difference| over 2 processes = 0" in log
    state = load(tmp_path / "ddp/checkpoints/last.pt")
    assert state["step"] == 2 and list(state["model"]) == list(small_model_keys(corpus))


def small_model_keys(corpus: Path) -> list[str]:
    """The state_dict keys of the uncompiled tiny model the DDP run trains."""
    from waveglow.checkpoint import build_model
    from waveglow.config import to_dict

    return list(build_model(to_dict(make_cfg(corpus, corpus / "x"))).state_dict())


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.cuda
def test_compiled_conditioners_on_cuda_match_uncompiled_on_the_cpu():
    """fp32 without TF32 on CUDA (inductor: Triton kernels) against the eager CPU path, in
    invertible backprop: both compiled passes (the no-grad walk and the autograd pass rebuilt in
    backward); the standard pass runs in `make gpu-check`'s compile runs. One mode only: each
    compilation costs the check's CUDA-tests step tens of seconds."""
    memory = "invertible"
    ref, model = small_model(), small_model().cuda()
    compile_conditioners(model)
    allow = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        audio, mel = batch()
        loss_ref = -ref(audio, mel, memory=memory).sum() / audio.numel()
        loss_ref.backward()
        loss = -model(audio.cuda(), mel.cuda(), memory=memory).sum() / audio.numel()
        loss.backward()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = allow
    assert_close(loss_ref.item(), loss.item(), "loss")
    for (name, p_ref), p in zip(ref.named_parameters(), model.parameters()):
        err = (p.grad.cpu() - p_ref.grad).norm().item()
        # Different kernels and summation orders on the two devices: 1e-4 relative in fp32.
        assert err <= 1e-4 * p_ref.grad.norm().item() + 1e-10, f"{name}: |Δgrad| {err:.3g}"
