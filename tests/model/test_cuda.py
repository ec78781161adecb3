"""CUDA against the CPU: chunked synthesis, the denoiser, scoring, the 1×1 convolution and
log_prob give the CPU's numbers on a GPU, with TF32 globally allowed as training leaves it.

Every test here is marked `cuda`: skipped by `make test`, run by `pytest --device cuda -m cuda`
(`make gpu-check`). The tolerances come from the CPU (tiny model, coupling end layers ~N(0, 0.1²)):
float32 against float64 differs by ~130 dB SNR in synthesis and ~1e-7 nats per sample in
log-likelihoods, while rounding the conditioner's convolutions to TF32 (10 mantissa bits)
costs ~80 dB and ~1e-5 nats per sample, and the 1×1 round trip ~2e-3. Each bound sits between
the two, so a CUDA path that runs in TF32 (or is otherwise wrong) fails and plain float32
rounding passes.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import compose
from torch import nn

from waveglow.checkpoint import build_model
from waveglow.config import to_dict
from waveglow.flows import Invertible1x1Conv
from waveglow.inference import Synthesizer, plan_pieces
from waveglow.inference.metrics import snr_db
from waveglow.inference.score import Scorer
from waveglow.runtime import restore_tf32, set_tf32, tf32_switches
from waveglow.train.step import Stepper

pytestmark = [pytest.mark.cuda, pytest.mark.usefixtures("single_thread")]

HOP = 256
FP32_SNR_DB = 90.0        # CUDA fp32 synthesis against the CPU (fp64: ~130 dB; TF32: ~80 dB)
HALF_SNR_DB = 30.0        # fp16/bf16 synthesis against fp32 (CPU measures 59-77 dB)
LL_ATOL = 2e-6            # log_prob per sample, nats (fp64: ~1e-7; TF32: ~1.3e-5)
FRAME_LL_ATOL = 1e-5      # scoring, per sample, nats (fp64: ~2e-7; TF32: ~1.5e-4)
ROUND_TRIP_ATOL = 1e-5    # 1×1 conv forward then inverse (fp32: ~1e-6; TF32: ~2e-3)


@pytest.fixture
def tf32_allowed():
    """TF32 globally on, as `waveglow-train train.tf32=true` leaves it; restored afterwards.

    Through `waveglow.runtime` only, as the code under test switches it: torch >= 2.9 refuses
    to read the legacy `allow_tf32` flags once the `fp32_precision` API has set them."""
    before = set_tf32(True)
    yield
    restore_tf32(before)


@pytest.fixture(scope="module")
def tiny():
    """(model on the CPU, eval mode, its config): a `tiny` WaveGlow whose couplings are far from
    the identity (random end layers) with non-trivial mel statistics."""
    cfg = compose("waveglow_train", "model=tiny", "data=demo")
    config = {"audio": to_dict(cfg.audio), "model": to_dict(cfg.model)}
    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".end." in name:
                p.normal_(0.0, 0.1)
    model.set_mel_stats(torch.full((80,), -6.0), torch.full((80,), 2.0))
    return model.eval(), config


def synthesizer(tiny, device: str, **kwargs) -> Synthesizer:
    model, config = tiny
    return Synthesizer.from_model(copy.deepcopy(model), config, device=device, **kwargs)


def random_mel(frames: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(80, frames, generator=g) * 2.0 - 6.0


def random_audio(samples: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(samples, generator=g) * 0.1).clamp(-1, 1)


# ------------------------------------------------------------------------------ synthesis
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_chunked_synthesis_on_cuda_matches_the_cpu(tiny, tf32_allowed, precision):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    mel = random_mel(100, seed=3)
    cpu = synthesizer(tiny, "cpu", chunk_frames=24)
    gpu = synthesizer(tiny, "cuda", precision=precision, chunk_frames=24)
    whole = synthesizer(tiny, "cuda", precision=precision, chunk_frames=1024)
    assert gpu.device.type == "cuda"
    assert len(plan_pieces(0, 100, 24, gpu.overlap, gpu.crossfade_frames)) == 5  # really chunked

    reference = cpu.from_mel(mel, seed=5)
    out = gpu.from_mel(mel, seed=5)
    assert out.shape == reference.shape == (HOP * 100,) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    bound = FP32_SNR_DB if precision == "fp32" else HALF_SNR_DB
    assert snr_db(reference, out) > bound, precision
    # Chunking changes nothing beyond rounding on CUDA either.
    assert snr_db(whole.from_mel(mel, seed=5), out) > bound, precision


def test_denoiser_on_cuda_matches_the_cpu(tiny, tf32_allowed):
    mel = random_mel(60, seed=4)
    cpu, gpu = synthesizer(tiny, "cpu"), synthesizer(tiny, "cuda")
    plain = cpu.from_mel(mel, seed=1)
    reference = cpu.from_mel(mel, seed=1, denoiser_strength=0.5)
    assert snr_db(plain, reference) < 40.0  # the denoiser does change this model's output

    # The bias tone is synthesized on the GPU: same spectrum as the CPU's.
    bias_cpu, bias_gpu = cpu.denoiser().bias_spec, gpu.denoiser().bias_spec
    assert torch.allclose(bias_gpu.cpu(), bias_cpu, rtol=1e-5, atol=1e-6 * float(bias_cpu.max()))
    out = gpu.from_mel(mel, seed=1, denoiser_strength=0.5)
    assert torch.isfinite(out).all() and snr_db(reference, out) > FP32_SNR_DB

    # The denoiser module itself on CUDA tensors (cuFFT instead of the CPU's FFT).
    denoiser = cpu.denoiser()
    on_gpu = copy.deepcopy(denoiser).to("cuda")
    for strength in (0.1, 1.0):
        expected = denoiser(plain, strength)
        got = on_gpu(plain.cuda(), strength)
        assert got.device.type == "cuda" and got.shape == expected.shape
        assert snr_db(expected, got.cpu()) > FP32_SNR_DB, strength


# ------------------------------------------------------------------------------ likelihoods
def test_scoring_on_cuda_is_fp32_without_tf32_and_matches_the_cpu(tiny, tf32_allowed, monkeypatch):
    audio = random_audio(HOP * 60, seed=7)
    cpu = Scorer(synthesizer(tiny, "cpu", chunk_frames=24))
    gpu = Scorer(synthesizer(tiny, "cuda", chunk_frames=24))
    model = gpu.synth.model
    seen: list[tuple[str, bool, bool, torch.dtype]] = []  # (part, matmul TF32, cuDNN TF32, dtype)

    def record(module: nn.Module, inputs: tuple) -> None:
        seen.append((type(module).__name__, *tf32_switches(), inputs[0].dtype))

    # Every module the walk calls (the conditioners' convs are called through WN.forward), and
    # the mel upsampling, which is a method of the model.
    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if m is not model]
    condition = model.condition
    monkeypatch.setattr(model, "condition", lambda mel, length: (record(model, (mel,)), condition(mel, length))[1])
    try:
        got = gpu.score_audio(audio, "clip")
    finally:
        for h in hooks:
            h.remove()
    assert {"WN", "Invertible1x1Conv", "WaveGlow"} <= {name for name, *_ in seen}
    assert {(matmul, cudnn, dtype) for _, matmul, cudnn, dtype in seen} == {(False, False, torch.float32)}, \
        "TF32 allowed, or not float32, while scoring"
    # TF32 is back on for whatever runs next.
    assert tf32_switches() == (True, True)

    expected = cpu.score_audio(audio, "clip")
    assert got.samples == expected.samples == HOP * 60
    assert abs(got.nats_per_sample - expected.nats_per_sample) < LL_ATOL
    per_sample_cpu = cpu.per_sample(audio, cpu.mel_fn(audio))
    per_sample_gpu = gpu.per_sample(audio, gpu.mel_fn(audio))
    assert (per_sample_gpu - per_sample_cpu).abs().max() < FRAME_LL_ATOL


def test_log_prob_encode_and_decode_on_cuda_match_the_cpu(tiny, tf32_allowed):
    model, _ = tiny
    gpu_model = copy.deepcopy(model).to("cuda")
    audio = torch.stack([random_audio(HOP * 40, seed=8), random_audio(HOP * 40, seed=9)])
    mel = random_mel(41, seed=10)[None].repeat(2, 1, 1)
    with torch.no_grad():
        expected = model.log_prob(audio, mel)
        got = gpu_model.log_prob(audio.cuda(), mel.cuda())
        assert got.dtype == torch.float32 and got.device.type == "cuda"
        assert ((got.cpu() - expected).abs() / audio.shape[1]).max() < LL_ATOL

        z = gpu_model.encode(audio.cuda(), mel.cuda())
        assert (z.cpu() - model.encode(audio, mel)).abs().max() < ROUND_TRIP_ATOL
        back = gpu_model.decode(z, mel.cuda())
        assert (back.cpu() - audio).abs().max() < ROUND_TRIP_ATOL


@pytest.mark.parametrize("channels, start", [(8, 0), (6, 2)])
@pytest.mark.parametrize("mode", ["no_grad", "autograd", "autocast_fp16"])
def test_1x1_conv_round_trip_on_cuda_is_exact_with_tf32_allowed(tf32_allowed, channels, start, mode):
    torch.manual_seed(channels)
    conv = Invertible1x1Conv(channels, start)
    with torch.no_grad():  # a W that is not orthogonal: log|det W| != 0, a real inverse
        conv.weight.mul_(1.2).add_(0.1 * torch.randn_like(conv.weight))
    conv = conv.to("cuda")
    x = torch.randn(4, start + channels, 4096, device="cuda")
    cond = torch.empty(0, device="cuda")
    if mode == "no_grad":
        context = torch.no_grad()
    elif mode == "autocast_fp16":
        context = torch.autocast("cuda", dtype=torch.float16)
    else:
        context = torch.enable_grad()
    with context:
        y, logdet = conv(x, cond)
        back = conv.inverse(y, cond)
    assert y.dtype == back.dtype == torch.float32
    assert torch.equal(y[:, :start], x[:, :start])
    assert (back - x).abs().max().item() <= ROUND_TRIP_ATOL, mode
    # W applied in float32, not TF32: y matches a float64 product.
    w = conv.weight.detach().squeeze(-1).double()
    exact = torch.einsum("ij,bjn->bin", w, x[:, start:].double())
    assert (y[:, start:].double() - exact).abs().max().item() <= ROUND_TRIP_ATOL, mode
    expected_logdet = 4096 * torch.linalg.slogdet(w.cpu())[1]
    assert abs(float(expected_logdet)) > 100  # not the trivial 0 of an orthogonal W
    assert torch.allclose(logdet.double().cpu(), expected_logdet.expand(4), rtol=1e-5)


# ------------------------------------------------------------------------------ training
class _RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the (unscaled) gradients it was asked to apply."""

    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's signature
        self.grads = [p.grad.detach().float().cpu() for g in self.param_groups for p in g["params"]]
        return super().step(closure)


