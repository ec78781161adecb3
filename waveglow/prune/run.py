"""Pruning a checkpoint end to end: importance, surgery, and the before/after measurements.

The measurements (`measure`): parameters (all, and the conditioners' alone), GMAC per second
of audio (`waveglow.bench.cost.count_macs` of the model config), synthesis speed in kHz
(`model.infer` with the weight norms folded, `torch.inference_mode`, fp32, median of a few
runs) and the held-out log-likelihood in nats per sample (fp32, no dither, the corpus split's
clips).
"""

from __future__ import annotations

import copy
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from waveglow.bench.cost import count_macs
from waveglow.bench.timing import time_runs
from waveglow.conditioner import WN
from waveglow.config import AudioConfig, DataConfig, ModelConfig, from_dict
from waveglow.errors import UserError
from waveglow.model import WaveGlow
from waveglow.prune.importance import magnitude_scores, plan_from_scores, taylor_scores
from waveglow.prune.surgery import (
    ChannelPlan,
    conditioners,
    kept_channels,
    parameter_count,
    prune_model,
)


@dataclass
class Measurement:
    """What a model costs and how well it models held-out audio."""

    n_channels: int
    params: int
    wn_params: int
    gmac_per_second: float
    khz: float
    log_likelihood: float  # nats per sample on the held-out clips


def corpus_settings(config: Mapping[str, Any], root: str | None = None) -> SimpleNamespace:
    """The `audio` and `data` settings a checkpoint was trained with, as the datasets read them.

    Args:
        config: the checkpoint's config (plain dicts).
        root: another corpus folder (same layout) instead of the checkpoint's `data.root`.

    Raises:
        UserError: the checkpoint names no corpus and `root` is not given.
    """
    audio = from_dict(AudioConfig, config.get("audio") or {}, "audio", strict=False)
    data_values = dict(config.get("data") or {})
    if root is not None:
        data_values.update(root=str(root), cache_dir=None)
    if not data_values.get("root") or data_values.get("root") == "???":
        raise UserError("the checkpoint names no corpus (data.root): give corpus=<folder> for the importance "
                        "batches and the held-out log-likelihood")
    return SimpleNamespace(audio=audio, data=from_dict(DataConfig, data_values, "data", strict=False))


