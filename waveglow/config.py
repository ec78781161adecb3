"""Typed settings: one dataclass per config group and per console script.

The YAML files under `waveglow/configs/` give the values; these classes give the types, the
allowed ranges and choices, and the one-line help of every key (shown by `--help`). The CLI
layer composes a config with Hydra, turns it into these objects and calls `validate`; the core
receives the objects (or plain values) and never sees Hydra or OmegaConf.

Importing this module registers nothing: `register_schemas()` (called by the CLI layer) puts
the schemas into Hydra's ConfigStore.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from waveglow.errors import UserError

MISSING: Any = "???"  # OmegaConf's marker of a mandatory value


class ConfigError(UserError):
    """A setting with a wrong type, range or choice; the message names the key."""


def setting(default: Any = MISSING, help: str = "", *, min: float | None = None, gt: float | None = None,
            max: float | None = None, choices: tuple[Any, ...] | None = None, factory: Any = None) -> Any:
    """A dataclass field with its one-line help and its allowed values (for a list: of each item)."""
    meta = {"help": help, "min": min, "gt": gt, "max": max, "choices": choices}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------- groups
@dataclass
class AudioConfig:
    """The feature settings (Tacotron 2 / NVIDIA convention): what a mel frame means."""

    sampling_rate: int = setting(22050, "audio samples per second (Hz)", min=1)
    n_fft: int = setting(1024, "STFT size (samples)", min=2)
    hop_length: int = setting(256, "audio samples per mel frame", min=1)
    win_length: int = setting(1024, "STFT window (samples, <= n_fft)", min=1)
    n_mels: int = setting(80, "mel channels", min=1)
    fmin: float = setting(0.0, "lowest mel filter edge (Hz)", min=0)
    fmax: float | None = setting(8000.0, "highest mel filter edge (Hz; null: sampling_rate/2)", gt=0)
    log_clamp: float = setting(1.0e-5, "magnitudes are clamped to this before the log", gt=0)

    def validate(self, prefix: str = "audio") -> None:
        if self.win_length > self.n_fft:
            raise ConfigError(f"{prefix}.win_length={self.win_length}: expected at most n_fft={self.n_fft}")
        nyquist = self.sampling_rate / 2
        if self.fmax is not None and self.fmax > nyquist:
            raise ConfigError(f"{prefix}.fmax={self.fmax}: expected at most sampling_rate/2 = {nyquist:g}")
        if self.fmin >= (self.fmax if self.fmax is not None else nyquist):
            raise ConfigError(f"{prefix}.fmin={self.fmin}: expected below fmax")


@dataclass
class SplitsConfig:
    n_val: int = setting(100, "validation clips", min=0)
    n_test: int = setting(500, "held-out test clips", min=0)
    seed: int = setting(1234, "seed of the split shuffle", min=0)


@dataclass
class DownloadConfig:
    url: str | None = setting(None, "archive URL")
    sha256: str | None = setting(None, "expected sha256 of the archive")
    archive: str | None = setting(None, "where the archive is stored")


@dataclass
class DataConfig:
    """A corpus and how training examples are cut from it."""

    name: str = setting("ljspeech", "corpus name (run directory names, messages)")
    root: str = setting(MISSING, "corpus folder")
    layout: str = setting("ljspeech", "ljspeech (metadata.csv + wavs/) | folder (any .wav/.flac below root)",
                          choices=("ljspeech", "folder"))
    cache_dir: str | None = setting(None, "mel cache, manifest and statistics (null: <root>/cache, or "
                                    "<root>/cache-<mel_dir name> with data.mel_dir)")
    splits: SplitsConfig = setting(factory=SplitsConfig, help="validation/test split sizes")
    segment_length: int = setting(16000, "audio samples per training example", min=1)
    dither: float = setting(1.0, "uniform dequantization noise in int16 LSBs (0 = off)", min=0)
    short_clip_policy: str = setting("noise", "clips shorter than a segment: noise (pad) | repeat | drop",
                                     choices=("noise", "repeat", "drop"))
    num_workers: int | None = setting(None, "preprocessing processes (null: number of cores)", min=1)
    loader_workers: Any = setting("auto", "DataLoader worker processes per training process: auto (from the "
                                  "cores per process; 0 on small machines) or a number >= 0")
    mel_dir: str | None = setting(None, "paired mels <clip id>.pt/.npy (e.g. Tacotron 2 GTA) used as the "
                                  "conditioning instead of mels computed from the audio; up to 4 frames "
                                  "of difference are trimmed/padded")
    download: DownloadConfig | None = setting(None, "where `waveglow-download` fetches the corpus")

    def validate(self, prefix: str = "data") -> None:
        w = self.loader_workers
        if w != "auto" and not (isinstance(w, int) and not isinstance(w, bool) and w >= 0):
            raise ConfigError(f"{prefix}.loader_workers={w}: expected auto or an integer >= 0")


@dataclass
class WNConfig:
    n_layers: int = setting(8, "dilated conv layers per coupling (dilations 1, 2, 4, ...)", min=1)
    n_channels: int = setting(256, "residual channels (even)", min=2)
    kernel_size: int = setting(3, "dilated conv kernel (odd)", min=1)
    depthwise: bool = setting(False, "depthwise-separable dilated convs (SqueezeWave style)")

    def validate(self, prefix: str = "model.wn") -> None:
        if self.n_channels % 2:
            raise ConfigError(f"{prefix}.n_channels={self.n_channels}: expected an even number")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"{prefix}.kernel_size={self.kernel_size}: expected an odd number")


@dataclass
class ModelConfig:
    """The flow's architecture (stored in every checkpoint)."""

    name: str = setting("waveglow", "model name (run directory names, messages)")
    n_group: int = setting(8, "audio samples per squeezed step (channels of the flow, even)", min=2)
    n_flows: int = setting(12, "flow steps, each a 1x1 conv then a coupling", min=1)
    n_early_every: int = setting(4, "an early output every this many flows", min=1)
    n_early_size: int = setting(2, "channels per early output (even)", min=0)
    coupling: str = setting("affine", "affine (Real NVP) | additive (NICE, log-det 0)",
                            choices=("affine", "additive"))
    sigma: float = setting(1.0, "prior std used by log_prob (training)", gt=0)
    condition_half: str = setting("first", "first (reference) | alternate (legacy layout)",
                                  choices=("first", "alternate"))
    upsample: str = setting("conv_transpose", "conv_transpose (learned) | repeat (frames repeated)",
                            choices=("conv_transpose", "repeat"))
    upsample_kernel: int = setting(1024, "conv-transpose upsampler kernel (samples)", min=1)
    wn: WNConfig = setting(factory=WNConfig, help="the WaveNet-like conditioner of each coupling")

    def validate(self, prefix: str = "model") -> None:
        if self.n_group % 2:
            raise ConfigError(f"{prefix}.n_group={self.n_group}: expected an even number")
        if self.n_early_size % 2:
            raise ConfigError(f"{prefix}.n_early_size={self.n_early_size}: expected an even number")
        exits = (self.n_flows - 1) // self.n_early_every
        remaining = self.n_group - exits * self.n_early_size
        if remaining < 2:
            raise ConfigError(f"{prefix}.n_group={self.n_group} leaves {remaining} channels after {exits} "
                              f"early outputs of {self.n_early_size}; at least 2 must remain")


