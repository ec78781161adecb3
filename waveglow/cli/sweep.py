"""`-m` / `--multirun`: one job per combination of the swept settings, run by Hydra's sweepers
and launchers.

    waveglow-train -m model=tiny,squeeze train.lr=1e-4,5e-5 [hydra/launcher=joblib] [hydra.sweep.dir=DIR]

1. Expand: the jobs of Hydra's basic sweeper (its own `split_arguments`: every combination); for
   an optimizing sweeper (`hydra/sweeper=optuna`), whose trials are not known in advance, the
   fixed settings plus each searched key at each end of its range (each choice of a `choice`).
2. Validate: each of those through the typed path of a single run (`common.compose`); the first
   bad one is one `error:` line naming the job and the key, and nothing runs.
3. Launch: Hydra's `multirun` with the chosen sweeper and launcher. Every job's task function
   (`SweepJob`) turns its composed config into the script's typed settings, points the script's
   folder setting (`run_dir`, `output_dir`) at `<sweep dir>/<job number>-<swept overrides>`
   (unless the job sets it), runs the script and records how it ended in
   `<sweep dir>/.jobs/<n>.json`. It returns the job's objective (best validation
   log-likelihood) for optimizing sweepers, or None when it failed: that job is reported and the
   others go on.
4. Summarize: a table on stdout, `sweep_summary.csv` and `sweep_summary.json` in the sweep folder.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import logging
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waveglow.cli.common import Failed, Script, Stopped, setup_logging
from waveglow.cli.compose import (
    CONFIG_DIR,
    check_overrides,
    compose,
    hydra_quoted,
    resolve_config_dirs,
    resolved_yaml,
    searchpath_override,
    typed_config,
)
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic

log = logging.getLogger("waveglow")

RECORDS = ".jobs"  # <sweep dir>/.jobs/<n>.json: how each job ended (written by the job itself)
RESOLVER = "waveglow_dirname"  # the job folder's name: the swept settings, '/' in a value as '_'


def folder_name(text: str) -> str:
    """`data.root=/x/y,train.lr=0.1` -> `data.root=_x_y,train.lr=0.1`: one folder, not a path."""
    return str(text).replace("/", "_").replace("\\", "_")


def register_resolver() -> None:
    """The `${waveglow_dirname:...}` of the job folders, in every process that names one (the
    launcher's and each job's: `SweepJob` registers it when unpickled there)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver(RESOLVER, folder_name, replace=True)


SUMMARY_COLUMNS = ("job", "overrides", "best_val_log_likelihood", "run_dir", "status")

# Launchers and sweepers that come from plugins: the package that provides each, and the extra
# of this toolkit that installs it.
PLUGINS = {
    "joblib": ("hydra_plugins.hydra_joblib_launcher", "cluster"),
    "submitit_local": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    "submitit_slurm": ("hydra_plugins.hydra_submitit_launcher", "cluster"),
    "optuna": ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
}


# ------------------------------------------------------------------------------------- plan
@dataclass
class Plan:
    """A sweep, expanded and validated, ready to launch."""

    script: Script
    dirs: list[Path]                 # the user's --config-dir folders
    app_args: list[str]              # the script's settings as Hydra reads them (sweeps included)
    hydra_args: list[str]            # hydra.* and hydra/<group>= settings as given
    sweeper: str                     # basic | optuna | ...
    launcher: str                    # basic | joblib | submitit_local | submitit_slurm
    jobs: list[list[str]]            # each job's settings (an optimizing sweeper: the values checked)
    exact: bool                      # `jobs` are the jobs that will run (the basic sweeper)
    swept: list[str]                 # the keys that vary from job to job
    sweep_dir: Path


def _key(parsed: Any) -> str:
    return str(parsed.key_or_group)


def _group_choice(hydra_args: Sequence[str], group: str) -> str | None:
    for text in hydra_args:
        key, _, value = text.partition("=")
        if key.lstrip("+~") == f"hydra/{group}":
            return value
    return None


def _interval_ends(override: Any) -> list[str]:
    """The values an optimizing sweeper may try, as far as they can be listed: every choice of a
    discrete sweep, both ends of an interval."""
    from hydra.core.override_parser.types import IntervalSweep

    if override.is_discrete_sweep():
        return list(override.sweep_string_iterator())
    value = override.value()
    if isinstance(value, IntervalSweep):
        ends = []
        for v in (value.start, value.end):
            ends.append(str(int(v)) if float(v).is_integer() else repr(float(v)))
        return ends
    return []


