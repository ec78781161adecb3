"""Settings of a tiny, deterministic CPU training run shared by the multi-process tests
(torchrun restarts, SLURM job steps)."""

from __future__ import annotations

from pathlib import Path


def tiny_cpu_run(root: Path, *extra: str) -> list[str]:
    """A tiny deterministic CPU run of the corpus at `root`, a checkpoint every 2 steps, no
    run_dir (the default is under the working directory); `extra` adds or overrides settings."""
    return [
        "data=demo", f"data.root={root}", "model=tiny", "model.upsample_kernel=256",
        "data.segment_length=4096", "train.batch_size=1", "train.log_every=1", "train.audio_every=0",
        "train.logdet_every=0", "train.val_segment_length=4096", "train.val_max_clips=2",
        "train.deterministic=true", "train.threads=1", "train.device=cpu", "train.checkpoint_every=2",
        *extra,
    ]