@dataclass
class GuardConfig:
    max_bad_steps: int = setting(20, "consecutive skipped steps before reloading last.pt", min=1)
    val_drop: float = setting(1.0, "val log-likelihood drop (nats/sample) that reloads best.pt", gt=0)
    lr_factor: float = setting(0.5, "lr multiplier at each recovery", gt=0, max=1)
    max_recoveries: int = setting(5, "recoveries before training stops with an error", min=0)


@dataclass
class TrainConfig:
    """Optimization, numerics, validation, logging and checkpoints of `waveglow-train`."""

    max_steps: int = setting(580000, "optimizer steps (each consumes one global batch)", min=0)
    batch_size: int = setting(12, "segments per process per step", min=1)
    lr: float = setting(1.0e-4, "Adam learning rate", gt=0)
    betas: list[float] = setting(factory=lambda: [0.9, 0.999], help="Adam betas")
    eps: float = setting(1.0e-8, "Adam epsilon", gt=0)
    weight_decay: float = setting(0.0, "Adam weight decay", min=0)
    warmup_steps: int = setting(0, "linear lr warmup steps (0 = off)", min=0)
    lr_decay_steps: list[int] = setting(factory=list, help="steps at which lr is multiplied by lr_decay_factor")
    lr_decay_factor: float = setting(0.5, "lr multiplier at each lr_decay_steps milestone", gt=0)
    grad_clip: float = setting(100.0, "max global gradient norm (0 = no clipping)", min=0)
    seed: int = setting(1234, "seed of weights, data order, crops and dither", min=0)
    precision: str = setting("auto", "fp32 | bf16 | fp16 | auto (fp16 on CUDA, fp32 on CPU)",
                             choices=("auto", "fp32", "bf16", "fp16"))
    tf32: bool = setting(True, "allow TF32 in the conditioner's training convs (Ampere and newer)")
    deterministic: bool = setting(False, "bit-reproducible CPU runs, resumes included")
    device: str = setting("auto", "auto (CUDA if available) | cpu | cuda")
    threads: int | None = setting(None, "CPU threads per process (null: torch's default)", min=1)
    val_every: int = setting(1000, "validate every N steps (and at step 0)", min=1)
    val_segment_length: int | None = setting(None, "null: whole val clips; N: one centred segment", min=1)
    val_max_clips: int | None = setting(None, "validate on the first N val clips (null: all)", min=1)
    audio_every: int = setting(5000, "resynthesized val clips to TensorBoard every N steps (0 = never)", min=0)
    audio_clips: int = setting(2, "how many val clips to resynthesize", min=0)
    audio_sigma: float = setting(0.6, "sampling temperature of the resynthesis", gt=0)
    log_every: int = setting(50, "progress line and TensorBoard scalars every N steps", min=1)
    logdet_every: int = setting(200, "per-flow log-det terms to TensorBoard every N steps (0 = never)", min=0)
    checkpoint_every: int = setting(2000, "write last.pt and step_<N>.pt every N steps", min=1)
    keep_checkpoints: int = setting(5, "newest step_<N>.pt files kept", min=0)
    init_from: str | None = setting(None, "checkpoint whose weights start a new run (fine-tuning)")
    grad_accum: int = setting(1, "micro-batches per optimizer step (the gradient of batch_size x grad_accum)",
                              min=1)
    memory: str = setting("standard", "standard (store activations) | invertible (recompute each flow "
                          "step's input from its output in the backward pass: constant memory in K)",
                          choices=("standard", "invertible"))
    progress_seconds: float = setting(30.0, "also a progress line after this many seconds without one "
                                      "(0 = only every log_every steps; no effect on a terminal's bar)", min=0)
    guard: GuardConfig = setting(factory=GuardConfig, help="divergence guards")


