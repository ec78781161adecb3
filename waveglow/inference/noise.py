"""The latent noise and the receptive field: the two facts that make batched, chunked, streamed
and file synthesis give the same samples as decoding each input whole and alone.

1. **Noise belongs to a stretch of time of one input, not to a batch or a cut.** The latent
   z [hop·F] of an input is laid out in fixed blocks of `NOISE_BLOCK_FRAMES` mel frames; block
   b is drawn from its own generator seeded from (seed, key, b), where the key names the input
   (the file's name for `to_files`, the batch index or `key=` for `from_mel` and `stream`).
   Sorting, batching, chunking, or receiving the mel in pieces of any size therefore never
   change which noise a frame gets: a window [start, end) of z is the same numbers however it is
   reached (`latent`).

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

# Frames per noise block: 32 frames (8192 samples at hop 256) cost one generator seeding per
# 0.37 s of audio (microseconds), and a stream never draws more than one block ahead.
NOISE_BLOCK_FRAMES = 32


def noise_seed(seed: int, key: str | int, block: int | None = None) -> int:
    """A stable 63-bit generator seed: sha256 of (seed, key) or of (seed, key, block).

    Python's `hash()` is salted per process; sha256 gives the same noise in every run.
    """
    text = f"{int(seed)}\x00{key}" if block is None else f"{int(seed)}\x00{key}\x00{int(block)}"
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def noise_block(seed: int, key: str | int, block: int, hop: int, sigma: float) -> Tensor:
    """Block `block` of the latent of input `key`: z [hop·NOISE_BLOCK_FRAMES] ~ N(0, sigma²),
    float32 on the CPU (frames [block·NOISE_BLOCK_FRAMES, (block+1)·NOISE_BLOCK_FRAMES))."""
    gen = torch.Generator().manual_seed(noise_seed(seed, key, block))
    return torch.randn(hop * NOISE_BLOCK_FRAMES, generator=gen).mul_(float(sigma))


def latent(seed: int, key: str | int, start: int, end: int, hop: int, sigma: float) -> Tensor:
    """The latent of frames [start, end) of input `key`: z [hop·(end − start)], float32 CPU.

    The same frames give the same numbers whatever window they are asked in (see the module
    docstring); only the blocks that overlap the window are drawn.

    Args:
        seed: the run's noise seed.
        key: the input's noise key (file name, batch index, stream key).
        start, end: frame range, 0 <= start <= end.
        hop: audio samples per frame.
        sigma: the latent's standard deviation.
    """
    if end <= start:
        return torch.zeros(0)
    first, last = start // NOISE_BLOCK_FRAMES, (end - 1) // NOISE_BLOCK_FRAMES
    z = torch.cat([noise_block(seed, key, b, hop, sigma) for b in range(first, last + 1)])
    offset = hop * (start - first * NOISE_BLOCK_FRAMES)
    return z[offset: offset + hop * (end - start)]


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
