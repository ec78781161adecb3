"""waveglow-train: maximum-likelihood training (resumes when run_dir holds last.pt).

    waveglow-train data=demo model=tiny
    waveglow-train data=ljspeech model=waveglow_256 run_dir=checkpoints/lj256 train.max_steps=100000
    torchrun --standalone --nproc_per_node=8 .venv/bin/waveglow-train data=ljspeech model=waveglow_256

Exit status: 0 finished; 2 bad settings or input (one `error:` line); 1 training could not go
on (checkpoint write failed, diverged beyond the guards; the checkpoints on disk are intact);
143 after SIGTERM and 130 after SIGINT/Ctrl-C, each once a final last.pt was written —
re-running the same command resumes.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from waveglow.cli.common import hydra_app


@hydra_app("waveglow_train")
def main(cfg: DictConfig) -> None:
    """Train the model of `cfg` on its data (see waveglow.train)."""
    from waveglow.train import TrainingError, train

    try:
        result = train(cfg)
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    if result.exit_code:
        sys.exit(result.exit_code)
