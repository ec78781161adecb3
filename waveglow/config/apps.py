"""One settings class per console script, and the registry the CLI layer composes from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from waveglow.config.cluster import ClusterConfig
from waveglow.config.groups import AudioConfig, DataConfig, DistillConfig, ModelConfig, TrainConfig
from waveglow.config.schema import MISSING, setting

# `threads=` of every script that computes (training: `train.threads`); see waveglow.runtime.
THREADS_HELP = "CPU intra-op threads (null: the cores free at start, see README 'Speed')"


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
    cluster: ClusterConfig = setting(factory=ClusterConfig, help="SLURM resources of hydra/launcher=submitit_slurm")


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
    threads: int | None = setting(None, THREADS_HELP, min=1)


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
    max_seconds: float = setting(1.0, "a peak kernel estimated (from a small probe) to run longer "
                                 "than this per run shrinks to fit", gt=0)


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
    threads: int | None = setting(None, THREADS_HELP, min=1)
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
    baseline: str | None = setting(None, "a saved results file (an earlier run's bench.jsonl or JSON lines): print "
                                   "each case's speed and peak memory as a ratio to it (cases matched by identity)")


@dataclass
class EnhanceApp(InferenceSettings):
    """waveglow-enhance: likelihood-guided repair of damaged stretches of recordings."""

    output_dir: str = setting(MISSING, "gets <stem>.wav per input (same rate, length and subtype) and the report")
    threshold: float = setting(3.0, "a frame is suspect when its robust z-score is below -threshold; a suspect "
                               "span is repaired only where an AR model finds damaged samples standing out of the "
                               "speech around it (measured on the 8 held-out demo clips with make demo's 300-step "
                               "and a 1000-step model: 15/16 and 16/16 injected bursts flagged, no clean stretch "
                               "repaired; docs/enhance_convert.md)", gt=0)
    merge_gap: int = setting(2, "suspect frames at most this many frames apart form one region", min=0)
    max_iters: int = setting(3, "score -> repair -> rescore rounds at most", min=1)
    margin_ms: float = setting(20.0, "crossfade around a region in-filled through the flow (fill=latent), ms; a "
                               "burst's fill is crossfaded over min(2, margin_ms); a click's needs none", min=0)
    dry_run: bool = setting(False, "report the regions only, write no audio")
    sigma: float = setting(1.0, "latent std inside a span in-filled through the flow (fill=latent), relative to "
                           "the encoded latent next to it (0: the model's mean, a quiet fill)", min=0)
    seed: int = setting(0, "noise seed of fill=latent (used when sigma > 0)", min=0)
    click_threshold: float = setting(12.0, "also flag 8-sample windows whose local robust z-score of the "
                                     "per-sample log-likelihood is below -click_threshold (0: off); a click span "
                                     "is repaired only where an AR model finds samples that stand out", min=0)
    level: str = setting("rms", "level of a burst's (or fill=latent) repair: none | rms (scaled to the input's rms "
                         "around it; a burst's at most the damaged span's) | mel (fill=latent: spectrum pulled toward "
                         "the interpolated mel)", choices=("none", "rms", "mel"))
    fill: str = setting("envelope", "fill of frame regions longer than a click: envelope (the input's samples, "
                        "short-time spectrum capped at the louder side's next to the damage) | latent (in-fill "
                        "through the flow)",
                        choices=("latent", "envelope"))
    report: str = setting("enhance_report.csv", "the report's file name inside output_dir (.csv or .json)")


@dataclass
class ConvertApp(InferenceSettings):
    """waveglow-convert: encode with the input's own mel, change the conditioning/latent, decode."""

    output_dir: str = setting(MISSING, "gets <stem>.wav per input")
    formant_shift: float = setting(1.0, "move the mel's spectral envelope (formants) by this factor in frequency; "
                                   "the harmonics (pitch) stay", gt=0)
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
                                   "on a few mels; refused below 20 dB SNR against fp32 on held-out "
                                   "calibration mels (1 in 5)", choices=("int8",))
    calibration: str | None = setting(None, "int8 calibration: mels (.pt/.npy) or audio (.wav/.flac) as a "
                                      "file | folder | glob | filelist (null: data/demo/wavs)")
    opset: int = setting(17, "ONNX opset", min=13)
    threads: int | None = setting(None, THREADS_HELP, min=1)


EVAL_METRICS = ("log_likelihood", "mel_l1", "mr_stft", "pesq", "stoi", "estoi", "f0_rmse", "vuv_error", "mcd", "rtf")


