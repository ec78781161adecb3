"""WaveGlow: a mel-conditioned normalizing flow from audio to Gaussian noise and back.

The model is one ordered list of flow parts (`self.flows`, an `nn.ModuleDict`; see
`waveglow.flows` for the protocol):

    squeeze, convinv_0, coupling_0, convinv_1, coupling_1, ..., convinv_{K-1}, coupling_{K-1}, unsqueeze

`log_prob`, `forward_with_stats` and `encode` walk it forward, `decode` and `infer` walk it
backward. Early outputs: flow k with k % n_early_every == 0 and k > 0 first lets the FIRST
n_early_size active channels leave (its parts get `start` += n_early_size), exactly as the
reference; the latent z comes back in the audio's [B, T] layout.

Conditioning: raw log-mel [B, n_mels, F] -> (mel - mel_mean) / mel_std -> upsampling to the
audio rate -> cut to T from the start -> squeezed like the audio:
  * `upsample: conv_transpose` (reference): ConvTranspose1d(n_mels, n_mels, upsample_kernel,
    stride=hop); the squeeze is mel-major, conditioning channel m·n_group + j holds mel channel m
    at sample offset j, so the conditioner sees n_mels·n_group channels;
  * `upsample: repeat` (the fast configuration): each frame is repeated hop/n_group times on
    the squeezed time axis (requires hop % n_group == 0); the conditioner sees n_mels channels.

State-dict keys (K flows, L layers per conditioner; `*` = `weight_g`, `weight_v`, `bias` of a
weight-normed conv, which become `weight`, `bias` after `remove_weight_norm()`):

    mel_mean [n_mels], mel_std [n_mels]                      buffers (identity until set)
    upsample.weight [n_mels, n_mels, kernel], upsample.bias  (conv_transpose only)
    flows.convinv_{k}.weight [c_k, c_k, 1]                   reference: convinv.{k}.conv.weight
    flows.coupling_{k}.wn.start.*                            reference: WN.{k}.start.*
    flows.coupling_{k}.wn.cond_layer.*                       reference: WN.{k}.cond_layer.*
    flows.coupling_{k}.wn.in_layers.{i}.*                    reference: WN.{k}.in_layers.{i}.*
    flows.coupling_{k}.wn.res_skip_layers.{i}.*              reference: WN.{k}.res_skip_layers.{i}.*
    flows.coupling_{k}.wn.end.weight, .bias                  reference: WN.{k}.end.weight, .bias
    (depthwise: flows.coupling_{k}.wn.in_layers.{i}.depthwise.* and .pointwise.*)

So a reference key maps by `convinv.{k}.conv.weight -> flows.convinv_{k}.weight` and
`WN.{k}.<rest> -> flows.coupling_{k}.wn.<rest>`; shapes and the weight_g/weight_v/bias names
are identical. Legacy (`glow_old`) files: fuse `cond_layers.i` into `cond_layer` (rows
concatenated in layer order; weight_g, weight_v and bias alike) and separate res/skip layers
into `res_skip_layers.i` (residual rows first, then skip; the last layer skip only), and set
`condition_half: alternate`, `n_early_every: 4`. Weight norm is per output row, so fusing
rows is exact. A reference conv that was already folded (plain `weight`) imports exactly as
`weight_v = weight`, `weight_g = ‖weight‖` over (in, k) per output row.

Inference caches (used only with autograd off: `torch.no_grad` / `torch.inference_mode`): each
1×1 conv's inverse and the rearranged upsampling kernel are cached and keyed on their weights'
version counters and storage (any in-place update, `load_state_dict` or `.to()` invalidates
them); with autograd on they are always recomputed. `remove_weight_norm()` folds the weight
norms for synthesis.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from waveglow.conditioner import WN
from waveglow.config import ModelConfig, from_dict, to_dict, validate
from waveglow.errors import UserError
from waveglow.flows import (
    AdditiveCoupling,
    AffineCoupling,
    FlowPart,
    Invertible1x1Conv,
    Squeeze,
    Unsqueeze,
    state_dtype,
)
from waveglow.runtime import exact_fp32
from waveglow.upsample import PhaseUpsampler
from waveglow.walk import record_stats, walk_recomputed

# How the training backward pass gets each flow step's activations: stored by the forward
# pass (standard) or rebuilt from the step's output (invertible; see `walk_recomputed`).
MEMORY_MODES = ("standard", "invertible")


def resolve_model_config(model_cfg: ModelConfig | Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults and check a model config.

    Args:
        model_cfg: the `model` settings: typed, or the plain dict a checkpoint stores (keys it
            lacks take the defaults of `waveglow.config.ModelConfig`).

    Returns:
        A complete plain dict.

    Raises:
        UserError: an unknown key or a value that cannot describe a model, naming the key.
    """
    typed = model_cfg if isinstance(model_cfg, ModelConfig) else from_dict(ModelConfig, to_dict(model_cfg), "model")
    return to_dict(validate(typed, "model"))