# ------------------------------------------------------------------------------ console scripts
@dataclass
class MelApp:
    audio: AudioConfig = field(default_factory=AudioConfig)
    input: str = setting(MISSING, "a .wav/.flac file, a folder (recursive), a glob or a filelist")
    output_dir: str = setting(MISSING, "gets <stem>.pt (float32 [n_mels, frames]) per input")
    format: str = setting("pt", "pt (torch.save of a plain tensor) | npy", choices=("pt", "npy"))
    dither: float = setting(0.0, "int16 LSBs of uniform noise (0: deterministic output)", min=0)
    seed: int = setting(0, "seeds the dither noise", min=0)
    progress: bool = setting(True, "progress bar on a terminal")


@dataclass
class PreprocessApp:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    progress: bool = setting(True, "progress bar on a terminal")


@dataclass
class DownloadApp:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    keep_archive: bool = setting(True, "keep the archive after extraction")
    progress: bool = setting(True, "byte / file progress bars on stderr")


@dataclass
class TrainApp:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str | None = setting(None, "run directory (null: checkpoints/<data>-<model>-<time>)")


@dataclass
class InferenceSettings:
    """What synthesis, resynthesis and scoring share: the checkpoint and where it runs. They have
    no audio settings of their own: sample rate, hop and mels come from the checkpoint."""

    checkpoint: str = setting(MISSING, "a checkpoint of this toolkit (waveglow-train / waveglow-import-nvidia)")
    input: Any = setting(MISSING, "a file, a folder, a glob or a filelist")
    device: str = setting("auto", "auto (CUDA when available) | cpu | cuda | cuda:N")
    precision: str = setting("fp32", "fp32 | fp16 | bf16", choices=("fp32", "fp16", "bf16"))
    chunk_frames: int = setting(1024, "longer inputs are processed in pieces of this many frames", min=1)
    on_error: str = setting("fail", "fail: stop at the first bad file | skip: continue, list them",
                            choices=("fail", "skip"))
    progress: bool = setting(True, "progress bar over files")


