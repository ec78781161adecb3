"""Convert NVIDIA/waveglow checkpoints into checkpoints of this project.

The published NVIDIA files (`waveglow_256channels_universal_v5.pt`, the original
`waveglow_old.pt`, ...) are pickles of a dict `{'model': <whole WaveGlow module object>,
'iteration', 'optimizer', 'learning_rate'}`. Loading them the usual way imports NVIDIA's
`glow` / `glow_old` modules and lets the pickle call any function it names; here they are read
by the restricted unpickler of `waveglow.interop.pickle_reader`, which runs nothing
(`waveglow.interop.nvidia_file`).

The module tree is then flattened into the reference's state_dict names
(`upsample.*`, `convinv.{k}.conv.weight`, `WN.{k}.*`), the model config is inferred from the
weight shapes, legacy layouts are fused into the current one (see `waveglow.model` for the
key correspondence), and a checkpoint of this project is written atomically.

Legacy layouts:
    * per-layer `cond_layers.i` (2C rows each) -> one `cond_layer`, rows concatenated in layer
      order (weight_g, weight_v and bias alike: weight norm is per output row, so this is exact);
    * separate `res_layers.i` / `skip_layers.i` -> `res_skip_layers.i` (residual rows then skip
      rows; the last layer skip only);
    * a `glow_old.WaveGlow` root: the coupling alternates which half conditions
      (`condition_half: alternate`) and early outputs happen every 4 flows.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from waveglow.checkpoint import build_checkpoint, build_model, save_checkpoint
from waveglow.config import AudioConfig, from_dict, to_dict
from waveglow.errors import UserError
from waveglow.interop.nvidia_file import NvidiaCheckpoint, read_nvidia_checkpoint
from waveglow.interop.pickle_reader import printable

log = logging.getLogger("waveglow")

# ---------------------------------------------------------------------------------- conversion


class _Weights:
    """The reference tensors, tracking which ones the conversion used."""

    def __init__(self, ck: NvidiaCheckpoint) -> None:
        self.ck = ck
        self.used: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.ck.tensors

    def get(self, key: str, dims: int | None = None) -> Tensor:
        t = self.ck.tensors.get(key)
        if t is None:
            raise UserError(f"{self.ck.path}: missing weight '{key}' (not a WaveGlow of the "
                            "NVIDIA layout?)")
        if dims is not None and t.dim() != dims:
            raise UserError(f"{self.ck.path}: '{key}' has shape {list(t.shape)}, expected "
                            f"{dims} dimensions")
        if not t.is_floating_point() or not torch.isfinite(t).all():
            raise UserError(f"{self.ck.path}: '{key}' is not a finite floating-point tensor")
        self.used.add(key)
        return t

    def weight_norm(self, prefix: str) -> dict[str, Tensor]:
        """weight_g / weight_v / bias of conv `prefix` (a plain `weight` is split exactly)."""
        bias = self.get(f"{prefix}.bias", 1)
        if self.has(f"{prefix}.weight_v"):
            g, v = self.get(f"{prefix}.weight_g", 3), self.get(f"{prefix}.weight_v", 3)
        else:
            w = self.get(f"{prefix}.weight", 3)
            g = torch.linalg.vector_norm(w, dim=(1, 2), keepdim=True)
            # A zero row folds to zero for any direction: keep v finite.
            v = torch.where(g > 0, w, torch.ones_like(w))
        if g.shape != (v.shape[0], 1, 1) or bias.shape != (v.shape[0],):
            raise UserError(f"{self.ck.path}: '{prefix}' has inconsistent weight_g/weight_v/bias "
                            "shapes")
        return {"weight_g": g, "weight_v": v, "bias": bias}

    def plain(self, prefix: str, bias: bool = True) -> dict[str, Tensor]:
        """weight (and bias) of conv `prefix` (a weight-normed pair is folded)."""
        if self.has(f"{prefix}.weight_v"):
            g, v = self.get(f"{prefix}.weight_g", 3), self.get(f"{prefix}.weight_v", 3)
            w = v * (g / torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True))
        else:
            w = self.get(f"{prefix}.weight", 3)
        out = {"weight": w}
        if bias:
            out["bias"] = self.get(f"{prefix}.bias", 1)
        return out

    def count(self, prefix: str) -> int:
        """Number of consecutive indices i with some key `{prefix}.{i}.*`."""
        n = 0
        while any(k.startswith(f"{prefix}.{n}.") for k in self.ck.tensors):
            n += 1
        return n


def _cat(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate weight-normed convs along their output rows (exact: the norm is per row)."""
    return {k: torch.cat([p[k] for p in parts], dim=0) for k in parts[0]}


