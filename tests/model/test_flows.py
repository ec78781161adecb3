"""The flow parts: exact inverses, log-dets against autograd Jacobians, weight norm, precision."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.utils._python_dispatch import TorchDispatchMode

from waveglow.conditioner import WN, WNConv1d
from waveglow.conv_paths import (
    autograd_numerics,
    depthwise_shifted,
    dilated_as_matmul,
    pointwise_conv,
)
from waveglow.export.graph import _FrozenInverse1x1, freeze_inverse
from waveglow.flows import (
    AdditiveCoupling,
    AffineCoupling,
    FlowPart,
    Invertible1x1Conv,
    Squeeze,
    Unsqueeze,
)

B, C, N, N_COND = 2, 6, 5, 3


# Tiny tensors: one intra-op thread (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


def _randomize_end(module: torch.nn.Module, scale: float = 0.3) -> None:
    """Make the zero-initialized end layers non-zero so couplings are not the identity."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, WN):
                m.end.weight.normal_(0, scale)
                m.end.bias.normal_(0, scale)


def _jacobian_logdet(part, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """log|det ∂y/∂x| per batch item via the full autograd Jacobian (float64)."""
    out = []
    for b in range(x.shape[0]):
        xb, cb = x[b:b + 1], cond[b:b + 1]
        jac = jacobian(lambda v, xb=xb, cb=cb: part(v.view_as(xb), cb)[0].reshape(-1), xb.reshape(-1))
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def _coupling(cls, condition: str, start: int = 0, depthwise: bool = False):
    torch.manual_seed(0)
    part = cls(C, start, N_COND, n_layers=2, n_channels=4, kernel_size=3, depthwise=depthwise,
               condition=condition, flow_index=0)
    _randomize_end(part)
    return part.double()


def test_squeeze_layout_and_inverse():
    x = torch.arange(24.0).view(2, 12)
    sq = Squeeze(4)
    y, logdet = sq(x, torch.empty(0))
    assert y.shape == (2, 4, 3)
    # channel j holds sample offset j of each group of 4 consecutive samples
    assert torch.equal(y[0, 1], torch.tensor([1.0, 5.0, 9.0]))
    assert torch.equal(logdet, torch.zeros(2))
    assert torch.equal(sq.inverse(y, torch.empty(0)), x)
    un = Unsqueeze(4)
    assert torch.equal(un(y, torch.empty(0))[0], x)
    assert torch.equal(un.inverse(x, torch.empty(0)), y)


# ---------------------------------------------------------------- the FlowPart contract
def _all_parts(cls=FlowPart) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub, *_all_parts(sub)}
    return out


def _generic_1x1(start: int) -> Invertible1x1Conv:
    torch.manual_seed(1)
    part = Invertible1x1Conv(C - start, start=start).double()
    with torch.no_grad():
        part.weight.add_(0.1 * torch.randn_like(part.weight))  # a generic (non-orthogonal) W
    return part


# Every concrete FlowPart, built small and non-trivial, with the shape of its input [B, ...].
CONTRACT_CASES = {
    "squeeze": (Squeeze, lambda: Squeeze(3), (B, 3 * N)),
    "unsqueeze": (Unsqueeze, lambda: Unsqueeze(3), (B, 3, N)),
    "1x1": (Invertible1x1Conv, lambda: _generic_1x1(0), (B, C, N)),
    "1x1_after_early_outputs": (Invertible1x1Conv, lambda: _generic_1x1(2), (B, C, N)),
    # The export's copy of a 1x1 conv: its inverse is a constant buffer (waveglow.export.graph).
    "1x1_frozen_for_export": (_FrozenInverse1x1, lambda: freeze_inverse(_generic_1x1(2)), (B, C, N)),
    "affine_first": (AffineCoupling, lambda: _coupling(AffineCoupling, "first"), (B, C, N)),
    "affine_second_offset": (AffineCoupling, lambda: _coupling(AffineCoupling, "second", 2), (B, C + 2, N)),
    "affine_depthwise": (AffineCoupling, lambda: _coupling(AffineCoupling, "first", depthwise=True), (B, C, N)),
    "additive_first": (AdditiveCoupling, lambda: _coupling(AdditiveCoupling, "first"), (B, C, N)),
    "additive_second_offset": (AdditiveCoupling, lambda: _coupling(AdditiveCoupling, "second", 2),
                               (B, C + 2, N)),
}


