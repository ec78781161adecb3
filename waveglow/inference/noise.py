"""Per-file noise seeds and the receptive field: the two facts that make batched and chunked
synthesis give the same samples as decoding each file whole and alone.

1. **Noise belongs to a file, not to a batch.** Each file's latent z [hop·F] is drawn from its
   own generator seeded from (seed, key), where the key is the file stem (`to_files`) or the
   batch index (`from_mel`). Sorting, batching and chunking therefore never change which noise
   a file gets.

2. **The receptive field is bounded.** Decoding sample t reads z and the conditioning only
   within ±A samples, A = n_flows · Σ_i dilation_i·(k−1)/2 groups (the WN stack of every
   coupling widens it by one WN's reach; 1×1 convs and the squeeze are local), plus the
   upsampler's kernel on the mel side. `receptive_field_frames` turns that into mel frames
   (rounded up, plus one frame of slack). Everything farther away has no influence.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from waveglow.config import ModelConfig, from_dict, to_dict


def noise_seed(seed: int, key: str | int) -> int:
    """A stable 63-bit generator seed for one file: sha256 of (seed, key).

    Python's `hash()` is salted per process; sha256 gives the same noise in every run.
    """
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def file_noise(seed: int, n_samples: int, sigma: float) -> Tensor:
    """The whole latent of one file: z [n_samples] ~ N(0, sigma²) from generator `seed`
    (a `noise_seed`), float32 on the CPU."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn(int(n_samples), generator=gen).mul_(float(sigma))


def receptive_field_frames(model_cfg: ModelConfig | Mapping[str, Any], hop_length: int) -> int:
    """Mel frames on each side of an output frame that can influence it (an upper bound).

    Every coupling's WN stack reads Σ_i 2^i·(k−1)/2 = (2^L − 1)·(k−1)/2 groups to each side of
    a group; couplings compose, so n_flows of them read n_flows times as far. One extra group
    covers the alignment of a frame boundary inside a group. The conv-transpose upsampler maps
    each frame to `upsample_kernel` samples, which reach ceil(kernel/hop) frames; one more frame
    is slack for rounding.

    Args:
        model_cfg: the checkpoint's `model` settings (a ModelConfig, or the plain dict stored
            in a checkpoint: keys an old checkpoint lacks take the defaults).
        hop_length: audio samples per mel frame.

    Returns:
        rf, in frames (e.g. 101 for waveglow_256 at hop 256).
    """
    cfg = model_cfg if isinstance(model_cfg, ModelConfig) else from_dict(ModelConfig, to_dict(model_cfg))
    groups = cfg.n_flows * (2**cfg.wn.n_layers - 1) * ((cfg.wn.kernel_size - 1) // 2) + 1
    samples = groups * cfg.n_group
    up = math.ceil(cfg.upsample_kernel / hop_length) if cfg.upsample == "conv_transpose" else 1
    return math.ceil(samples / hop_length) + up + 1
