"""An independent model of the NVIDIA/waveglow reference network, for import fixtures.

Written from the documented reference layout (issue "Import of NVIDIA/waveglow checkpoints"):
module attribute names, channel layouts and flow order are those the reference's state_dict
shows, so that `torch.save({'model': module, ...})` of these classes gives files with the
reference's structure (weight-normed WN convs with their pre-forward hooks, module classes
pickled as `glow.WaveGlow`, `glow.WN`, `glow.Invertible1x1Conv`, `glow_old.WaveGlow`,
`glow_old.WN`). `forward` returns the reference's loss terms (z, log s per flow, log det W per
flow); `reference_loss` and `log_prob_from_loss` turn them into the reference's loss and the
log-likelihood this project reports. Test scaffolding only; the package never imports it.

Variants (`wn_style`):
    "fused"      one `cond_layer` for all layers, `res_skip_layers` (the current reference);
    "per_layer"  `cond_layers.i` per layer, `res_skip_layers` (older files);
    "split"      `cond_layers.i` plus separate `res_layers.i` / `skip_layers.i` (the oldest).
`legacy=True` (the `glow_old` classes): odd flows condition on the second half and transform
the first, and early outputs happen every 4 flows whatever `n_early_every` says.
"""

from __future__ import annotations

import contextlib
import math
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import weight_norm


def _wn_conv(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1) -> nn.Conv1d:
    conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=dilation * (kernel - 1) // 2)
    return weight_norm(conv, name="weight")


def _gate(h: Tensor, n_channels: int) -> Tensor:
    return torch.tanh(h[:, :n_channels]) * torch.sigmoid(h[:, n_channels:])


class ReferenceInvertible1x1Conv(nn.Module):
    """`convinv.k`: a bias-free 1×1 conv whose weight [c, c, 1] starts orthogonal, det > 0."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c, c, kernel_size=1, bias=False)
        q = torch.linalg.qr(torch.randn(c, c))[0]
        if torch.det(q) < 0:
            q[:, 0] = -q[:, 0]
        self.conv.weight.data = q.unsqueeze(-1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [B, c, N] -> (W x, B·N·log det W)."""
        w = self.conv.weight.squeeze(-1)
        return self.conv(x), x.shape[0] * x.shape[2] * torch.logdet(w)

    def inverse(self, y: Tensor) -> Tensor:
        w = self.conv.weight.squeeze(-1)
        return F.conv1d(y, torch.linalg.inv(w).unsqueeze(-1))


class ReferenceWN(nn.Module):
    """`WN.k`: start, gated dilated layers with mel conditioning, res/skip, end."""

    def __init__(self, n_in: int, n_cond: int, n_layers: int, n_channels: int, kernel_size: int,
                 wn_style: str = "fused") -> None:
        super().__init__()
        self.n_layers = n_layers
        self.n_channels = n_channels
        self.wn_style = wn_style
        C, L = n_channels, n_layers
        self.in_layers = nn.ModuleList(
            _wn_conv(C, 2 * C, kernel_size, dilation=2**i) for i in range(L))
        self.start = _wn_conv(n_in, C)
        self.end = nn.Conv1d(C, 2 * n_in, 1)
        self.end.weight.data.zero_()
        self.end.bias.data.zero_()
        if wn_style == "fused":
            self.cond_layer = _wn_conv(n_cond, 2 * C * L)
        else:
            self.cond_layers = nn.ModuleList(_wn_conv(n_cond, 2 * C) for _ in range(L))
        if wn_style == "split":
            self.res_layers = nn.ModuleList(_wn_conv(C, C) for _ in range(L - 1))
            self.skip_layers = nn.ModuleList(_wn_conv(C, C) for _ in range(L))
        else:
            self.res_skip_layers = nn.ModuleList(
                _wn_conv(C, 2 * C if i < L - 1 else C) for i in range(L))

    def forward(self, a: Tensor, cond: Tensor) -> Tensor:
        """a [B, n_in, N], cond [B, n_cond, N] -> [B, 2·n_in, N] (shift t, then log s)."""
        C = self.n_channels
        h = self.start(a)
        fused = self.cond_layer(cond) if self.wn_style == "fused" else None
        skip: Tensor | int = 0
        for i in range(self.n_layers):
            c_i = fused[:, 2 * C * i: 2 * C * (i + 1)] if fused is not None else self.cond_layers[i](cond)
            acts = _gate(self.in_layers[i](h) + c_i, C)
            last = i == self.n_layers - 1
            if self.wn_style == "split":
                res = None if last else self.res_layers[i](acts)
                s = self.skip_layers[i](acts)
            else:
                rs = self.res_skip_layers[i](acts)
                res, s = (None, rs) if last else (rs[:, :C], rs[:, C:])
            if res is not None:
                h = h + res
            skip = skip + s
        return self.end(skip)


