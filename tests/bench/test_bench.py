"""waveglow-bench: well-formed results on a tiny config, and the analytic cost model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, run_cli

from waveglow import bench
from waveglow import model as model_module
from waveglow.bench import cases, timing
from waveglow.checkpoint import build_checkpoint, build_model, save_checkpoint
from waveglow.cli.bench import rewrite_argv
from waveglow.config import ModelConfig, TrainConfig, from_dict, to_dict
from waveglow.errors import UserError
from waveglow.runtime import resolve_loader_workers, set_tf32, tf32_switches
from waveglow.train.numerics import NumericsState
from waveglow.train.step import Stepper

AUDIO = {"sampling_rate": 22050, "n_fft": 1024, "hop_length": 256, "win_length": 1024,
         "n_mels": 80, "fmin": 0.0, "fmax": 8000.0, "log_clamp": 1e-5}

# Small configs covering every branch of the cost model: early exits, additive and alternating
# couplings, kernel 5, depthwise-separable layers, repeat upsampling with large groups.
SMALL_CONFIGS = {
    "affine": {"n_group": 8, "n_flows": 6, "n_early_every": 2, "n_early_size": 2,
               "wn": {"n_layers": 3, "n_channels": 16}},
    "additive_alternate_k5": {"n_group": 8, "n_flows": 4, "coupling": "additive",
                              "condition_half": "alternate",
                              "wn": {"n_layers": 2, "n_channels": 8, "kernel_size": 5}},
    "depthwise_repeat": {"n_group": 64, "n_flows": 4, "n_early_every": 2, "n_early_size": 16,
                         "upsample": "repeat",
                         "wn": {"n_layers": 3, "n_channels": 32, "depthwise": True}},
}

# Tiny machine-peak kernels: the tests check the plumbing, not the machine.
FAST_PEAK = {"matmul_n": 128, "conv_length": 500, "repeats": 2}
FAST_PEAK_ARGS = ["peak.matmul_n=128", "peak.conv_length=500", "peak.repeats=2"]


@pytest.fixture
def one_thread():
    """One intra-op thread (on shared cores a 2-thread team stalls at every barrier); restored after."""
    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


def _repo_model_configs() -> dict[str, dict]:
    """The repository's model configs small enough to instantiate quickly in a test."""
    out = {}
    for path in sorted((REPO / "waveglow" / "configs" / "model").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        cfg.pop("defaults", None)  # Hydra's composition list
        if cfg.get("wn", {}).get("n_channels", 256) <= 128:
            out[path.stem] = cfg
    return out


@pytest.mark.parametrize("name,model_cfg", [*SMALL_CONFIGS.items(), *_repo_model_configs().items()])
def test_analytic_macs_match_counted_operators(name: str, model_cfg: dict) -> None:
    """count_macs (layer shapes) == the MACs of every conv/matmul that synthesis actually runs.

    The flow is compared exactly. The mel upsampler may compute a few frames past the audio
    length (its kernel overhangs the last frame by kernel/hop - 1 frames, then the output is
    cut), so its count may exceed the analytic one by at most that overhang.
    """
    typed = from_dict(ModelConfig, model_cfg)
    model = build_model({"model": to_dict(typed), "audio": AUDIO}).eval()
    model.remove_weight_norm()
    frames = 6
    mel = torch.randn(1, 80, frames)
    with torch.inference_mode():
        traced = bench.count_macs_traced(lambda: model.infer(mel))
        traced_cond = bench.count_macs_traced(lambda: model.condition(mel, 256 * frames))
    parts = bench.count_macs(typed, 80, 256, 22050, seconds=256 * frames / 22050)
    assert parts["total"] - parts["upsample"] == pytest.approx(traced - traced_cond, rel=1e-9), name
    overhang = math.ceil(model_cfg.get("upsample_kernel", 1024) / 256) - 1
    assert parts["upsample"] <= traced_cond <= parts["upsample"] * (frames + overhang) / frames


def test_analytic_macs_of_the_reference_size() -> None:
    """The 256-channel reference costs about 223 GMAC per second of 22.05 kHz audio."""
    cfg = yaml.safe_load((REPO / "waveglow" / "configs" / "model" / "waveglow_256.yaml").read_text())
    cfg.pop("defaults", None)
    parts = bench.count_macs(from_dict(ModelConfig, cfg))
    assert 218e9 < parts["total"] < 228e9
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))


