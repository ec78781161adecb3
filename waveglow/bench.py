"""Speed measurements that speak in kHz, real-time factor and % of this machine's peak.

Three tasks, each timed as the median (and min) of `repeats` runs after `warmup` runs:

- synthesis: `WaveGlow.infer` on a random mel after `remove_weight_norm`, under
  `torch.inference_mode` (and autocast for bf16/fp16);
- train: one forward + backward + Adam step at the training segment length and batch;
- preprocess: `MelSpectrogram` over the wavs of a corpus, in × real time.

Every case also reports the model's analytic cost (`count_macs`, from the config's layer shapes,
in GMAC per audio second), the GMAC/s it achieved, and the dense matmul / conv1d throughput this
machine reaches in the same dtype in the same process (`measure_machine_peak`), so a result reads
as a fraction of what the hardware can do. Peak memory is the resident-set high-water mark on
CPU (reset per case through /proc/self/clear_refs) and `max_memory_allocated` on CUDA.

Each case runs in a fresh subprocess by default (`python -m waveglow.bench '<case json>'`), so
one case's allocator state, thread pool or memory peak never leaks into the next.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from waveglow.errors import UserError

TASKS = ("synthesis", "train", "preprocess")
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("cpu", "cuda")

# Keys every result line carries (null where a figure does not apply).
RESULT_KEYS = (
    "task", "model", "device", "precision", "batch", "audio_seconds", "khz", "rtf",
    "samples_per_sec", "median_s", "min_s", "repeats", "warmup", "peak_mem_mib",
    "gmac_per_audio_second", "achieved_gmacs", "machine_matmul_gmacs", "machine_conv_gmacs",
    "machine_peak_gmacs", "pct_of_peak", "pct_of_conv_peak", "params_m", "threads",
    "clock", "loadavg_1m",
)


# ---------------------------------------------------------------------------------------------
# Analytic cost
# ---------------------------------------------------------------------------------------------


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if hasattr(cfg, "get") else getattr(cfg, key, default)
    return default if value is None else value


def count_macs(model_cfg: Mapping[str, Any], n_mels: int = 80, hop_length: int = 256,
               sampling_rate: int = 22050, seconds: float = 1.0) -> dict[str, float]:
    """Multiply-accumulates of one inference pass (mel -> audio), counted from layer shapes.

    The count covers every convolution / matrix product: the mel upsampler, and per flow the
    1×1 invertible conv (its inverse at synthesis costs the same), and the coupling's WN
    conditioner (start conv, the fused mel-conditioning projection, the dilated in-layers —
    depthwise + pointwise when `wn.depthwise` — the residual/skip convs and the end conv).
    Element-wise work (gates, exp, adds) is not counted: it is memory-bound and small next to
    the convolutions. Training (log_prob direction) costs the same per pass.

    Args:
        model_cfg: the `model` section of a config (see configs/model/*.yaml).
        n_mels, hop_length, sampling_rate: feature settings (the `audio` section).
        seconds: audio duration to count for.

    Returns:
        MACs per part (`upsample`, `inv1x1`, `start`, `cond`, `in_layers`, `res_skip`, `end`)
        and `total`, for `seconds` of audio.
    """
    n_group = int(_get(model_cfg, "n_group", 8))
    n_flows = int(_get(model_cfg, "n_flows", 12))
    early_every = int(_get(model_cfg, "n_early_every", 4))
    early_size = int(_get(model_cfg, "n_early_size", 2))
    coupling = str(_get(model_cfg, "coupling", "affine"))
    upsample = str(_get(model_cfg, "upsample", "conv_transpose"))
    up_kernel = int(_get(model_cfg, "upsample_kernel", 1024))
    wn = _get(model_cfg, "wn", {})
    n_layers = int(_get(wn, "n_layers", 8))
    channels = int(_get(wn, "n_channels", 256))
    kernel = int(_get(wn, "kernel_size", 3))
    depthwise = bool(_get(wn, "depthwise", False))

    samples = seconds * sampling_rate
    frames = samples / hop_length
    steps = samples / n_group  # time steps after squeezing audio into n_group channels

    parts = dict.fromkeys(("upsample", "inv1x1", "start", "cond", "in_layers", "res_skip", "end"), 0.0)
    if upsample == "conv_transpose":
        # Each input frame is spread over `up_kernel` outputs in every output channel.
        parts["upsample"] = frames * n_mels * n_mels * up_kernel
    # The conditioner sees the upsampled mel squeezed like the audio (n_mels·n_group channels),
    # or with `repeat` the frames themselves repeated along the squeezed time axis (n_mels).
    cond_in = n_mels * n_group if upsample == "conv_transpose" else n_mels
    remaining = n_group
    for k in range(n_flows):
        if early_every > 0 and k > 0 and k % early_every == 0:
            remaining -= early_size
        n_half = remaining // 2
        n_cond_half = n_half  # the conditioning half ...
        n_trans = remaining - n_cond_half  # ... and the transformed half
        parts["inv1x1"] += remaining * remaining * steps
        parts["start"] += n_cond_half * channels * steps
        parts["cond"] += cond_in * 2 * channels * n_layers * steps
        if depthwise:
            per_layer = channels * kernel + channels * 2 * channels
        else:
            per_layer = channels * 2 * channels * kernel
        parts["in_layers"] += n_layers * per_layer * steps
        # Every layer but the last writes residual + skip; the last one only skip.
        parts["res_skip"] += ((n_layers - 1) * channels * 2 * channels + channels * channels) * steps
        end_out = 2 * n_trans if coupling == "affine" else n_trans
        parts["end"] += channels * end_out * steps
    parts["total"] = sum(parts.values())
    return parts


def count_macs_traced(fn: Callable[[], Any]) -> float:
    """MACs that actually run in `fn()`, counted at the operator level (convolutions, matmuls).

    Uses `torch.utils.flop_counter.FlopCounterMode`, which sees every aten convolution and
    matrix product whether it comes from an `nn.Module` or a functional call; FLOPs / 2 = MACs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2.0


# ---------------------------------------------------------------------------------------------
# Machine peak
# ---------------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_runs(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device,
              clock: str = "wall") -> list[float]:
    """Seconds of `repeats` calls of `fn` after `warmup` untimed calls (device-synchronized).

    `clock="wall"` is elapsed time, what a user waits. `clock="cpu"` is this process's CPU time:
    on cores shared with other work, time slices given to other processes do not count, so
    with one thread it approximates the wall time on an idle core (with several threads it
    adds up every thread's time, spin-waits included).
    """
    now = CLOCKS[clock]
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = now()
        fn()
        _sync(device)
        times.append(now() - t0)
    return times


def measure_machine_peak(device: str | torch.device = "cpu", precision: str = "fp32",
                         matmul_n: int = 2048, conv_length: int = 16000,
                         repeats: int = 5, clock: str = "wall") -> dict[str, float]:
    """Dense throughput this process reaches in `precision`: a square matmul and a conv1d.

    The conv is 256 -> 512 channels, kernel 3, the shape of a WaveGlow-256 dilated layer, on
    one sequence of `conv_length` steps. Both are timed as the median of `repeats` runs, the
    same statistic the model cases use.

    Returns:
        {"matmul_gmacs", "conv_gmacs"} in 1e9 multiply-accumulates per second.
    """
    device = torch.device(device)
    dtype = PRECISIONS[precision]
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.inference_mode():
        a = torch.randn(matmul_n, matmul_n, generator=gen).to(device, dtype)
        b = torch.randn(matmul_n, matmul_n, generator=gen).to(device, dtype)
        mm = statistics.median(time_runs(lambda: torch.mm(a, b), repeats, 2, device, clock))
        x = torch.randn(1, 256, conv_length, generator=gen).to(device, dtype)
        w = torch.randn(512, 256, 3, generator=gen).to(device, dtype) * 0.05
        conv = statistics.median(
            time_runs(lambda: torch.nn.functional.conv1d(x, w, padding=1), repeats, 2, device, clock))
    return {
        "matmul_gmacs": matmul_n ** 3 / mm / 1e9,
        "conv_gmacs": 256 * 512 * 3 * conv_length / conv / 1e9,
    }


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def _proc_status_mib(field: str) -> float | None:
    """A memory field of /proc/self/status (e.g. "VmHWM", "VmRSS") in MiB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _vm_hwm_mib() -> float | None:
    return _proc_status_mib("VmHWM")


def _rss_mib() -> float | None:
    return _proc_status_mib("VmRSS")


class PeakMemory:
    """Peak memory of a region: RSS high-water on CPU, max allocated on CUDA (MiB).

    On Linux the RSS high-water mark (VmHWM) is reset to the current RSS by writing "5" to
    /proc/self/clear_refs, so the peak is that of the region, not of the process so far (it
    still includes what was resident at the start: the torch runtime and the model's weights).
    Where that is not possible it falls back to `ru_maxrss`, the process-lifetime peak — which
    is why cases run in fresh subprocesses.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib: float | None = None
        self.start_mib: float | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_mib = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            self.start_mib = _rss_mib()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            hwm = _vm_hwm_mib()
            if hwm is None:  # ru_maxrss is KiB on Linux
                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
            self.peak_mib = hwm


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------


@dataclass
class Case:
    """One benchmark measurement. `model` is a config name under configs/model/ or a checkpoint."""

    task: str
    model: str
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    seconds: float = 1.0  # synthesis: audio length of the mel; train: ignored (segment_length)
    repeats: int = 5
    warmup: int = 2
    threads: int | None = None
    sigma: float = 0.6
    seed: int = 0
    audio: dict = field(default_factory=dict)  # the audio config section
    segment_length: int = 16000
    lr: float = 1e-4
    corpus: str = "data/demo"
    config_dir: str = ""
    peak: dict = field(default_factory=dict)  # measure_machine_peak kwargs; {} -> defaults
    measure_peak: bool = True
    snr: bool = True  # synthesis in bf16/fp16: SNR of the output against fp32 with the same z
    engine: str = "model"  # synthesis through `model.infer` or `synthesize.Synthesizer.from_mel`
    clock: str = "wall"  # "wall" or "cpu" (process CPU time; see `time_runs`)


def _is_checkpoint_spec(spec: str) -> bool:
    path = Path(spec)
    return path.suffix in (".pt", ".pth", ".ckpt") or "/" in spec or os.sep in spec or path.is_file()


def check_model_spec(spec: str, config_dir: str | os.PathLike) -> None:
    """Fail early (before any case runs) on a model that is neither a config nor a checkpoint.

    Raises:
        UserError: no configs/model/<spec>.yaml and no checkpoint file at `spec`.
    """
    if _is_checkpoint_spec(spec):
        if not Path(spec).is_file():
            raise UserError(f"model={spec}: checkpoint not found (model= takes a config name from "
                            "configs/model/ or a checkpoint file)")
        return
    if not (Path(config_dir) / "model" / f"{spec}.yaml").is_file():
        names = sorted(p.stem for p in (Path(config_dir) / "model").glob("*.yaml"))
        raise UserError(f"model={spec}: expected a config name ({', '.join(names) or 'none found'}) "
                        "or a checkpoint path")


def resolve_model(spec: str, audio_cfg: Mapping[str, Any], config_dir: str | os.PathLike
                  ) -> tuple[torch.nn.Module, dict, dict, str]:
    """Build the model a case names: a config name (configs/model/<name>.yaml) or a checkpoint.

    A config-built model has random weights (see `_randomize_end_layers`); the cost of every
    operation is the same as for trained weights.

    Returns:
        (model in eval mode on CPU, model config dict, audio config dict, weights: "random" or
        "checkpoint").
    """
    from omegaconf import OmegaConf

    check_model_spec(spec, config_dir)
    if _is_checkpoint_spec(spec):
        from waveglow.checkpoint import load_model

        model = load_model(spec, device="cpu")
        config = getattr(model, "config", None) or {}
        return model, dict(config.get("model", {})), dict(config.get("audio", audio_cfg)), "checkpoint"

    cfg_path = Path(config_dir) / "model" / f"{spec}.yaml"
    model_cfg = OmegaConf.to_container(OmegaConf.load(cfg_path), resolve=True)
    if not isinstance(model_cfg, dict):
        raise UserError(f"{cfg_path}: expected a mapping of model settings")
    from waveglow.model import WaveGlow

    model = WaveGlow.from_config({"model": model_cfg, "audio": dict(audio_cfg)})
    _randomize_end_layers(model)
    return model.eval(), model_cfg, dict(audio_cfg), "random"


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
    # Log-mel values of speech sit roughly in [-11.5, 2]; the exact values do not change the cost.
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_mels, frames, generator=gen) * 1.5 - 6.0


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=PRECISIONS[precision])


def _base_row(case: Case) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    row.update(task=case.task, model=case.model, device=case.device, precision=case.precision,
               batch=case.batch, repeats=case.repeats, warmup=case.warmup,
               threads=torch.get_num_threads(), clock=case.clock)
    return row


def _fill_speed(row: dict[str, Any], times: Sequence[float], samples: float, sampling_rate: int,
                macs_per_audio_second: float | None) -> None:
    median = statistics.median(times)
    row["median_s"] = median
    row["min_s"] = min(times)
    row["samples_per_sec"] = samples / median
    row["khz"] = samples / median / 1000.0
    row["rtf"] = samples / sampling_rate / median
    row["audio_seconds"] = samples / sampling_rate
    if macs_per_audio_second is not None:
        row["gmac_per_audio_second"] = macs_per_audio_second / 1e9
        row["achieved_gmacs"] = macs_per_audio_second * row["rtf"] / 1e9


def _fill_peak(row: dict[str, Any], peak: Mapping[str, float] | None) -> None:
    if not peak:
        return
    row["machine_matmul_gmacs"] = peak["matmul_gmacs"]
    row["machine_conv_gmacs"] = peak["conv_gmacs"]
    # The best dense throughput this process reached in this dtype is the machine's peak here.
    row["machine_peak_gmacs"] = max(peak["matmul_gmacs"], peak["conv_gmacs"])
    if row.get("achieved_gmacs") is not None:
        row["pct_of_peak"] = 100.0 * row["achieved_gmacs"] / row["machine_peak_gmacs"]
        row["pct_of_conv_peak"] = 100.0 * row["achieved_gmacs"] / peak["conv_gmacs"]


def _snr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    reference = reference.double()
    noise = (other.double() - reference).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    return math.inf if noise == 0 else 10.0 * math.log10(signal / max(noise, 1e-300))


def bench_synthesis(case: Case, peak: Mapping[str, float] | None) -> dict[str, Any]:
    """Time synthesis of `case.seconds` of mel, batch `case.batch`.

    `engine="model"` times `model.infer` alone; `engine="synthesizer"` times
    `Synthesizer.from_mel` (per-item noise, chunking, the padded-batch fix-up, the copy back to
    CPU) — what `waveglow-synthesize` does minus file I/O.
    """
    device = torch.device(case.device)
    model, model_cfg, audio, weights = resolve_model(case.model, case.audio, case.config_dir)
    sr, hop, n_mels = int(audio["sampling_rate"]), int(audio["hop_length"]), int(audio["n_mels"])
    row = _base_row(case)
    row.update(weights=weights, engine=case.engine)
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    frames = max(1, round(case.seconds * sr / hop))
    mel = _random_mel(case.batch, n_mels, frames, case.seed).to(device)
    gen_device = device if device.type == "cuda" else torch.device("cpu")

    if case.engine == "synthesizer":
        from waveglow.synthesize import Synthesizer

        synth = {p: Synthesizer.from_model(model, {"model": model_cfg, "audio": audio}, device,
                                           precision=p, chunk_frames=max(frames, 1))
                 for p in {case.precision, "fp32"}}

        def synthesize(precision: str) -> torch.Tensor:
            return synth[precision].from_mel(mel, sigma=case.sigma, seed=case.seed,
                                             batch_size=case.batch)
    elif case.engine == "model":
        model.remove_weight_norm()
        model.to(device)

        def synthesize(precision: str) -> torch.Tensor:
            gen = torch.Generator(device=gen_device).manual_seed(case.seed)
            with torch.inference_mode(), _autocast(device, precision):
                return model.infer(mel, sigma=case.sigma, generator=gen)
    else:
        raise UserError(f"engine={case.engine}: expected model or synthesizer")

    with PeakMemory(device) as mem:
        times = time_runs(lambda: synthesize(case.precision), case.repeats, case.warmup, device, case.clock)
    row["peak_mem_mib"] = mem.peak_mib
    macs = count_macs(model_cfg, n_mels, hop, sr)["total"]
    _fill_speed(row, times, case.batch * hop * frames, sr, macs)
    _fill_peak(row, peak)
    if case.snr and case.precision != "fp32":
        row["snr_db_vs_fp32"] = _snr_db(synthesize("fp32").float(), synthesize(case.precision).float())
    return row


def bench_train(case: Case, peak: Mapping[str, float] | None) -> dict[str, Any]:
    """Time one optimizer step: -log_prob / T, backward, Adam, on batch × segment_length audio."""
    device = torch.device(case.device)
    model, model_cfg, audio, weights = resolve_model(case.model, case.audio, case.config_dir)
    sr, hop, n_mels = int(audio["sampling_rate"]), int(audio["hop_length"]), int(audio["n_mels"])
    row = _base_row(case)
    row["weights"] = weights
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    model.to(device).train()
    n_group = int(_get(model_cfg, "n_group", 8))
    length = case.segment_length - case.segment_length % n_group
    gen = torch.Generator().manual_seed(case.seed)
    audio_batch = (torch.randn(case.batch, length, generator=gen) * 0.1).clamp(-1, 1).to(device)
    mel = _random_mel(case.batch, n_mels, 1 + length // hop, case.seed).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=case.lr)
    scaler = torch.amp.GradScaler(device.type) if case.precision == "fp16" else None

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, case.precision):
            loss = -model.log_prob(audio_batch, mel).float().mean() / length
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    with PeakMemory(device) as mem:
        times = time_runs(step, case.repeats, case.warmup, device, case.clock)
    row["peak_mem_mib"] = mem.peak_mib
    parts = count_macs(model_cfg, n_mels, hop, sr)
    # Backward costs two passes' worth (gradients w.r.t. inputs and weights), except for the
    # mel upsampler, whose input needs no gradient.
    macs = 3 * parts["total"] - parts["upsample"]
    _fill_speed(row, times, case.batch * length, sr, macs)
    _fill_peak(row, peak)
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
    from waveglow.audio import load_audio
    from waveglow.mel import MelSpectrogram

    device = torch.device(case.device)
    sr = int(case.audio["sampling_rate"])
    clips = [torch.from_numpy(load_audio(p, sr)).to(device) for p in _corpus_wavs(case.corpus)]
    mel_fn = MelSpectrogram.from_config(case.audio).to(device)
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
    _fill_speed(row, times, sum(c.numel() for c in clips), sr, None)
    return row


def check_device(device: str, clock: str = "wall") -> None:
    """Raises UserError for a device this process cannot use or a clock that does not fit it."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device}: no CUDA device is available to this torch build")
    if clock not in CLOCKS or (clock == "cpu" and torch.device(device).type == "cuda"):
        raise UserError(f"clock={clock}: expected wall, or cpu (CPU device only)")


def run_case(case: Case) -> dict[str, Any]:
    """Run one case in this process and return its result row."""
    if case.threads:
        torch.set_num_threads(int(case.threads))
    device = torch.device(case.device)
    check_device(case.device, case.clock)
    torch.manual_seed(case.seed)
    if case.task not in TASKS:
        raise UserError(f"tasks={case.task}: expected one of {', '.join(TASKS)}")
    if case.task == "preprocess":
        row = bench_preprocess(case)
    else:
        peak = (measure_machine_peak(device, case.precision, clock=case.clock, **case.peak)
                if case.measure_peak else None)
        row = (bench_synthesis if case.task == "synthesis" else bench_train)(case, peak)
    # Other processes on the same cores slow every figure down; the load says whether they ran.
    with contextlib.suppress(OSError):
        row["loadavg_1m"] = os.getloadavg()[0]
    return row


def run_case_isolated(case: Case, timeout: float | None = None) -> dict[str, Any]:
    """Run one case in a fresh Python process (clean memory peak and allocator state).

    The child prints its result as the last line of stdout; its stderr (progress, warnings)
    passes through. A failed case yields a row with `error` set instead of raising.
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
        return _error_row(case, f"timed out after {timeout} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return _error_row(case, f"exit status {proc.returncode}")
    return json.loads(lines[-1])


def _error_row(case: Case, message: str) -> dict[str, Any]:
    row = dict.fromkeys(RESULT_KEYS)
    row.update(task=case.task, model=case.model, device=case.device, precision=case.precision,
               batch=case.batch, error=message)
    return row


# ---------------------------------------------------------------------------------------------
# Case list and output
# ---------------------------------------------------------------------------------------------


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
               seconds: Sequence[float], batches: Sequence[int], device: str,
               warmup: int | None = None, **common: Any) -> Iterator[Case]:
    """The cross product of the requested settings, in the order the table shows them.

    Preprocessing does not depend on the model or the precision: it runs once (fp32, first
    model's audio settings). Training ignores `seconds` (it uses the training segment length).
    An empty `batches` means the per-task default: 1 for synthesis, 2 for training; `warmup`
    None means 1 untimed step for training (a step of a large model takes seconds) and 2 else.
    """
    for task in tasks:
        if task not in TASKS:
            raise UserError(f"tasks={task}: expected a list drawn from {', '.join(TASKS)}")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise UserError(f"precision={precision}: expected fp32, bf16 or fp16")
    if device not in DEVICES:
        raise UserError(f"device={device}: expected cpu or cuda")
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
                        yield Case(task=task, model=model, device=device, precision=precision,
                                   batch=int(batch), seconds=0.0, **common)
                        continue
                    for sec in seconds:
                        yield Case(task=task, model=model, device=device, precision=precision,
                                   batch=int(batch), seconds=float(sec), **common)


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        return f"{value:.{digits}f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of result rows (one line per case)."""
    cols = [
        ("task", "task", 0), ("model", "model", 0), ("dev", "device", 0), ("prec", "precision", 0),
        ("B", "batch", 0), ("audio s", "audio_seconds", 2), ("kHz", "khz", 2), ("RTF", "rtf", 3),
        ("median s", "median_s", 3), ("min s", "min_s", 3), ("peak MiB", "peak_mem_mib", 0),
        ("GMAC/audio s", "gmac_per_audio_second", 2), ("GMAC/s", "achieved_gmacs", 1),
        ("peak GMAC/s", "machine_peak_gmacs", 1), ("% peak", "pct_of_peak", 1),
        ("% conv", "pct_of_conv_peak", 1), ("SNR dB", "snr_db_vs_fp32", 1),
    ]
    cells = [[h for h, _, _ in cols]]
    for row in rows:
        if row.get("error"):
            cells.append([_fmt(row.get(k), d) for _, k, d in cols[:5]] + [f"ERROR: {row['error']}"])
            continue
        cells.append([_fmt(row.get(k), d) for _, k, d in cols])
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cols))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.rjust(widths[i]) if i >= 4 else c.ljust(widths[i])
                               for i, c in enumerate(r)).rstrip())
        if len(lines) == 1:
            lines.append("-" * len(lines[0]))
    return "\n".join(lines)


def machine_description(threads: int | None = None) -> str:
    """One line: CPU model, cores, torch version, its CPU capability, and the cases' threads."""
    cpu = platform.processor() or "cpu"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cap = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({cap}), "
            f"{threads or torch.get_num_threads()} threads")


def json_safe(row: Mapping[str, Any]) -> dict[str, Any]:
    """Non-finite floats -> None, so every line is strict JSON."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def _child_main(argv: Sequence[str]) -> int:
    """`python -m waveglow.bench '<case json>'`: run one case and print its row as JSON."""
    try:
        row = run_case(Case(**json.loads(argv[0])))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(json_safe(row)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
