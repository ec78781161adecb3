"""Invertible (constant-memory) backprop: `WaveGlow.log_prob(..., memory="invertible")` gives the
standard pass's value and gradients (every parameter, the upsampler's included), under autocast
and DDP too, and keeps no per-flow activations for the backward pass."""

from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from waveglow.bench.drift import reconstruction_drift
from waveglow.conditioner import WN
from waveglow.errors import UserError
from waveglow.flows import Invertible1x1Conv
from waveglow.model import WaveGlow
from waveglow.train.step import Stepper

pytestmark = pytest.mark.usefixtures("single_thread")
N_MELS, HOP = 5, 16
SMALL = {"n_group": 8, "n_flows": 5, "n_early_every": 2, "n_early_size": 2, "upsample_kernel": 64,
         "wn": {"n_layers": 2, "n_channels": 8, "kernel_size": 3}}


def _model(dtype: torch.dtype = torch.float64, **overrides) -> WaveGlow:
    torch.manual_seed(0)
    model = WaveGlow({**SMALL, **overrides}, n_mels=N_MELS, hop_length=HOP).to(dtype)
    with torch.no_grad():  # non-zero end layers: couplings that are not the identity
        for m in model.modules():
            if isinstance(m, WN):
                m.end.weight.normal_(0, 0.2)
                m.end.bias.normal_(0, 0.2)
    return model


