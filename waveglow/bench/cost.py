"""What a model costs, in multiply-accumulates: from its config's layer shapes (`count_macs`),
from a built model's modules (`macs_per_sample`), and as counted at the operator level while a
function runs (`count_macs_traced`, the check of the other two).

Element-wise work (gates, exp, adds) is not counted: it is memory-bound and small next to the
convolutions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry, register_flop_formula

from waveglow.conditioner import WN, WNConv1d
from waveglow.config import ModelConfig
from waveglow.flows import Invertible1x1Conv

PARTS = ("upsample", "inv1x1", "start", "cond", "in_layers", "res_skip", "end")


def count_macs(model_cfg: ModelConfig, n_mels: int = 80, hop_length: int = 256,
               sampling_rate: int = 22050, seconds: float = 1.0) -> dict[str, float]:
    """Multiply-accumulates of one inference pass (mel -> audio), counted from layer shapes.

    The count covers every convolution / matrix product: the mel upsampler, and per flow the
    1×1 invertible conv (its inverse at synthesis costs the same), and the coupling's WN
    conditioner (start conv, the fused mel-conditioning projection, the dilated in-layers —
    depthwise + pointwise when `wn.depthwise` — the residual/skip convs and the end conv).
    Training (log_prob direction) costs the same per pass.

    Args:
        model_cfg: the model settings (e.g. `TrainApp.model`, or `from_dict(ModelConfig, ...)`).
        n_mels, hop_length, sampling_rate: feature settings (the `audio` section).
        seconds: audio duration to count for.

    Returns:
        MACs per part (`upsample`, `inv1x1`, `start`, `cond`, `in_layers`, `res_skip`, `end`)
        and `total`, for `seconds` of audio.
    """
    n_group = model_cfg.n_group
    wn = model_cfg.wn
    channels, n_layers, kernel = wn.n_channels, wn.n_layers, wn.kernel_size

    samples = seconds * sampling_rate
    frames = samples / hop_length
    steps = samples / n_group  # time steps after squeezing audio into n_group channels

    parts = dict.fromkeys(PARTS, 0.0)
    if model_cfg.upsample == "conv_transpose":
        # Each input frame is spread over `upsample_kernel` outputs in every output channel.
        parts["upsample"] = frames * n_mels * n_mels * model_cfg.upsample_kernel
    # The conditioner sees the upsampled mel squeezed like the audio (n_mels·n_group channels),
    # or with `repeat` the frames themselves repeated along the squeezed time axis (n_mels).
    cond_in = n_mels * n_group if model_cfg.upsample == "conv_transpose" else n_mels
    remaining = n_group
    for k in range(model_cfg.n_flows):
        if model_cfg.n_early_every > 0 and k > 0 and k % model_cfg.n_early_every == 0:
            remaining -= model_cfg.n_early_size
        n_cond_half = remaining // 2  # the conditioning half ...
        n_trans = remaining - n_cond_half  # ... and the transformed half
        parts["inv1x1"] += remaining * remaining * steps
        parts["start"] += n_cond_half * channels * steps
        parts["cond"] += cond_in * 2 * channels * n_layers * steps
        if wn.depthwise:
            per_layer = channels * kernel + channels * 2 * channels
        else:
            per_layer = channels * 2 * channels * kernel
        parts["in_layers"] += n_layers * per_layer * steps
        # Every layer but the last writes residual + skip; the last one only skip.
        parts["res_skip"] += ((n_layers - 1) * channels * 2 * channels + channels * channels) * steps
        end_out = 2 * n_trans if model_cfg.coupling == "affine" else n_trans
        parts["end"] += channels * end_out * steps
    parts["total"] = sum(parts.values())
    return parts


def macs_per_sample(model: nn.Module) -> float:
    """Multiply-accumulates per audio sample of synthesis, counted from a WaveGlow's modules.

    Args:
        model: a WaveGlow (weight norm folded or not: the products are the same).

    Returns:
        MACs per output audio sample (× sampling rate = MACs per audio second).
    """
    total = 0.0
    G = model.n_group
    if model.upsample is not None:
        k = model.upsample.kernel_size[0]
        total += model.n_mels * model.n_mels * k / model.hop_length
    for m in model.modules():
        if isinstance(m, Invertible1x1Conv):
            total += m.channels**2 / G
        elif isinstance(m, WNConv1d):
            total += m.out_channels * (m.in_channels // m.groups) * m.kernel_size / G
        elif isinstance(m, WN):
            total += m.end.out_channels * m.end.in_channels / G
    return total


def register_flop_formulas() -> None:
    """Let `FlopCounterMode` count the oneDNN product of the 1×1 convs like a matmul.

    The conditioner's pointwise convolutions run as `torch.ops.mkldnn._linear_pointwise` on CPU
    (see `waveglow.conv_paths.pointwise_conv`), which torch's counter does not know; without
    this formula operator-level MAC counts would miss them. X [M, K] times W [N, K]ᵀ: 2·M·N·K
    FLOPs. Must run before a `FlopCounterMode` is created (it copies the registry then);
    idempotent. Best effort: a missing op or changed counter internals only affect counting.
    """
    try:
        op = torch.ops.mkldnn._linear_pointwise
        if op in flop_registry:
            return

        def linear_flops(x_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
            # default overload: (X, W, B, attr, ...); binary overload: (X, other, W, B, attr).
            w_shape = args[0] if isinstance(args[2], str) else args[1]
            return 2 * x_shape[0] * w_shape[0] * x_shape[1]

        register_flop_formula(op)(linear_flops)
    except Exception:  # pragma: no cover - flop counter internals changed
        pass


def count_macs_traced(fn: Callable[[], Any]) -> float:
    """MACs that actually run in `fn()`, counted at the operator level (convolutions, matmuls).

    Uses `torch.utils.flop_counter.FlopCounterMode`, which sees every aten convolution and
    matrix product whether it comes from an `nn.Module` or a functional call (plus the oneDNN
    product, see `register_flop_formulas`); FLOPs / 2 = MACs.
    """
    register_flop_formulas()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2.0