@dataclass
class EvalApp:
    """waveglow-eval: objective metrics of checkpoints on held-out clips, next to baselines."""

    checkpoint: Any = setting(MISSING, "a checkpoint, a list [a.pt,b.pt], or a run directory (every step_<N>.pt "
                              "in step order, then best.pt)")
    data: DataConfig = field(default_factory=DataConfig)
    split: str = setting("test", "the corpus split to evaluate (without input=)", choices=("val", "test"))
    input: Any = setting(None, "WAV/FLAC clips instead of a corpus split: a file, folder, glob or filelist")
    output_dir: str = setting(MISSING, "gets metrics.csv, summary.json, report.html, wavs/ and images/")
    max_files: int | None = setting(None, "evaluate the first N clips (null: all)", min=1)
    metrics: list[str] = setting(factory=lambda: list(EVAL_METRICS), help="metrics to compute",
                                 choices=EVAL_METRICS)
    baselines: list[str] = setting(factory=lambda: ["ground_truth", "griffin_lim"],
                                   help="ground_truth (ceilings) | griffin_lim (32 iterations) | noise (floor)",
                                   choices=("ground_truth", "griffin_lim", "noise"))
    sigma: float = setting(0.6, "std of the latent noise, as waveglow-synthesize", min=0)
    seed: int = setting(0, "each clip's noise is seeded from (seed, clip name), as waveglow-synthesize", min=0)
    device: str = setting("auto", "auto (CUDA when available) | cpu | cuda | cuda:N")
    precision: str = setting("fp32", "fp32 | fp16 | bf16", choices=("fp32", "fp16", "bf16"))
    chunk_frames: int = setting(1024, "longer inputs are synthesized in pieces of this many frames", min=1)
    workers: int | None = setting(None, "metric processes (null: one per thread of threads=; 0: in the main process)", min=0)
    tensorboard: bool = setting(True, "with a run directory: write eval/<metric> into its event files")
    report: bool = setting(True, "write report.html (players and log-mel images)")
    progress: bool = setting(True, "progress bars on a terminal")
    threads: int | None = setting(None, THREADS_HELP, min=1)


@dataclass
class PretrainedApp:
    """waveglow-pretrained list | get NAME: the registry of pretrained models and its cache."""

    action: str = setting("list", "list (the registry) | get (download, check and convert NAME)",
                          choices=("list", "get"))
    name: str | None = setting(None, "the model to get (waveglow-pretrained list shows the names)")
    home: str | None = setting(None, "cache folder (null: $WAVEGLOW_HOME, else ~/.cache/waveglow)")
    registry: str | None = setting(None, "a registry YAML adding entries (null: $WAVEGLOW_REGISTRY, else none)")
    offline: bool | None = setting(None, "never download (null: $WAVEGLOW_OFFLINE)")
    timeout: float = setting(30.0, "seconds allowed to connect and for each read", gt=0)
    progress: bool = setting(True, "byte progress bar on stderr")


@dataclass
class DistillApp:
    """waveglow-distill: a student flow trained to reproduce a teacher checkpoint. The run is a
    training run of the student (`model`, also settable as `student=`): same loop, checkpoints
    and resume as waveglow-train."""

    teacher: str = setting(MISSING, "the teacher: a checkpoint of this toolkit (or pretrained:NAME)")
    audio: AudioConfig = field(default_factory=AudioConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    run_dir: str | None = setting(None, "run directory (null: checkpoints/<data>-<model>-<time>)")


@dataclass
class PruneApp:
    """waveglow-prune: structured pruning of a checkpoint's conditioners into a smaller model."""

    checkpoint: str = setting(MISSING, "the checkpoint to prune (or pretrained:NAME)")
    keep: float = setting(0.5, "fraction of every conditioner's residual, skip and gated channels kept "
                          "(rounded to an even count, at least 2)", gt=0, max=1)
    output: str = setting(MISSING, "the pruned checkpoint to write (not the input)")
    importance: str = setting("taylor", "taylor (first-order loss change over a few training batches) | "
                              "magnitude (weight norms, no data)", choices=("taylor", "magnitude"))
    batches: int = setting(8, "taylor: training batches the scores average over", min=1)
    batch_size: int = setting(4, "taylor: segments per batch", min=1)
    segment_length: int | None = setting(None, "taylor: samples per segment (null: the checkpoint's "
                                         "data.segment_length)", min=1)
    corpus: str | None = setting(None, "corpus folder for the batches and the held-out clips (null: the "
                                 "checkpoint's data.root; same layout)")
    split: str = setting("test", "held-out split of the log-likelihood", choices=("val", "test"))
    max_clips: int | None = setting(8, "held-out clips scored (null: the whole split)", min=1)
    eval_segment_length: int | None = setting(None, "one centred segment per held-out clip (null: whole "
                                              "clips)", min=1)
    speed_seconds: float = setting(1.0, "seconds of audio synthesized for the kHz figure", gt=0)
    repeats: int = setting(3, "timed synthesis runs (median)", min=1)
    clock: str = setting("wall", "wall | cpu (process CPU time: steadier on a shared machine with threads=1)",
                         choices=("wall", "cpu"))
    seed: int = setting(0, "seed of the taylor batches", min=0)
    device: str = setting("cpu", "cpu | cuda | cuda:N | auto")
    threads: int | None = setting(None, THREADS_HELP, min=1)


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
    "waveglow_eval": EvalApp,
    "waveglow_pretrained": PretrainedApp,
    "waveglow_prune": PruneApp,
    "waveglow_distill": DistillApp,
}
GROUPS: dict[str, type] = {"audio": AudioConfig, "data": DataConfig, "model": ModelConfig, "train": TrainConfig,
                           "distill": DistillConfig}