def _batch(dtype: torch.dtype, T: int = 96, B: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    audio = 0.5 * torch.randn(B, T, generator=g).to(dtype)
    mel = torch.randn(B, N_MELS, -(-T // HOP) + 1, generator=g).to(dtype)
    return audio, mel


def _value_and_grads(net: torch.nn.Module, model: WaveGlow, audio: torch.Tensor, mel: torch.Tensor,
                     memory: str, **kw) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    model.zero_grad(set_to_none=True)
    audio = audio.clone().requires_grad_()
    log_prob = net(audio, mel, memory=memory, **kw)
    (-log_prob.float().sum() / audio.numel()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return log_prob.detach(), grads, audio.grad.clone()


def _worst_relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over parameters of ‖a - b‖ / ‖a‖ (every parameter must have a gradient in both)."""
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).norm() / a[k].double().norm()).item() for k in a)


@pytest.mark.parametrize("overrides", [
    {},
    {"coupling": "additive"},
    {"condition_half": "alternate", "upsample": "repeat"},
    {"wn": {"n_layers": 2, "n_channels": 8, "kernel_size": 3, "depthwise": True}},
], ids=["affine", "additive", "alternate_repeat", "depthwise"])
def test_same_value_and_gradients_in_float64(overrides):
    model = _model(torch.float64, **overrides)
    audio, mel = _batch(torch.float64)
    value, grads, grad_audio = _value_and_grads(model, model, audio, mel, "standard")
    value_inv, grads_inv, grad_audio_inv = _value_and_grads(model, model, audio, mel, "invertible")
    assert torch.allclose(value_inv, value, rtol=1e-12, atol=0)
    if model.upsample is not None:  # the conditioning's gradient reaches the upsampler
        assert grads["upsample.weight"].abs().max() > 0
    assert _worst_relative(grads, grads_inv) <= 1e-8
    assert ((grad_audio_inv - grad_audio).norm() / grad_audio.norm()).item() <= 1e-8


def test_same_gradients_in_float32_and_the_same_stats():
    model = _model(torch.float32)
    audio, mel = _batch(torch.float32, T=256)
    value, grads, _ = _value_and_grads(model, model, audio, mel, "standard")
    value_inv, grads_inv, _ = _value_and_grads(model, model, audio, mel, "invertible")
    assert torch.allclose(value_inv, value, rtol=1e-5, atol=1e-4)
    assert _worst_relative(grads, grads_inv) <= 1e-3
    _, stats = model(audio, mel, return_stats=True)
    _, stats_inv = model(audio, mel, return_stats=True, memory="invertible")
    assert stats.keys() == stats_inv.keys() and len(stats) == 3 * model.n_flows
    for key in stats:
        assert torch.allclose(stats_inv[key], stats[key], rtol=1e-5, atol=1e-6), key


def test_bf16_autocast_on_cpu():
    """Under autocast the backward pass recomputes in the forward's autocast dtype: the
    conditioner's outputs it inverts with are the forward's own, so the two modes agree to
    float32 rounding of the flow state, far below bf16's own error (~4e-3 relative)."""
    model = _model(torch.float32)
    audio, mel = _batch(torch.float32, T=256)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value, grads, _ = _value_and_grads(model, model, audio, mel, "standard")
        value_inv, grads_inv, _ = _value_and_grads(model, model, audio, mel, "invertible")
    assert value_inv.dtype == torch.float32
    assert torch.allclose(value_inv, value, rtol=1e-5, atol=1e-4)
    assert _worst_relative(grads, grads_inv) <= 1e-3
    # ... and it is really bf16: the fp32 gradient differs by far more than that.
    _, grads_fp32, _ = _value_and_grads(model, model, audio, mel, "standard")
    assert _worst_relative(grads_fp32, grads_inv) > 1e-3


def test_ddp_needs_no_unused_parameter_search(tmp_path: Path):
    """DDP (gloo, one process, find_unused_parameters=False) gets a gradient for every
    parameter from the invertible pass: a second iteration would fail otherwise ("Expected to
    have finished reduction in the prior iteration")."""
    model = _model(torch.float32)
    audio, mel = _batch(torch.float32, T=256)
    _, grads, _ = _value_and_grads(model, model, audio, mel, "standard")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        for _ in range(2):
            _, grads_ddp, _ = _value_and_grads(ddp, model, audio, mel, "invertible")
            assert _worst_relative(grads, grads_ddp) <= 1e-3
    finally:
        dist.destroy_process_group()


def _saved_numel(model: WaveGlow, audio: torch.Tensor, mel: torch.Tensor, memory: str) -> int:
    """Elements the forward pass keeps for the backward pass (saved-tensor hooks)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter):
            seen[id(t)] = t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        log_prob = model(audio, mel, memory=memory)
    log_prob.sum().backward()
    return sum(seen.values())


def test_invertible_keeps_no_per_flow_activations():
    audio, mel = _batch(torch.float32, T=512)
    saved = {}
    for n_flows in (2, 6):
        model = _model(torch.float32, n_flows=n_flows, n_early_every=4)
        saved[n_flows] = {m: _saved_numel(model, audio, mel, m) for m in ("standard", "invertible")}
    # Standard: grows with every flow step. Invertible: the same for 2 and 6 steps, and less
    # than one flow step's share of the standard pass.
    assert saved[6]["standard"] > 2 * saved[2]["standard"]
    assert saved[6]["invertible"] == saved[2]["invertible"]
    assert saved[6]["invertible"] < (saved[6]["standard"] - saved[2]["standard"]) / 4


def test_unknown_memory_mode_is_a_user_error():
    model = _model(torch.float32)
    audio, mel = _batch(torch.float32)
    with pytest.raises(UserError, match="memory=bogus"):
        model(audio, mel, memory="bogus")
    # Without autograd there is nothing to save: the invertible mode is the plain walk.
    with torch.no_grad():
        assert torch.equal(model.log_prob(audio, mel, memory="invertible"), model.log_prob(audio, mel))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_reconstruction_drift_is_measured_part_by_part(precision):
    """The drift report rebuilds every part's input as the backward pass does: float32
    rounding only (also under bf16 autocast: the conditioner's outputs are recomputed alike)."""
    model = _model(torch.float32)
    audio, mel = _batch(torch.float32, T=512)
    rows = reconstruction_drift(model, audio, mel, precision)
    assert [r["part"] for r in rows] == list(reversed(model.flows.keys()))
    assert rows[-1]["max_input"] == pytest.approx(audio.abs().max().item())
    assert all(0 <= r["max_abs"] < 1e-5 * max(1.0, r["max_input"]) for r in rows)


def _counting(monkeypatch: pytest.MonkeyPatch, counts: collections.Counter, *names: str) -> None:
    """Count the calls of torch.linalg.<name> (looked up at call time by the model's code)."""
    for name in names:
        original = getattr(torch.linalg, name)

        def counted(*args, _name=name, _original=original, **kwargs):  # noqa: ANN002, ANN003, ANN202
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(torch.linalg, name, counted)


@pytest.mark.parametrize("grad_accum", [1, 3])
def test_each_1x1_weight_is_inverted_once_per_optimizer_step(monkeypatch, grad_accum):
    """Invertible backprop through the training step: each 1×1 weight is inverted once per
    optimizer step (not once per micro-batch, and the backward factorizes nothing else: the
    log-determinants are the forward's, one per weight and micro-batch), and after 3 steps of
    a fused Adam (which does not bump the weights' version counters, so only the step's own
    invalidation keeps the cache fresh) the weights are those of the standard backward."""
    audio, mel = _batch(torch.float64, T=96, B=6)
    weights = {}
    for memory in ("standard", "invertible"):
        model = _model(torch.float64)
        n_convs = sum(isinstance(m, Invertible1x1Conv) for m in model.modules())
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
        step = Stepper(model, opt, device=torch.device("cpu"), amp_dtype=None, grad_clip=0,
                       grad_accum=grad_accum, memory=memory)
        per_step = []
        with monkeypatch.context() as patch:
            counts: collections.Counter[str] = collections.Counter()
            _counting(patch, counts, "inv", "inv_ex", "solve", "lu_factor", "lu_factor_ex", "slogdet")
            for _ in range(3):
                counts.clear()
                assert not step(audio, mel, 1e-2).skipped
                per_step.append(dict(counts))
        if memory == "invertible":
            assert n_convs == 5
            assert per_step == [{"inv_ex": n_convs, "slogdet": n_convs * grad_accum}] * 3, per_step
        weights[memory] = {k: v.clone() for k, v in model.state_dict().items()}
    moved = max((weights["standard"][k] - p).abs().max().item() for k, p in _model(torch.float64).state_dict().items())
    assert moved > 1e-3  # the steps really changed the weights
    worst = max((weights["invertible"][k] - v).abs().max().item() for k, v in weights["standard"].items())
    assert worst < 1e-10, worst


def test_forward_walk_uses_the_autograd_products_for_1x1_convs(monkeypatch):
    """Invertible backprop's forward walk (no autograd, inside `autograd_numerics()`) runs the
    1×1 convs as the autograd recompute does (`baddbmm`), never oneDNN's inference product: with
    weights new every step that product cost 10 s of squeeze's 11 s invertible step."""
    from waveglow import conv_paths

    calls = []
    monkeypatch.setattr(conv_paths, "_onednn_linear_available", lambda: calls.append(1) or False)
    x, w, b = torch.randn(2, 8, 5), torch.randn(6, 8, 1), torch.randn(6)
    expected = torch.baddbmm(b.view(1, -1, 1), w.squeeze(-1).expand(2, 6, 8), x)
    with torch.no_grad(), conv_paths.autograd_numerics():
        inside = conv_paths.pointwise_conv(x, w, b)
    assert calls == [] and torch.equal(inside, expected)
    with torch.no_grad():
        conv_paths.pointwise_conv(x, w, b)
    assert calls == [1]  # synthesis still asks for oneDNN's product
