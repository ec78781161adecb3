"""The training step (`waveglow.train.step.Stepper`): gradient accumulation gives the gradient of
the whole batch, the fp16 loss scale shrinks only for non-finite gradients, the memory mode
reaches the model, and the step reads the device once."""

from __future__ import annotations

import collections
import functools
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose

from waveglow.checkpoint import build_model
from waveglow.conditioner import WN
from waveglow.config import to_dict
from waveglow.data.audio import load_audio
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram
from waveglow.train.step import Stepper

CPU = torch.device("cpu")


@functools.cache
def tiny_config() -> dict:
    return to_dict(compose("waveglow_train", "data=demo", "model=tiny", "model.upsample_kernel=256"))


def tiny_model(dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """`tiny` with random coupling end layers, ~N(0, 0.1²) (as tests/model/test_invertible_backprop
    does). Its own zero-initialised end layers make every coupling the identity, and then only
    the end layers and the 1×1 convolutions (12 of 134 parameters) get a gradient: a comparison
    of gradients would cover almost nothing."""
    torch.manual_seed(0)
    model = build_model(tiny_config()).to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, WN):
                module.end.weight.copy_(0.1 * torch.randn(module.end.weight.shape, generator=gen))
                module.end.bias.copy_(0.1 * torch.randn(module.end.bias.shape, generator=gen))
    return model


