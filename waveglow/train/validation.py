"""Validation during training: the held-out log-likelihood, and resynthesized clips for
TensorBoard with their quality figures (see `waveglow.train.quality`).

Both run with cuDNN autotuning off: their shapes vary from clip to clip, and autotuning would
re-tune for every new one.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from waveglow.config import TrainApp
from waveglow.mel import MelSpectrogram
from waveglow.train.distributed import DistContext
from waveglow.train.monitor import Monitor
from waveglow.train.numerics import fixed_shapes_only
from waveglow.train.progress import append_metric
from waveglow.train.quality import GRIFFIN_LIM_ITERS, QualityFigures, griffin_lim
from waveglow.train.state import LoopState

log = logging.getLogger("waveglow")


class Validator:
    """Scores the fixed validation set of a run.

    Args:
        model: the WaveGlow being trained.
        val_set: items {"audio": [T], "mel": [n_mels, F]}.
        ctx: the process group (the clips are split over ranks).
        cfg: the run's settings (audio.hop_length/sampling_rate, train.audio_*, train.seed).
        batch_size: clips scored together (same-shaped clips only).
        multiple: the model's length multiple.
    """

    def __init__(self, model: torch.nn.Module, val_set: Dataset, ctx: DistContext, cfg: TrainApp,
                 batch_size: int, multiple: int) -> None:
        self.model = model
        self.val_set = val_set
        self.ctx = ctx
        self.cfg = cfg
        self.batch_size = batch_size
        self.multiple = multiple
        self._griffin_lim: dict[str, float] | None = None  # computed once per run
        self.unseen_set = unseen_dataset(cfg, multiple)

    @torch.no_grad()
    def unseen_log_likelihood(self) -> float | None:
        """Mean log-likelihood of the held-out speakers' clips (`val_unseen`), nats per sample;
        None when the corpus holds out no speakers. Every rank calls it (the sums are combined)."""
        if self.unseen_set is None:
            return None
        with fixed_shapes_only():
            return self._log_likelihood(self.unseen_set)

    def report_unseen(self, step: int, monitor: Monitor, metrics_path: Path) -> float | None:
        """Score `val_unseen` and report it beside val: log line, `val_unseen/log_likelihood` in
        TensorBoard, a metrics.jsonl line. All ranks call it; rank 0 reports."""
        value = self.unseen_log_likelihood()
        if value is None or not self.ctx.is_main:
            return value
        log.info(f"step {step}: val_unseen log-likelihood {value:.4f} nats/sample "
                 f"({len(self.unseen_set)} clip(s) of speakers held out of training)")
        monitor.scalars(step, {"val_unseen/log_likelihood": value})
        append_metric(metrics_path, {"step": step, "val_unseen_log_likelihood": value})
        return value

    @torch.no_grad()
    def log_likelihood(self) -> float:
        """Mean log-likelihood of the val split in nats per audio sample (all ranks share it).

        fp32, no dither, the same fixed segments every time; the clips are split over ranks and
        the sums combined.
        """
        with fixed_shapes_only():
            return self._log_likelihood()

    def _log_likelihood(self, dataset: Dataset | None = None) -> float:
        dataset = self.val_set if dataset is None else dataset
        device = self.ctx.device
        # Summed on the device: one host transfer for the whole split, not one per batch.
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = 0
        group: list[dict[str, Tensor]] = []

        def flush() -> None:
            nonlocal total, count, group
            if not group:
                return
            audio = torch.stack([g["audio"] for g in group]).to(device)
            mel = torch.stack([g["mel"] for g in group]).to(device)
            total = total + self.model.log_prob(audio, mel).double().sum()
            count += audio.numel()
            group = []

        for i in range(self.ctx.rank, len(dataset), self.ctx.world):
            item = self.item(i, dataset)
            if group and (item["audio"].shape != group[0]["audio"].shape
                          or item["mel"].shape != group[0]["mel"].shape or len(group) >= self.batch_size):
                flush()
            group.append(item)
        flush()
        summed, n = self.ctx.all_sum([float(total), float(count)])
        return summed / n if n else float("nan")

    def item(self, i: int, dataset: Dataset | None = None) -> dict[str, Tensor]:
        """Val example i (of `dataset`, default the val set) cut to a length the model accepts
        (and the mel frames it needs)."""
        item = (self.val_set if dataset is None else dataset)[i]
        audio = torch.as_tensor(item["audio"], dtype=torch.float32)
        mel = torch.as_tensor(item["mel"], dtype=torch.float32)
        n = audio.shape[-1] - audio.shape[-1] % self.multiple
        hop = int(self.cfg.audio.hop_length)
        return {"audio": audio[:n], "mel": mel[:, : 1 + n // hop]}

    @torch.no_grad()
    def log_audio(self, monitor: Monitor, step: int, with_targets: bool) -> dict[str, float]:
        """Resynthesize the first val clips at train.audio_sigma: audio, mel images and the
        quality figures to TensorBoard (`val/mel_l1`, `val/mr_stft`, and the Griffin-Lim
        reference `val/mel_l1_griffinlim`, `val/mr_stft_griffinlim`, computed once per run).

        Args:
            monitor: where they go (rank 0 only does anything).
            step: the TensorBoard step.
            with_targets: also log the original clips (once per run, at its start).

        Returns:
            The quality scalars logged (empty on other ranks or without clips).
        """
        if not self.ctx.is_main:
            return {}
        with fixed_shapes_only():
            values = self._log_audio(monitor, step, with_targets)
        monitor.scalars(step, values)
        return values

    def _log_audio(self, monitor: Monitor, step: int, with_targets: bool) -> dict[str, float]:
        t, device = self.cfg.train, self.ctx.device
        frontend = MelSpectrogram.from_config(self.cfg.audio).to(device)
        mel_fn = MelSpectrogram.from_config(self.cfg.audio)  # the metrics run on the CPU
        sr = int(self.cfg.audio.sampling_rate)
        model, reference = QualityFigures(), QualityFigures() if self._griffin_lim is None else None
        for i in range(min(int(t.audio_clips), len(self.val_set))):
            item = self.item(i)
            mel = item["mel"][None].to(device)
            gen = torch.Generator(device=device).manual_seed(int(t.seed) + i)
            audio = self.model.infer(mel, sigma=float(t.audio_sigma), generator=gen)[0]
            audio = torch.nan_to_num(audio.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1)
            monitor.audio(step, f"audio/val_{i}", audio, sr)
            # val_mel/: after the train and val charts in TensorBoard's order (see train.monitor)
            monitor.mel_image(step, f"val_mel/val_{i}", item["mel"], frontend(audio).cpu())
            model.add(item["audio"], audio, mel_fn)
            if reference is not None:
                gl = griffin_lim(item["mel"], self.cfg.audio, length=item["audio"].shape[-1], seed=int(t.seed) + i)
                reference.add(item["audio"], gl, mel_fn)
                if with_targets:
                    monitor.audio(0, f"audio/val_{i}_griffinlim", gl, sr)
            if with_targets:
                monitor.audio(0, f"audio/val_{i}_target", item["audio"], sr)
        if reference is not None:
            self._griffin_lim = reference.scalars("_griffinlim")
        values = {**model.scalars(), **self._griffin_lim}
        if values:
            log.info(f"step {step}: resynthesized val clips: mel L1 {values['val/mel_l1']:.3f}, MR-STFT "
                     f"{values['val/mr_stft']:.3f} (Griffin-Lim {GRIFFIN_LIM_ITERS} iterations: "
                     f"{values['val/mel_l1_griffinlim']:.3f}, {values['val/mr_stft_griffinlim']:.3f}; lower is better)")
        return values


def unseen_dataset(cfg: TrainApp, multiple: int) -> Dataset | None:
    """The clips of `<root>/splits/val_unseen.txt` (speakers held out of training, see
    `data.splits.n_val_speakers`) as a validation set like val's, or None without that list."""
    from waveglow.data.datasets import ClipDataset, split_clips
    from waveglow.data.splits import UNSEEN, read_splits

    ids = set((read_splits(cfg.data) or {}).get(UNSEEN, []))
    if not ids:
        return None
    clips = [c for c in split_clips(cfg, "test") if c.id in ids]  # held-out speakers' clips are test clips
    t = cfg.train
    seg = int(t.val_segment_length) - int(t.val_segment_length) % multiple if t.val_segment_length else None
    limit = int(t.val_max_clips) if t.val_max_clips else None
    dataset = ClipDataset(cfg, "test", segment_length=seg, multiple_of=multiple, max_clips=limit,
                          seed=int(t.seed), clips=clips)
    return dataset if len(dataset) else None


def report_validation(state: LoopState, value: float, monitor: Monitor, metrics_path: Path, is_main: bool) -> None:
    """Log a validation result (before the guard judges it): a log line, the scalar, a metrics line."""
    if not is_main:
        return
    s = state
    best_so_far = s.best_val_log_likelihood
    if best_so_far is None:
        note = ""
    elif value > best_so_far:
        note = f" (new best; previous {best_so_far:.4f} at step {s.best_step})"
    else:
        note = f" (best {best_so_far:.4f} at step {s.best_step})"
    log.info(f"step {s.step}: val log-likelihood {value:.4f} nats/sample{note}")
    monitor.scalars(s.step, {"val/log_likelihood": value})
    append_metric(metrics_path, {"step": s.step, "val_log_likelihood": value})