class ReferenceWaveGlow(nn.Module):
    """The reference WaveGlow: upsample, squeeze, flows of (early output, 1×1 conv, coupling)."""

    legacy = False
    wn_class: type[ReferenceWN] = ReferenceWN
    convinv_class: type[ReferenceInvertible1x1Conv] = ReferenceInvertible1x1Conv

    def __init__(self, n_mel_channels: int, n_flows: int, n_group: int, n_early_every: int,
                 n_early_size: int, WN_config: dict, wn_style: str = "fused") -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose1d(n_mel_channels, n_mel_channels, 1024, stride=256)
        self.n_flows = n_flows
        self.n_group = n_group
        self.n_early_every = n_early_every
        self.n_early_size = n_early_size
        self.WN = nn.ModuleList()
        self.convinv = nn.ModuleList()
        remaining = n_group
        for k in range(n_flows):
            if self.early_at(k):
                remaining -= n_early_size
            self.convinv.append(self.convinv_class(remaining))
            self.WN.append(self.wn_class(remaining // 2, n_mel_channels * n_group,
                                         wn_style=wn_style, **WN_config))
        self.n_remaining_channels = remaining

    def early_at(self, k: int) -> bool:
        every = 4 if self.legacy else self.n_early_every
        return k > 0 and k % every == 0

    def second_conditions(self, k: int) -> bool:
        return self.legacy and k % 2 == 1

    def _squeeze_cond(self, up: Tensor) -> Tensor:
        """Upsampled mel [B, M, T] -> [B, M·G, T/G], channel m·G + j (mel-major)."""
        B, M, T = up.shape
        G = self.n_group
        return up.unfold(2, G, G).permute(0, 2, 1, 3).reshape(B, T // G, M * G).transpose(1, 2)

    def _coupling(self, k: int, x: Tensor, cond: Tensor, reverse: bool) -> tuple[Tensor, Tensor]:
        h = x.shape[1] // 2
        first, second = x[:, :h], x[:, h:]
        a, b = (second, first) if self.second_conditions(k) else (first, second)
        out = self.WN[k](a, cond)
        t, log_s = out[:, :h], out[:, h:]
        b = (b - t) * torch.exp(-log_s) if reverse else b * torch.exp(log_s) + t
        y = torch.cat([b, a] if self.second_conditions(k) else [a, b], dim=1)
        return y, log_s

    def forward(self, mel: Tensor, audio: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """(mel [B, M, F], audio [B, T]) -> (z [B, G, T/G], log s per flow, log det W per flow)."""
        B, T = audio.shape
        G = self.n_group
        cond = self._squeeze_cond(self.upsample(mel)[:, :, :T])
        x = audio.unfold(1, G, G).permute(0, 2, 1)
        outputs, log_s_list, log_det_list = [], [], []
        for k in range(self.n_flows):
            if self.early_at(k):
                outputs.append(x[:, :self.n_early_size])
                x = x[:, self.n_early_size:]
            x, log_det = self.convinv[k](x)
            x, log_s = self._coupling(k, x, cond, reverse=False)
            log_s_list.append(log_s)
            log_det_list.append(log_det)
        outputs.append(x)
        return torch.cat(outputs, dim=1), log_s_list, log_det_list

    def infer(self, mel: Tensor, sigma: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Sample: the last kernel − stride upsampled samples are cut, giving 256·F samples."""
        up = self.upsample(mel)
        cut = self.upsample.kernel_size[0] - self.upsample.stride[0]
        cond = self._squeeze_cond(up[:, :, :-cut])
        B, N = mel.shape[0], cond.shape[2]

        def noise(c: int) -> Tensor:
            z = torch.randn(B, c, N, generator=generator, dtype=up.dtype)
            return sigma * z

        x = noise(self.n_remaining_channels)
        for k in reversed(range(self.n_flows)):
            x, _ = self._coupling(k, x, cond, reverse=True)
            x = self.convinv[k].inverse(x)
            if self.early_at(k):
                x = torch.cat([noise(self.n_early_size), x], dim=1)
        return x.permute(0, 2, 1).reshape(B, -1)


def reference_loss(outputs: tuple[Tensor, list[Tensor], list[Tensor]], sigma: float = 1.0) -> Tensor:
    """[Σz²/(2σ²) − Σ log s − Σ log det W] / (B·T): the reference's training loss."""
    z, log_s_list, log_det_list = outputs
    total = (z * z).sum() / (2 * sigma**2) - sum(ls.sum() for ls in log_s_list) - sum(log_det_list)
    return total / z.numel()


def log_prob_from_loss(loss: Tensor, length: int, sigma: float = 1.0) -> Tensor:
    """Batch-mean log p(audio | mel) in nats: loss = −log_prob/T − ½·log(2πσ²)."""
    return -length * (loss + 0.5 * math.log(2 * math.pi * sigma**2))


# ---------------------------------------------------------------------------------- pickling names


def _named(cls: type, module: str, name: str) -> type:
    sub = type(name, (cls,), {})
    sub.__module__ = module
    sub.__qualname__ = name
    return sub


Invertible1x1Conv = _named(ReferenceInvertible1x1Conv, "glow", "Invertible1x1Conv")
GlowWN = _named(ReferenceWN, "glow", "WN")
GlowWaveGlow = _named(ReferenceWaveGlow, "glow", "WaveGlow")
GlowWaveGlow.wn_class = GlowWN
GlowWaveGlow.convinv_class = Invertible1x1Conv
GlowOldWN = _named(ReferenceWN, "glow_old", "WN")
GlowOldWaveGlow = _named(ReferenceWaveGlow, "glow_old", "WaveGlow")
GlowOldWaveGlow.wn_class = GlowOldWN
# The legacy module reuses the current module's 1×1 conv, as the reference does.
GlowOldWaveGlow.convinv_class = Invertible1x1Conv
GlowOldWaveGlow.legacy = True


class _ThnnBackend:
    """What modules pickled by torch < 1.3 carry as `_backend` (rebuilt by a torch call)."""

    def __reduce__(self):
        import torch.nn.backends.thnn as thnn

        return (thnn._get_thnn_function_backend, ())


@contextlib.contextmanager
def reference_modules() -> Iterator[None]:
    """Register fake `glow` / `glow_old` modules so pickling finds the classes by name."""
    glow = types.ModuleType("glow")
    glow.WaveGlow, glow.WN, glow.Invertible1x1Conv = GlowWaveGlow, GlowWN, Invertible1x1Conv
    glow_old = types.ModuleType("glow_old")
    glow_old.WaveGlow, glow_old.WN, glow_old.Invertible1x1Conv = GlowOldWaveGlow, GlowOldWN, Invertible1x1Conv
    saved = {name: sys.modules.get(name) for name in ("glow", "glow_old")}
    sys.modules.update(glow=glow, glow_old=glow_old)
    try:
        yield
    finally:
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


# ---------------------------------------------------------------------------------- fixtures


def build_reference(legacy: bool = False, wn_style: str = "fused", n_flows: int = 4,
                    n_group: int = 8, n_early_every: int = 2, n_early_size: int = 2,
                    n_mels: int = 80, n_layers: int = 2, n_channels: int = 16,
                    kernel_size: int = 3, seed: int = 0) -> ReferenceWaveGlow:
    """A reference model with random non-zero weights everywhere (end layers included).

    Only the weight-norm parameters (weight_g, weight_v) are randomized, not the `weight`
    attribute the hook derived at construction: like the reference's saved files, the pickled
    `weight` is stale and only weight_g / weight_v are the truth.
    """
    torch.manual_seed(seed)
    cls = GlowOldWaveGlow if legacy else GlowWaveGlow
    with warnings.catch_warnings():
        # The reference uses the hook-based weight norm (now deprecated): its files hold the
        # hook objects, so the fixtures must too.
        warnings.simplefilter("ignore", FutureWarning)
        model = cls(n_mels, n_flows, n_group, n_early_every, n_early_size,
                    {"n_layers": n_layers, "n_channels": n_channels, "kernel_size": kernel_size},
                    wn_style=wn_style)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("convinv"):
                c = p.shape[0]
                w = p.squeeze(-1) + 0.2 * torch.randn(c, c, generator=g)
                if torch.det(w) < 0:
                    w[:, 0] = -w[:, 0]
                p.copy_(w.unsqueeze(-1))
            elif name.endswith("weight_g"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.8 + 0.4)
            elif name.startswith("upsample.weight"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
            elif ".end." in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model


def save_reference(model: ReferenceWaveGlow, path: str | Path, iteration: int = 1234,
                   stream_format: bool = False, old_torch_attrs: bool = False) -> Path:
    """Save like the reference's train.py: {'model', 'iteration', 'optimizer', 'learning_rate'}.

    Args:
        stream_format: write torch's pre-1.6 stream format instead of the zip format.
        old_torch_attrs: give every module the `_backend` attribute torch < 1.3 pickled.
    """
    path = Path(path)
    if old_torch_attrs:
        for m in model.modules():
            m.__dict__["_backend"] = _ThnnBackend()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    state = {"model": model, "iteration": iteration, "optimizer": optimizer.state_dict(),
             "learning_rate": 1e-4}
    try:
        with reference_modules(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "couldn't retrieve source code" (stream format)
            torch.save(state, path, _use_new_zipfile_serialization=not stream_format)
    finally:
        if old_torch_attrs:
            for m in model.modules():
                m.__dict__.pop("_backend", None)
    return path
