"""`waveglow-train -m`: sweeps through Hydra's sweepers and launchers. Every job is validated
before any runs; each job trains in its own run directory; a failed job is reported and the
others go on; the sweep ends with a summary table (stdout, sweep_summary.csv/.json)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from conftest import compose, copy_demo_corpus, run_cli, run_script

from waveglow.cli import sweep
from waveglow.cli.train import SCRIPT, main
from waveglow.data import load_stats
from waveglow.errors import UserError


def tiny(*extra: str) -> list[str]:
    """A tiny CPU run of a few steps that validates at step 0 and at its end."""
    return ["model=tiny", "model.upsample_kernel=256", "data.segment_length=4096", "train.batch_size=2",
            "train.log_every=1", "train.audio_every=0", "train.logdet_every=0", "train.val_segment_length=4096",
            "train.val_max_clips=2", "train.threads=1", "train.device=cpu", "train.val_every=1000",
            "train.checkpoint_every=1000", "data.loader_workers=0", *extra]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, demo_root) -> Path:
    """The demo corpus with its feature cache built, so that jobs running at once only read it."""
    root = copy_demo_corpus(demo_root, tmp_path_factory.mktemp("sweep") / "corpus")
    load_stats(compose("waveglow_train", "data=demo", f"data.root={root}", *tiny()), progress=False)
    return root


def summary(sweep_dir: Path) -> tuple[list[dict], dict]:
    with open(sweep_dir / "sweep_summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((sweep_dir / "sweep_summary.json").read_text())


# ------------------------------------------------------------------------------ before any job
def test_a_bad_value_in_any_job_is_one_line_naming_job_and_key_and_nothing_runs(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    proc = run_script("waveglow-train", "-m", "data=demo", "model=tiny,squeeze", "train.lr=1e-4,-5",
                   f"hydra.sweep.dir={sweep_dir}", check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    # Job 1 (the 2nd of model x lr in Hydra's order) is the first bad one.
    assert proc.stderr.strip() == "error: job 1 (model=tiny train.lr=-5): train.lr=-5.0: expected a number > 0"
    assert not sweep_dir.exists() and not (tmp_path / "checkpoints").exists()
    typo = run_script("waveglow-train", "--multirun", "data=demo", "model=tiny,tinyy", check=False, cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr.strip().startswith("error: model=tinyy: no such model config")


@pytest.mark.parametrize("settings,message", [
    (["data=demo", "train.lr=1e-4,5e-5", "run_dir=runs/x"], "run_dir=...: one folder for 2 jobs"),
    (["data=demo", "train.lr=interval(1e-5,1e-3)"], "interval() needs an optimizing sweeper"),
    (["data=demo", "train.max_stepz=1,2"], "unknown setting 'train.max_stepz' (did you mean train.max_steps?)"),
    (["data=demo", "hydra/launcher=submitit_slurm", "cluster.gpus_per_node=0,8"],
     "job 0 (cluster.gpus_per_node=0): cluster.gpus_per_node=0: expected an integer >= 1"),
])
def test_sweeps_that_cannot_run_are_refused_by_name(settings: list[str], message: str) -> None:
    with pytest.raises(UserError) as err:
        sweep.plan(SCRIPT, settings, [])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_jobs_are_hydras_combinations_in_hydras_order() -> None:
    p = sweep.plan(SCRIPT, ["data=demo", "model=tiny,squeeze", "train.lr=1e-4,5e-5", "data.root=/x"], [], now=0)
    assert p.exact and p.swept == ["model", "train.lr"]
    assert [sweep._label(j, p.swept) for j in p.jobs] == [
        "model=tiny train.lr=0.0001", "model=tiny train.lr=5e-05",
        "model=squeeze train.lr=0.0001", "model=squeeze train.lr=5e-05"]
    assert p.sweep_dir == (Path("checkpoints/sweeps") / p.sweep_dir.name).absolute()
    args = sweep.launch_overrides(p)
    # Each job's folder is named after what it varies; the settings all jobs share are left out.
    assert "hydra.sweep.subdir='${hydra.job.num}-${waveglow_dirname:${hydra.job.override_dirname}}'" in args
    assert sweep.folder_name("data.root=/x/y,train.lr=0.1") == "data.root=_x_y,train.lr=0.1"
    assert "hydra.job.config.override_dirname.exclude_keys=['data','data.root']" in args
    assert "hydra.job.chdir=false" in args


def test_an_optimizing_sweeper_is_checked_at_the_ends_of_its_search_space() -> None:
    p = sweep.plan(SCRIPT, ["data=demo", "train.lr=tag(log,interval(1e-5,1e-3))", "model=choice(tiny,squeeze)",
                            "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2"], [])
    assert not p.exact
    assert [sweep._label(j, p.swept) for j in p.jobs] == ["", "train.lr=1e-05", "train.lr=0.001",
                                                          "model=tiny", "model=squeeze"]
    assert "hydra.sweeper.direction=maximize" in sweep.launch_overrides(p)
    with pytest.raises(UserError, match=r"^the search space \(train.lr=-1\): train.lr=-1.0: expected a number > 0"):
        sweep.plan(SCRIPT, ["data=demo", "train.lr=interval(-1,1)", "hydra/sweeper=optuna"], [])


def test_a_launcher_whose_plugin_is_missing_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sweep.PLUGINS, "joblib", ("hydra_plugins.not_installed_here", "cluster"))
    with pytest.raises(UserError, match=r"joblib: the Hydra plugin is not installed; pip install 'waveglow\[cluster\]'"):
        sweep.plan(SCRIPT, ["data=demo", "train.lr=1e-4,5e-5", "hydra/launcher=joblib"], [])


def test_the_slurm_launcher_takes_the_cluster_settings_one_task_per_gpu() -> None:
    from omegaconf import OmegaConf

    cfg = sweep.compose_hydra("waveglow_train", ["data=demo", "hydra/launcher=submitit_slurm", "cluster.nodes=2",
                                                 "cluster.gpus_per_node=8", "cluster.partition=gpu",
                                                 "cluster.time_limit_min=600", "cluster.mem_gb=480"], [])
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert {k: launcher[k] for k in ("partition", "nodes", "gpus_per_node", "tasks_per_node", "timeout_min",
                                     "mem_gb", "cpus_per_task")} == {
        "partition": "gpu", "nodes": 2, "gpus_per_node": 8, "tasks_per_node": 8, "timeout_min": 600,
        "mem_gb": 480, "cpus_per_task": 8}
    p = sweep.plan(SCRIPT, ["data=demo", "hydra/launcher=submitit_slurm", "hydra.launcher.partiton=gpu"], [])
    with pytest.raises(UserError, match="partiton"):
        sweep.check_launcher(p)


def test_cfg_job_prints_the_resolved_validated_config_of_each_job(capsys) -> None:
    main(["--cfg", "job", "data=demo", "model=tiny", "train.lr=3e-4"])
    single = yaml.safe_load(capsys.readouterr().out)
    assert single["model"]["name"] == "tiny" and single["train"]["lr"] == 3e-4 and single["run_dir"] is None
    main(["-m", "--cfg", "job", "data=demo", "model=tiny,squeeze"])
    out = capsys.readouterr().out
    assert out.count("# job ") == 2 and "# job 1: model=squeeze\n" in out
    docs = [yaml.safe_load(part) for part in out.split("# job ")[1:]]
    assert [d["model"]["name"] for d in docs] == ["tiny", "squeeze"]
    with pytest.raises(SystemExit) as exit_:
        main(["--cfg", "hydra", "data=demo"])
    assert exit_.value.code == 2


def test_help_tells_of_sweeps_and_cfg() -> None:
    text = run_script("waveglow-train", "--help").stdout
    assert "-m / --multirun runs a sweep" in text and "--cfg job prints" in text
    assert "hydra/launcher=basic" in text and "cluster.gpus_per_node=1" in text
    from waveglow.cli.common import help_text
    from waveglow.cli.mel import SCRIPT as MEL

    mel = help_text(MEL)
    assert "--cfg job" in mel and "--multirun" not in mel


def test_a_script_without_sweeps_refuses_m(tmp_path: Path) -> None:
    proc = run_script("waveglow-mel", "-m", "input=a.wav,b.wav", "output_dir=o", check=False, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: waveglow-mel does not run sweeps (-m); run it once per setting")


# ---------------------------------------------------------------------------------- real sweeps
def test_a_sweep_runs_every_job_in_its_own_run_dir_a_failed_job_does_not_stop_the_others(corpus, tmp_path):
    """The basic launcher (one job after another): job 0 cannot find its corpus (a setting that
    is valid, a folder that is not there), job 1 trains; the summary reports both."""
    (tmp_path / "corpus").symlink_to(corpus)
    sweep_dir = tmp_path / "sweeps" / "s1"
    proc = run_script("waveglow-train", "-m", "data=demo", "data.root=no/corpus,corpus", *tiny("train.max_steps=1"),
                   "hydra.sweep.dir=sweeps/s1", check=False, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    rows, doc = summary(sweep_dir)
    assert [(r["job"], r["overrides"]) for r in rows] == [("0", "data.root=no/corpus"), ("1", "data.root=corpus")]
    failed, done = rows
    assert failed["status"].startswith("failed: ") and "no/corpus" in failed["status"] and failed[
        "best_val_log_likelihood"] == ""
    # A '/' in a swept value does not nest folders.
    assert failed["run_dir"] == str(sweep_dir / "0-data.root=no_corpus")
    assert done["status"] == "completed" and float(done["best_val_log_likelihood"]) < 0
    run_dir = Path(done["run_dir"])
    assert run_dir == sweep_dir / "1-data.root=corpus"
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "checkpoints" / "best.pt").is_file()
    # The run records its own config, with the run directory the sweep gave it.
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_dir"] == str(run_dir)
    assert doc["best_job"] == 1 and doc["jobs"][1]["best_val_log_likelihood"] == float(
        done["best_val_log_likelihood"])
    # The table on stdout, one line per job.
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["job", "overrides"] and len(lines) == 3
    assert "failed: " in lines[1] and "completed" in lines[2]
    assert "job 0 failed: " in proc.stderr


def test_a_two_job_submitit_local_sweep_finishes_with_both_runs_and_the_summary(corpus, tmp_path):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli("waveglow-train", "-m", "data=demo", f"data.root={corpus}", *tiny("train.max_steps=1"),
                   "train.lr=1e-4,5e-4", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep_dir}",
                   cwd=tmp_path, timeout=600)
    rows, doc = summary(sweep_dir)
    assert [(r["overrides"], r["status"]) for r in rows] == [("train.lr=0.0001", "completed"),
                                                             ("train.lr=0.0005", "completed")]
    for r in rows:
        ckpts = Path(r["run_dir"]) / "checkpoints"
        assert ckpts.parent.parent == sweep_dir and (ckpts / "last.pt").is_file() and (ckpts / "best.pt").is_file()
        assert float(r["best_val_log_likelihood"]) < 0
    assert (sweep_dir / ".submitit").is_dir()  # the jobs went through submitit
    assert "completed" in proc.stdout


@pytest.mark.slow
def test_a_joblib_sweep_runs_its_jobs_as_parallel_processes(corpus, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_cli("waveglow-train", "-m", "data=demo", f"data.root={corpus}", *tiny("train.max_steps=1"),
            "train.seed=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep_dir}",
            cwd=tmp_path, timeout=600)
    rows, _ = summary(sweep_dir)
    assert [(r["overrides"], r["status"]) for r in rows] == [("train.seed=1", "completed"),
                                                             ("train.seed=2", "completed")]
    assert all((Path(r["run_dir"]) / "checkpoints" / "last.pt").is_file() for r in rows)


@pytest.mark.slow
def test_optuna_maximizes_the_best_validation_log_likelihood(corpus, tmp_path):
    sweep_dir = tmp_path / "sweep"
    run_cli("waveglow-train", "-m", "data=demo", f"data.root={corpus}", *tiny("train.max_steps=1"),
            "train.lr=tag(log,interval(1e-5,1e-3))", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=1", f"hydra.sweep.dir={sweep_dir}",
            cwd=tmp_path, timeout=600)
    rows, doc = summary(sweep_dir)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    values = [float(r["best_val_log_likelihood"]) for r in rows]
    result = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    # The study maximized what the jobs returned: its best value is the larger one.
    assert result["best_value"] == pytest.approx(max(values), rel=1e-9)
    assert doc["best_job"] == values.index(max(values))


@pytest.mark.slow
def test_a_synthesis_sweep_writes_one_output_folder_per_job(tmp_path: Path, demo_root: Path) -> None:
    import soundfile as sf
    from synth_helpers import active_model

    from waveglow.checkpoint import FORMAT_VERSION, save_checkpoint

    model, cfg = active_model(seed=2)
    ckpt = tmp_path / "tiny.pt"
    save_checkpoint(ckpt, {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": cfg,
                           "step": 0, "epoch": 0})
    wav = demo_root / "wavs" / "DEMO001-0001.wav"
    run_script("waveglow-mel", f"input={wav}", f"output_dir={tmp_path / 'mels'}", cwd=tmp_path)
    out = tmp_path / "out"
    proc = run_script("waveglow-synthesize", "-m", f"checkpoint={ckpt}", f"input={tmp_path / 'mels'}",
                   f"output_dir={out}", "sigma=0,0.8", "progress=false", "device=cpu", cwd=tmp_path)
    rows, _ = summary(out)  # the sweep folder is output_dir
    assert [(r["overrides"], r["status"], r["run_dir"]) for r in rows] == [
        ("sigma=0", "completed", str(out / "0-sigma=0")), ("sigma=0.8", "completed", str(out / "1-sigma=0.8"))]
    quiet, noisy = (sf.read(out / d / "DEMO001-0001.wav")[0] for d in ("0-sigma=0", "1-sigma=0.8"))
    assert quiet.shape == noisy.shape and abs(noisy - quiet).max() > 1e-3  # each job its own sigma
    assert (out / "1-sigma=0.8" / "synthesize.config.yaml").is_file() and "completed" in proc.stdout
