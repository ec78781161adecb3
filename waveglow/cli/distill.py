"""waveglow-distill: train a student flow to reproduce a teacher checkpoint.

`student=<model config>` names the student's model config (the `model` group of
waveglow-train; `student.wn.n_channels=...` sets its keys), so the run is an ordinary
training run of the student. Exit status as waveglow-train: 0 finished; 2 bad settings or
input (one `error:` line; a bad teacher writes nothing); 1 training could not go on; 143/130
after SIGTERM/SIGINT once last.pt was written (re-running the same command resumes).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from waveglow.cli.common import Script, app
from waveglow.cli.train import run_or_exit
from waveglow.config import DistillApp
from waveglow.distill import distill
from waveglow.train import TrainResult

SCRIPT = Script(
    name="waveglow-distill", config="waveglow_distill",
    summary="Train a student flow (student=<model config>; its settings are the model.* keys below) to "
            "reproduce a teacher checkpoint: distill=regression (default: the student decodes the teacher's "
            "latent to the teacher's audio, L1 + multi-resolution STFT), distill=likelihood (exact likelihood "
            "of fresh teacher samples), distill=mixed (plus the likelihood of the real audio). The run "
            "directory is a training run of the student: re-running resumes, its checkpoints synthesize.",
    usage="teacher=<checkpoint> student=<micro | tiny | squeeze | ...> data=<demo | ljspeech | folder>",
    examples=("waveglow-distill teacher=checkpoints/demo-tiny/checkpoints/best.pt student=micro data=demo "
              "train=demo",
              "waveglow-distill teacher=checkpoints/lj256/checkpoints/best.pt student=squeeze data=ljspeech "
              "distill=mixed run_dir=checkpoints/lj-squeeze-distilled",
              "torchrun --standalone --nproc_per_node=8 .venv/bin/waveglow-distill teacher=... student=squeeze "
              "data=ljspeech"),
)


def rewrite_argv(argv: Sequence[str]) -> list[str]:
    """`student=X` / `student.key=v` -> `model=X` / `model.key=v` (the student is the run's
    model); other arguments unchanged."""
    out = []
    for arg in argv:
        for prefix in ("student=", "student."):
            if arg.startswith(prefix):
                arg = "model" + arg[len("student"):]
        out.append(arg)
    return out


@app(SCRIPT)
def _run(cfg: DistillApp) -> TrainResult:
    """Distill the teacher of `cfg` into its student (see waveglow.distill)."""
    return run_or_exit(distill, cfg)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: `student=` settings are the run's `model=` settings."""
    _run(rewrite_argv(sys.argv[1:] if argv is None else argv))