def test_invertible_backprop_in_fp16_with_a_grad_scaler(tiny, tf32_allowed, monkeypatch):
    """`train.memory=invertible train.precision=fp16` on CUDA (autocast + GradScaler, 2
    micro-batches): the step applies the standard backward's gradient to every parameter
    (worst relative difference per parameter 3e-4 measured with fp16 autocast on the CPU;
    a wrong gradient is off by O(1)), and each 1×1 weight is inverted once per step."""
    model, _ = tiny
    g = torch.Generator().manual_seed(0)
    audio, mel = 0.1 * torch.randn(4, HOP * 8, generator=g), random_mel(9, seed=2)[None].repeat(4, 1, 1)
    inversions = []
    original = torch.linalg.inv_ex
    monkeypatch.setattr(torch.linalg, "inv_ex", lambda *a, **k: (inversions.append(1), original(*a, **k))[1])
    grads = {}
    for memory in ("standard", "invertible"):
        net = copy.deepcopy(model).train().to("cuda")
        opt = _RecordingSGD(net.parameters(), lr=0.0)
        scaler = torch.amp.GradScaler("cuda", init_scale=1024.0)
        step = Stepper(net, opt, device=torch.device("cuda"), amp_dtype=torch.float16, grad_clip=0,
                       scaler=scaler, grad_accum=2, memory=memory)
        inversions.clear()
        for _ in range(2):
            out = step(audio, mel, 0.0)
            assert not out.skipped and math.isfinite(out.loss), memory
        if memory == "invertible":
            assert len(inversions) == 2 * sum(isinstance(m, Invertible1x1Conv) for m in net.modules())
        grads[memory] = opt.grads
    assert all(bool(a.abs().max() > 0) for a in grads["standard"])
    worst = max(float((a - b).norm() / a.norm()) for a, b in zip(grads["standard"], grads["invertible"]))
    assert worst < 3e-3, worst