def test_every_flow_part_has_a_contract_case():
    # Every part class nothing derives from (bases such as Coupling are covered through them).
    leaves = {cls for cls in _all_parts() if not cls.__subclasses__()}
    covered = {cls for cls, _, _ in CONTRACT_CASES.values()}
    assert leaves <= covered, f"FlowParts without a contract case: {sorted(c.__name__ for c in leaves - covered)}"


@pytest.mark.parametrize("name", sorted(CONTRACT_CASES))
def test_flow_part_contract(name: str):
    """forward(x, cond) -> (y, logdet [B]); inverse(y, cond) == x; logdet == log|det dy/dx|
    from the autograd Jacobian; the state's dtype is kept (float64 and float32)."""
    _, make, shape = CONTRACT_CASES[name]
    part = make().double()
    torch.manual_seed(7)
    x = torch.randn(*shape, dtype=torch.float64)
    cond = torch.randn(B, N_COND, N, dtype=torch.float64)
    y, logdet = part(x, cond)
    assert logdet.shape == (B,) and logdet.dtype == torch.float64 and y.dtype == torch.float64
    assert y.numel() == x.numel()
    assert (part.inverse(y, cond) - x).abs().max() < 1e-12
    assert torch.allclose(logdet, _jacobian_logdet(part, x, cond), atol=1e-10)
    # float32 in, float32 out (the log-det may be computed in float32 or wider, never narrower).
    part32 = part.float()
    y32, logdet32 = part32(x.float(), cond.float())
    assert y32.dtype == torch.float32 and logdet32.dtype in (torch.float32, torch.float64)
    assert (part32.inverse(y32, cond.float()) - x.float()).abs().max() < 1e-4
    # A fresh float64 part: .float() above converted `part` in place, and a frozen inverse
    # buffer does not come back from float32 exactly.
    _check_inverse_vjp(make().double(), x, cond)


def _check_inverse_vjp(part: FlowPart, x: torch.Tensor, cond: torch.Tensor) -> None:
    """inverse_vjp(y, cond, dy, dlogdet) rebuilds x from y and gives autograd's gradients of
    <dy, y> + <dlogdet, logdet> through forward(x, cond): for x, cond and every parameter."""
    part = part.double()
    g = torch.Generator().manual_seed(3)
    x = x.clone().requires_grad_()
    cond = cond.clone().requires_grad_()
    y, logdet = part(x, cond)
    grad_y = torch.randn(y.shape, generator=g, dtype=y.dtype)
    grad_logdet = torch.randn(logdet.shape, generator=g, dtype=logdet.dtype)
    params = [p for p in part.parameters() if p.requires_grad]
    loss = (y * grad_y).sum() + (logdet * grad_logdet).sum()
    expected = torch.autograd.grad(loss, [x, cond, *params], allow_unused=True)
    x_rec, grad_x, grad_cond, grad_params = part.inverse_vjp(y.detach(), cond.detach().requires_grad_(),
                                                              grad_y, grad_logdet)
    assert (x_rec - x).abs().max() < 1e-12 and not x_rec.requires_grad
    assert torch.allclose(grad_x, expected[0], rtol=1e-10, atol=1e-12)
    if expected[1] is None:
        assert grad_cond is None or grad_cond.abs().max() == 0
    else:
        assert torch.allclose(grad_cond, expected[1], rtol=1e-10, atol=1e-12)
    assert len(grad_params) == len(params)
    for got, want in zip(grad_params, expected[2:]):
        if want is None:
            assert got is None or got.abs().max() == 0
        else:
            assert got is not None and torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cls", [AffineCoupling, AdditiveCoupling])
