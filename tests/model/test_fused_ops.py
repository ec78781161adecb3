"""The conditioner's training-path operators (`waveglow.fused_ops`, the split views in
`WN.forward`) against the plain composition of torch operators (`plain_training_ops()`): the
same loss and, parameter by parameter, the same gradients, with end layers randomized so that
no gradient is trivially zero; in float32, under bf16 autocast, through a whole WaveGlow in
both backprop memory modes, and (cuda-marked) on CUDA against the CPU."""

from __future__ import annotations

import contextlib

import pytest
import torch

from waveglow.conditioner import WN
from waveglow.fused_ops import gated_tanh_sigmoid, plain_training_ops
from waveglow.model import WaveGlow

pytestmark = pytest.mark.usefixtures("single_thread")
LOSS_RTOL = 1e-5  # the bound for fp32; the paths agree to float32 rounding (~1e-7)
GRAD_RTOL = 1e-5  # per parameter, relative to the gradient's norm


def _wn(depthwise: bool = False, dtype: torch.dtype = torch.float32) -> WN:
    torch.manual_seed(0)
    wn = WN(n_in=4, n_cond=12, n_out=8, n_layers=4, n_channels=16, kernel_size=3, depthwise=depthwise)
    with torch.no_grad():  # a zero end layer would make every gradient but the end's zero
        wn.end.weight.normal_(0, 0.3)
        wn.end.bias.normal_(0, 0.3)
    return wn.to(dtype)


def _loss_and_grads(wn: WN, a: torch.Tensor, cond: torch.Tensor, weights: torch.Tensor, plain: bool,
                    amp: torch.dtype | None = None) -> tuple[float, dict[str, torch.Tensor]]:
    wn.zero_grad(set_to_none=True)
    a = a.clone().requires_grad_()
    cond = cond.clone().requires_grad_()
    amp_ctx = torch.autocast("cpu", dtype=amp) if amp else contextlib.nullcontext()
    with plain_training_ops() if plain else contextlib.nullcontext(), amp_ctx:
        out = wn(a, cond)
    loss = (out.float() * weights).sum()
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in wn.named_parameters()}
    grads["<input a>"] = a.grad.detach().clone()
    grads["<cond>"] = cond.grad.detach().clone()
    return loss.item(), grads


def _assert_same(loss_ref: float, grads_ref: dict, loss: float, grads: dict, rtol: float) -> None:
    assert abs(loss - loss_ref) <= LOSS_RTOL * abs(loss_ref)
    assert grads.keys() == grads_ref.keys()
    for name, ref in grads_ref.items():
        ref64, got64 = ref.double(), grads[name].double()
        assert ref64.norm() > 0, f"{name}: zero gradient, the comparison would prove nothing"
        err = ((got64 - ref64).norm() / ref64.norm()).item()
        assert err <= rtol, f"{name}: relative gradient difference {err:.2e}"


def _inputs(N: int = 50) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 4, N, generator=g), torch.randn(2, 12, N, generator=g), torch.randn(2, 8, N, generator=g)


