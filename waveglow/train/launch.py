"""What the launcher tells a training process: torchrun's or SLURM's environment variables.

This module is the one place that reads them (`read_launch`); the rest of the trainer gets a
`Launch`. Three cases:

* **torchrun** (RANK and WORLD_SIZE set): its variables; the process group reads its rendezvous
  address from the environment (`env://`).
* **SLURM, one process per task** (`srun waveglow-train ...` in a job step of several tasks, not
  under torchrun): rank SLURM_PROCID of SLURM_STEP_NUM_TASKS, local rank SLURM_LOCALID, the
  processes on this node from SLURM_STEP_TASKS_PER_NODE; the rendezvous is the first host of
  the step's node list, on a port derived from the job id (MASTER_ADDR / MASTER_PORT, when set,
  win). A job's batch shell (no job step: SLURM_STEP_NUM_TASKS absent) and a 1-task step train
  alone: the other tasks are not running there, and waiting for them would hang.
* **alone**: world 1.

The run id (`Launch.run_id`) names a run directory that stays the same across torchrun's
restarts and SLURM requeues (see `waveglow.train.rundir`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from waveglow.errors import UserError

log = logging.getLogger("waveglow")

# The rendezvous port of a SLURM job: PORT_BASE + job id mod PORT_SPAN, below Linux's ephemeral
# range (32768-60999), so that two jobs sharing a first node rarely meet on one port.
PORT_BASE, PORT_SPAN = 15000, 15000


@dataclass(frozen=True)
class Launch:
    """How this process was started.

    Attributes:
        world, rank, local_rank, local_world: the process's place in the run (1, 0, 0, 1 alone).
        launcher: "torchrun", "slurm" or "" (alone).
        init_method: the process group's rendezvous (`env://` under torchrun, `tcp://host:port`
            under SLURM, "" alone).
        run_id: a name for this run that survives restarts and requeues ("" when none is known).
        multi_node: the processes span more than one machine.
        stale_restarts: torchrun restarts its workers (`--max-restarts`) on a rendezvous store
            it shares with them, which keeps the previous attempt's addresses (see README).
    """

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    local_world: int = 1
    launcher: str = ""
    init_method: str = ""
    run_id: str = ""
    multi_node: bool = False
    stale_restarts: bool = False


def read_launch(environ: Mapping[str, str] | None = None) -> Launch:
    """The `Launch` described by `environ` (default: this process's environment).

    Raises:
        UserError: a launcher variable that does not parse (named).
    """
    env = os.environ if environ is None else environ
    run_id = _run_id(env)
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        local_world = _int(env, "LOCAL_WORLD_SIZE", world)
        # torch >= 2.5 shares the agent's rendezvous store with the workers by default; a
        # restarted worker may then read an address its dead predecessor published and fail to
        # connect (pytorch issue 135712); TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 for torchrun avoids it.
        stale = env.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and _int(env, "TORCHELASTIC_MAX_RESTARTS") > 0
        return Launch(world=world, rank=_int(env, "RANK"), local_rank=_int(env, "LOCAL_RANK"),
                      local_world=local_world, launcher="torchrun" if world > 1 else "",
                      init_method="env://" if world > 1 else "", run_id=run_id,
                      multi_node=local_world < world, stale_restarts=stale and world > 1)
    if "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        tasks = env.get("SLURM_NTASKS", "1")
        if tasks.isdigit() and int(tasks) > 1:
            log.warning(f"SLURM_NTASKS={tasks} but this process is not one task of a job step: training in one "
                        "process; start it with `srun waveglow-train ...` for one process per task (DDP)")
        return Launch(run_id=run_id)
    world = _int(env, "SLURM_STEP_NUM_TASKS")
    if world <= 1:
        return Launch(run_id=run_id)
    node = _int(env, "SLURM_NODEID")
    per_node = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", str(world))))
    local_world = per_node[node] if node < len(per_node) else world
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    host = env.get("MASTER_ADDR") or (first_host(nodelist) if nodelist else "")
    if not host:
        raise UserError("SLURM_STEP_NODELIST: not set, and no MASTER_ADDR; cannot find the first task's host")
    port = _int(env, "MASTER_PORT") if env.get("MASTER_PORT") else slurm_port(env.get("SLURM_JOB_ID", "0"))
    return Launch(world=world, rank=_int(env, "SLURM_PROCID"), local_rank=_int(env, "SLURM_LOCALID"),
                  local_world=local_world, launcher="slurm", init_method=f"tcp://{host}:{port}", run_id=run_id,
                  multi_node=len(per_node) > 1 or local_world < world)


def _run_id(env: Mapping[str, str]) -> str:
    """A name that stays the same across restarts: the SLURM job (a requeued job keeps its id, and
    outlives a torchrun started inside it), else torchrun's rendezvous id (kept across its
    `--max-restarts`; "none" is torchrun's default for a static rendezvous and names nothing)."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm{env['SLURM_JOB_ID']}"
    elastic = env.get("TORCHELASTIC_RUN_ID", "")
    if elastic and elastic != "none":
        return f"torchrun-{elastic}"
    return ""


def _int(env: Mapping[str, str], name: str, default: int = 0) -> int:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text}: expected an integer (set by the launcher)") from None


def slurm_port(job_id: str) -> int:
    """The rendezvous port of a SLURM job (the same on every task of it)."""
    digits = re.sub(r"\D", "", job_id)
    return PORT_BASE + int(digits or "0") % PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list, in SLURM's compressed form.

    `node[01-03,07]` -> node01, `gpu-a[3,5],gpu-b1` -> gpu-a3, `rack[2-3]-n[08-09]` -> rack2-n08,
    `10.0.0.[5-6]` -> 10.0.0.5. (`scontrol show hostnames` expands the whole list; the first host
    is all a rendezvous needs.)

    Raises:
        UserError: an unbalanced bracket.
    """
    text = nodelist.strip()
    out, depth, i = [], 0, 0
    while i < len(text):
        ch = text[i]
        if ch == "," and depth == 0:
            break
        if ch == "[":
            end = text.find("]", i)
            if end < 0:
                raise UserError(f"SLURM node list {nodelist!r}: unbalanced '['")
            # The first range's start, zero padding kept (node[01-03] -> node01).
            out.append(text[i + 1:end].split(",")[0].split("-")[0].strip())
            i = end + 1
            continue
        if ch == "]":
            raise UserError(f"SLURM node list {nodelist!r}: unbalanced ']'")
        out.append(ch)
        i += 1
    host = "".join(out).strip()
    if not host:
        raise UserError(f"SLURM node list {nodelist!r}: no host in it")
    return host


def tasks_per_node(text: str) -> list[int]:
    """SLURM's tasks-per-node list expanded: `2(x3),1` -> [2, 2, 2, 1].

    Raises:
        UserError: a list that does not parse.
    """
    out: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not match:
            raise UserError(f"SLURM tasks per node {text!r}: expected a list like 2(x3),1")
        out += [int(match.group(1))] * int(match.group(2) or 1)
    return out
