"""The benchmark cases: what one measurement is (`Case`), the plan of cases a run makes, the
model a case names, and the three runners (synthesis, a training step, mel extraction), each
in this process (`run_case`) or in a fresh one (`run_case_isolated`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from waveglow.bench.case import Case
from waveglow.bench.cost import count_macs
from waveglow.bench.memory import PeakMemory
from waveglow.bench.onnx_case import bench_onnxruntime
from waveglow.bench.report import empty_row, fill_peak, fill_speed
from waveglow.bench.timing import CLOCKS, measure_machine_peak, time_runs
from waveglow.checkpoint import build_model, load_model
from waveglow.config import AudioConfig, ModelConfig, TrainConfig, from_dict, to_dict, validate
from waveglow.data.audio import load_audio
from waveglow.errors import UserError
from waveglow.inference.synthesizer import Synthesizer
from waveglow.mel import MelSpectrogram
from waveglow.model import MEMORY_MODES
from waveglow.runtime import (
    PRECISIONS,
    autocast,
    resolve_device,
    resolve_loader_workers,
    resolve_precision,
)
from waveglow.train.numerics import NumericsState
from waveglow.train.numerics import configure as configure_numerics
from waveglow.train.step import Stepper

TASKS = ("synthesis", "train", "preprocess")
# The train case runs the trainer's step with the trainer's default clipping and numerics.
TRAIN_DEFAULTS = TrainConfig()
GRAD_CLIP = TRAIN_DEFAULTS.grad_clip


# ------------------------------------------------------------------------------ the model


def model_config_dir(config_dir: str | os.PathLike | None = None) -> Path:
    """The folder of model configs: `config_dir/model`, or the package's `configs/model`."""
    if config_dir:
        return Path(config_dir) / "model"
    return Path(str(resources.files("waveglow") / "configs" / "model"))


def _is_checkpoint_spec(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in (".pt", ".pth", ".ckpt") or "/" in spec or os.sep in spec or path.is_file()


def check_model_spec(spec: str, config_dir: str | os.PathLike | None = None) -> None:
    """Fail early (before any case runs) on a model that is neither a config nor a checkpoint.

    Args:
        spec: a model config name or a checkpoint path.
        config_dir: a folder holding `model/<name>.yaml` (None: the package's configs).

    Raises:
        UserError: no model config `<spec>.yaml` and no checkpoint file at `spec`.
    """
    if _is_checkpoint_spec(spec):
        if not Path(spec).is_file():
            raise UserError(f"model={spec}: checkpoint not found (model= takes a config name from "
                            "configs/model/ or a checkpoint file)")
        return
    folder = model_config_dir(config_dir)
    if not (folder / f"{spec}.yaml").is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise UserError(f"model={spec}: expected a config name ({', '.join(names) or 'none found'}) "
                        "or a checkpoint path")


def resolve_model(spec: str, audio: AudioConfig, config_dir: str | os.PathLike | None = None
                  ) -> tuple[torch.nn.Module, ModelConfig, AudioConfig, str]:
    """Build the model a case names: a model config name or a checkpoint.

    A config-built model has random weights (see `_randomize_end_layers`); the cost of every
    operation is the same as for trained weights.

    Returns:
        (model in eval mode on CPU, its model settings, its audio settings (the checkpoint's,
        or `audio`), weights: "random" or "checkpoint").
    """
    check_model_spec(spec, config_dir)
    if _is_checkpoint_spec(spec):
        model = load_model(spec, device="cpu")
        config = model.config
        # Written by any version of the toolkit: unknown keys are not this benchmark's business.
        model_cfg = from_dict(ModelConfig, config["model"], prefix="model", strict=False)
        if "audio" in config:
            audio = from_dict(AudioConfig, config["audio"], prefix="audio", strict=False)
        return model, model_cfg, audio, "checkpoint"

    cfg_path = model_config_dir(config_dir) / f"{spec}.yaml"
    values = yaml.safe_load(cfg_path.read_text())
    if not isinstance(values, dict):
        raise UserError(f"{cfg_path}: expected a mapping of model settings")
    values.pop("defaults", None)  # Hydra's composition list, not a setting
    model_cfg = validate(from_dict(ModelConfig, values, prefix="model"), "model")
    model = build_model({"model": to_dict(model_cfg), "audio": to_dict(audio)})
    _randomize_end_layers(model)
    return model.eval(), model_cfg, audio, "random"


def _randomize_end_layers(model: torch.nn.Module, scale: float = 0.3) -> None:
    """Give the zero-initialized coupling outputs small random weights.

    An untrained model's couplings are exact identities (zero end layer); the cost is the same
    either way, but with non-zero shifts and scales the bf16 SNR figure measures the coupling
    arithmetic rather than just the 1×1 convs. Weights ~ N(0, (scale/√C)²) keep each shift and
    log-scale around `scale` times the conditioner's skip output, so the inverse stays finite.
    """
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(".end") and isinstance(module, torch.nn.Conv1d):
                std = scale / math.sqrt(module.in_channels)
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)