@pytest.mark.parametrize("condition", ["first", "second"])
def test_coupling_passes_its_conditioning_half(cls, condition):
    start = 2
    part = _coupling(cls, condition, start)
    x = torch.randn(B, C + start, N, dtype=torch.float64)
    y, logdet = part(x, torch.randn(B, N_COND, N, dtype=torch.float64))
    assert torch.equal(y[:, :start], x[:, :start])
    h = C // 2
    kept = slice(start, start + h) if condition == "first" else slice(start + h, None)
    assert torch.equal(y[:, kept], x[:, kept]), "the conditioning half must pass unchanged"
    if cls is AdditiveCoupling:
        assert torch.equal(logdet, torch.zeros(B, dtype=torch.float64))


def test_1x1_conv_starts_orthogonal_and_keeps_early_channels():
    torch.manual_seed(1)
    part = Invertible1x1Conv(C - 2, start=2).double()
    w = part.weight.squeeze(-1)
    assert torch.allclose(w @ w.T, torch.eye(C - 2, dtype=torch.float64), atol=1e-6)
    assert torch.linalg.det(w) > 0
    x = torch.randn(B, C, N, dtype=torch.float64)
    assert torch.equal(part(x, torch.empty(0))[0][:, :2], x[:, :2])


def test_inverse_cache_follows_the_weight():
    torch.manual_seed(2)
    part = Invertible1x1Conv(4)
    x = torch.randn(1, 4, 7)
    with torch.inference_mode():
        y = part(x, None)[0]
        assert (part.inverse(y, None) - x).abs().max() < 1e-5
    # An optimizer-style in-place update must invalidate the cached inverse.
    with torch.no_grad():
        part.weight.mul_(2.0)
    with torch.inference_mode():
        y = part(x, None)[0]
        assert (part.inverse(y, None) - x).abs().max() < 1e-5
    # So must load_state_dict.
    other = Invertible1x1Conv(4)
    part.load_state_dict(other.state_dict())
    with torch.no_grad():
        y = other(x, None)[0]
        assert (part.inverse(y, None) - x).abs().max() < 1e-5
    # Writes through .data bypass the version counter: invalidate_inverse() is the documented way.
    part.weight.data.copy_(torch.linalg.qr(torch.randn(4, 4))[0].unsqueeze(-1))
    part.invalidate_inverse()
    with torch.no_grad():
        y = part(x, None)[0]
        assert (part.inverse(y, None) - x).abs().max() < 1e-5


def test_coupling_is_identity_at_init():
    torch.manual_seed(3)
    part = AffineCoupling(C, 0, N_COND, n_layers=2, n_channels=4)
    x, cond = torch.randn(B, C, N), torch.randn(B, N_COND, N)
    y, logdet = part(x, cond)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(B))


def test_weight_norm_conv_and_fold():
    torch.manual_seed(4)
    conv = WNConv1d(4, 6, 3, dilation=2).double()
    # Initialized like torch's weight_norm: g = ||v|| per output channel, so weight == v.
    assert torch.allclose(conv.kernel(), conv.weight_v)
    with torch.no_grad():
        conv.weight_g.mul_(1.7)
    x = torch.randn(2, 4, 11, dtype=torch.float64)
    ref = torch.nn.functional.conv1d(
        x, conv.weight_g * conv.weight_v / conv.weight_v.norm(dim=(1, 2), keepdim=True),
        conv.bias, padding=2, dilation=2)
    before = conv(x)
    assert torch.allclose(before, ref, atol=1e-12)
    assert set(conv.state_dict()) == {"weight_g", "weight_v", "bias"}
    assert conv.weight_g.shape == (6, 1, 1)
    conv.remove_weight_norm()
    conv.remove_weight_norm()  # idempotent
    assert set(conv.state_dict()) == {"weight", "bias"}
    assert torch.allclose(conv(x), before, atol=1e-12)