def training_batches(corpus: SimpleNamespace, n_batches: int, batch_size: int, segment_length: int,
                     n_group: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """`n_batches` batches of random dithered training segments (as training draws them).

    Returns:
        (audio [B, L], mel [B, n_mels, 1 + L // hop]) pairs, L a multiple of n_group.
    """
    from waveglow.data.datasets import SegmentDataset

    length = segment_length - segment_length % n_group
    gen = torch.Generator().manual_seed(seed)
    ds = SegmentDataset(corpus, "train", segment_length=length, generator=gen)
    out = []
    for _ in range(n_batches):
        idx = torch.randint(len(ds), (batch_size,), generator=gen).tolist()
        items = [ds[i] for i in idx]
        out.append((torch.stack([it["audio"] for it in items]), torch.stack([it["mel"] for it in items])))
    return out


def held_out_clips(corpus: SimpleNamespace, split: str, max_clips: int | None, segment_length: int | None,
                   n_group: int) -> list[tuple[Tensor, Tensor]]:
    """The split's clips (or one centred segment of each), undithered, cut to a multiple of n_group.

    Returns:
        (audio [1, T], mel [1, n_mels, F]) per clip.
    """
    from waveglow.data.datasets import ClipDataset

    seg = None if segment_length is None else segment_length - segment_length % n_group
    ds = ClipDataset(corpus, split, segment_length=seg, multiple_of=n_group, max_clips=max_clips)
    hop = int(corpus.audio.hop_length)
    out = []
    for i in range(len(ds)):
        item = ds[i]
        audio = item["audio"]
        n = audio.numel() - audio.numel() % n_group
        out.append((audio[None, :n], item["mel"][None, :, : 1 + n // hop]))
    return out


@torch.no_grad()
def log_likelihood(model: WaveGlow, clips: list[tuple[Tensor, Tensor]]) -> float:
    """Mean log-likelihood in nats per audio sample over `clips` (fp32, summed then divided)."""
    device = model.mel_std.device
    total, count = 0.0, 0
    for audio, mel in clips:
        total += float(model.log_prob(audio.to(device), mel.to(device)).double().sum())
        count += audio.numel()
    return total / count if count else float("nan")


def synthesis_khz(model: WaveGlow, mel: Tensor, *, repeats: int = 3, warmup: int = 1, sigma: float = 0.6,
                  clock: str = "wall") -> float:
    """Synthesis speed in kHz (thousand audio samples per second) of `model.infer(mel)`.

    A folded copy of the model runs under `torch.inference_mode` in fp32; the median of
    `repeats` timed runs counts.

    Args:
        mel: [1, n_mels, F] log-mel.
        clock: wall | cpu (process CPU time, steadier on a shared machine with one thread).
    """
    work = copy.deepcopy(model).eval()
    work.remove_weight_norm()
    device = work.mel_std.device
    mel = mel.to(device)
    gen = torch.Generator(device="cpu")

    def run() -> Tensor:
        gen.manual_seed(0)
        with torch.inference_mode():
            return work.infer(mel, sigma=sigma, generator=gen)

    times = time_runs(run, repeats, warmup, device, clock)
    return mel.shape[2] * work.hop_length / statistics.median(times) / 1e3


def speed_mel(clips: list[tuple[Tensor, Tensor]], frames: int) -> Tensor:
    """A [1, n_mels, frames] mel for timing: the first held-out clip's, repeated as needed."""
    mel = clips[0][1]
    reps = math.ceil(frames / mel.shape[2])
    return mel.repeat(1, 1, reps)[:, :, :frames].contiguous()


def measure(model: WaveGlow, clips: list[tuple[Tensor, Tensor]], mel: Tensor, *, repeats: int = 3,
            clock: str = "wall") -> Measurement:
    """Parameters, GMAC per audio second, synthesis kHz and held-out log-likelihood of `model`."""
    cfg = model.config
    audio = from_dict(AudioConfig, cfg.get("audio") or {}, "audio", strict=False)
    model_cfg = from_dict(ModelConfig, model.model_config, "model")
    macs = count_macs(model_cfg, model.n_mels, model.hop_length, audio.sampling_rate)["total"]
    wn_params = sum(parameter_count(wn) for wn in conditioners(model))
    return Measurement(
        n_channels=int(model.model_config["wn"]["n_channels"]),
        params=parameter_count(model),
        wn_params=wn_params,
        gmac_per_second=macs / 1e9,
        khz=synthesis_khz(model, mel, repeats=repeats, clock=clock),
        log_likelihood=log_likelihood(model, clips),
    )


def choose_plan(model: WaveGlow, keep: float, importance: str,
                batches: list[tuple[Tensor, Tensor]] | None) -> ChannelPlan:
    """The channels to keep: the best `kept_channels(C, keep)` of each kind, by `importance`.

    Args:
        importance: taylor (needs `batches`) | magnitude.
    """
    wns: list[WN] = conditioners(model)
    n_keep = kept_channels(wns[0].n_channels, keep)
    if importance == "taylor":
        if not batches:
            raise ValueError("taylor importance needs batches")
        scores = taylor_scores(model, batches)
    elif importance == "magnitude":
        scores = magnitude_scores(model)
    else:
        raise UserError(f"importance={importance}: expected taylor or magnitude")
    return plan_from_scores(scores, n_keep)


def prune(model: WaveGlow, keep: float, importance: str = "taylor",
          batches: list[tuple[Tensor, Tensor]] | None = None) -> WaveGlow:
    """The smaller model keeping a fraction `keep` of every conditioner's channels (Python API).

    Args:
        model: a WaveGlow (unchanged).
        keep: fraction in (0, 1]; C' = `kept_channels(C, keep)`.
        importance: taylor | magnitude.
        batches: (audio [B, T], mel [B, n_mels, F]) training batches for `taylor`.

    Returns:
        The pruned WaveGlow, its `config` with `model.wn.n_channels = C'`.
    """
    if not (0 < keep <= 1):
        raise UserError(f"keep={keep}: expected a number in (0, 1]")
    return prune_model(model, choose_plan(model, keep, importance, batches))


def as_row(name: str, m: Measurement) -> dict[str, Any]:
    return {"model": name, **asdict(m)}