def _random_mel(batch: int, n_mels: int, frames: int, seed: int) -> torch.Tensor:
    """[batch, n_mels, frames] log-mels: speech sits roughly in [-11.5, 2]; values do not
    change the cost."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_mels, frames, generator=gen) * 1.5 - 6.0


def train_batch(batch: int, segment_length: int, n_group: int, audio: AudioConfig, seed: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The synthetic training batch every training measurement steps on (the bench's train case,
    `profile_train`, scripts/measure_train_compile.py): noise audio and its random log-mel.

    Returns:
        (audio [batch, L] in [-1, 1], mel [batch, n_mels, 1 + L // hop]), L = segment_length
        rounded down to a multiple of n_group.
    """
    length = segment_length - segment_length % n_group
    gen = torch.Generator().manual_seed(seed)
    wave = (torch.randn(batch, length, generator=gen) * 0.1).clamp(-1, 1)
    return wave, _random_mel(batch, audio.n_mels, 1 + length // audio.hop_length, seed)


def _base_row(case: Case) -> dict[str, Any]:
    return empty_row(task=case.task, model=case.model, device=case.device, precision=case.precision,
                     batch=case.batch, repeats=case.repeats, warmup=case.warmup,
                     threads=torch.get_num_threads(), clock=case.clock)


def _snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    reference = reference.double()
    noise = (other.double() - reference).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    return math.inf if noise == 0 else 10.0 * math.log10(signal / max(noise, 1e-300))


# ------------------------------------------------------------------------------ the runners


def bench_synthesis(case: Case, peak: Mapping[str, float] | None) -> dict[str, Any]:
    """Time synthesis of `case.seconds` of mel, batch `case.batch`.

    `engine="model"` times `model.infer` alone (weight norm folded, `torch.inference_mode`,
    autocast for bf16/fp16); `engine="synthesizer"` times `Synthesizer.from_mel` (per-item
    noise, chunking, the padded-batch fix-up, the copy back to CPU) — what
    `waveglow-synthesize` does minus file I/O.
    """
    device = resolve_device(case.device)
    model, model_cfg, audio, weights = resolve_model(case.model, from_dict(AudioConfig, case.audio),
                                                     case.config_dir)
    sr, hop = audio.sampling_rate, audio.hop_length
    row = _base_row(case)
    row.update(weights=weights, engine=case.engine)
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    frames = max(1, round(case.seconds * sr / hop))
    mel = _random_mel(case.batch, audio.n_mels, frames, case.seed).to(device)
    if case.engine == "onnxruntime":
        return bench_onnxruntime(case, peak, model, row, mel)
    gen_device = device if device.type == "cuda" else torch.device("cpu")

    if case.engine == "synthesizer":
        config = {"model": to_dict(model_cfg), "audio": to_dict(audio)}
        synth = {p: Synthesizer.from_model(model, config, device, precision=p,
                                           chunk_frames=max(frames, 1))
                 for p in {case.precision, "fp32"}}

        def synthesize(precision: str) -> torch.Tensor:
            return synth[precision].from_mel(mel, sigma=case.sigma, seed=case.seed,
                                             batch_size=case.batch)
    elif case.engine == "model":
        model.remove_weight_norm()
        model.to(device)

        def synthesize(precision: str) -> torch.Tensor:
            gen = torch.Generator(device=gen_device).manual_seed(case.seed)
            with torch.inference_mode(), autocast(device, resolve_precision(precision, device)):
                return model.infer(mel, sigma=case.sigma, generator=gen)
    else:
        raise UserError(f"engine={case.engine}: expected model or synthesizer")

    with PeakMemory(device) as mem:
        times = time_runs(lambda: synthesize(case.precision), case.repeats, case.warmup, device,
                          case.clock)
    row["peak_mem_mib"] = mem.peak_mib
    macs = count_macs(model_cfg, audio.n_mels, hop, sr)["total"]
    fill_speed(row, times, case.batch * hop * frames, sr, macs)
    fill_peak(row, peak)
    if case.snr and case.precision != "fp32":
        row["snr_db_vs_fp32"] = _snr_db(synthesize("fp32").float(), synthesize(case.precision).float())
    return row


def bench_train(case: Case, peak: Mapping[str, float] | None) -> dict[str, Any]:
    """Time the trainer's own step (`waveglow.train.step.Stepper`: -log_prob / T, backward,
    gradient clipping, the non-finite check, Adam) on batch × segment_length audio, with the
    backprop memory mode `case.memory`, under the trainer's numerics
    (`waveglow.train.numerics.configure` with the default train settings: on CUDA TF32 for
    the conditioner's convs and cuDNN autotuning)."""
    device = resolve_device(case.device)
    amp_dtype = resolve_precision(case.precision, device)
    model, model_cfg, audio, weights = resolve_model(case.model, from_dict(AudioConfig, case.audio),
                                                     case.config_dir)
    sr, hop = audio.sampling_rate, audio.hop_length
    row = _base_row(case)
    # The step runs on a synthetic batch; the row still says what `data.loader_workers=auto`
    # gives a training process on this machine, since that decides training speed too.
    row.update(weights=weights, memory=case.memory, loader_workers=resolve_loader_workers("auto"))
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    model.to(device).train()
    audio_batch, mel = train_batch(case.batch, case.segment_length, model_cfg.n_group, audio, case.seed)
    audio_batch, mel = audio_batch.to(device), mel.to(device)
    length = audio_batch.shape[1]
    optimizer = torch.optim.Adam(model.parameters(), lr=case.lr)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    stepper = Stepper(model, optimizer, device=device, amp_dtype=amp_dtype, grad_clip=GRAD_CLIP,
                      scaler=scaler, memory=case.memory)

    # The trainer's process-wide settings (cuDNN autotuning, TF32 for the conditioner's
    # training convs on CUDA), put back afterwards.
    numerics = NumericsState.capture()
    configure_numerics(TRAIN_DEFAULTS, device)
    try:
        with PeakMemory(device) as mem:
            times = time_runs(lambda: stepper(audio_batch, mel, case.lr), case.repeats, case.warmup,
                              device, case.clock)
    finally:
        numerics.restore()
    row["peak_mem_mib"] = mem.peak_mib
    parts = count_macs(model_cfg, audio.n_mels, hop, sr)
    # Backward costs two passes' worth (gradients w.r.t. inputs and weights), except for the
    # mel upsampler, whose input needs no gradient.
    macs = 3 * parts["total"] - parts["upsample"]
    fill_speed(row, times, case.batch * length, sr, macs)
    fill_peak(row, peak)
    return row


def _corpus_wavs(corpus: str) -> list[Path]:
    root = Path(corpus)
    wav_dir = root / "wavs" if (root / "wavs").is_dir() else root
    files = sorted([*wav_dir.rglob("*.wav"), *wav_dir.rglob("*.flac")])
    if not files:
        raise UserError(f"{corpus}: expected a corpus with .wav/.flac files (data.root)")
    return files


def bench_preprocess(case: Case) -> dict[str, Any]:
    """Time MelSpectrogram over every clip of the corpus (decoding excluded), one clip at a time."""
    device = resolve_device(case.device)
    audio = from_dict(AudioConfig, case.audio)
    sr = audio.sampling_rate
    clips = [torch.from_numpy(load_audio(p, sr)).to(device) for p in _corpus_wavs(case.corpus)]
    mel_fn = MelSpectrogram.from_config(audio).to(device)
    row = _base_row(case)
    row["model"] = "melspectrogram"
    row["clips"] = len(clips)

    def run() -> None:
        with torch.inference_mode():
            for clip in clips:
                mel_fn(clip)

    with PeakMemory(device) as mem:
        times = time_runs(run, case.repeats, case.warmup, device, case.clock)
    row["peak_mem_mib"] = mem.peak_mib
    fill_speed(row, times, sum(c.numel() for c in clips), sr, None)
    return row


# ------------------------------------------------------------------------------ running cases


def check_device(device: str, clock: str = "wall") -> None:
    """Raises UserError for a device this process cannot use or a clock that does not fit it."""
    kind = resolve_device(device).type
    if clock not in CLOCKS or (clock == "cpu" and kind == "cuda"):
        raise UserError(f"clock={clock}: expected wall, or cpu (CPU device only)")


def run_case(case: Case) -> dict[str, Any]:
    """Run one case in this process and return its result row."""
    if case.threads:
        torch.set_num_threads(int(case.threads))
    check_device(case.device, case.clock)
    torch.manual_seed(case.seed)
    if case.task not in TASKS:
        raise UserError(f"tasks={case.task}: expected one of {', '.join(TASKS)}")
    if case.task == "preprocess":
        row = bench_preprocess(case)
    else:
        peak = (measure_machine_peak(resolve_device(case.device), case.precision, clock=case.clock,
                                     **case.peak) if case.measure_peak else None)
        row = (bench_synthesis if case.task == "synthesis" else bench_train)(case, peak)
    # Other processes on the same cores slow every figure down; the load says whether they ran.
    with contextlib.suppress(OSError):
        row["loadavg_1m"] = os.getloadavg()[0]
    return row


def run_case_isolated(case: Case, timeout: float | None = None) -> dict[str, Any]:
    """Run one case in a fresh Python process (clean memory peak and allocator state).

    The child (`python -m waveglow.bench '<case json>'`) prints its result as the last line of
    stdout; its stderr (progress, warnings) passes through. A failed case yields a row with
    `error` set instead of raising.
    """
    env = dict(os.environ)
    if case.threads:
        # Set before torch starts so that the OpenMP pool is sized once.
        env["OMP_NUM_THREADS"] = str(case.threads)
    cmd = [sys.executable, "-m", "waveglow.bench", json.dumps(asdict(case))]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return error_row(case, f"timed out after {timeout} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return error_row(case, f"exit status {proc.returncode}")
    return json.loads(lines[-1])


def error_row(case: Case, message: str) -> dict[str, Any]:
    """The row of a case that failed: its identity and `error`."""
    return empty_row(task=case.task, model=case.model, device=case.device,
                     precision=case.precision, batch=case.batch, error=message)


# ------------------------------------------------------------------------------ the plan


def as_list(value: Any) -> list:
    """A scalar, a list, or a comma-separated string -> list (so `seconds=1,5` reads as [1, 5])."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, Mapping):
        return list(value)
    return [value]


def plan_cases(models: Sequence[str], tasks: Sequence[str], precisions: Sequence[str],
               seconds: Sequence[float], batches: Sequence[int | None] | None, device: str,
               warmup: int | None = None, memories: Sequence[str] = ("standard",),
               **common: Any) -> Iterator[Case]:
    """The cross product of the requested settings, in the order the table shows them.

    Preprocessing does not depend on the model or the precision: it runs once (fp32, first
    model's audio settings). Training ignores `seconds` (it uses the training segment length)
    and runs once per backprop memory mode in `memories`; the other tasks ignore `memories`.
    Empty or None `batches` means the per-task default: 1 for synthesis, 2 for training; `warmup`
    None means 1 untimed step for training (a step of a large model takes seconds) and 2 else.
    `common`: the other `Case` fields, the same for every case.
    """
    for task in tasks:
        if task not in TASKS:
            raise UserError(f"tasks={task}: expected a list drawn from {', '.join(TASKS)}")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise UserError(f"precision={precision}: expected {', '.join(PRECISIONS)}")
    for memory in memories:
        if memory not in MEMORY_MODES:
            raise UserError(f"memory={memory}: expected a list drawn from {', '.join(MEMORY_MODES)}")
    batches = [b for b in batches or () if b is not None]
    for task in tasks:
        common["warmup"] = warmup if warmup is not None else (1 if task == "train" else 2)
        if task == "preprocess":
            yield Case(task=task, model="melspectrogram", device=device, precision="fp32",
                       batch=1, seconds=0.0, **common)
            continue
        for model in models:
            for precision in precisions:
                for batch in batches or [2 if task == "train" else 1]:
                    if task == "train":
                        for memory in memories or ["standard"]:
                            yield Case(task=task, model=model, device=device, precision=precision,
                                       batch=int(batch), seconds=0.0, memory=memory, **common)
                        continue
                    for sec in seconds:
                        yield Case(task=task, model=model, device=device, precision=precision,
                                   batch=int(batch), seconds=float(sec), **common)

