"""The typed config layer: every shipped config composes into its schema; every wrong setting
is one `error:` line naming the key (exit 2, no traceback); `--help`, `--version`,
`--config-dir`; paths that Hydra's grammar would break."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import compose, run_script

from waveglow import __version__
from waveglow import config as C
from waveglow.cli.common import CONFIG_DIR
from waveglow.errors import UserError


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


REQUIRED = {"waveglow_mel": ("input=a.wav", "output_dir=o"),
            "waveglow_synthesize": ("checkpoint=c.pt", "input=m", "output_dir=o"),
            "waveglow_resynthesize": ("checkpoint=c.pt", "input=m", "output_dir=o"),
            "waveglow_score": ("checkpoint=c.pt", "input=m", "output=s.csv"),
            "waveglow_import_nvidia": ("input=n.pt", "output=o.pt"),
            "waveglow_enhance": ("checkpoint=c.pt", "input=m", "output_dir=o"),
            "waveglow_convert": ("checkpoint=c.pt", "input=m", "output_dir=o"),
            "waveglow_export": ("checkpoint=c.pt", "output=m.onnx"),
            "waveglow_eval": ("checkpoint=c.pt", "output_dir=o"),
            "waveglow_prune": ("checkpoint=c.pt", "output=p.pt"),
            "waveglow_distill": ("teacher=t.pt",)}


@pytest.mark.parametrize("app", sorted(C.APPS))
def test_every_script_config_composes_into_its_schema(app: str) -> None:
    assert (CONFIG_DIR / f"{app}.yaml").is_file()
    cfg = compose(app, *REQUIRED.get(app, ()))
    assert type(cfg) is C.APPS[app]
    fields = {f.name for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (C.InferenceSettings, C.ExportApp)):
        assert "audio" not in fields  # the checkpoint's audio settings are used
    if "audio" in fields:  # scripts without one take them from a checkpoint or need none (pretrained)
        assert type(cfg.audio) is C.AudioConfig and cfg.audio.sampling_rate == 22050


@pytest.mark.parametrize("group,name", [(g, n) for g in ("data", "model", "train") for n in _names(g)])
def test_every_group_choice_composes_and_validates(group: str, name: str) -> None:
    cfg = compose("waveglow_train", f"{group}={name}", *(["data=demo"] if group != "data" else ["data.root=/x"]))
    part = getattr(cfg, group)
    assert type(part) is C.GROUPS[group]
    if group != "train":
        assert part.name == name
    if group == "data":
        assert cfg.data.segment_length >= cfg.audio.n_fft


def test_overrides_reach_the_typed_config() -> None:
    cfg = compose("waveglow_preprocess", "data=folder", "data.root=/x", "audio.fmax=7600", "data.num_workers=3")
    assert (cfg.data.root, cfg.audio.fmax, cfg.data.num_workers) == ("/x", 7600.0, 3)
    assert isinstance(cfg.audio.fmax, float)
    mel = compose("waveglow_mel", "input=a.wav", "output_dir=o", "format=npy")
    assert (mel.input, mel.output_dir, mel.format, mel.dither) == ("a.wav", "o", "npy", 0.0)


@pytest.mark.parametrize("setting,message", [
    ("train.lr=abc", "train.lr=abc: expected a number"),
    ("train.batch_size=-4", "train.batch_size=-4: expected an integer >= 1"),
    ("model.n_flowz=3", "unknown setting 'model.n_flowz' (did you mean model.n_flows?)"),
    ("+model.n_flowz=3", "unknown setting 'model.n_flowz' (did you mean model.n_flows?)"),
    ("train.precision=fp8", "train.precision=fp8: expected one of auto, fp32, bf16, fp16"),
    ("model=tinyy", f"model=tinyy: no such model config (available: {', '.join(_names('model'))}; "
                    "did you mean tiny?)"),
    ("train.guard.lr_factor=2", "train.guard.lr_factor=2.0: expected a number in (0, 1]"),
    ("model.n_group=7", "model.n_group=7: expected an even number"),
    ("train.max_steps=1,2", "train.max_steps=1,2: expected one value; a comma makes a sweep, which runs with -m"),
    ("data.short_clip_policy=pad", "data.short_clip_policy=pad: expected one of noise, repeat, drop"),
])
def test_bad_settings_are_refused_by_name(setting: str, message: str) -> None:
    with pytest.raises(UserError) as err:
        compose("waveglow_train", "data=demo", setting)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("argv,message", [
    (["train.lr=abc"], "error: train.lr=abc: expected a number"),
    (["train.batch_size=-4"], "error: train.batch_size=-4: expected an integer >= 1"),
    (["model.n_flowz=3"], "error: unknown setting 'model.n_flowz' (did you mean model.n_flows?)"),
])
def test_the_train_script_refuses_bad_settings_before_any_work(argv: list[str], message: str,
                                                               tmp_path: Path) -> None:
    proc = run_script("waveglow-train", "data=demo", f"run_dir={tmp_path / 'run'}", *argv, check=False,
                   cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == message
    assert not (tmp_path / "run").exists()


def test_typos_and_flags_in_a_script_get_one_line(tmp_path: Path) -> None:
    typo = run_script("waveglow-synthesize", "checkpoint=c.pt", "input=m", "output_dir=o", "sigmaa=0.5",
                   check=False, cwd=tmp_path)
    assert typo.returncode == 2 and typo.stderr.strip() == "error: unknown setting 'sigmaa' (did you mean sigma?)"
    plus = run_script("waveglow-synthesize", "checkpoint=c.pt", "input=m", "output_dir=o", "+sigmaa=0.5",
                   check=False, cwd=tmp_path)
    assert plus.returncode == 2 and "unknown setting 'sigmaa'" in plus.stderr
    flag = run_script("waveglow-synthesize", "--checkpoint", "x.pt", check=False, cwd=tmp_path)
    assert flag.returncode == 2 and flag.stderr.strip().startswith("error: unknown option '--checkpoint'")
    assert "checkpoint=" in flag.stderr
    missing = run_script("waveglow-synthesize", "checkpoint=c.pt", check=False, cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.strip().startswith("error: input=... output_dir=... are required: waveglow-synthesize")
    for proc in (typo, plus, flag, missing):
        assert "Traceback" not in proc.stderr and "+sigmaa" not in proc.stderr.replace("'+sigmaa", "")


SCRIPTS = ["waveglow-mel", "waveglow-preprocess", "waveglow-train", "waveglow-synthesize",
           "waveglow-resynthesize", "waveglow-score", "waveglow-import-nvidia", "waveglow-bench",
           "waveglow-download", "waveglow-enhance", "waveglow-convert", "waveglow-export",
           "waveglow-prune", "waveglow-distill"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_is_the_scripts_own(script: str, tmp_path: Path) -> None:
    proc = run_script(script, "--help", cwd=tmp_path)
    text = proc.stdout
    assert text.startswith(f"{script} (waveglow {__version__})")
    assert f"usage: {script} " in text and "examples:" in text
    assert "powered by Hydra" not in text
    app = C.APPS[script.replace("-", "_")]
    own = [f.name for f in dataclasses.fields(app)]
    for name in own:
        if name not in C.GROUPS:
            assert f"  {name}=" in text or f"  {name}." in text, name
    for group in ("data", "model", "train"):
        assert (f"\n{group} settings" in text) == (group in own), group
    required = [f.name for f in dataclasses.fields(app) if f.default == C.MISSING]
    if required:
        assert "required: " + ", ".join(required) in text


def test_help_explains_each_key() -> None:
    text = run_script("waveglow-train", "--help").stdout
    assert "train.batch_size=12" in text and "segments per process per step" in text
    assert f"model settings (choices: {', '.join(_names('model'))})" in text  # every shipped model config
    mel = run_script("waveglow-mel", "--help").stdout
    assert "model settings" not in mel and "data settings" not in mel and "audio.hop_length=256" in mel


def test_version() -> None:
    assert run_script("waveglow-score", "--version").stdout.strip() == f"waveglow {__version__}"


def test_a_users_config_dir_adds_configs(tmp_path: Path) -> None:
    mine = tmp_path / "my_configs"
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "small.yaml").write_text(
        "defaults:\n  - /schema/model@_here_\n  - _self_\nname: small\nn_flows: 2\nn_early_every: 1\n"
        "wn:\n  n_layers: 2\n  n_channels: 16\n")
    (mine / "train").mkdir()
    (mine / "train" / "short.yaml").write_text("defaults:\n  - demo\n  - _self_\nmax_steps: 7\n")
    from waveglow.cli.common import compose as compose_config

    cfg = compose_config("waveglow_train", ["model=small", "train=short", "data=demo"], [mine])
    assert (cfg.model.name, cfg.model.n_flows, cfg.model.wn.n_channels) == ("small", 2, 16)
    assert cfg.train.max_steps == 7 and cfg.train.lr == 5e-4  # the rest from the shipped train/demo
    assert "small" in run_script("waveglow-train", "--help", "--config-dir", str(mine)).stdout
    bad = run_script("waveglow-train", "model=small", "data=demo", check=False)
    assert bad.returncode == 2 and "model=small: no such model config" in bad.stderr
    (mine / "model" / "broken.yaml").write_text("defaults:\n  - /schema/model@_here_\n  - _self_\nn_flowz: 2\n")
    broken = run_script("waveglow-train", "--config-dir", str(mine), "model=broken", "data=demo", check=False)
    assert broken.returncode == 2 and "n_flowz" in broken.stderr and "Traceback" not in broken.stderr


def test_hydra_settings_pass_to_hydra_and_the_cluster_block_is_typed() -> None:
    cfg = compose("waveglow_train", "data=demo", "hydra/launcher=submitit_slurm", "hydra.job.name=x",
                  "cluster.nodes=2", "cluster.gpus_per_node=8")
    assert (cfg.cluster.nodes, cfg.cluster.gpus_per_node, cfg.cluster.partition) == (2, 8, None)
    with pytest.raises(UserError, match=r"^cluster.nodes=0: expected an integer >= 1$"):
        compose("waveglow_train", "data=demo", "cluster.nodes=0")
    with pytest.raises(UserError, match=r"unknown setting 'cluster.gpu_per_node' \(did you mean cluster.gpus_per_node\?\)"):
        compose("waveglow_train", "data=demo", "cluster.gpu_per_node=8")


@pytest.mark.parametrize("path", ["my data (1)/x", "a,b/c", "k=v/d", "sp ace/[x]"])
def test_paths_hydra_cannot_parse_still_work(path: str) -> None:
    cfg = compose("waveglow_train", "data=folder", f"data.root={path}", f"run_dir={path}")
    assert cfg.data.root == path and cfg.run_dir == path
