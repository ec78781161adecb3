"""WaveGlow: exact inverse, honest log-likelihood, reference numerics, configs, input checks."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import compose, model_config
from torch.autograd.functional import jacobian

from waveglow.conditioner import WN
from waveglow.errors import UserError
from waveglow.flows import Invertible1x1Conv
from waveglow.model import WaveGlow

N_MELS, HOP = 5, 16


# Tiny tensors: one intra-op thread (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")
SMALL = {"n_group": 8, "n_flows": 5, "n_early_every": 2, "n_early_size": 2, "upsample_kernel": 64,
         "wn": {"n_layers": 2, "n_channels": 8, "kernel_size": 3}}


def _model(seed: int = 0, perturb: bool = True, **overrides) -> WaveGlow:
    torch.manual_seed(seed)
    cfg = {**SMALL, **overrides}
    model = WaveGlow(cfg, n_mels=N_MELS, hop_length=HOP)
    if perturb:
        # Zero end layers make every coupling the identity; make them do something.
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, WN):
                    m.end.weight.normal_(0, 0.2)
                    m.end.bias.normal_(0, 0.2)
    return model


def _batch(T: int = 96, B: int = 2, dtype=torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    audio = 0.5 * torch.randn(B, T, generator=g, dtype=dtype)
    mel = torch.randn(B, N_MELS, -(-T // HOP) + 1, generator=g, dtype=dtype)
    return audio, mel


# ---------------------------------------------------------------- inverse and log-det
@pytest.mark.parametrize("coupling", ["affine", "additive"])
@pytest.mark.parametrize("condition_half", ["first", "alternate"])
def test_round_trip(coupling, condition_half):
    model = _model(coupling=coupling, condition_half=condition_half)
    audio, mel = _batch()
    z = model.encode(audio, mel)
    assert z.shape == audio.shape and z.dtype == torch.float32
    assert (model.decode(z, mel) - audio).abs().max() <= 1e-4
    model = model.double()
    audio, mel = audio.double(), mel.double()
    z = model.encode(audio, mel)
    assert (model.decode(z, mel) - audio).abs().max() <= 1e-9


def test_round_trip_squeeze_config():
    """The real-time configuration (repeat upsampling, depthwise conditioner, 128-sample groups)."""
    cfg = model_config("squeeze")
    assert cfg["name"] == "squeeze"
    torch.manual_seed(0)
    model = WaveGlow(cfg, n_mels=80, hop_length=256)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WN):
                m.end.weight.normal_(0, 0.02)
    audio = 0.3 * torch.randn(1, 4 * 256)
    mel = torch.randn(1, 80, 5)
    z = model.encode(audio, mel)
    assert torch.isfinite(z).all()
    assert (model.decode(z, mel) - audio).abs().max() <= 1e-4
    with torch.inference_mode():
        model.remove_weight_norm()
        out = model.infer(mel)
    assert out.shape == (1, 5 * 256) and torch.isfinite(out).all()


@pytest.mark.parametrize("condition_half", ["first", "alternate"])
def test_whole_model_logdet_matches_jacobian(condition_half):
    cfg = {"n_group": 4, "n_flows": 3, "n_early_every": 2, "n_early_size": 2, "upsample_kernel": 32,
           "condition_half": condition_half, "wn": {"n_layers": 2, "n_channels": 4}}
    torch.manual_seed(7)
    model = WaveGlow(cfg, n_mels=3, hop_length=HOP).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WN):
                m.end.weight.normal_(0, 0.3)
            if isinstance(m, Invertible1x1Conv):
                m.weight.add_(0.2 * torch.randn_like(m.weight))
    audio = torch.randn(1, 24, dtype=torch.float64)
    mel = torch.randn(1, 3, 3, dtype=torch.float64)
    jac = jacobian(lambda a: model.encode(a.view(1, -1), mel).view(-1), audio.view(-1))
    z = model.encode(audio, mel)
    gauss = -0.5 * z.pow(2).sum() - 0.5 * z.numel() * math.log(2 * math.pi)
    logdet = model.log_prob(audio, mel) - gauss
    assert torch.allclose(logdet, torch.linalg.slogdet(jac)[1], atol=1e-9)


def test_fresh_model_is_gaussian_of_rotated_input():
    """At init every coupling is the identity: log p = Gaussian of the 1×1-rotated squeeze."""
    model = _model(perturb=False, sigma=0.7).double()
    audio, mel = _batch(dtype=torch.float64)
    B, T = audio.shape
    x = audio.view(B, T // 8, 8).transpose(1, 2)
    logdet = torch.zeros(B, dtype=torch.float64)
    for part in model.parts():
        if isinstance(part, Invertible1x1Conv):
            w = part.weight.squeeze(-1)
            x = torch.cat([x[:, :part.start], torch.einsum("ij,bjn->bin", w, x[:, part.start:])], 1)
            logdet += x.shape[2] * torch.linalg.slogdet(w)[1]
    s2 = 0.7**2
    gauss = -0.5 * x.pow(2).sum(dim=(1, 2)) / s2 - 0.5 * T * math.log(2 * math.pi * s2)
    assert torch.allclose(model.log_prob(audio, mel), gauss + logdet, atol=1e-9)
    # Orthogonal init (drawn in float32): the rotation has log|det| = 0 up to float32 rounding.
    assert torch.allclose(logdet, torch.zeros(B, dtype=torch.float64), atol=1e-4)


def test_stats_and_forward_agree():
    model = _model()
    audio, mel = _batch()
    lp, stats = model.forward_with_stats(audio, mel)
    assert torch.allclose(lp, model.log_prob(audio, mel))
    for k in range(SMALL["n_flows"]):
        for key in ("log_s", "W", "W_cond"):
            v = stats[f"flow_{k}/{key}"]
            assert v.dim() == 0 and torch.isfinite(v) and not v.requires_grad
        assert stats[f"flow_{k}/W_cond"] >= 1.0
    # The per-flow terms are the whole log-det: log p = T·Σ stats + Gaussian(z).
    T = audio.shape[1]
    z = model.encode(audio, mel)
    gauss = (-0.5 * z.pow(2).sum(1) - 0.5 * T * math.log(2 * math.pi)).mean()
    terms = sum(v for k, v in stats.items() if not k.endswith("W_cond")) * T
    assert torch.allclose(lp.mean(), gauss + terms, rtol=1e-5)


# ---------------------------------------------------------------- training-related properties
def test_gradients_reach_every_parameter():
    model = _model(perturb=False)
    audio, mel = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(2):  # the first step makes the zero-initialized end layers non-zero
        opt.zero_grad()
        loss = -model.log_prob(audio, mel).mean() / audio.shape[1]
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_round_trip_after_optimizer_step_uses_fresh_inverses():
    model = _model()
    audio, mel = _batch()
    with torch.no_grad():
        model.decode(model.encode(audio, mel), mel)  # fills the 1×1 inverse caches
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (-model.log_prob(audio, mel).mean() / audio.shape[1]).backward()
    opt.step()
    with torch.no_grad():
        z = model.encode(audio, mel)
        assert (model.decode(z, mel) - audio).abs().max() <= 1e-4
        # A stale inverse would be off by far more than rounding.
        conv = model.flows["convinv_0"]
        fresh = torch.linalg.inv(conv.weight.squeeze(-1)).unsqueeze(-1)
        assert torch.allclose(conv.inverse_matrix(), fresh)


def test_bf16_autocast_keeps_logdets_finite():
    model = _model()
    audio, mel = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, stats = model.forward_with_stats(audio, mel)
        out = model.infer(mel[:, :, :3])
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert all(torch.isfinite(v) for v in stats.values())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    # bf16 only touches the conditioners: the likelihood stays close to fp32.
    assert torch.allclose(lp, model.log_prob(audio, mel), rtol=2e-2)


def test_infer_length_and_generator():
    model = _model()
    _, mel = _batch()
    F_ = mel.shape[2]
    a = model.infer(mel, sigma=0.6, generator=torch.Generator().manual_seed(3))
    b = model.infer(mel, sigma=0.6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, HOP * F_) and a.dtype == torch.float32
    assert torch.equal(a, b)
    # The same thing as decoding the same noise.
    z = 0.6 * torch.randn(2, HOP * F_, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(a, model.decode(z, mel), atol=1e-6)


def test_remove_weight_norm_keeps_outputs_and_renames_keys():
    model = _model()
    audio, mel = _batch()
    keys = set(model.state_dict())
    for key in ("mel_mean", "mel_std", "upsample.weight", "upsample.bias", "flows.convinv_0.weight",
                "flows.coupling_4.wn.start.weight_g", "flows.coupling_4.wn.start.weight_v",
                "flows.coupling_0.wn.cond_layer.bias", "flows.coupling_0.wn.in_layers.1.weight_v",
                "flows.coupling_0.wn.res_skip_layers.1.weight_g", "flows.coupling_0.wn.end.weight"):
        assert key in keys, key
    lp = model.log_prob(audio, mel)
    z = model.encode(audio, mel)
    model.remove_weight_norm()
    assert not any(k.endswith(("weight_g", "weight_v")) for k in model.state_dict())
    assert torch.allclose(model.log_prob(audio, mel), lp, rtol=1e-5)
    with torch.inference_mode():
        assert (model.decode(z, mel) - audio).abs().max() <= 1e-4


def test_mel_stats_are_applied_inside():
    model = _model()
    audio, mel = _batch()
    mean, std = torch.randn(N_MELS), torch.rand(N_MELS) + 0.5
    plain = model.log_prob(audio, (mel - mean[:, None]) / std[:, None])
    model.set_mel_stats(mean, std)
    assert torch.allclose(model.log_prob(audio, mel), plain, atol=1e-5)
    assert torch.equal(model.state_dict()["mel_std"], std)
    with pytest.raises(UserError, match="std"):
        model.set_mel_stats(mean, torch.zeros(N_MELS))
    with pytest.raises(UserError, match="shape"):
        model.set_mel_stats(torch.zeros(3), torch.ones(3))


def test_input_validation():
    model = _model()
    audio, mel = _batch(T=96)
    with pytest.raises(UserError, match="multiple of n_group"):
        model.log_prob(audio[:, :90], mel)
    with pytest.raises(UserError, match="at least 6 mel frames"):
        model.log_prob(audio, mel[:, :, :5])
    with pytest.raises(UserError, match="n_mels=5"):
        model.encode(audio, torch.randn(2, 7, 7))
    with pytest.raises(UserError, match="n_mels=5"):
        model.infer(torch.randn(1, 4, 3))
    with pytest.raises(UserError, match="batch"):
        model.log_prob(audio, mel[:1])
    with pytest.raises(UserError, match=r"\[batch, samples\]"):
        model.decode(audio[0], mel)
    with pytest.raises(UserError, match="coupling"):
        WaveGlow({"coupling": "spline"})
    with pytest.raises(UserError, match="multiple of n_group"):
        WaveGlow({"n_group": 24, "upsample": "repeat"}, hop_length=256)
    with pytest.raises(UserError, match="unknown setting .model.n_layers. .did you mean model.wn.n_layers"):
        WaveGlow({"n_layers": 3})


# ---------------------------------------------------------------- configs
@pytest.mark.parametrize("name,expected", [("waveglow_256", 87.73e6), ("waveglow_512", 268.0e6)])
def test_parameter_counts(name, expected):
    cfg = model_config(name)
    with torch.device("meta"):
        model = WaveGlow(cfg, n_mels=80, hop_length=256)
    # The published counts are of the inference model (weight norm folded: no weight_g).
    folded = sum(p.numel() for n, p in model.named_parameters() if not n.endswith("weight_g"))
    assert abs(folded - expected) / expected < 0.01


def test_tiny_config_builds_and_runs():
    cfg = model_config("tiny")
    assert cfg["name"] == "tiny"
    model = WaveGlow(cfg, n_mels=80, hop_length=256)
    audio, mel = 0.1 * torch.randn(1, 1024), torch.randn(1, 80, 5)
    assert torch.isfinite(model.log_prob(audio, mel)).all()


def test_from_config_accepts_typed_and_plain_configs():
    cfg = compose("waveglow_train", "model=tiny", "data=demo")
    model = WaveGlow.from_config(cfg)
    assert model.n_mels == 80 and model.hop_length == 256
    assert model.config["audio"]["n_mels"] == 80 and model.model_config["name"] == "tiny"
    model = WaveGlow.from_config({"model": model_config("tiny"), "audio": {"n_mels": 80, "hop_length": 256}})
    assert model.n_mels == 80 and model.hop_length == 256
    assert model.config["audio"]["n_mels"] == 80 and model.model_config["name"] == "tiny"


# ---------------------------------------------------------------- reference numerics
# A direct functional transcription of the reference (NVIDIA) forward pass and loss, working on
# reference-named weights, so that the documented key mapping is checked numerically.
def _wn_weight(sd: dict, prefix: str) -> torch.Tensor:
    v, g = sd[prefix + ".weight_v"], sd[prefix + ".weight_g"]
    return g * v / v.norm(dim=(1, 2), keepdim=True)


def _ref_wn(sd, p, audio, spect, n_layers, n_ch, legacy):
    audio = F.conv1d(audio, _wn_weight(sd, f"{p}.start"), sd[f"{p}.start.bias"])
    if not legacy:
        spect_all = F.conv1d(spect, _wn_weight(sd, f"{p}.cond_layer"), sd[f"{p}.cond_layer.bias"])
    output = torch.zeros_like(audio)
    for i in range(n_layers):
        w = _wn_weight(sd, f"{p}.in_layers.{i}")
        d = 2**i
        in_act = F.conv1d(audio, w, sd[f"{p}.in_layers.{i}.bias"], dilation=d, padding=d)
        if legacy:  # separate per-layer conditioning convs
            cond = F.conv1d(spect, _wn_weight(sd, f"{p}.cond_layers.{i}"), sd[f"{p}.cond_layers.{i}.bias"])
        else:
            cond = spect_all[:, i * 2 * n_ch:(i + 1) * 2 * n_ch]
        acts = in_act + cond
        acts = torch.tanh(acts[:, :n_ch]) * torch.sigmoid(acts[:, n_ch:])
        rs = F.conv1d(acts, _wn_weight(sd, f"{p}.res_skip_layers.{i}"), sd[f"{p}.res_skip_layers.{i}.bias"])
        if i < n_layers - 1:
            audio = audio + rs[:, :n_ch]
            output = output + rs[:, n_ch:]
        else:
            output = output + rs
    return F.conv1d(output, sd[f"{p}.end.weight"], sd[f"{p}.end.bias"])


def _ref_loss(sd, cfg, spect, audio, sigma, legacy=False):
    G, L, C = cfg["n_group"], cfg["wn"]["n_layers"], cfg["wn"]["n_channels"]
    spect = F.conv_transpose1d(spect, sd["upsample.weight"], sd["upsample.bias"], stride=HOP)
    spect = spect[:, :, :audio.size(1)]
    spect = spect.unfold(2, G, G).permute(0, 2, 1, 3)
    spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
    audio = audio.unfold(1, G, G).permute(0, 2, 1)
    out, log_s_sum, log_det_w = [], 0.0, 0.0
    for k in range(cfg["n_flows"]):
        if k % cfg["n_early_every"] == 0 and k > 0:
            out.append(audio[:, :cfg["n_early_size"]])
            audio = audio[:, cfg["n_early_size"]:]
        W = sd[f"convinv.{k}.conv.weight"]
        log_det_w = log_det_w + audio.size(0) * audio.size(2) * torch.logdet(W.squeeze())
        audio = F.conv1d(audio, W)
        h = audio.size(1) // 2
        if legacy and k % 2 == 1:
            a1, a0 = audio[:, :h], audio[:, h:]
        else:
            a0, a1 = audio[:, :h], audio[:, h:]
        o = _ref_wn(sd, f"WN.{k}", a0, spect, L, C, legacy)
        log_s, b = o[:, h:], o[:, :h]
        a1 = torch.exp(log_s) * a1 + b
        log_s_sum = log_s_sum + log_s.sum()
        audio = torch.cat([a1, a0] if legacy and k % 2 == 1 else [a0, a1], 1)
    out.append(audio)
    z = torch.cat(out, 1)
    loss = (z * z).sum() / (2 * sigma**2) - log_s_sum - log_det_w
    return loss / z.numel(), z


def _to_reference_keys(sd: dict, legacy: bool, n_layers: int, n_ch: int) -> dict:
    """Our state_dict -> reference names, by the mapping documented in waveglow/model.py."""
    ref = {}
    for key, value in sd.items():
        if key.startswith("flows.convinv_"):
            ref[re.sub(r"flows\.convinv_(\d+)\.weight", r"convinv.\1.conv.weight", key)] = value
        elif key.startswith("flows.coupling_"):
            ref[re.sub(r"flows\.coupling_(\d+)\.wn\.", r"WN.\1.", key)] = value
        else:
            ref[key] = value
    if legacy:  # the legacy files keep one conditioning conv per layer: split the fused rows
        for key in [k for k in ref if ".cond_layer." in k]:
            fused = ref.pop(key)
            for i in range(n_layers):
                ref[key.replace(".cond_layer.", f".cond_layers.{i}.")] = fused[2 * n_ch * i:2 * n_ch * (i + 1)]
    return ref


@pytest.mark.parametrize("legacy", [False, True])
def test_log_prob_matches_reference_math(legacy):
    model = _model(seed=11, sigma=0.8, condition_half="alternate" if legacy else "first",
                   n_early_every=4 if legacy else 2).double()
    cfg = model.model_config
    audio, mel = _batch(dtype=torch.float64)
    sd = _to_reference_keys(model.state_dict(), legacy, cfg["wn"]["n_layers"], cfg["wn"]["n_channels"])
    ref_loss, ref_z = _ref_loss(sd, cfg, mel, audio, sigma=0.8, legacy=legacy)
    ours = model.log_prob(audio, mel).mean() / audio.shape[1]
    # The reference loss omits the Gaussian constant: loss = -log_prob/T - ½·log(2πσ²).
    assert torch.allclose(-ours - 0.5 * math.log(2 * math.pi * 0.8**2), ref_loss, rtol=1e-9)
    # The latent is the reference's [B, n_group, N] latent (early outputs first) in audio layout.
    z = model.encode(audio, mel)
    B, T = z.shape
    assert torch.allclose(z.view(B, T // 8, 8).transpose(1, 2), ref_z, atol=1e-12)


@pytest.mark.parametrize("kernel", [64, 40])
def test_upsampling_equals_transposed_conv(kernel):
    model = _model(upsample_kernel=kernel).double()
    mel = torch.randn(2, N_MELS, 6, dtype=torch.float64)
    ref = F.conv_transpose1d(mel, model.upsample.weight, model.upsample.bias, stride=HOP)
    assert torch.allclose(model._upsample(mel, 96), ref[:, :, :96], atol=1e-12)
    with torch.no_grad():  # the cached phase kernel follows weight updates
        assert torch.allclose(model._upsample(mel, 96), ref[:, :, :96], atol=1e-12)
        model.upsample.weight.mul_(2.0)
        ref = F.conv_transpose1d(mel, model.upsample.weight, model.upsample.bias, stride=HOP)
        assert torch.allclose(model._upsample(mel, 96), ref[:, :, :96], atol=1e-12)


@pytest.mark.parametrize("n_group", [8, 6])  # hop % n_group == 0 (direct squeeze) and != 0
def test_conditioning_inference_path_matches_reference(n_group):
    """Inference computes only ceil(T/hop) upsampled frames (im2col + one product) and squeezes
    them in one copy; it must equal the transposed conv, cut and squeezed, for a batch of one,
    T not a multiple of hop and a mel with spare frames."""
    model = _model(n_group=n_group, n_early_every=8)
    T = 13 * n_group  # 104 or 78 samples: 7 or 5 frames of hop 16
    mel = torch.randn(1, N_MELS, -(-T // HOP) + 2)
    with torch.no_grad():
        norm = (mel - model.mel_mean[:, None]) / model.mel_std[:, None]
        up = F.conv_transpose1d(norm, model.upsample.weight, model.upsample.bias, stride=HOP)
        ref = up[:, :, :T].reshape(1, N_MELS, T // n_group, n_group).transpose(2, 3)
        ref = ref.reshape(1, N_MELS * n_group, T // n_group)
        fast = model.condition(mel, T)
    train = model.condition(mel, T)  # autograd on: conv1d path
    assert fast.shape == ref.shape and fast.is_contiguous()
    assert torch.allclose(fast, ref, atol=1e-5)
    assert torch.allclose(train, ref, atol=1e-5)
