"""The config groups: audio, data, model and train (and the blocks nested in them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from waveglow.config.schema import MISSING, ConfigError, setting


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
    n_val_speakers: int = setting(0, "multi-speaker layouts (vctk, libritts): whole speakers held out of "
                                  "training; their clips go to test, n_val of them also to val_unseen", min=0)


@dataclass
class DownloadConfig:
    url: str | None = setting(None, "archive URL")
    sha256: str | None = setting(None, "expected sha256 of the archive")
    archive: str | None = setting(None, "where the archive is stored")
    md5: str | None = setting(None, "expected md5 of the archive, where only an md5 is published")
    checksums: dict[str, str] = setting(factory=dict, help="sha256 of each archive by the file name its URL ends in (corpora in several "
                                        "archives, e.g. one per LibriTTS subset)")
    folder: str | None = setting(None, "the folder inside the archive holding the corpus ('.': the archive's top "
                                 "level; null: its only top-level folder); {subset} as in url")


@dataclass
class MixCorpusConfig:
    """One corpus of a mix (`data=mix`, `data.corpora`)."""

    name: str = setting("", "a shipped data config (ljspeech, vctk, libritts, folder, demo): its layout")
    root: str | None = setting(None, "the corpus folder")
    weight: float = setting(1.0, "share of the training batches, relative to the other corpora's weights", gt=0)
    subsets: list[str] | None = setting(None, "libritts: subset folders (null: the shipped config's)")


@dataclass
class DataConfig:
    """A corpus and how training examples are cut from it."""

    name: str = setting("ljspeech", "corpus name (run directory names, messages)")
    root: str = setting(MISSING, "corpus folder")
    layout: str = setting("ljspeech", "ljspeech (metadata.csv + wavs/) | folder (any .wav/.flac below root) | "
                          "vctk (VCTK 0.92: wav48_silence_trimmed/<spk>/*_<mic>.flac) | libritts "
                          "(<subset>/<spk>/<chapter>/<utt>.wav) | mix (several corpora: data.corpora)",
                          choices=("ljspeech", "folder", "vctk", "libritts", "mix"))
    mic: str = setting("mic1", "vctk: which microphone's recordings (mic1 | mic2)", choices=("mic1", "mic2"))
    subsets: list[str] = setting(factory=list, help="libritts: the subset folders to use (e.g. [train-clean-100]; "
                                 "empty: every subset folder under root)")
    corpora: list[MixCorpusConfig] = setting(factory=list, help="data=mix: the corpora trained on at once, e.g. "
                                             "[{name: ljspeech, root: ..., weight: 1}, {name: vctk, root: ..., "
                                             "weight: 2}]; root (data.root) then holds the mix's splits and cache")
    balance: str = setting("none", "none | speaker (multi-speaker layouts: every speaker's clips are repeated up "
                           "to the largest speaker's count, so each speaker is drawn equally often; data=mix: "
                           "equally within each corpus's share)",
                           choices=("none", "speaker"))
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
    threads: int | None = setting(None, "CPU threads per process (null: the cores free at start, shared "
                                  "among the processes on this machine)", min=1)
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
    compile: bool = setting(False, "torch.compile each flow's conditioner (WN) for the training step: same "
                            "checkpoints and gradients; 1-5 min of compiling at each start; measured 2-8% faster "
                            "CPU steps (docs/performance.md)")
    progress_seconds: float = setting(30.0, "also a progress line after this many seconds without one "
                                      "(0 = only every log_every steps; no effect on a terminal's bar)", min=0)
    guard: GuardConfig = setting(factory=GuardConfig, help="divergence guards")


@dataclass
class DistillConfig:
    """The objective of `waveglow-distill` (presets: waveglow/configs/distill/)."""

    loss: str = setting("regression", "regression: the student decodes the teacher's latent z to the teacher's "
                        "audio (L1 + multi-resolution STFT) | likelihood: the student's exact likelihood of "
                        "fresh teacher samples", choices=("regression", "likelihood"))
    weight: float = setting(1.0, "weight of the teacher term (0: none, e.g. a from-scratch baseline)", min=0)
    real_weight: float = setting(0.0, "weight of the student's NLL on the real training audio (nats/sample) "
                                 "added to the teacher term (> 0: the mixed objective)", min=0)
    sigma: float = setting(0.6, "std of the latent z the teacher decodes (0.6: what synthesis uses)", gt=0)
    l1_weight: float = setting(1.0, "regression: weight of the mean |sample difference|", min=0)
    stft_weight: float = setting(1.0, "regression: weight of the multi-resolution STFT distance", min=0)
    val_clips: int = setting(4, "val clips decoded by teacher and student at each validation "
                             "(distill/val_* distances)", min=0)
    val_sigma: float = setting(0.6, "std of the shared latent of the val distances (0.6: what synthesis uses)", gt=0)

    def validate(self, prefix: str = "distill") -> None:
        if self.weight == 0 and self.real_weight == 0:
            raise ConfigError(f"{prefix}.weight and {prefix}.real_weight are both 0: nothing to train")
        if self.loss == "regression" and self.weight > 0 and self.l1_weight == 0 and self.stft_weight == 0:
            raise ConfigError(f"{prefix}.l1_weight and {prefix}.stft_weight are both 0: the regression has no term")
