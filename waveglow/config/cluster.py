"""Where a SLURM job runs: the `cluster` block of `waveglow-train`.

Read only by the launcher config `hydra/launcher=submitit_slurm`
(`waveglow/configs/hydra/launcher/submitit_slurm.yaml`), which maps these keys onto the
submitit launcher's settings: one task per GPU (`tasks_per_node = gpus_per_node`), each task a
DDP rank that reads its place from the SLURM environment. Training itself never reads them.
"""

# No `from __future__ import annotations`: the field types stay real types, as the checks read them.
from dataclasses import dataclass

from waveglow.config.schema import setting


@dataclass
class ClusterConfig:
    partition: str | None = setting(None, "SLURM partition (null: the cluster's default)")
    nodes: int = setting(1, "nodes per job (SLURM); the job trains with DDP across all of them", min=1)
    gpus_per_node: int = setting(1, "GPUs per node; one task (DDP rank) per GPU", min=1)
    time_limit_min: int = setting(1440, "wall-clock limit of each job (minutes)", min=1)
    cpus_per_task: int = setting(8, "CPU cores per task (per GPU): data loader workers and preprocessing",
                                 min=1)
    mem_gb: int | None = setting(None, "memory per node (GiB; null: the partition's default)", min=1)
