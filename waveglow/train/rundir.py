"""The default run directory (`run_dir=null`): stable wherever a launcher may start the run again.

A run restarted by torchrun (`--max-restarts`) or requeued by SLURM must find its own
`checkpoints/last.pt`, so the default name carries the launcher's run id when there is one
(`waveglow.train.launch.Launch.run_id`): `checkpoints/<data>-<model>-slurm<job id>[_<array task>]`
or `checkpoints/<data>-<model>-torchrun-<rendezvous id>`. Without one, a single machine gets a
new timestamped directory per run (as before), and a run over several machines is refused: their
clocks, and so their timestamps, are not one name that a restart could find again.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from waveglow.errors import UserError
from waveglow.train.launch import Launch


def default_run_dir(data: str, model: str, launch: Launch, now: datetime | None = None) -> Path:
    """The run directory of a run started with `run_dir=null`.

    Args:
        data, model: the config's data and model names (the directory's prefix).
        launch: how this process was started (its run id and whether it spans machines).
        now: the time for a timestamped name (default: now).

    Returns:
        `checkpoints/<data>-<model>-<run id or YYYYmmdd-HHMMSS>` (relative to the working directory).

    Raises:
        UserError: a run over several machines without a launcher run id.
    """
    if launch.run_id:
        return Path("checkpoints") / f"{data}-{model}-{launch.run_id}"
    if launch.multi_node:
        raise UserError(f"run_dir: a run over several machines ({launch.world} processes) needs run_dir=<shared "
                        "folder>, or a launcher run id to derive one (torchrun --rdzv-id, or a SLURM job)")
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("checkpoints") / f"{data}-{model}-{stamp}"