CONVENTIONS = ("natural", "log10", "db")


@dataclass
class SynthesizeApp(InferenceSettings):
    output_dir: str = setting(MISSING, "gets <stem>.wav per input")
    input_convention: str = setting("natural", "the input mels' log: natural (Tacotron 2, this toolkit) | "
                                    "log10 | db; converted to the model's natural log", choices=CONVENTIONS)
    sigma: float = setting(0.6, "std of the latent noise (0: deterministic)", min=0)
    batch_size: int = setting(8, "mels (or chunks) decoded together; outputs do not depend on it", min=1)
    denoiser_strength: float = setting(0.0, "> 0 subtracts that multiple of the model's bias spectrum", min=0)
    denoiser_mel: str = setting("mean", "zero-level mel of the denoiser: mean | silence | zeros",
                                choices=("mean", "silence", "zeros"))
    seed: int = setting(0, "each file's noise is seeded from (seed, file stem)", min=0)
    format: str = setting("PCM_16", "PCM_16 | PCM_24 | FLOAT", choices=("PCM_16", "PCM_24", "FLOAT"))
    chunk_overlap: int | None = setting(None, "context frames per side (null: the receptive field, exact)",
                                           min=0)
    crossfade_frames: int = setting(4, "linear crossfade at piece boundaries (even, frames)", min=0)


@dataclass
class ResynthesizeApp(SynthesizeApp):
    pass


@dataclass
class ScoreApp(InferenceSettings):
    output: str = setting(MISSING, "scores.csv or scores.json")
    mel_dir: str | None = setting(None, "score against given mels <mel_dir>/<name>.pt|.npy (e.g. a TTS's) "
                                  "instead of mels computed from the audio")
    input_convention: str = setting("natural", "(with mel_dir) natural | log10 | db", choices=CONVENTIONS)
    threshold: float = setting(8.0, "a frame is suspect when its robust z-score is below -threshold", gt=0)
    merge_gap: int = setting(2, "suspect frames at most this many frames apart form one region", min=0)
    dither: float = setting(0.0, "int16 LSBs of uniform noise added before scoring", min=0)


@dataclass
class ImportNvidiaApp:
    audio: AudioConfig = field(default_factory=AudioConfig)
    input: str = setting(MISSING, "the NVIDIA checkpoint (.pt)")
    output: str = setting(MISSING, "the checkpoint to write")
    layout: str = setting("auto", "auto | reference | legacy (only needed for bare state_dicts)",
                          choices=("auto", "reference", "legacy"))
    sigma: float = setting(1.0, "prior std stored as model.sigma for log_prob", gt=0)


@dataclass
class PeakConfig:
    matmul_n: int = setting(2048, "square matmul size of the peak kernel", min=1)
    conv_length: int = setting(16000, "steps of the 256 -> 512 channel conv peak kernel", min=1)
    repeats: int = setting(5, "timed runs of each peak kernel", min=1)