def expand(app_args: Sequence[str], sweeper: str) -> tuple[list[list[str]], bool, list[str]]:
    """The jobs to validate.

    Returns:
        (jobs: each a list of `key=value` settings, exact: whether these are the jobs that run,
        swept: the keys that vary).
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parsed = OverridesParser.create().parse_overrides(list(app_args))
    swept = [_key(o) for o in parsed if o.is_sweep_override()]
    if sweeper == "basic":
        try:
            return BasicSweeper.split_arguments(parsed, None)[0], True, swept
        except HydraException as e:
            raise UserError(f"{e}: the basic sweeper runs lists (a,b,c), range() and glob(); "
                            "interval() needs an optimizing sweeper (hydra/sweeper=optuna)") from None
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    jobs = [list(fixed)]
    for o in parsed:
        if o.is_sweep_override():
            jobs += [[*fixed, f"{o.get_key_element()}={v}"] for v in _interval_ends(o)]
    return jobs, False, swept


def _label(job: Sequence[str], swept: Sequence[str]) -> str:
    keys = set(swept)
    return " ".join(s for s in job if s.split("=", 1)[0].lstrip("+~") in keys)


def plan(script: Script, settings: Sequence[str], dirs: Sequence[str], *, now: float | None = None) -> Plan:
    """Expand and validate a sweep: every job's settings through the typed path of a single run.

    Args:
        script: the console script (its `sweep` says which setting gets each job's folder).
        settings: `key=value` settings from the command line (sweeps, hydra.* included).
        dirs: the user's --config-dir folders.
        now: the time stamped on the default sweep folder (default: now).

    Raises:
        UserError: one line naming the job and the key of the first bad setting, an unknown
            launcher or sweeper, or a plugin that is not installed.
    """
    if script.sweep is None:
        raise UserError(f"{script.name} does not run sweeps (-m); run it once per setting")
    folders = resolve_config_dirs(dirs)
    hydra_args = [s for s in settings if s.split("=", 1)[0].lstrip("+~").startswith(("hydra.", "hydra/"))]
    app_args = check_overrides(script.config, [s for s in settings if s not in hydra_args], folders,
                               sweeps=True)
    sweeper = _group_choice(hydra_args, "sweeper") or "basic"
    launcher = _group_choice(hydra_args, "launcher") or "basic"
    for name in (sweeper, launcher):
        if name in PLUGINS:
            module, extra = PLUGINS[name]
            try:
                importlib.import_module(module)
            except ImportError:
                raise UserError(f"{name}: the Hydra plugin is not installed; pip install "
                                f"'waveglow[{extra}]' (make install does)") from None
    jobs, exact, swept = expand(app_args, sweeper)
    usage = f"{script.name} {script.usage}"
    first = None
    for i, job in enumerate(jobs):
        try:
            cfg = compose(script.config, job, folders, usage=usage)
        except UserError as e:
            what = f"job {i}" if exact else "the search space"
            label = _label(job, swept)
            raise UserError(f"{what}{f' ({label})' if label else ''}: {e}") from None
        first = cfg if first is None else first
    key = script.sweep.dir_key
    if (exact and len(jobs) > 1 and not script.sweep.nested and key not in swept
            and any(j.split("=", 1)[0] == key for j in app_args)):
        raise UserError(f"{key}=...: one folder for {len(jobs)} jobs; leave {key} unset (each job gets "
                        f"<sweep dir>/<job number>-<overrides>) or sweep it ({key}=a,b)")
    sweep_dir = _sweep_dir(script, hydra_args, first, folders, now)
    return Plan(script, folders, app_args, hydra_args, sweeper, launcher, jobs, exact, swept, sweep_dir)


def _sweep_dir(script: Script, hydra_args: Sequence[str], first: Any, folders: Sequence[Path],
               now: float | None) -> Path:
    """`hydra.sweep.dir` as given (resolved, `${now:...}` included) or the script's default."""
    given = [a for a in hydra_args if a.split("=", 1)[0] == "hydra.sweep.dir"]
    if not given:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if now is None else now))
        return Path(script.sweep.default_dir(first, stamp)).absolute()
    cfg = compose_hydra(script.config, given, folders)
    return Path(str(cfg.hydra.sweep.dir)).absolute()


