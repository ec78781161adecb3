"""The conv-transpose upsampler of the mel, computed by hop phases (the inference fast path).

`WaveGlow.upsample` stays an ordinary `nn.ConvTranspose1d` (its parameters and state_dict keys
are the reference's); `PhaseUpsampler` computes the same output as a stride-1 convolution over
frames with one output row per (channel, phase), and caches that rearranged kernel when autograd
is off. The model drops the cache on device moves (`WaveGlow._apply` calls `clear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from waveglow.conv_paths import pointwise_conv


class PhaseUpsampler:
    """ConvTranspose1d(mel, stride=hop) by phases, with its inference cache.

    Args:
        hop: audio samples per mel frame (the transposed conv's stride).
    """

    def __init__(self, hop: int) -> None:
        self.hop = hop
        self._key: tuple | None = None
        self._cache: tuple[Tensor, Tensor] | None = None

    def clear(self) -> None:
        """Drop the cached kernel (after `.to()`, or anything that replaces the weights' storage)."""
        self._key = None
        self._cache = None

    def __call__(self, up: nn.ConvTranspose1d, mel: Tensor, length: int) -> Tensor:
        """`up(mel)` cut to `length` samples: [B, n_mels, F] -> [B, n_mels, length]."""
        return self.interleave(self.phases(up, mel, length), length)

    def kernel(self, up: nn.ConvTranspose1d) -> tuple[Tensor, Tensor]:
        """The upsampling ConvTranspose1d rewritten as a stride-1 Conv1d with one output row per
        (channel, phase): kernel [n_mels·hop, n_mels, q], bias [n_mels·hop], q = ceil(kernel/hop).

        Without autograd the pair is cached, keyed on the version counters and storage of
        `up.weight` / `up.bias` and on the parameter objects themselves (as the 1×1 inverses), so weight updates invalidate it.
        """
        w, b = up.weight, up.bias
        hop = self.hop
        c_in, c_out, k = w.shape
        q = -(-k // hop)

        def build() -> tuple[Tensor, Tensor]:
            wp = F.pad(w, (0, q * hop - k)) if q * hop != k else w
            # row m·hop + r, tap κ  <-  weight[i, m, (q-1-κ)·hop + r]
            kernel = wp.reshape(c_in, c_out, q, hop).flip(2).permute(1, 3, 0, 2)
            return kernel.reshape(c_out * hop, c_in, q), b.repeat_interleave(hop)

        if torch.is_grad_enabled():
            return build()
        key = (w._version, w.data_ptr(), b._version, b.data_ptr(), w.dtype, w.device)
        fresh = self._key is not None and self._key[0] is w and self._key[1] is b
        if not fresh or self._key[2:] != key or self._cache is None:
            # An ordinary tensor (not an inference tensor), usable under no_grad as well.
            with torch.inference_mode(False), torch.no_grad():
                self._cache = build()
            # The parameter objects are part of the key (a replaced one may reuse the memory).
            self._key = (w, b, *key)
        return self._cache

    def phases(self, up: nn.ConvTranspose1d, mel: Tensor, length: int) -> Tensor:
        """The upsampler's output for `length` samples, one row per (channel, hop phase).

        ConvTranspose1d(mel) computed as a stride-1 convolution over frames with the phase kernel
        (`kernel`): on CPU 2-3x faster than the native transposed conv (which zero-fills
        and runs a slow col2im path), and about as fast elsewhere. Only the n = ceil(length/hop)
        frames that the audio needs are computed: output frame f reads input frames f-q+1..f,
        so the input is cut to n frames and zero-padded by q-1 on the left only.

        Args:
            mel: [B, n_mels, F] normalized mel, F >= n.
            length: audio samples wanted.

        Returns:
            [B, n_mels·hop, n]: row m·hop + r, column f holds upsampled sample f·hop + r of
            mel channel m.
        """
        kernel, bias = self.kernel(up)
        q = kernel.shape[2]
        B, M, _ = mel.shape
        n = -(-length // self.hop)
        x = F.pad(mel[:, :, :n], (q - 1, 0))  # [B, M, n + q - 1]
        if torch.is_grad_enabled():
            return F.conv1d(x, kernel, bias)
        # Inference: im2col (q shifted copies of the small mel, [B, M·q, n]) and one matrix
        # product through `pointwise_conv` (oneDNN in fp32 on CPU). For a single short mel
        # (batch 1 and n_mels·frames <= 20,480: up to 256 frames, about 3 s of 80-band mel)
        # torch's CPU conv1d skips oneDNN for its slow native path (1 s of mel, one core:
        # 17 ms vs 7.6 ms here); longer inputs still gain a little (300 frames: 23 vs 19 ms).
        cols = x.unfold(2, q, 1).transpose(2, 3).reshape(B, M * q, n)  # row i·q + κ = x[i, f + κ]
        return pointwise_conv(cols, kernel.reshape(kernel.shape[0], M * q, 1), bias)

    def interleave(self, y: Tensor, length: int) -> Tensor:
        """Phase rows [B, n_mels·hop, n] -> samples [B, n_mels, length] (cut from the start)."""
        B, n = y.shape[0], y.shape[2]
        M = y.shape[1] // self.hop
        y = y.view(B, M, self.hop, n).transpose(2, 3)
        return y.reshape(B, M, n * self.hop)[:, :, :length]
