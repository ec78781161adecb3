"""TensorBoard writing for training runs: likelihoods, per-flow log-dets, audio and mel images.

Only rank 0 writes; every other rank gets a `Monitor(enabled=False)` whose methods do
nothing, so the training loop never branches on the rank to log.

Tags (what the user sees in TensorBoard):
    train/log_likelihood, val/log_likelihood   nats per audio sample, higher is better
    val/mel_l1, val/mr_stft  distance of the resynthesized val clips from their originals
    val/mel_l1_griffinlim, val/mr_stft_griffinlim  the same for Griffin-Lim (a reference line)
    val_mel/val_<i>         image: target mel (top) over the resynthesized clip's mel (bottom)
    zz_optim/nll, zz_optim/lr, zz_optim/grad_norm, zz_optim/samples_per_sec (audio samples/s,
    global), zz_optim/skipped_steps (cumulative), zz_optim/recoveries
    zz_logdet/flow_<k>/log_s   sum of log s of coupling k, per audio sample
    zz_logdet/flow_<k>/W       log|det W| of 1x1 conv k, per audio sample
    zz_logdet/flow_<k>/W_cond  condition number of W of 1x1 conv k
    audio/val_<i>           a validation clip resynthesized from its mel at the inference sigma
    audio/val_<i>_target, audio/val_<i>_griffinlim  the original clip and its Griffin-Lim copy
    hparams                 the run's settings, linked to val/log_likelihood

TensorBoard's default tab (TIME SERIES, and SCALARS too) groups charts by the tag's first path
part and sorts the groups (and the charts in a group) by code point, so the names above are
chosen for that order: `train` (its log-likelihood only) and `val` (log-likelihood and quality)
first, then `val_mel` (images), then the diagnostics under `zz_`: the optimization figures
(`zz_optim/`, until this version `train/nll`, `train/lr`, ...) and the per-flow log-dets
(`zz_logdet/`, were `logdet/...`, which came first with a dozen charts); images were `mel/val_<i>`. The CUSTOM SCALARS tab (`LAYOUT`) opens on train and val
log-likelihood on one chart, the quality figures on the next, the log-det groups after them.

Event files are written directly into the run directory, so TensorBoard names a run after its
directory when `--logdir` is the folder that holds the runs (`make tensorboard`: checkpoints/);
pointed at a run directory itself it would name the run ".".
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

# Anchor colours of a dark-to-bright perceptual ramp (black, purple, red, orange, pale yellow);
# interpolated in numpy so that mel images need no plotting library.
_RAMP = np.array(
    [[0.00, 0.00, 0.02], [0.23, 0.06, 0.44], [0.71, 0.21, 0.48], [0.98, 0.53, 0.38], [0.99, 0.99, 0.75]],
    dtype=np.float32,
)


# The log-dets' tag prefix: after `train` and `val` in TensorBoard's code-point order of groups.
LOGDET_PREFIX = "zz_logdet"

# TensorBoard's custom_scalars layout: {category: {chart title: ["Multiline", [tag regexes]]}},
# shown in this order.
LAYOUT: dict[str, dict[str, list]] = {
    "1 likelihood": {
        "log-likelihood (nats/sample, higher is better)": ["Multiline", ["train/log_likelihood",
                                                                         "val/log_likelihood"]],
    },
    "2 quality of resynthesized val clips (lower is better)": {
        "mel L1 (model vs Griffin-Lim)": ["Multiline", ["val/mel_l1", "val/mel_l1_griffinlim"]],
        "multi-resolution STFT distance (model vs Griffin-Lim)": ["Multiline", ["val/mr_stft",
                                                                                "val/mr_stft_griffinlim"]],
    },
    "3 log-determinants per flow": {
        "coupling log s per sample": ["Multiline", [rf"{LOGDET_PREFIX}/flow_\d+/log_s"]],
        "1x1 conv log|det W| per sample": ["Multiline", [rf"{LOGDET_PREFIX}/flow_\d+/W$"]],
        "1x1 conv condition number": ["Multiline", [rf"{LOGDET_PREFIX}/flow_\d+/W_cond"]],
    },
    "4 optimization": {
        "train NLL (nats/sample)": ["Multiline", ["zz_optim/nll"]],
        "gradient norm": ["Multiline", ["zz_optim/grad_norm"]],
        "skipped steps": ["Multiline", ["zz_optim/skipped_steps", "zz_optim/recoveries"]],
    },
    # Written by waveglow-eval on a run directory: each checkpoint's test-set means at its step.
    "5 evaluation (waveglow-eval, per checkpoint)": {
        "PESQ wide-band (higher is better)": ["Multiline", ["eval/pesq"]],
        "STOI / extended STOI (higher is better)": ["Multiline", ["eval/stoi", "eval/estoi"]],
        "F0 RMSE (cents) and V/UV error (%) (lower is better)": ["Multiline", ["eval/f0_rmse", "eval/vuv_error"]],
        "MCD (dB, lower is better)": ["Multiline", ["eval/mcd"]],
        "log-mel L1 and MR-STFT (lower is better)": ["Multiline", ["eval/mel_l1", "eval/mr_stft"]],
        "log-likelihood (nats/sample) and real-time factor": ["Multiline", ["eval/log_likelihood", "eval/rtf"]],
    },
}


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB with a dark-to-bright ramp.

    Args:
        values: float array [H, W], values in [0, 1] (clipped).

    Returns:
        float32 array [3, H, W] in [0, 1] (CHW, what `add_image` expects).
    """
    v = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(np.int64).clip(0, len(_RAMP) - 2)
    frac = (v - lo)[..., None]
    rgb = _RAMP[lo] * (1.0 - frac) + _RAMP[lo + 1] * frac  # [H, W, 3]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)


