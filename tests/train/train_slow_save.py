"""`waveglow.train.train` with a slow checkpoint write, for the crash-safety tests.

    python tests/train/train_slow_save.py <seconds> key=value ...

Each checkpoint write puts half of its bytes into the temp file, prints `checkpoint write in
progress` on stderr and sleeps `<seconds>` before writing the rest, so a test can SIGKILL the
process while a temp file holds half a checkpoint. Logs like `waveglow-train`.
"""

from __future__ import annotations

import io
import sys
import time
from typing import IO

import torch

from waveglow.cli.common import compose, setup_logging
from waveglow.train import TrainHooks, train


def slow_write(delay: float):
    def write(f: IO[bytes], state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("checkpoint write in progress", file=sys.stderr, flush=True)
        time.sleep(delay)
        f.write(data[len(data) // 2:])

    return write


def main(argv: list[str]) -> int:
    setup_logging()
    cfg = compose("waveglow_train", argv[1:])
    return train(cfg, TrainHooks(write_checkpoint=slow_write(float(argv[0])))).exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