@dataclass
class BenchApp:
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    models: list[str] = setting(factory=lambda: ["tiny", "squeeze", "waveglow_256"],
                                help="model config names or checkpoint paths (model=a,b)")
    device: str = setting("cpu", "cpu | cuda", choices=("cpu", "cuda"))
    precision: list[str] = setting(factory=lambda: ["fp32", "bf16"], help="fp32 | bf16 | fp16 (list to compare)",
                                   choices=("fp32", "bf16", "fp16"))
    tasks: list[str] = setting(factory=lambda: ["synthesis", "train", "preprocess"],
                               help="synthesis | train | preprocess", choices=("synthesis", "train", "preprocess"))
    seconds: list[float] = setting(factory=lambda: [1.0], help="synthesis: audio seconds of mel per call", gt=0)
    batch: list[int] | None = setting(None, "null: synthesis 1, train 2", min=1)
    clock: str = setting("wall", "wall | cpu (process CPU time)", choices=("wall", "cpu"))
    threads: int | None = setting(None, "torch intra-op threads (null: torch's default)", min=1)
    repeats: int = setting(5, "timed runs per case (median and min reported)", min=1)
    warmup: int | None = setting(None, "untimed runs first (null: 2 synthesis/preprocess, 1 train)", min=0)
    sigma: float = setting(0.6, "synthesis prior std", min=0)
    seed: int = setting(0, "seed of weights and inputs", min=0)
    lr: float = setting(1.0e-4, "Adam step of the train case", gt=0)
    segment_length: int = setting(16000, "train: audio samples per batch item", min=1)
    corpus: str = setting("data/demo", "preprocess: the corpus to time")
    isolate: bool = setting(True, "each case in a fresh process (clean memory peaks)")
    memory: list[str] = setting(factory=lambda: ["standard"], help="train: standard | invertible (list to "
                                "compare)", choices=("standard", "invertible"))
    engine: str = setting("model", "synthesis timed through model.infer | synthesizer | onnxruntime",
                          choices=("model", "synthesizer", "onnxruntime"))
    snr: bool = setting(True, "bf16/fp16 synthesis: SNR against fp32 with the same noise")
    peak: PeakConfig = field(default_factory=PeakConfig)
    output_dir: str | None = setting(None, "also write bench.jsonl and table.txt here")


@dataclass
class EnhanceApp(InferenceSettings):
    """waveglow-enhance: likelihood-guided repair of damaged stretches of recordings."""

    output_dir: str = setting(MISSING, "gets <stem>.wav per input (same rate, length and subtype) and the report")
    threshold: float = setting(5.0, "a frame is suspect when its robust z-score is below -threshold (clean demo "
                               "speech stays above -4)", gt=0)
    merge_gap: int = setting(2, "suspect frames at most this many frames apart form one region", min=0)
    max_iters: int = setting(3, "score -> repair -> rescore rounds at most", min=1)
    margin_ms: float = setting(20.0, "crossfade margin around each repaired region (ms)", min=0)
    dry_run: bool = setting(False, "report the regions only, write no audio")
    sigma: float = setting(0.0, "latent std inside a repaired span, relative to the latent around it "
                           "(0: the model's mean given the interpolated mel, the smoothest fill)", min=0)
    seed: int = setting(0, "noise seed of repaired spans (used when sigma > 0)", min=0)
    report: str = setting("enhance_report.csv", "the report's file name inside output_dir (.csv or .json)")


@dataclass
class ConvertApp(InferenceSettings):
    """waveglow-convert: encode with the input's own mel, change the conditioning/latent, decode."""

    output_dir: str = setting(MISSING, "gets <stem>.wav per input")
    formant_shift: float = setting(1.0, "warp the mel's frequency axis by this factor (moves the envelope)", gt=0)
    target: str | None = setting(None, "a second recording whose (DTW-aligned) mel replaces the source's")
    latent_scale: float = setting(1.0, "scale z (detail <-> smoothness)", min=0)
    format: str = setting("PCM_16", "PCM_16 | PCM_24 | FLOAT", choices=("PCM_16", "PCM_24", "FLOAT"))