def mel_comparison_image(target: np.ndarray | torch.Tensor, other: np.ndarray | torch.Tensor) -> np.ndarray:
    """Stack two log-mels into one image: target on top, `other` below, low frequencies down.

    Both halves share the target's value range so that a difference in level stays visible.

    Args:
        target: log-mel [n_mels, F].
        other: log-mel [n_mels, F2] (cut or padded to F with the minimum).

    Returns:
        float32 RGB image [3, 2 * n_mels + 2, F] in [0, 1].
    """
    t = np.asarray(torch.as_tensor(target, dtype=torch.float32).cpu(), dtype=np.float32)
    o = np.asarray(torch.as_tensor(other, dtype=torch.float32).cpu(), dtype=np.float32)
    lo, hi = float(np.min(t)), float(np.max(t))
    scale = hi - lo if hi > lo else 1.0
    n_frames = t.shape[1]
    if o.shape[1] < n_frames:
        o = np.pad(o, ((0, 0), (0, n_frames - o.shape[1])), constant_values=lo)
    o = o[:, :n_frames]
    sep = np.ones((2, n_frames), dtype=np.float32)  # white line between the two
    # Flip the mel axis: row 0 of an image is its top, and low frequencies belong at the bottom.
    stacked = np.concatenate([(t[::-1] - lo) / scale, sep, (o[::-1] - lo) / scale], axis=0)
    return colorize(stacked)


class Monitor:
    """Writes one run's TensorBoard events into `log_dir` (rank 0 only).

    Args:
        log_dir: the run directory (event files land directly in it).
        enabled: False on ranks other than 0: every method is a no-op.
        purge_step: when resuming from step N, events logged after N by the interrupted process
            are hidden by TensorBoard, so the curves never show a step twice.
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None):
        self.enabled = enabled
        self.writer = None
        if enabled:
            # Imported here: the tensorboard writer is slow to import and unused on other ranks.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step or None)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Log scalars `{tag: value}` at `step` (non-finite values are logged as they are)."""
        if not self.enabled:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    def logdets(self, step: int, stats: Mapping[str, torch.Tensor | float]) -> None:
        """Log the model's per-flow terms `{"flow_<k>/log_s"|"/W"|"/W_cond": scalar}` as zz_logdet/..."""
        if not self.enabled:
            return
        for key, value in stats.items():
            self.writer.add_scalar(f"{LOGDET_PREFIX}/{key}", float(value), step)

    def audio(self, step: int, tag: str, audio: np.ndarray | torch.Tensor, sampling_rate: int) -> None:
        """Log a clip [T] in [-1, 1] (clipped) at `sampling_rate` Hz."""
        if not self.enabled:
            return
        clip = torch.as_tensor(audio, dtype=torch.float32).detach().cpu().reshape(1, -1).clamp(-1.0, 1.0)
        self.writer.add_audio(tag, clip, step, sample_rate=int(sampling_rate))

    def mel_image(self, step: int, tag: str, target: torch.Tensor, resynthesized: torch.Tensor) -> None:
        """Log the target mel [n_mels, F] above the resynthesized clip's mel [n_mels, F']."""
        if not self.enabled:
            return
        self.writer.add_image(tag, mel_comparison_image(target, resynthesized), step, dataformats="CHW")

    def layout(self) -> None:
        """Write the custom-scalars layout (`LAYOUT`) into this run's event file."""
        if self.enabled:
            self.writer.add_custom_scalars(LAYOUT)

    def hparams(self, hparams: Mapping[str, Any], metric_tags: list[str]) -> None:
        """Record the run's settings for TensorBoard's HPARAMS tab, in this run's own event file.

        `SummaryWriter.add_hparams` would open a second run folder; writing the three hparams
        summaries into this writer keeps one folder per run.
        """
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v)) for k, v in hparams.items()}
        exp, ssi, sei = hparams_summary(clean, {tag: 0.0 for tag in metric_tags})
        file_writer = self.writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled and self.writer is not None:
            self.writer.close()
            self.writer = None
            self.enabled = False
