"""The synthesis graph that export traces: `SynthesisGraph(mel, z) -> audio`.

It is `WaveGlow.decode` of a private, frozen copy of the model, written so that a tracer sees
only plain tensor operations:

- weight norm folded (`remove_weight_norm`), every parameter frozen (no gradients kept);
- each 1×1 convolution's inverse computed once, exactly as eager inference computes it
  (`torch.linalg.inv` of the float32 weight), and held as a constant: ONNX has no matrix
  inverse, and the inverse must not be recomputed per call anyway;
- the model run with autograd *enabled*: the inference fast paths of `WaveGlow` and `WN`
  (oneDNN matmuls through a private op, in-place updates, cached inverses, the im2col
  upsampler, the sigmoid form of tanh) only run with autograd off, so the traced graph takes
  the plain paths, which compute the same function to float rounding (parity is tested);
- during tracing only (`traceable()`), the conditioner's 1×1 convolutions are traced as
  `Conv` nodes instead of the batched matmul with an expanded weight that the plain path uses:
  same numbers, and onnxruntime runs (and int8-quantizes) a `Conv` with a constant weight far
  better than an `Expand` + `MatMul` (squeeze, one thread: 472 vs 368 kHz).

The mel statistics of the checkpoint are buffers of the model, so they are constants of the
graph: the graph takes raw log-mels, exactly what `waveglow-synthesize` reads.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from waveglow import conditioner
from waveglow.flows import Invertible1x1Conv
from waveglow.model import WaveGlow


class _FrozenInverse1x1(Invertible1x1Conv):
    """An `Invertible1x1Conv` whose inverse is the constant buffer `w_inv` [c, c, 1].

    Only the export copy's parts get this class (set on the copy, see `SynthesisGraph`); its
    `inverse` is the protocol's own, unchanged.
    """

    w_inv: Tensor

    def inverse_matrix(self) -> Tensor:
        return self.w_inv


def freeze_inverse(part: Invertible1x1Conv) -> Invertible1x1Conv:
    """Turn `part` (in place) into a `_FrozenInverse1x1` holding its current inverse as a buffer.

    The inverse is computed as the eager path computes it (torch.linalg.inv in the state dtype),
    so the exported graph inverts exactly as eager synthesis does.
    """
    with torch.no_grad():
        inv = torch.linalg.inv(part._matrix()).unsqueeze(-1)
    part.register_buffer("w_inv", inv)
    part.__class__ = _FrozenInverse1x1
    return part


class SynthesisGraph(nn.Module):
    """mel [B, n_mels, F] (raw log-mel) and z [B, hop·F] (latent, already × sigma) -> audio [B, hop·F].

    Args:
        model: a WaveGlow (float32); it is copied, never modified.

    Attributes:
        n_mels, hop_length, sampling_rate (None when the model's config has no audio group).
    """

    def __init__(self, model: WaveGlow) -> None:
        super().__init__()
        frozen = copy.deepcopy(model).float().cpu().eval()
        frozen.remove_weight_norm()
        for p in frozen.parameters():
            p.requires_grad_(False)
        for part in frozen.parts():
            if isinstance(part, Invertible1x1Conv):
                freeze_inverse(part)
        self.model = frozen
        self.n_mels = frozen.n_mels
        self.hop_length = frozen.hop_length
        audio = model.config.get("audio") if isinstance(model.config, dict) else None
        self.sampling_rate: int | None = int(audio["sampling_rate"]) if audio else None

    def forward(self, mel: Tensor, z: Tensor) -> Tensor:
        """Decode: see the class docstring for shapes."""
        with torch.enable_grad():  # the plain (traceable) paths; no parameter needs a gradient
            return self.model.decode(z, mel)


def _pointwise_as_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """`conditioner.pointwise_conv` as one Conv node: [B, C_in, N] -> [B, C_out, N]."""
    return F.conv1d(x, weight, bias)


@contextlib.contextmanager
def traceable() -> Iterator[None]:
    """While tracing: the conditioner's 1×1 convs as `F.conv1d` (one ONNX Conv each).

    The swap is of a module attribute for the duration of the export only (a concurrent eager
    call in another thread would take the conv path too, with the same results). An
    AttributeError here means the conditioner was refactored: the parity tests say so.
    """
    original = conditioner.pointwise_conv
    conditioner.pointwise_conv = _pointwise_as_conv
    try:
        yield
    finally:
        conditioner.pointwise_conv = original