@pytest.mark.parametrize("depthwise", [False, True])
def test_wn_fold_keeps_output(depthwise):
    torch.manual_seed(5)
    wn = WN(3, N_COND, 6, n_layers=3, n_channels=8, depthwise=depthwise).double()
    _randomize_end(wn)
    a, cond = torch.randn(B, 3, 16, dtype=torch.float64), torch.randn(B, N_COND, 16, dtype=torch.float64)
    before = wn(a, cond)
    with torch.inference_mode():
        inplace = wn(a, cond)  # the allocation-saving inference path computes the same
    assert torch.allclose(inplace, before, atol=1e-12)
    wn.remove_weight_norm()
    assert torch.allclose(wn(a, cond), before, atol=1e-12)


def test_bf16_autocast_keeps_flow_math_in_float32():
    torch.manual_seed(6)
    conv = Invertible1x1Conv(C)
    coup = AffineCoupling(C, 0, N_COND, n_layers=2, n_channels=8)
    _randomize_end(coup)
    x, cond = torch.randn(B, C, 32), torch.randn(B, N_COND, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, ld_w = conv(x, cond)
        y2, ld_s = coup(y, cond)
        back = conv.inverse(coup.inverse(y2, cond), cond)
    for t in (y, ld_w, y2, ld_s, back):
        assert t.dtype == torch.float32
        assert torch.isfinite(t).all()
    # Only the conditioner ran in bf16, and it runs identically both ways: exact round trip.
    assert (back - x).abs().max() < 1e-4


# ---------------------------------------------------------------- fp32 CPU inference fast paths
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("with_bias", [False, True])
def test_pointwise_conv_inference_path_matches_baddbmm(batch, with_bias):
    """fp32 without autograd takes oneDNN's matmul; it must equal the baddbmm path to rounding,
    and operator-level MAC counting must still see it."""
    from torch.utils.flop_counter import FlopCounterMode

    from waveglow.bench.cost import register_flop_formulas

    register_flop_formulas()  # before the counter is created: it copies the registry
    torch.manual_seed(7)
    x, w = torch.randn(batch, 24, 37), torch.randn(40, 24, 1)
    bias = torch.randn(40) if with_bias else None
    ref = pointwise_conv(x, w, bias)  # autograd on: baddbmm
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        fast = pointwise_conv(x, w, bias)
    assert fast.shape == ref.shape == (batch, 40, 37) and fast.is_contiguous()
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5)
    assert counter.get_total_flops() == 2 * batch * 40 * 24 * 37


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("dilation", [1, 4, 16, 64])
def test_depthwise_shifted_matches_conv1d(kernel_size, dilation):
    """Taps that reach past the sequence (dilation >= N) only read zero padding."""
    torch.manual_seed(8)
    x, w, b = torch.randn(2, 6, 20), torch.randn(6, 1, kernel_size), torch.randn(6)
    pad = dilation * (kernel_size - 1) // 2
    ref = torch.nn.functional.conv1d(x, w, b, padding=pad, dilation=dilation, groups=6)
    assert torch.allclose(depthwise_shifted(x, w, b, dilation), ref, atol=1e-5)
    ref = torch.nn.functional.conv1d(x, w, None, padding=pad, dilation=dilation, groups=6)
    assert torch.allclose(depthwise_shifted(x, w, None, dilation), ref, atol=1e-5)