@dataclass
class ExportApp:
    """waveglow-export: the synthesis graph of a checkpoint as ONNX (or torch.export)."""

    checkpoint: str = setting(MISSING, "a checkpoint of this toolkit")
    output: str = setting(MISSING, "the file to write (.onnx, or .pt2 for format=pt2)")
    format: str = setting("onnx", "onnx | pt2", choices=("onnx", "pt2"))
    quantize: str | None = setting(None, "int8: static int8 quantization of the conditioners, calibrated "
                                   "on a few mels; refused below 20 dB SNR against fp32", choices=("int8",))
    calibration: str | None = setting(None, "int8 calibration: mels (.pt/.npy) or audio (.wav/.flac) as a "
                                      "file | folder | glob | filelist (null: data/demo/wavs)")
    opset: int = setting(17, "ONNX opset", min=13)


# config name (configs/<name>.yaml) -> its schema
APPS: dict[str, type] = {
    "waveglow_mel": MelApp,
    "waveglow_preprocess": PreprocessApp,
    "waveglow_download": DownloadApp,
    "waveglow_train": TrainApp,
    "waveglow_synthesize": SynthesizeApp,
    "waveglow_resynthesize": ResynthesizeApp,
    "waveglow_score": ScoreApp,
    "waveglow_import_nvidia": ImportNvidiaApp,
    "waveglow_bench": BenchApp,
    "waveglow_enhance": EnhanceApp,
    "waveglow_convert": ConvertApp,
    "waveglow_export": ExportApp,
}
GROUPS: dict[str, type] = {"audio": AudioConfig, "data": DataConfig, "model": ModelConfig, "train": TrainConfig}


# --------------------------------------------------------------------------------- validation
def _describe(meta: Mapping[str, Any], kind: Any) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(str(c) for c in meta["choices"])
    noun = "an integer" if kind is int else "a number"
    if meta.get("gt") is not None and meta.get("max") is not None:
        return f"{noun} in ({meta['gt']:g}, {meta['max']:g}]"
    if meta.get("gt") is not None:
        return f"{noun} > {meta['gt']:g}"
    if meta.get("min") is not None and meta.get("max") is not None:
        return f"{noun} in [{meta['min']:g}, {meta['max']:g}]"
    if meta.get("min") is not None:
        return f"{noun} >= {meta['min']:g}"
    return f"{noun} <= {meta['max']:g}"


_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
_NOUNS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the base type, whether it is a list) of `X`, `X | None`, `list[X]`, `list[X] | None`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        annotation = args[0]
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def field_kind(f: dataclasses.Field) -> tuple[Any, bool]:
    """(base type, is a list) of a settings field: e.g. (int, False) for `int | None`."""
    return _unwrap(f.type)


def _kind(f: dataclasses.Field) -> type | None:
    base, _ = field_kind(f)
    return base if base in (int, float, bool, str) else None