def assert_every_parameter_has_a_gradient(model: torch.nn.Module, grads: list[torch.Tensor]) -> None:
    """Every parameter of `tiny` (134: upsampler, 4 conditioners, 4 1×1 convolutions) gets a
    non-zero gradient: with non-identity couplings none is cut off from the loss (measured: 134
    of 134; none can be zero with random end layers, since each conditioner's output reaches
    the log-det and the next flow step)."""
    names = [name for name, _ in model.named_parameters()]
    zero = [name for name, g in zip(names, grads, strict=True) if not bool(g.abs().max() > 0)]
    assert len(names) == 134 and zero == [], f"{len(zero)} of {len(names)} parameters without a gradient: {zero}"


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it was asked to apply."""

    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        self.grads = [p.grad.detach().clone() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


@pytest.fixture(scope="module")
def demo_batch(demo_root) -> tuple[torch.Tensor, torch.Tensor]:
    """8 fixed 512-sample pieces of demo clips [8, 512] and their log-mels [8, 80, 3]."""
    clips = torch.stack([torch.from_numpy(load_audio(p, 22050))[4096:5120]
                         for p in sorted((demo_root / "wavs").glob("*.wav"))[:8]])
    return clips[:, :512].contiguous(), MelSpectrogram()(clips)[:, :, :3].contiguous()


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-13), (torch.float32, 1e-5)])
def test_grad_accum_gives_the_gradient_of_the_whole_batch(demo_batch, single_thread, dtype, rtol):
    """batch 8 in one piece vs batch_size 4 × grad_accum 2: the same gradient and loss.

    Measured max |difference| / max |gradient| of a parameter, worst of all 134 parameters:
    1.7e-15 (float64) and 8.9e-7 (float32); the bounds leave a margin of about 10 (a wrong
    split, e.g. each piece's loss divided by its own samples, is off by a factor of 2).
    """
    audio, mel = (x.to(dtype) for x in demo_batch)
    results = []
    for accum in (1, 2):
        model = tiny_model(dtype)
        opt = RecordingSGD(model.parameters(), lr=0.0)
        out = Stepper(model, opt, device=CPU, amp_dtype=None, grad_clip=0, grad_accum=accum)(audio, mel, 0.0)
        results.append((out, opt.grads))
    (one, g1), (two, g2) = results
    assert not one.skipped and not two.skipped
    assert_every_parameter_has_a_gradient(model, g1)
    assert_every_parameter_has_a_gradient(model, g2)
    assert two.loss == pytest.approx(one.loss, rel=rtol, abs=rtol)
    assert two.grad_norm == pytest.approx(one.grad_norm, rel=rtol)
    worst = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(g1, g2))
    print(f"grad_accum=2 vs one batch of 8, {dtype}: max relative gradient difference {worst:.2g}")
    assert worst < rtol
    with pytest.raises(ValueError, match="not a multiple of grad_accum=3"):
        Stepper(model, opt, device=CPU, amp_dtype=None, grad_clip=0, grad_accum=3)(audio, mel, 0.0)


def test_fp16_loss_scale_shrinks_for_bad_gradients_not_for_a_bad_loss(single_thread):
    """GradScaler("cpu"): a NaN batch (non-finite loss) keeps the scale; a scale so large that
    the fp16 gradients overflow (finite loss) is halved, and neither step touches the weights."""
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    step = Stepper(model, opt, device=CPU, amp_dtype=torch.float16, grad_clip=100.0, scaler=scaler)
    gen = torch.Generator().manual_seed(0)
    # Short: fp16 convolutions are slow on a CPU.
    audio, mel = 0.1 * torch.randn(1, 512, generator=gen), torch.randn(1, 80, 3, generator=gen)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = audio.clone()
    bad[0, 7] = float("nan")
    for _ in range(2):
        out = step(bad, mel, 1e-3)
        assert out.skipped and not out.overflow
    assert scaler.get_scale() == 2.0**16
    scaler.update(new_scale=2.0**120)  # float32 holds it; fp16 gradients overflow
    out = step(audio, mel, 1e-3)
    assert out.skipped and out.overflow and out.loss == out.loss  # finite loss
    assert scaler.get_scale() == 2.0**119
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    scaler.update(new_scale=1024.0)
    out = step(audio, mel, 1e-3)
    assert not out.skipped and scaler.get_scale() == 1024.0
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_invertible_memory_mode_gives_the_standard_gradient(demo_batch, single_thread):
    """train.memory=invertible reaches the model's forward and its step applies the same
    gradient as the standard one, for every parameter (measured worst relative difference
    2.4e-6 in float32, over all 134 parameters)."""
    audio, mel = demo_batch
    grads, seen = [], []
    for memory in ("standard", "invertible"):
        model = tiny_model()

        def spy(*args, memory="standard", _forward=model.forward, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            seen.append(memory)
            return _forward(*args, memory=memory, **kwargs)

        model.forward = spy
        opt = RecordingSGD(model.parameters(), lr=0.0)
        Stepper(model, opt, device=CPU, amp_dtype=None, grad_clip=0, grad_accum=2, memory=memory)(audio, mel, 0.0)
        grads.append(opt.grads)
    assert seen == ["standard", "standard", "invertible", "invertible"]
    for g in grads:
        assert_every_parameter_has_a_gradient(model, g)
    worst = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in zip(*grads))
    print(f"invertible vs standard backward, float32: max relative gradient difference {worst:.2g}")
    assert worst < 1e-4
    with pytest.raises(UserError, match="memory=stacked"):
        Stepper(model, opt, device=CPU, amp_dtype=None, grad_clip=0, memory="stacked")(audio, mel, 0.0)


@pytest.mark.parametrize("with_stats", [False, True])
def test_one_device_read_per_step(with_stats, single_thread, monkeypatch):
    """The step's figures (loss, norm, stop flag, per-flow terms) come back in one transfer:
    the package's own code reads a tensor's value once per step (torch's CPU Adam reads its
    CPU step counters, which on a GPU stay on the host too)."""
    model = tiny_model()
    step = Stepper(model, torch.optim.Adam(model.parameters(), lr=1e-4), device=CPU, amp_dtype=None,
                   grad_clip=100.0, grad_accum=2)
    reads: collections.Counter[str] = collections.Counter()
    package = str(Path(sys.modules["waveglow"].__file__).parent)

    def counting(name):  # noqa: ANN001, ANN202
        original = getattr(torch.Tensor, name)

        def read(self, *args, **kwargs):  # noqa: ANN001, ANN202
            if sys._getframe(1).f_code.co_filename.startswith(package):
                reads[name] += 1
            return original(self, *args, **kwargs)

        return read

    for name in ("item", "tolist", "__float__", "__bool__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    out = step(0.1 * torch.randn(4, 2048), torch.randn(4, 80, 9), 1e-4, with_stats=with_stats)
    monkeypatch.undo()
    assert not out.skipped and bool(out.stats) == with_stats
    assert sum(reads.values()) == 1, reads