@pytest.mark.parametrize("depthwise", [False, True])
def test_wn_fp32_inference_path_matches_training_path(depthwise):
    """Without autograd (oneDNN 1×1s, folded conditioning bias, shifted depthwise taps) the
    conditioner computes the same as with autograd, to float32 rounding."""
    torch.manual_seed(9)
    wn = WN(3, N_COND, 6, n_layers=4, n_channels=8, depthwise=depthwise)
    _randomize_end(wn)
    with torch.no_grad():
        for p in wn.parameters():  # non-zero biases everywhere, so the fold matters
            if p.dim() == 1:
                p.normal_(0, 0.5)
    wn.remove_weight_norm()
    a, cond = torch.randn(1, 3, 40), torch.randn(1, N_COND, 40)
    ref = wn(a, cond)
    with torch.inference_mode():
        fast = wn(a, cond)
    assert torch.allclose(fast, ref, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- caches and GPU-only numerics
def test_inverse_cache_follows_a_replaced_parameter_and_device_moves():
    torch.manual_seed(8)
    part = Invertible1x1Conv(4)
    x = torch.randn(1, 4, 7)
    with torch.no_grad():
        part.inverse(part(x, None)[0], None)
        assert part._inv is not None
        # A new Parameter object: even if it reused the memory and version, the cache must go.
        part.weight = torch.nn.Parameter(torch.linalg.qr(torch.randn(4, 4))[0].unsqueeze(-1))
        assert (part.inverse(part(x, None)[0], None) - x).abs().max() < 1e-5
        part.double()  # .to()/.double()/.cuda() drop the cached copy instead of keeping it alive
        assert part._inv is None


class _Ops(TorchDispatchMode):
    """Records the aten operators that run."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def test_tanh_identity_only_in_float32_on_the_cpu():
    """The sigmoid form of tanh runs only where it is faster, and always in float32: fp32 and
    bf16 inference on the CPU (a bf16 gate is upcast first). With autograd on, and inside
    `autograd_numerics()`, bf16 calls tanh itself (the identity in bf16 loses accuracy)."""
    torch.manual_seed(9)
    wn = WN(3, N_COND, 6, n_layers=3, n_channels=8)
    a, cond = torch.randn(B, 3, 16), torch.randn(B, N_COND, 16)
    with torch.no_grad(), _Ops() as fp32:
        wn(a, cond)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), _Ops() as bf16:
        wn(a, cond)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), autograd_numerics(), _Ops() as same:
        wn(a, cond)
    assert "tanh" not in fp32.names and fp32.names.count("sigmoid_") == 2 * 3
    assert "tanh" not in bf16.names and bf16.names.count("sigmoid_") == 2 * 3
    assert same.names.count("tanh") == 3 and "sigmoid_" not in same.names


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize("dilation", [1, 4, 16, 64])
def test_dilated_as_matmul_matches_conv1d(kernel_size, dilation):
    """The stacked-taps product equals the dense dilated conv (taps past the ends read zeros)."""
    torch.manual_seed(8)
    x, w, b = torch.randn(2, 6, 20), torch.randn(10, 6, kernel_size), torch.randn(10)
    pad = dilation * (kernel_size - 1) // 2
    with torch.no_grad():
        for bias in (b, None):
            ref = torch.nn.functional.conv1d(x, w, bias, padding=pad, dilation=dilation)
            assert torch.allclose(dilated_as_matmul(x, w, bias, dilation), ref, atol=1e-5)


def test_bf16_inference_path_and_autograd_numerics():
    """bf16 CPU inference (stacked-tap dilated convs, float32 gate) agrees with the autograd
    path to bf16 accuracy; inside `autograd_numerics()` it computes exactly what the autograd
    path computes, which invertible backprop needs to invert with recomputed shifts."""
    torch.manual_seed(10)
    wn = WN(3, N_COND, 6, n_layers=4, n_channels=16)
    _randomize_end(wn)
    a, cond = torch.randn(B, 3, 40), torch.randn(B, N_COND, 40)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        train = wn(a, cond).float()
        with torch.no_grad():
            fast = wn(a, cond).float()
            with autograd_numerics():
                same = wn(a, cond).float()
    with torch.no_grad():
        exact = wn(a, cond)
    assert torch.equal(same, train.detach())
    scale = exact.abs().max()
    assert (fast - exact).abs().max() < 0.02 * scale and (train - exact).abs().max() < 0.02 * scale
    assert not torch.equal(fast, same)  # the fast path really ran


def test_exact_fp32_turns_tf32_off_and_restores_it():
    from waveglow.runtime import exact_fp32, restore_tf32, set_tf32, tf32_allowed

    before = set_tf32(True)
    try:
        assert tf32_allowed()
        with exact_fp32("cuda"):
            assert not tf32_allowed()
        assert tf32_allowed()
        with exact_fp32("cpu"):  # nothing to do on the CPU
            assert tf32_allowed()
    finally:
        restore_tf32(before)