def _check_value(key: str, value: Any, meta: Mapping[str, Any], kind: Any) -> None:
    if value is None or value == MISSING:
        return
    # Settings built from plain dicts (a checkpoint's config, the Python API) are not typed by
    # OmegaConf: check the type here too. An int is a fine float; a bool is not a number.
    if kind is not None:
        ok = isinstance(value, kind) if kind is not float else isinstance(value, (int, float))
        if not ok or (kind in (int, float) and isinstance(value, bool)):
            raise ConfigError(f"{key}={value!r}: expected {_NOUNS[kind]}")
    choices = meta.get("choices")
    if choices and value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ConfigError(f"{key}={value}: expected {_describe(meta, kind)}{hint}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, gt, hi = meta.get("min"), meta.get("gt"), meta.get("max")
        if (lo is not None and value < lo) or (gt is not None and value <= gt) or (hi is not None and value > hi):
            raise ConfigError(f"{key}={value}: expected {_describe(meta, kind)}")


def validate(obj: Any, prefix: str = "") -> Any:
    """Check every setting of a config object against its range/choices, then its own rules.

    Args:
        obj: an instance of one of the dataclasses above (nested ones are walked).
        prefix: the key path of `obj` in messages (`train`, `model.wn`).

    Returns:
        `obj`, for chaining.

    Raises:
        ConfigError: naming the first offending key, e.g. `train.batch_size=-4: expected an
            integer >= 1`.
    """
    for f in dataclasses.fields(obj):
        key = f"{prefix}.{f.name}" if prefix else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, key)
            continue
        kind = _kind(f)
        if isinstance(value, list):
            for item in value:
                _check_value(key, item, f.metadata, kind)
        else:
            _check_value(key, value, f.metadata, kind)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(prefix) if prefix else check()
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A config object (dataclass, OmegaConf DictConfig or Mapping) as plain nested dicts."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return dataclasses.asdict(cfg)
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    if isinstance(cfg, Mapping):
        return {k: (to_dict(v) if isinstance(v, Mapping) or dataclasses.is_dataclass(v) else
                    list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    raise TypeError(f"not a config: {type(cfg).__name__}")


def from_dict(cls: type, values: Mapping[str, Any] | None, prefix: str = "", strict: bool = True) -> Any:
    """Build config object `cls` from plain values (e.g. the config stored in a checkpoint).

    Keys missing from `values` take the class defaults, so a checkpoint written before a key
    existed still loads. With `strict`, an unknown key is a ConfigError that suggests the
    closest known one.
    """
    values = dict(values or {})
    kwargs: dict[str, Any] = {}
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in names:
            if strict:
                nested = [f"{n}.{key}" for n, f in names.items()
                          if (sub := _dataclass_of(f)) and key in {x.name for x in dataclasses.fields(sub)}]
                raise unknown_key(f"{prefix}.{key}" if prefix else key, list(names), nested)
            continue
        f = names[key]
        sub = _dataclass_of(f)
        path = f"{prefix}.{key}" if prefix else key
        kwargs[key] = from_dict(sub, value, path, strict) if sub and isinstance(value, Mapping) else value
    return cls(**kwargs)


def _dataclass_of(f: dataclasses.Field) -> type | None:
    """The settings class a field holds (`DataConfig` for `data`, also when optional), or None."""
    base, is_list = field_kind(f)
    return base if not is_list and isinstance(base, type) and dataclasses.is_dataclass(base) else None


def unknown_key(key: str, known: list[str], nested: list[str] = ()) -> ConfigError:
    """`unknown setting 'model.n_flowz' (did you mean model.n_flows?)`.

    Args:
        key: the full key given.
        known: the names at its level.
        nested: deeper keys that end like it (`wn.n_layers` for `model.n_layers`), preferred.
    """
    leaf = key.rsplit(".", 1)[-1]
    parent = key[: -len(leaf)]
    close = list(nested[:1]) or difflib.get_close_matches(leaf, known, n=1, cutoff=0.6)
    hint = f" (did you mean {parent}{close[0]}?)" if close else ""
    return ConfigError(f"unknown setting '{key}'{hint}")


def register_schemas() -> None:
    """Put the schemas into Hydra's ConfigStore: `schema/<group>` for the group YAMLs and
    `schema/<app>` for each console script's YAML (referenced from their defaults lists)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, cls in GROUPS.items():
        cs.store(group="schema", name=group, node=cls)
    for name, cls in APPS.items():
        cs.store(group="schema", name=name, node=cls)


def _resolve_annotations() -> None:
    # `from __future__ import annotations` leaves each field's type as a string; the checks above
    # (and the CLI's) read `Field.type`, so it is set to the type the string names, once.
    for cls in [*GROUPS.values(), *APPS.values(), SplitsConfig, DownloadConfig, WNConfig, GuardConfig,
                PeakConfig, InferenceSettings]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            f.type = hints[f.name]


_resolve_annotations()