@pytest.mark.parametrize("name", [n for n, c in SMALL_CONFIGS.items() if not c["wn"].get("depthwise")])
def test_macs_per_sample_of_a_built_model_matches_the_config_count(name: str) -> None:
    """macs_per_sample (from the modules) × sampling rate == count_macs (from the settings)."""
    typed = from_dict(ModelConfig, SMALL_CONFIGS[name])
    model = build_model({"model": to_dict(typed), "audio": AUDIO})
    assert bench.macs_per_sample(model) * 22050 == pytest.approx(bench.count_macs(typed)["total"], rel=1e-9)


def test_model_names_resolve_in_the_package_configs(tmp_path: Path) -> None:
    bench.check_model_spec("tiny")  # waveglow/configs/model/tiny.yaml, found without the CLI
    with pytest.raises(UserError, match=r"model=no_such_model: expected a config name \(.*tiny"):
        bench.check_model_spec("no_such_model")
    with pytest.raises(UserError, match="checkpoint not found"):
        bench.check_model_spec(str(tmp_path / "missing.pt"))
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    bench.check_model_spec("small", tmp_path)
    with pytest.raises(UserError, match="model=tiny"):
        bench.check_model_spec("tiny", tmp_path)


def test_rewrite_argv_turns_model_and_comma_lists_into_hydra_lists() -> None:
    assert rewrite_argv(["model=tiny,squeeze", "seconds=1,5", "precision=bf16"]) == [
        "models=[tiny,squeeze]", "seconds=[1,5]", "precision=[bf16]"]
    assert rewrite_argv(["model=runs/a/best.pt", "tasks=[train]", "data.root=x"]) == [
        "models=[runs/a/best.pt]", "tasks=[train]", "data.root=x"]


def test_plan_cases_runs_preprocess_once_and_rejects_unknown_values() -> None:
    cases = list(bench.plan_cases(["a", "b"], ["synthesis", "train", "preprocess"], ["fp32", "bf16"],
                                  [1.0, 5.0], [], "cpu"))
    kinds = [(c.task, c.model, c.precision) for c in cases]
    assert kinds.count(("preprocess", "melspectrogram", "fp32")) == 1
    assert sum(c.task == "synthesis" for c in cases) == 2 * 2 * 2
    assert {c.batch for c in cases if c.task == "train"} == {2}
    assert {c.warmup for c in cases if c.task == "train"} == {1}
    assert cases == list(bench.plan_cases(["a", "b"], ["synthesis", "train", "preprocess"],
                                          ["fp32", "bf16"], [1.0, 5.0], None, "cpu"))
    with pytest.raises(UserError, match="tasks=bogus"):
        list(bench.plan_cases(["a"], ["bogus"], ["fp32"], [1.0], [], "cpu"))
    with pytest.raises(UserError, match="precision=fp8"):
        list(bench.plan_cases(["a"], ["synthesis"], ["fp8"], [1.0], [], "cpu"))


def test_plan_cases_runs_training_once_per_memory_mode() -> None:
    cases = list(bench.plan_cases(["a"], ["synthesis", "train"], ["fp32", "bf16"], [1.0], [], "cpu",
                                  memories=["standard", "invertible"]))
    assert [(c.task, c.precision, c.memory) for c in cases] == [
        ("synthesis", "fp32", "standard"), ("synthesis", "bf16", "standard"),
        ("train", "fp32", "standard"), ("train", "fp32", "invertible"),
        ("train", "bf16", "standard"), ("train", "bf16", "invertible")]
    with pytest.raises(UserError, match="memory=bogus"):
        list(bench.plan_cases(["a"], ["train"], ["fp32"], [1.0], [], "cpu", memories=["bogus"]))
    assert rewrite_argv(["memory=standard,invertible"]) == ["memory=[standard,invertible]"]


def test_train_case_runs_the_memory_mode_it_names(tmp_path: Path, one_thread: int, monkeypatch) -> None:
    """memory=invertible reaches the model through the trainer's step (the recomputing walk
    runs once per step); memory=standard never runs it."""
    walks = []
    real = model_module.walk_recomputed

    def counting(*args, **kwargs):
        walks.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module, "walk_recomputed", counting)
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    rows = {}
    for memory in ("standard", "invertible"):
        walks.clear()
        case = bench.Case(task="train", model="small", batch=2, segment_length=1024, repeats=2,
                          warmup=1, audio=AUDIO, config_dir=str(tmp_path), measure_peak=False,
                          threads=one_thread, memory=memory)
        rows[memory] = bench.run_case(case)
        assert len(walks) == (3 if memory == "invertible" else 0)
        assert rows[memory]["memory"] == memory and rows[memory]["samples_per_sec"] > 0