def compose_hydra(config: str, hydra_args: Sequence[str], folders: Sequence[Path]) -> Any:
    """The composed config with its `hydra` node (for the launcher/sweeper settings and the sweep
    folder), with the script's required keys left unset."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from waveglow.cli.common import composition_error, register_schemas

    register_schemas()
    args = list(hydra_args) + searchpath_override(hydra_args, folders)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=config):
            return hydra_compose(config, overrides=args, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise composition_error(e) from None
    finally:
        GlobalHydra.instance().clear()


def check_launcher(p: Plan) -> None:
    """Compose the launcher and sweeper settings with job 0 and resolve them: a typo in a
    `hydra.launcher.*` key or a `cluster.*` value the launcher cannot take is one line now, not
    a failure after the jobs were queued."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from waveglow.cli.common import composition_error

    cfg = compose_hydra(p.script.config, [*p.jobs[0], *p.hydra_args], p.dirs)
    try:
        OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
        OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    except OmegaConfBaseException as e:
        raise composition_error(e) from None


# ----------------------------------------------------------------------------------- launch
def launch_overrides(p: Plan) -> list[str]:
    """The settings handed to Hydra's multirun: the user's, and the sweep's own defaults where
    the user gave none."""
    given = {a.split("=", 1)[0].lstrip("+~") for a in p.hydra_args}
    fixed = [k for k in _keys(p.app_args) if k not in p.swept]
    own = {
        "hydra.sweep.dir": hydra_quoted("hydra.sweep.dir", str(p.sweep_dir)),
        # The job's folder is named after what the job varies, not after the settings all share.
        "hydra.sweep.subdir": "hydra.sweep.subdir=" + (f"'${{hydra.job.num}}-${{{RESOLVER}:${{hydra.job.override_dirname}}}}'"
                                                       if p.swept else "'${hydra.job.num}'"),
        "hydra.job.config.override_dirname.exclude_keys":
            "hydra.job.config.override_dirname.exclude_keys=[" + ",".join(f"'{k}'" for k in fixed) + "]",
        "hydra.job.chdir": "hydra.job.chdir=false",   # relative paths mean the same in every job
        "hydra.output_subdir": "hydra.output_subdir=null",  # the run directory records its own config
        "hydra/job_logging": "hydra/job_logging=none",      # the toolkit's plain log lines
        "hydra/hydra_logging": "hydra/hydra_logging=none",
    }
    if p.sweeper == "optuna":
        # The objective is a log-likelihood: larger is better. A failed trial is reported and the
        # study goes on (Hydra's default would end it at the first failure).
        own["hydra.sweeper.direction"] = "hydra.sweeper.direction=maximize"
        own["hydra.sweeper.max_failure_rate"] = "hydra.sweeper.max_failure_rate=1.0"
    out = [*p.app_args, *[a for a in p.hydra_args if a.split("=", 1)[0] != "hydra.sweep.dir"]]
    out += [v for k, v in own.items() if k not in given or k == "hydra.sweep.dir"]
    return out + searchpath_override(p.hydra_args, p.dirs)