def _put(out: dict[str, Tensor], prefix: str, params: Mapping[str, Tensor]) -> None:
    for k, v in params.items():
        out[f"{prefix}.{k}"] = v


@dataclass
class NvidiaLayout:
    """The model an NVIDIA file describes (inferred from its weight shapes)."""

    n_mels: int
    hop_length: int
    upsample_kernel: int
    n_group: int
    n_flows: int
    n_early_every: int
    n_early_size: int
    n_layers: int
    n_channels: int
    kernel_size: int
    legacy: bool
    cond_fused: bool
    res_skip_fused: bool

    def model_config(self, sigma: float = 1.0) -> dict[str, Any]:
        return {
            "name": f"nvidia_{self.n_channels}ch" + ("_legacy" if self.legacy else ""),
            "n_group": self.n_group,
            "n_flows": self.n_flows,
            "n_early_every": self.n_early_every,
            "n_early_size": self.n_early_size,
            "coupling": "affine",
            "sigma": float(sigma),
            "condition_half": "alternate" if self.legacy else "first",
            "upsample": "conv_transpose",
            "upsample_kernel": self.upsample_kernel,
            "wn": {"n_layers": self.n_layers, "n_channels": self.n_channels,
                   "kernel_size": self.kernel_size, "depthwise": False},
        }

    def describe(self) -> str:
        fused = []
        if not self.cond_fused:
            fused.append("per-layer cond layers fused")
        if not self.res_skip_fused:
            fused.append("res/skip layers fused")
        kind = "legacy glow_old layout (alternating halves)" if self.legacy else "reference layout"
        extra = f", {', '.join(fused)}" if fused else ""
        return (f"{kind}{extra}: {self.n_flows} flows, n_group {self.n_group}, early "
                f"{self.n_early_size} every {self.n_early_every}, WN {self.n_layers} layers × "
                f"{self.n_channels} channels (kernel {self.kernel_size}), {self.n_mels} mels")


def _is_legacy(ck: NvidiaCheckpoint, layout: str) -> bool:
    if layout == "legacy":
        return True
    if layout == "reference":
        return False
    if layout != "auto":
        raise UserError(f"layout: expected auto, reference or legacy, got {layout!r}")
    root = ck.root_class
    if root is None:
        log.warning("%s: a bare state_dict names no class; assuming the reference (glow.WaveGlow) "
                    "layout (pass layout=legacy for a glow_old model)", ck.path)
        return False
    module = root.rsplit(".", 1)[0]
    return module == "glow_old" or module.endswith(".glow_old")