def test_fused_gate_matches_autograd_and_gradcheck():
    g = torch.randn(2, 10, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(gated_tanh_sigmoid, (g,))
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(2, 10, 33).to(dtype)
        w = torch.randn(2, 5, 33).to(dtype)
        x1 = x.clone().requires_grad_()
        ref = torch.tanh(x1[:, :5]) * torch.sigmoid(x1[:, 5:])
        (ref * w).sum().backward()
        x2 = x.clone().requires_grad_()
        got = gated_tanh_sigmoid(x2)
        (got * w).sum().backward()
        # The same operators in the same order: bit-identical value and gradient.
        assert torch.equal(got, ref) and torch.equal(x2.grad, x1.grad)


def _saved_for_backward(wn: WN, plain: bool) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shape and dtype of every distinct tensor a conditioner forward keeps for backward."""
    seen: dict[tuple[int, int], tuple[tuple[int, ...], torch.dtype]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[(t.untyped_storage().data_ptr(), t.storage_offset())] = (tuple(t.shape), t.dtype)
        return t

    a, cond, _ = _inputs()
    with plain_training_ops() if plain else contextlib.nullcontext(), \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        wn(a.requires_grad_(), cond.requires_grad_())
    return sorted(seen.values(), key=str)


def test_conditioner_fused_path_keeps_what_the_plain_one_keeps():
    # The same tensors, not only the same bytes: a gate that kept its [B, 2C, N] input in place
    # of its two [B, C, N] activations saved as much but raised glibc's resident peak of a
    # waveglow_256 step by 240 MiB (docs/performance.md, issue 22).
    wn = _wn()
    assert _saved_for_backward(wn, plain=False) == _saved_for_backward(wn, plain=True)


@pytest.mark.parametrize("depthwise", [False, True], ids=["dense", "depthwise"])
def test_conditioner_fused_path_matches_the_plain_one_in_fp32(depthwise):
    wn = _wn(depthwise)
    a, cond, weights = _inputs()
    ref = _loss_and_grads(wn, a, cond, weights, plain=True)
    got = _loss_and_grads(wn, a, cond, weights, plain=False)
    _assert_same(*ref, *got, rtol=GRAD_RTOL)


def test_conditioner_fused_path_matches_the_plain_one_under_bf16_autocast():
    wn = _wn()
    a, cond, weights = _inputs()
    ref = _loss_and_grads(wn, a, cond, weights, plain=True, amp=torch.bfloat16)
    got = _loss_and_grads(wn, a, cond, weights, plain=False, amp=torch.bfloat16)
    # Same bf16 operators; the backward's sums differ from the slices' zero-filled adds only
    # in adding exact zeros: equal up to float32 rounding of the upcast loss.
    _assert_same(*ref, *got, rtol=GRAD_RTOL)


@pytest.mark.parametrize("memory", ["standard", "invertible"])
def test_whole_model_loss_and_gradients_match_the_plain_path(memory):
    torch.manual_seed(0)
    model = WaveGlow({"n_group": 8, "n_flows": 4, "n_early_every": 2, "n_early_size": 2, "upsample_kernel": 64,
                      "wn": {"n_layers": 3, "n_channels": 16, "kernel_size": 3}}, n_mels=5, hop_length=16)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WN):
                m.end.weight.normal_(0, 0.2)
                m.end.bias.normal_(0, 0.2)
    g = torch.Generator().manual_seed(2)
    audio = 0.5 * torch.randn(2, 128, generator=g)
    mel = torch.randn(2, 5, 9, generator=g)

    def run(plain: bool) -> tuple[float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        with plain_training_ops() if plain else contextlib.nullcontext():
            loss = -model(audio, mel, memory=memory).sum() / audio.numel()
            loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    _assert_same(*run(True), *run(False), rtol=GRAD_RTOL)


@pytest.mark.cuda
@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16"])
def test_fused_path_on_cuda_matches_the_plain_path_on_the_cpu(amp):
    from waveglow.runtime import restore_tf32, set_tf32

    before = set_tf32(False)  # TF32 would differ from the CPU by ~1e-3, not by float rounding
    try:
        wn = _wn()
        a, cond, weights = _inputs(200)
        loss_ref, grads_ref = _loss_and_grads(wn, a, cond, weights, plain=True)
        wn_cuda = _wn().cuda()
        wn_cuda.zero_grad(set_to_none=True)
        a_c = a.cuda().requires_grad_()
        cond_c = cond.cuda().requires_grad_()
        with torch.autocast("cuda", dtype=amp) if amp else contextlib.nullcontext():
            out = wn_cuda(a_c, cond_c)
        loss = (out.float() * weights.cuda()).sum()
        loss.backward()
        grads = {n: p.grad.detach().cpu() for n, p in wn_cuda.named_parameters()}
        grads["<input a>"] = a_c.grad.cpu()
        grads["<cond>"] = cond_c.grad.cpu()
        # fp32: float rounding; bf16 on CUDA against fp32 on the CPU: bf16's 8 mantissa bits.
        rtol = GRAD_RTOL if amp is None else 5e-2
        assert abs(loss.item() - loss_ref) <= (LOSS_RTOL if amp is None else 5e-2) * abs(loss_ref)
        for name, ref in grads_ref.items():
            err = ((grads[name].double() - ref.double()).norm() / ref.double().norm()).item()
            assert err <= rtol, f"{name}: relative gradient difference {err:.2e}"
    finally:
        restore_tf32(before)