class WaveGlow(nn.Module):
    """Mel-conditioned WaveGlow flow with an exact log-likelihood.

    Args:
        model_cfg: the `model` settings (`waveglow.config.ModelConfig`, or its plain dict).
        n_mels: mel channels of the conditioning.
        hop_length: audio samples per mel frame.

    Raises:
        UserError: an invalid config (including an impossible upsampling / hop combination).
    """

    mel_mean: Tensor
    mel_std: Tensor

    def __init__(self, model_cfg: ModelConfig | Mapping[str, Any], n_mels: int = 80, hop_length: int = 256
                 ) -> None:
        super().__init__()
        cfg = resolve_model_config(model_cfg)
        # model_config: the resolved `model` group. config: the whole run config as plain
        # containers when known (from_config / checkpoint.load_model), else just {"model": ...}.
        self.model_config = cfg
        self.config: dict[str, Any] = {"model": cfg}
        self.n_mels = int(n_mels)
        self.hop_length = int(hop_length)
        self.n_group = G = cfg["n_group"]
        self.n_flows = cfg["n_flows"]
        self.sigma = cfg["sigma"]
        self.upsample_mode = cfg["upsample"]
        if self.upsample_mode == "conv_transpose":
            if cfg["upsample_kernel"] < self.hop_length:
                raise UserError(f"model config: upsample_kernel ({cfg['upsample_kernel']}) must be "
                                f">= hop_length ({self.hop_length})")
            self.upsample: nn.ConvTranspose1d | None = nn.ConvTranspose1d(
                self.n_mels, self.n_mels, cfg["upsample_kernel"], stride=self.hop_length)
            n_cond = self.n_mels * G
        else:
            if self.hop_length % G != 0:
                raise UserError(f"model config: upsample=repeat needs hop_length ({self.hop_length}) "
                                f"to be a multiple of n_group ({G}); use n_group dividing the hop "
                                "or upsample=conv_transpose")
            self.upsample = None
            n_cond = self.n_mels
        self._phases = PhaseUpsampler(self.hop_length)  # the upsampler's inference path and cache
        self.register_buffer("mel_mean", torch.zeros(self.n_mels))
        self.register_buffer("mel_std", torch.ones(self.n_mels))

        coupling_cls = AffineCoupling if cfg["coupling"] == "affine" else AdditiveCoupling
        wn = cfg["wn"]
        self.flows = nn.ModuleDict()
        self.flows["squeeze"] = Squeeze(G)
        start = 0
        for k in range(self.n_flows):
            if k > 0 and k % cfg["n_early_every"] == 0:
                start += cfg["n_early_size"]
            c = G - start
            condition = "second" if cfg["condition_half"] == "alternate" and k % 2 == 1 else "first"
            self.flows[f"convinv_{k}"] = Invertible1x1Conv(c, start, flow_index=k)
            self.flows[f"coupling_{k}"] = coupling_cls(
                c, start, n_cond, wn["n_layers"], wn["n_channels"], wn["kernel_size"],
                wn["depthwise"], condition=condition, flow_index=k)
        self.flows["unsqueeze"] = Unsqueeze(G)
        self.n_remaining_channels = G - start

    @classmethod
    def from_config(cls, cfg: Any) -> WaveGlow:
        """Build from a full config with `model` and `audio` groups (typed, or plain dicts)."""
        cfg = to_dict(cfg)
        audio = cfg["audio"]
        model = cls(cfg["model"], n_mels=int(audio["n_mels"]), hop_length=int(audio["hop_length"]))
        model.config = cfg
        return model

    def _apply(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        # .to() / .cuda() / .half(): drop the inference cache instead of keeping a copy on the
        # old device (the 1×1 convs drop theirs in their own _apply).
        self._phases.clear()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ parts and settings
    def parts(self) -> list[FlowPart]:
        """The flow parts in forward order."""
        return list(self.flows.values())  # type: ignore[arg-type]

    def _dtype(self) -> torch.dtype:
        """Dtype of the flow state: float32, or float64 for a float64 model."""
        return state_dtype(self.mel_std.dtype if self.upsample is None else self.upsample.weight.dtype)

    def set_mel_stats(self, mean: Tensor, std: Tensor) -> None:
        """Store per-channel log-mel statistics; inputs are normalized as (mel - mean) / std.

        Args:
            mean: [n_mels].
            std: [n_mels], all > 0.

        Raises:
            UserError: wrong shape, non-finite values or std <= 0.
        """
        mean = torch.as_tensor(mean).detach()
        std = torch.as_tensor(std).detach()
        for name, t in (("mean", mean), ("std", std)):
            if tuple(t.shape) != (self.n_mels,):
                raise UserError(f"mel stats: {name} must have shape [{self.n_mels}], got {list(t.shape)}")
            if not torch.isfinite(t).all():
                raise UserError(f"mel stats: {name} contains NaN or Inf")
        if not (std > 0).all():
            raise UserError("mel stats: std must be > 0 in every channel")
        with torch.no_grad():
            self.mel_mean.copy_(mean)
            self.mel_std.copy_(std)

    def remove_weight_norm(self) -> None:
        """Fold the weight norms of every conditioner (for inference; idempotent)."""
        for m in self.modules():
            if isinstance(m, WN):
                m.remove_weight_norm()

    # ------------------------------------------------------------------ input checks
    def _check_mel(self, mel: Tensor, where: str) -> None:
        if not torch.is_tensor(mel) or mel.dim() != 3:
            shape = list(mel.shape) if torch.is_tensor(mel) else type(mel).__name__
            raise UserError(f"{where}: mel must be [batch, n_mels, frames], got {shape}")
        if mel.shape[1] != self.n_mels:
            raise UserError(f"{where}: mel has {mel.shape[1]} channels, the model expects "
                            f"n_mels={self.n_mels}")
        if mel.shape[2] < 1:
            raise UserError(f"{where}: mel has no frames")

    def _check_pair(self, audio: Tensor, mel: Tensor, where: str) -> None:
        if not torch.is_tensor(audio) or audio.dim() != 2:
            shape = list(audio.shape) if torch.is_tensor(audio) else type(audio).__name__
            raise UserError(f"{where}: audio must be [batch, samples], got {shape}")
        self._check_mel(mel, where)
        B, T = audio.shape
        if mel.shape[0] != B:
            raise UserError(f"{where}: batch sizes differ (audio {B}, mel {mel.shape[0]})")
        if T == 0 or T % self.n_group != 0:
            raise UserError(f"{where}: audio length {T} must be a positive multiple of "
                            f"n_group={self.n_group}")
        need = -(-T // self.hop_length)
        if mel.shape[2] < need:
            raise UserError(f"{where}: {T} audio samples need at least {need} mel frames "
                            f"(hop {self.hop_length}), got {mel.shape[2]}")

    # ------------------------------------------------------------------ conditioning
    def condition(self, mel: Tensor, length: int) -> Tensor:
        """Normalize, upsample and squeeze the mel for `length` audio samples.

        Args:
            mel: [B, n_mels, F] raw log-mel (F >= ceil(length / hop)).
            length: T, a multiple of n_group.

        Returns:
            [B, n_mels·n_group, T/n_group] (conv_transpose) or [B, n_mels, T/n_group] (repeat).
        """
        G = self.n_group
        B = mel.shape[0]
        N = length // G
        mean = self.mel_mean.to(self._dtype())
        std = self.mel_std.to(self._dtype())
        mel = (mel.to(self._dtype()) - mean[:, None]) / std[:, None]
        if self.upsample is None:
            return mel.repeat_interleave(self.hop_length // G, dim=2)[:, :, :N]
        if not torch.is_autocast_enabled(mel.device.type):
            mel = mel.to(self.upsample.weight.dtype)
        hop, M = self.hop_length, self.n_mels
        y = self._phases.phases(self.upsample, mel, length)  # [B, M·hop, n]: sample f·hop + r in row m·hop + r
        n = y.shape[2]
        # Mel-major squeeze: channel m·G + j = mel channel m at offset j (the reference layout).
        if hop % G == 0:
            # Sample f·hop + s·G + j is squeezed step f·S + s, offset j (S = hop/G): one permuting
            # copy from the phase rows straight to the squeezed layout.
            S = hop // G
            cond = y.view(B, M, S, G, n).permute(0, 1, 3, 4, 2).reshape(B, M * G, n * S)
            return cond if n * S == N else cond[:, :, :N].contiguous()
        up = self._phases.interleave(y, length)
        return up.reshape(B, M, N, G).transpose(2, 3).reshape(B, M * G, N)

    def _upsample(self, mel: Tensor, length: int) -> Tensor:
        """ConvTranspose1d(mel) cut to `length` samples: [B, n_mels, F] -> [B, n_mels, length]
        (same result as `self.upsample(mel)[..., :length]`, computed by phases)."""
        assert self.upsample is not None
        return self._phases(self.upsample, mel, length)

    # ------------------------------------------------------------------ the flow
    def _gaussian_log_density(self, z: Tensor) -> Tensor:
        """Σ_t log N(z_t; 0, σ²) per batch item, in float32 (float64 for a float64 model)."""
        z = z.to(state_dtype(z.dtype))
        var = self.sigma**2
        return -0.5 * z.pow(2).sum(dim=1) / var - 0.5 * z.shape[1] * math.log(2 * math.pi * var)

    def forward(self, audio: Tensor, mel: Tensor, return_stats: bool = False, memory: str = "standard"
                ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """log p(audio | mel) in nats per batch item (wrappers such as DDP call this).

        Args:
            audio: [B, T] waveform, T a multiple of n_group.
            mel: [B, n_mels, F] raw log-mel with F >= ceil(T / hop).
            return_stats: also return the per-flow monitoring terms.
            memory: "standard" (the backward pass uses the activations the forward stored) or
                "invertible" (it rebuilds each flow step's input from its output: activation
                memory of one step instead of all K; same value and gradients up to rounding,
                about one more conditioner pass of compute).

        Returns:
            log_prob [B] (float32; float64 for a float64 model), and with `return_stats` the
            dict of `forward_with_stats`.

        Raises:
            UserError: bad shapes, or an unknown `memory`.
        """
        if memory not in MEMORY_MODES:
            raise UserError(f"memory={memory}: expected one of {', '.join(MEMORY_MODES)}")
        self._check_pair(audio, mel, "WaveGlow.log_prob")
        with self._exact():
            return self._log_prob(audio, mel, return_stats, memory)

    def _exact(self) -> contextlib.AbstractContextManager:
        """No TF32 anywhere when autograd is off (validation, scoring, encode/decode, synthesis);
        in training only the 1×1 convs are kept exact (they do that themselves)."""
        device = self.mel_std.device
        return exact_fp32(device) if not torch.is_grad_enabled() else contextlib.nullcontext()

    def _log_prob(self, audio: Tensor, mel: Tensor, return_stats: bool, memory: str = "standard"
                  ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        T = audio.shape[1]
        cond = self.condition(mel, T)
        x = audio.to(self._dtype())
        stats: dict[str, Tensor] = {}
        if memory == "invertible" and torch.is_grad_enabled():
            x, total = walk_recomputed(self.parts(), x, cond, stats if return_stats else None, T)
        else:
            total = x.new_zeros(audio.shape[0])
            for part in self.flows.values():
                x, logdet = part(x, cond)
                total = total + logdet
                if return_stats:
                    record_stats(stats, part, logdet, T)
        log_prob = total + self._gaussian_log_density(x)
        return (log_prob, stats) if return_stats else log_prob

    def log_prob(self, audio: Tensor, mel: Tensor, memory: str = "standard") -> Tensor:
        """log p(audio | mel) [B] in nats, Gaussian constant included (float32).

        `-log_prob / T` is the negative log-likelihood per audio sample that training minimizes;
        `memory` as in `forward`.
        """
        return self(audio, mel, memory=memory)

    def forward_with_stats(self, audio: Tensor, mel: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """log_prob [B] plus per-flow terms (detached scalars):

        `flow_{k}/log_s` Σ log s per audio sample (batch mean), `flow_{k}/W` the 1×1 conv's
        log|det| per audio sample, `flow_{k}/W_cond` the condition number of W.
        """
        return self(audio, mel, return_stats=True)  # type: ignore[return-value]

    def encode(self, audio: Tensor, mel: Tensor) -> Tensor:
        """audio [B, T] -> latent z [B, T] (same layout as the audio)."""
        self._check_pair(audio, mel, "WaveGlow.encode")
        with self._exact():
            cond = self.condition(mel, audio.shape[1])
            x = audio.to(self._dtype())
            for part in self.flows.values():
                x = part(x, cond)[0]
        return x

    def decode(self, z: Tensor, mel: Tensor) -> Tensor:
        """latent z [B, T] -> audio [B, T] (float32, also under autocast; float64 model: float64)."""
        self._check_pair(z, mel, "WaveGlow.decode")
        with self._exact():
            cond = self.condition(mel, z.shape[1])
            x = z.to(self._dtype())
            for part in reversed(self.flows.values()):
                x = part.inverse(x, cond)
        return x

    def infer(self, mel: Tensor, sigma: float = 0.6, generator: torch.Generator | None = None) -> Tensor:
        """Sample audio for a mel: z ~ N(0, sigma²), then decode.

        Args:
            mel: [B, n_mels, F] raw log-mel.
            sigma: std of the sampled latent (0.6 is the usual choice for synthesis).
            generator: optional torch.Generator for reproducible noise (any device).

        Returns:
            audio [B, hop·F] (float32).
        """
        self._check_mel(mel, "WaveGlow.infer")
        B, n_frames = mel.shape[0], mel.shape[2]
        T = self.hop_length * n_frames
        if T % self.n_group != 0:
            raise UserError(f"WaveGlow.infer: hop·frames = {T} is not a multiple of "
                            f"n_group={self.n_group}")
        gen_device = generator.device if generator is not None else mel.device
        z = torch.randn(B, T, generator=generator, device=gen_device, dtype=self._dtype())
        z = z.to(mel.device).mul_(sigma)
        return self.decode(z, mel)
