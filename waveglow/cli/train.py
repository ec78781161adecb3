"""waveglow-train: maximum-likelihood training (resumes when run_dir holds last.pt).

Exit status: 0 finished; 2 bad settings or input (one `error:` line); 1 training could not go
on (checkpoint write failed, diverged beyond the guards; the checkpoints on disk are intact);
143 after SIGTERM and 130 after SIGINT/Ctrl-C, each once a final last.pt was written —
re-running the same command resumes.

`-m` runs a sweep (waveglow.cli.sweep): every job its own run directory
`<sweep dir>/<job number>-<overrides>`, the job's objective its best validation
log-likelihood; exit status 0 when every job completed, 1 when one failed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from waveglow.cli.common import Failed, Script, Stopped, Sweep, app
from waveglow.config import TrainApp
from waveglow.train import TrainingError, TrainResult, train

SCRIPT = Script(
    name="waveglow-train", config="waveglow_train",
    summary="Train a WaveGlow flow by exact maximum likelihood (validation log-likelihood in nats per "
            "sample). Re-running with an existing run_dir resumes from its checkpoints/last.pt; "
            "under torchrun every process trains one share of the global batch (DDP).",
    usage="data=<demo | ljspeech | folder> model=<tiny | squeeze | waveglow_256 | waveglow_512>",
    examples=("waveglow-train data=demo model=tiny train=demo",
              "waveglow-train data=ljspeech model=waveglow_256 run_dir=checkpoints/lj256",
              "waveglow-train data=folder data.root=/data/my_voice model=squeeze train.batch_size=8",
              "torchrun --standalone --nproc_per_node=8 .venv/bin/waveglow-train data=ljspeech",
              "waveglow-train -m data=demo model=tiny,squeeze train.lr=1e-4,5e-5 hydra/launcher=joblib"),
    sweep=Sweep(dir_key="run_dir", default_dir=lambda cfg, stamp: f"checkpoints/sweeps/{stamp}",
                objective=lambda result: result.best_val_log_likelihood),
)


def run_or_exit(run: Callable[[Any], TrainResult], cfg: Any) -> TrainResult:
    """Run a training function; a run that cannot go on is exit status 1 (`Failed`), one stopped
    by a signal after saving is its signal's status (`Stopped`: re-running resumes)."""
    try:
        result = run(cfg)
    except TrainingError as e:
        raise Failed(str(e)) from None
    if result.exit_code:
        raise Stopped(result.exit_code)
    return result


@app(SCRIPT)
def main(cfg: TrainApp) -> TrainResult:
    """Train the model of `cfg` on its data (see waveglow.train)."""
    return run_or_exit(train, cfg)