def test_peak_memory_sees_a_region_allocation() -> None:
    # 256 MiB: more than the allocator may keep resident from earlier frees (glibc keeps up to
    # 64 MiB of freed heap), so the pages must be new.
    with bench.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(256 * 2**20 // 4)
        del x
    assert mem.peak_mib is not None and mem.start_mib is not None
    assert mem.peak_mib - mem.start_mib > 128


def test_machine_peak_kernels_shrink_to_the_time_budget(one_thread: int) -> None:
    # A budget no kernel fits: both run at their probe sizes; one every kernel fits: as configured.
    small = bench.measure_machine_peak("cpu", "fp32", matmul_n=512, conv_length=4000, repeats=1,
                                       max_seconds=1e-9)
    full = bench.measure_machine_peak("cpu", "fp32", matmul_n=512, conv_length=4000, repeats=1,
                                      max_seconds=1e3)
    assert (small["matmul_n"], small["conv_length"]) == (256, 1000)
    assert (full["matmul_n"], full["conv_length"]) == (512, 4000)
    for peak in (small, full):
        assert peak["matmul_gmacs"] > 0 and peak["conv_gmacs"] > 0
    # At 1 GMAC/s a 1 s budget fits a 1000³ product and 1e9 / (256·512·3) = 2,543 conv steps.
    assert timing._fit(2048, 256, 1.0, 1e-9, 1.0, 3) == 1000
    assert timing._fit(16000, 1000, 256 * 512 * 3, 1e-9, 1.0, 1) == 2543
    assert timing._fit(2048, 256, 1.0, 1e-12, 1.0, 3) == 2048  # fast machine: full size


def _check_row(row: dict, task: str) -> None:
    missing = [k for k in bench.RESULT_KEYS if k not in row]
    assert not missing, missing
    assert row["task"] == task and row["device"] == "cpu" and not row.get("error")
    for key in ("khz", "rtf", "samples_per_sec", "median_s", "min_s", "peak_mem_mib", "audio_seconds"):
        assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, key
    assert row["min_s"] <= row["median_s"]
    assert row["khz"] == pytest.approx(row["samples_per_sec"] / 1000)
    assert row["rtf"] == pytest.approx(row["samples_per_sec"] / 22050)
    assert 50 < row["peak_mem_mib"] < 64 * 1024
    if task == "preprocess":
        for key in ("gmac_per_audio_second", "achieved_gmacs", "machine_peak_gmacs", "pct_of_peak"):
            assert row[key] is None, key
        return
    assert row["gmac_per_audio_second"] > 0 and row["achieved_gmacs"] > 0
    assert row["machine_peak_gmacs"] == max(row["machine_matmul_gmacs"], row["machine_conv_gmacs"])
    assert row["pct_of_peak"] == pytest.approx(100 * row["achieved_gmacs"] / row["machine_peak_gmacs"])
    assert row["achieved_gmacs"] == pytest.approx(row["gmac_per_audio_second"] * row["rtf"])


@pytest.mark.slow  # ~30 s: every bench task of tiny through the console script
def test_cli_tiny_emits_one_well_formed_line_per_case(tmp_path: Path) -> None:
    proc = run_cli("waveglow-bench", "model=tiny", "tasks=synthesis,train,preprocess",
                   "precision=fp32", "seconds=0.25", "repeats=2", "warmup=1", "segment_length=2048",
                   "memory=standard,invertible", "threads=1", f"output_dir={tmp_path}",
                   *FAST_PEAK_ARGS, timeout=180)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [r["task"] for r in rows] == ["synthesis", "train", "train", "preprocess"]
    assert [r["memory"] for r in rows[1:3]] == ["standard", "invertible"]
    for row in rows:
        _check_row(row, row["task"])
    synth, train = rows[0], rows[1]
    assert rows[2]["gmac_per_audio_second"] == train["gmac_per_audio_second"]
    # What data.loader_workers=auto gives a training process here (the bench's step is synthetic).
    assert train["loader_workers"] == resolve_loader_workers("auto") and synth["loader_workers"] is None
    assert synth["model"] == "tiny" and synth["batch"] == 1 and synth["precision"] == "fp32"
    assert synth["threads"] == 1
    assert synth["audio_seconds"] == pytest.approx(0.25, abs=256 / 22050)
    assert train["batch"] == 2 and train["audio_seconds"] == pytest.approx(2 * 2048 / 22050)
    # Training costs about three passes: forward, and backward for inputs and for weights.
    assert 2 < train["gmac_per_audio_second"] / synth["gmac_per_audio_second"] <= 3
    assert "kHz" in proc.stderr and "% peak" in proc.stderr and "invertible" in proc.stderr  # the table
    saved = [json.loads(line) for line in (tmp_path / "bench.jsonl").read_text().splitlines()]
    assert saved == rows
    assert (tmp_path / "bench.config.yaml").is_file() and (tmp_path / "table.txt").is_file()


def test_cli_unknown_model_is_a_one_line_error() -> None:
    proc = run_cli("waveglow-bench", "model=no_such_model", "tasks=synthesis", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model=no_such_model")


def _write_model_config(config_dir: Path, name: str, model_cfg: dict) -> None:
    (config_dir / "model").mkdir(parents=True, exist_ok=True)
    (config_dir / "model" / f"{name}.yaml").write_text(yaml.safe_dump(model_cfg))


def test_bf16_synthesis_reports_snr_against_fp32(tmp_path: Path, one_thread: int) -> None:
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    case = bench.Case(task="synthesis", model="small", precision="bf16", seconds=0.1, repeats=2,
                      warmup=1, audio=AUDIO, config_dir=str(tmp_path), peak=FAST_PEAK,
                      threads=one_thread)
    row = bench.run_case(case)
    _check_row(row, "synthesis")
    assert row["machine_peak_gmacs"] > 0
    assert 10 < row["snr_db_vs_fp32"] < 200


def test_synthesizer_engine_times_from_mel(tmp_path: Path, one_thread: int) -> None:
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    case = bench.Case(task="synthesis", model="small", seconds=0.1, repeats=2, warmup=1,
                      audio=AUDIO, config_dir=str(tmp_path), measure_peak=False,
                      engine="synthesizer", threads=one_thread)
    row = bench.run_case(case)
    assert row["engine"] == "synthesizer" and row["khz"] > 0 and row["gmac_per_audio_second"] > 0


def test_checkpoint_path_as_model(tmp_path: Path, one_thread: int) -> None:
    """model=<checkpoint> builds the model from the config stored in the checkpoint."""
    config = {"audio": AUDIO, "model": to_dict(from_dict(ModelConfig, SMALL_CONFIGS["affine"]))}
    path = save_checkpoint(tmp_path / "run" / "best.pt", build_checkpoint(build_model(config), config))
    case = bench.Case(task="train", model=str(path), batch=1, segment_length=1024, repeats=2,
                      warmup=1, audio={}, peak=FAST_PEAK, measure_peak=False, threads=one_thread)
    row = bench.run_case(case)
    assert row["weights"] == "checkpoint" and row["machine_peak_gmacs"] is None
    assert row["samples_per_sec"] > 0 and row["peak_mem_mib"] > 0


def test_train_case_times_the_trainers_step(tmp_path: Path, one_thread: int, monkeypatch) -> None:
    """The train case runs `waveglow.train.step.Stepper`, warmup + repeats times."""
    calls = []

    class Counting(Stepper):
        def __call__(self, audio, mel, lr, **kw):
            calls.append((tuple(audio.shape), lr, self.grad_clip, self.scaler))
            return super().__call__(audio, mel, lr, **kw)

    monkeypatch.setattr(cases, "Stepper", Counting)
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    case = bench.Case(task="train", model="small", batch=2, segment_length=1030, repeats=2,
                      warmup=1, audio=AUDIO, config_dir=str(tmp_path), measure_peak=False,
                      threads=one_thread, lr=3e-4)
    row = bench.run_case(case)
    assert calls == [((2, 1024), 3e-4, 100.0, None)] * 3
    assert row["samples_per_sec"] > 0 and row["audio_seconds"] == pytest.approx(2 * 1024 / 22050)


def test_train_case_runs_under_the_trainers_numerics(tmp_path: Path, one_thread: int, monkeypatch) -> None:
    """The step runs under `waveglow.train.numerics.configure` with the trainer's default
    settings (on CUDA: TF32 for the conditioner, cuDNN autotuning), put back after the case.
    The CUDA switches are plain flags, so a CPU run can watch them: here `configure` is told
    the device is CUDA."""
    real = cases.configure_numerics
    configured = []

    def as_on_cuda(train_cfg, device):
        configured.append((train_cfg, device.type))
        real(train_cfg, torch.device("cuda"))

    flags = []

    class Recording(Stepper):
        def __call__(self, audio, mel, lr, **kw):
            matmul_tf32, conv_tf32 = tf32_switches()
            flags.append((torch.backends.cudnn.benchmark, conv_tf32, matmul_tf32))
            return super().__call__(audio, mel, lr, **kw)

    monkeypatch.setattr(cases, "configure_numerics", as_on_cuda)
    monkeypatch.setattr(cases, "Stepper", Recording)
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    case = bench.Case(task="train", model="small", batch=1, segment_length=512, repeats=1,
                      warmup=0, audio=AUDIO, config_dir=str(tmp_path), measure_peak=False,
                      threads=one_thread)
    outside = NumericsState.capture()
    try:
        torch.backends.cudnn.benchmark = False
        set_tf32(False)
        torch.set_num_threads(one_thread)  # what run_case sets first
        before = NumericsState.capture()
        bench.run_case(case)
        assert NumericsState.capture() == before
    finally:
        outside.restore()
    assert configured == [(TrainConfig(), "cpu")]
    assert flags == [(True, TrainConfig.tf32, TrainConfig.tf32)]


@pytest.mark.cuda
def test_cuda_synthesis_reports_max_allocated(tmp_path: Path) -> None:
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    case = bench.Case(task="synthesis", model="small", device="cuda", precision="fp16", seconds=0.1,
                      repeats=2, warmup=1, audio=AUDIO, config_dir=str(tmp_path), peak=FAST_PEAK)
    row = bench.run_case(case)
    assert row["device"] == "cuda" and row["khz"] > 0 and 0 < row["peak_mem_mib"] < 4096


@pytest.mark.cuda
def test_cuda_fp16_train_case_runs_the_step_with_a_grad_scaler(tmp_path: Path, monkeypatch) -> None:
    scalers = []

    class Recording(Stepper):
        def __call__(self, audio, mel, lr, **kw):
            scalers.append(self.scaler)
            return super().__call__(audio, mel, lr, **kw)

    monkeypatch.setattr(cases, "Stepper", Recording)
    _write_model_config(tmp_path, "small", SMALL_CONFIGS["affine"])
    case = bench.Case(task="train", model="small", device="cuda", precision="fp16", batch=2,
                      segment_length=2048, repeats=2, warmup=1, audio=AUDIO,
                      config_dir=str(tmp_path), peak=FAST_PEAK)
    row = bench.run_case(case)
    assert scalers and all(isinstance(s, torch.amp.GradScaler) for s in scalers)
    assert row["samples_per_sec"] > 0 and 0 < row["peak_mem_mib"] < 4096


def test_engine_onnxruntime_puts_eager_and_onnx_rows_in_one_table() -> None:
    from waveglow.cli.bench import with_onnx_rows

    common = dict(repeats=1, threads=1, sigma=0.6, seed=0, audio={}, segment_length=16000, lr=1e-4,
                  corpus="data/demo", peak={}, snr=False, engine="model", clock="wall")
    cases = list(bench.plan_cases(models=["tiny"], tasks=["synthesis", "train"], precisions=["fp32", "bf16"],
                                  seconds=[1.0], batches=None, device="cpu", **common))
    rows = [(c.task, c.precision, c.engine) for c in with_onnx_rows(cases)]
    assert rows[:3] == [("synthesis", "fp32", "model"), ("synthesis", "fp32", "onnxruntime"),
                        ("synthesis", "bf16", "model")]
    assert [r for r in rows if r[2] == "onnxruntime"] == [("synthesis", "fp32", "onnxruntime")]
    train_only = [c for c in cases if c.task == "train"]
    with pytest.raises(UserError, match="engine=onnxruntime times the fp32 ONNX export"):
        with_onnx_rows(train_only)