def infer_layout(ck: NvidiaCheckpoint, layout: str = "auto") -> NvidiaLayout:
    """Infer the model settings from the weight shapes.

    Raises:
        UserError: shapes that no WaveGlow of the NVIDIA layout has.
    """
    w = _Weights(ck)
    p = ck.path
    up = w.get("upsample.weight", 3)
    n_mels, k_up = up.shape[0], up.shape[2]
    if up.shape[1] != n_mels:
        raise UserError(f"{p}: upsample.weight {list(up.shape)} is not [n_mels, n_mels, kernel]")
    stride = ck.attributes.get("upsample", {}).get("stride", (256,))
    hop = stride[0] if isinstance(stride, tuple) and stride else stride
    if not isinstance(hop, int) or not 0 < hop <= k_up:
        raise UserError(f"{p}: upsample stride {stride!r} is not a hop length <= kernel {k_up}")

    n_flows = w.count("convinv")
    if n_flows == 0:
        raise UserError(f"{p}: no flows (convinv.0.conv.weight missing)")
    channels = []
    for k in range(n_flows):
        c = w.get(f"convinv.{k}.conv.weight", 3)
        if c.shape[0] != c.shape[1] or c.shape[2] != 1 or c.shape[0] % 2:
            raise UserError(f"{p}: convinv.{k}.conv.weight {list(c.shape)} is not [c, c, 1] "
                            "with c even")
        channels.append(c.shape[0])
    n_group = channels[0]
    legacy = _is_legacy(ck, layout)
    exits = [k for k in range(1, n_flows) if channels[k] != channels[k - 1]]
    sizes = {channels[k - 1] - channels[k] for k in exits}
    if not exits:
        every, size = 4, 0
    else:
        every = exits[0]
        size = sizes.pop() if len(sizes) == 1 else -1
        expected = [k for k in range(1, n_flows) if k % every == 0]
        if size <= 0 or size % 2 or exits != expected or (legacy and every != 4):
            raise UserError(f"{p}: the flows' channel counts {channels} do not follow an early "
                            "output pattern (every n flows, the same even count)")

    n_layers = w.count("WN.0.in_layers")
    if n_layers == 0 or w.count("WN") != n_flows:
        raise UserError(f"{p}: expected one WN per flow ({n_flows}) with in_layers")
    start = w.plain("WN.0.start")["weight"]
    n_channels = start.shape[0]
    kernel = w.plain("WN.0.in_layers.0")["weight"].shape[2]
    cond_fused = w.has("WN.0.cond_layer.bias")
    res_skip_fused = w.has("WN.0.res_skip_layers.0.bias")
    return NvidiaLayout(n_mels=n_mels, hop_length=hop, upsample_kernel=k_up, n_group=n_group,
                        n_flows=n_flows, n_early_every=every, n_early_size=size, n_layers=n_layers,
                        n_channels=n_channels, kernel_size=kernel, legacy=legacy,
                        cond_fused=cond_fused, res_skip_fused=res_skip_fused)


def convert_state(ck: NvidiaCheckpoint, lay: NvidiaLayout) -> dict[str, Tensor]:
    """The reference tensors under this project's state_dict names (legacy layouts fused).

    Shapes are checked by loading the result into the model afterwards; here only the
    structure is decided. Every tensor of the file must be used (or be the unused residual
    conv of a legacy last layer), so a layout we do not understand is refused, not guessed.
    """
    w = _Weights(ck)
    L = lay.n_layers
    out: dict[str, Tensor] = {}
    _put(out, "upsample", w.plain("upsample"))
    for k in range(lay.n_flows):
        out[f"flows.convinv_{k}.weight"] = w.get(f"convinv.{k}.conv.weight", 3)
        src, dst = f"WN.{k}", f"flows.coupling_{k}.wn"
        if w.count(f"{src}.in_layers") != L:
            raise UserError(f"{ck.path}: {src} has {w.count(f'{src}.in_layers')} layers, "
                            f"WN.0 has {L}")
        _put(out, f"{dst}.start", w.weight_norm(f"{src}.start"))
        _put(out, f"{dst}.end", w.plain(f"{src}.end"))
        if w.has(f"{src}.cond_layer.bias"):
            _put(out, f"{dst}.cond_layer", w.weight_norm(f"{src}.cond_layer"))
        else:
            _put(out, f"{dst}.cond_layer",
                 _cat([w.weight_norm(f"{src}.cond_layers.{i}") for i in range(L)]))
        for i in range(L):
            _put(out, f"{dst}.in_layers.{i}", w.weight_norm(f"{src}.in_layers.{i}"))
            if w.has(f"{src}.res_skip_layers.{i}.bias"):
                rs = w.weight_norm(f"{src}.res_skip_layers.{i}")
            elif i < L - 1:
                rs = _cat([w.weight_norm(f"{src}.res_layers.{i}"),
                           w.weight_norm(f"{src}.skip_layers.{i}")])
            else:
                rs = w.weight_norm(f"{src}.skip_layers.{i}")
                # The last layer's residual (if the file has one) feeds nothing.
                w.used.update(k for k in ck.tensors if k.startswith(f"{src}.res_layers.{i}."))
            _put(out, f"{dst}.res_skip_layers.{i}", rs)
    unused = sorted(set(ck.tensors) - w.used)
    if unused:
        raise UserError(f"{ck.path}: weights this importer does not understand: "
                        f"{', '.join(printable(u) for u in unused[:5])}{' ...' if len(unused) > 5 else ''}")
    out["mel_mean"] = torch.zeros(lay.n_mels)
    out["mel_std"] = torch.ones(lay.n_mels)
    return out