def _keys(args: Sequence[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return [_key(o) for o in OverridesParser.create().parse_overrides(list(args))]


def run(p: Plan, entry: Any, token: str) -> None:
    """Launch the sweep through Hydra and wait for it (each job records how it ended).

    Args:
        p: the validated plan.
        entry: the script's `main` (from `common.app`), whose function each job runs.
        token: this sweep's id, stamped on its job records.
    """
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from waveglow.cli.common import composition_error, register_schemas

    job = SweepJob(module=entry.__module__, name=entry.__name__, token=token,
                   fixed=tuple(k for k in _keys(p.app_args) if k not in p.swept))
    register_schemas()
    register_resolver()
    version.setbase("1.3")
    GlobalHydra.instance().clear()
    n = f"{len(p.jobs)} jobs" if p.exact else f"hydra/sweeper={p.sweeper}"
    log.info(f"sweep: {n}, hydra/launcher={p.launcher}, in {p.sweep_dir}")
    try:
        hydra = Hydra.create_main_hydra2(task_name=p.script.config,
                                         config_search_path=create_config_search_path(str(CONFIG_DIR)))
        hydra.multirun(config_name=p.script.config, task_function=job, overrides=launch_overrides(p))
    except (HydraException, OmegaConfBaseException) as e:
        if not _records(p.sweep_dir, token):
            raise composition_error(e) from None
        # A sweeper that gave up after failed jobs (those are in the summary).
        log.error(f"sweep: the sweeper stopped: {str(e).strip().splitlines()[0] if str(e).strip() else e}")
    except ValueError as e:
        if "No trials are completed" not in str(e):  # optuna: every trial failed
            raise
    finally:
        GlobalHydra.instance().clear()


def _records(sweep_dir: Path, token: str) -> dict[int, dict[str, Any]]:
    out = {}
    for path in sorted((sweep_dir / RECORDS).glob("*.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if rec.get("sweep") == token:
            out[int(rec["job"])] = rec
    return out


def rows(p: Plan, token: str) -> list[dict[str, Any]]:
    """One row per job: the jobs of the plan (basic sweeper) or the jobs that ran (optimizing)."""
    records = _records(p.sweep_dir, token)
    nums = range(len(p.jobs)) if p.exact else sorted(records)
    out = []
    for i in nums:
        rec = records.get(i)
        if rec is None:
            out.append({"job": i, "overrides": _label(p.jobs[i], p.swept), "best_val_log_likelihood": None,
                        "run_dir": "", "status": "not run"})
            continue
        status = rec["status"] if not rec.get("error") else f"{rec['status']}: {rec['error']}"
        out.append({"job": i, "overrides": rec["overrides"], "best_val_log_likelihood": rec["objective"],
                    "run_dir": rec["run_dir"], "status": status})
    return out


# -------------------------------------------------------------------------------------- job
def _rank() -> int:
    """This process's rank in a job of several tasks (a SLURM job step, torchrun), else 0: only
    rank 0 records how the job ended."""
    from waveglow.train.launch import read_launch

    try:
        return read_launch().rank
    except UserError:
        return 0  # a launcher variable that does not parse: the job itself reports it


@dataclass
class SweepJob:
    """What every sweep job runs (pickled to the launcher's processes, so it holds names only).

    Attributes:
        module, name: where the script's `main` is (`waveglow.cli.train`, `main`).
        token: this sweep's id, stamped on the job records.
        fixed: the keys every job shares (left out of the job's label).
    """

    module: str
    name: str
    token: str
    fixed: tuple[str, ...]

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickled in a launcher's process (joblib, submitit), which names the job's folder
        # before the job runs.
        self.__dict__.update(state)
        register_resolver()

    def __call__(self, cfg: Any) -> float | None:
        """Run one job of the sweep on its composed config (Hydra's, `hydra` node removed).

        Returns:
            The script's objective (training: the best validation log-likelihood, nats per
            sample); None when the job failed, so an optimizing sweeper marks the trial failed.
        """
        from hydra.core.hydra_config import HydraConfig

        setup_logging()
        hc = HydraConfig.get()
        num = int(hc.job.num)
        out = str(hc.runtime.output_dir)
        overrides = [str(o) for o in hc.overrides.task]
        keys = set(_keys(overrides))
        label = " ".join(o for o, k in zip(overrides, _keys(overrides)) if k not in self.fixed)
        entry = getattr(importlib.import_module(self.module), self.name)
        script: Script = entry.script
        spec = script.sweep
        record: dict[str, Any] = {"sweep": self.token, "job": num, "overrides": label, "run_dir": out,
                                  "status": "failed", "objective": None, "error": ""}
        stopped = None
        try:
            typed = typed_config(script.config, cfg, usage=f"{script.name} {script.usage}")
            # The job's own folder, unless the job sets the folder itself (a swept run_dir).
            if spec.dir_key not in keys or (spec.nested and spec.dir_key in self.fixed):
                setattr(typed, spec.dir_key, out)
            record["run_dir"] = str(Path(getattr(typed, spec.dir_key)).absolute())
            log.info(f"job {num}: {label or '(no swept settings)'} -> {record['run_dir']}")
            result = entry.run(typed)
            record["objective"] = spec.objective(result) if spec.objective else None
            record["status"] = "completed"
        except (UserError, Failed) as e:
            record["error"] = " ".join(str(e).split())
        except Stopped as e:
            record.update(status="stopped", error=f"exit status {e.code}")
            stopped = e
        except Exception as e:  # a bug in one job: its traceback in the log, the others go on
            log.exception(f"job {num} failed")
            record["error"] = f"{type(e).__name__}: {' '.join(str(e).split())}"
        if _rank() == 0:
            write_text_atomic(Path(str(hc.sweep.dir)).absolute() / RECORDS / f"{num}.json",
                              json.dumps(record, indent=1) + "\n")
        if record["status"] == "failed":
            log.error(f"job {num} failed: {record['error']}")
        if stopped is not None:
            raise stopped
        return record["objective"]


# ---------------------------------------------------------------------------------- summary
def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else ("-" if value is None else str(value))


def table(rows_: Sequence[dict[str, Any]]) -> str:
    """The summary as a plain-text table (the status column last, as long as it needs)."""
    head = ["job", "overrides", "best val LL (nats/sample)", "run dir", "status"]
    cells = [[str(r["job"]), r["overrides"] or "-", _fmt(r["best_val_log_likelihood"]), r["run_dir"] or "-",
              r["status"]] for r in rows_]
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in [head, *cells]]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def write_summary(sweep_dir: Path, rows_: Sequence[dict[str, Any]]) -> tuple[Path, Path]:
    """`sweep_summary.csv` and `sweep_summary.json` in the sweep folder (atomic writes)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows_:
        writer.writerow({k: ("" if r[k] is None else r[k]) for k in SUMMARY_COLUMNS})
    done = [r for r in rows_ if isinstance(r["best_val_log_likelihood"], float)]
    best = max(done, key=lambda r: r["best_val_log_likelihood"])["job"] if done else None
    doc = {"sweep_dir": str(sweep_dir), "objective": "best validation log-likelihood (nats per sample)",
           "best_job": best, "jobs": list(rows_)}
    try:
        return (write_text_atomic(sweep_dir / "sweep_summary.csv", buf.getvalue()),
                write_text_atomic(sweep_dir / "sweep_summary.json", json.dumps(doc, indent=1) + "\n"))
    except OSError as e:
        raise UserError(f"{sweep_dir}: cannot write the sweep summary ({e.strerror or e})") from None


def run_sweep(script: Script, entry: Any, settings: Sequence[str], dirs: Sequence[str], *,
              show_config: bool = False) -> int:
    """`<script> -m ...`: validate every job, run them, summarize.

    Args:
        script: the console script.
        entry: its `main` (carrying `fn` and `script`).
        settings, dirs: from the command line.
        show_config: `--cfg job`: print every job's resolved config and run nothing.

    Returns:
        The exit status: 0 every job completed, 1 a job failed or did not run, or the status of
        a job stopped by a signal (130, 143).
    """
    p = plan(script, settings, dirs)
    if show_config:
        for i, job in enumerate(p.jobs):
            cfg = compose(script.config, job, p.dirs)
            what = f"job {i}" if p.exact else "search space value"
            sys.stdout.write(f"# {what}: {_label(job, p.swept) or '(no swept settings)'}\n{resolved_yaml(cfg)}")
        return 0
    check_launcher(p)
    token = uuid.uuid4().hex
    stopped: Stopped | None = None
    try:
        run(p, entry, token)
    except Stopped as e:
        stopped = e
    except KeyboardInterrupt:
        stopped = Stopped(130)
    result = rows(p, token)
    if not result:
        log.error("sweep: no job ran")
        return stopped.code if stopped else 1
    csv_path, _ = write_summary(p.sweep_dir, result)
    sys.stdout.write(table(result))
    done = [r for r in result if isinstance(r["best_val_log_likelihood"], float)]
    if done:
        best = max(done, key=lambda r: r["best_val_log_likelihood"])
        log.info(f"best: job {best['job']} ({best['overrides'] or 'no swept settings'}), "
                 f"{best['best_val_log_likelihood']:.4f} nats/sample, {best['run_dir']}")
    log.info(f"sweep summary: {csv_path} (and .json)")
    if stopped is not None:
        return stopped.code
    return 0 if all(r["status"] == "completed" for r in result) else 1