def convert_nvidia(ck: NvidiaCheckpoint, audio: AudioConfig | Mapping[str, Any] | None = None,
                   layout: str = "auto", sigma: float = 1.0) -> dict[str, Any]:
    """Build a checkpoint dict of this project from a read NVIDIA file.

    Args:
        ck: from `read_nvidia_checkpoint`.
        audio: the audio settings (default: `AudioConfig()`, the Tacotron 2 / NVIDIA
            convention); n_mels and hop_length are set from the weights.
        layout: "auto" (from the pickled root class: `glow_old.WaveGlow` is legacy),
            "reference" or "legacy".
        sigma: the prior std stored as model.sigma (the reference trains with 1.0).

    Returns:
        The checkpoint dict (format_version, model, config, step, ..., source).

    Raises:
        UserError: the weights do not describe a WaveGlow this project can run.
    """
    lay = infer_layout(ck, layout)
    if audio is None:
        audio = AudioConfig()
    elif not isinstance(audio, AudioConfig):
        audio = from_dict(AudioConfig, to_dict(audio), prefix="audio")
    for key, value in (("n_mels", lay.n_mels), ("hop_length", lay.hop_length)):
        if getattr(audio, key) != value:
            log.warning("%s: the weights need audio.%s=%s (config had %s); using %s",
                        ck.path, key, value, getattr(audio, key), value)
            audio = dataclasses.replace(audio, **{key: value})
    config = {"audio": to_dict(audio), "model": lay.model_config(sigma), "data": {}, "train": {}}
    state = convert_state(ck, lay)
    model = build_model(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        raise UserError(f"{ck.path}: the weights do not fit the inferred model "
                        f"({lay.describe()}): {printable(msg, 300)}") from None
    source = {
        "kind": "nvidia-waveglow",
        "file": ck.path.name,
        "class": ck.root_class or "state_dict",
        "container": ck.container,
        "layout": lay.describe(),
        "learning_rate": ck.learning_rate,
    }
    return build_checkpoint(model, config, step=ck.iteration or 0, source=source)


def import_nvidia(input_path: str | os.PathLike, output_path: str | os.PathLike,
                  audio: AudioConfig | Mapping[str, Any] | None = None, layout: str = "auto",
                  sigma: float = 1.0) -> dict[str, Any]:
    """Convert an NVIDIA/waveglow file into a checkpoint of this project, written atomically.

    Args:
        input_path: the NVIDIA file (zip or stream format).
        output_path: the checkpoint to write (nothing is written if anything fails).
        audio, layout, sigma: see `convert_nvidia`.

    Returns:
        The written checkpoint dict.

    Raises:
        UserError: bad input (nothing written) or an unwritable output.
    """
    src, dst = Path(input_path), Path(output_path)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise UserError(f"{dst}: output would overwrite the input file")
    if dst.is_dir():
        raise UserError(f"{dst}: output is a directory, expected a file name (e.g. nvidia.pt)")
    ck = read_nvidia_checkpoint(src)
    state = convert_nvidia(ck, audio=audio, layout=layout, sigma=sigma)
    try:
        save_checkpoint(dst, state)
    except OSError as e:
        raise UserError(f"{dst}: cannot write the checkpoint ({e.strerror or e})") from None
    n_params = sum(v.numel() for k, v in state["model"].items() if not k.startswith("mel_"))
    log.info("%s: %s %s, %.2fM parameters, iteration %s -> %s", src, ck.root_class or "state_dict",
             state["source"]["layout"], n_params / 1e6, ck.iteration, dst)
    return state


__all__ = [
    "NvidiaCheckpoint",
    "NvidiaLayout",
    "convert_nvidia",
    "convert_state",
    "import_nvidia",
    "infer_layout",
    "read_nvidia_checkpoint",
]
