"""Mel spectrograms -> waveforms: batched, chunked, on CPU or CUDA, with the bias denoiser.

`Synthesizer` wraps a loaded checkpoint for inference (weight norm folded once, eval mode,
`torch.inference_mode`, autocast for fp16/bf16 with the 1×1-conv inverses and the output in
float32) and is what `waveglow-synthesize`, `waveglow-resynthesize` and `waveglow-score` use.

Three properties the code below is built around:

1. **Noise belongs to a file, not to a batch.** Each file's latent z [hop·F] is drawn from its
   own generator seeded from (seed, key), where the key is the file stem (`to_files`) or the
   batch index (`from_mel`). Sorting, batching and chunking therefore never change which noise
   a file gets.

2. **The receptive field is bounded.** Decoding sample t reads z and the conditioning only
   within ±A samples, A = n_flows · Σ_i dilation_i·(k−1)/2 groups (the WN stack of every
   coupling widens it by one WN's reach; 1×1 convs and the squeeze are local), plus the
   upsampler's kernel on the mel side. `receptive_field_frames` turns that into mel frames
   (rounded up, plus one frame of slack). Everything farther away has no influence.

3. **Padding is handled exactly, not approximately.** A batch pads shorter mels (with the
   log-mel floor) and their noise (with zeros) to the longest one. The WN convs of a padded item
   then see padding where, alone, they would see their own zero boundary, so the last
   receptive-field frames of that item differ from its unbatched synthesis (measured on `tiny`
   with active couplings: 0.08 absolute for outputs peaking at 3.5 — audible). Samples farther
   than the receptive field from the item's end only ever see the item's own data, so they are
   already exact. For each padded item we therefore re-synthesize its last 2·rf frames on their
   own (all such tails have the same length, so they batch together without padding) and keep
   the last rf frames of that: the tail's first rf frames are disturbed by its own artificial
   start, its last rf frames see exactly what the unbatched synthesis sees. Padded items no
   longer than 2·rf skip the padded decode and are decoded with equal-length peers only.
   Cost: 2·rf extra frames per padded item (rf = 7 frames for `tiny`, 101 for `waveglow_256`,
   1533 for `squeeze`, whose 128-sample groups make the bound very wide; batch_size=1 avoids
   the repair altogether). Measured batched vs unbatched: ≤ 1e-6 absolute (float rounding).

Long inputs are cut into pieces of `chunk_frames` core frames, each synthesized with `overlap`
frames of context on both sides (default: the receptive field, which makes every core sample
exact) and joined with a linear crossfade of `crossfade_frames` around each boundary (which
hides the seam if a smaller overlap is chosen to save compute). Pieces of all files share one
sorted batching queue (each file's pieces kept together), so model memory is bounded by
batch_size × (chunk_frames + 2·overlap + crossfade) frames for any input length. `to_files`
checks every input first, then loads each again when its batch comes, so only the mels in
flight are in memory; the output audio of a file is held whole (4 B per sample).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from waveglow.errors import UserError, naming
from waveglow.fileio import write_text_atomic

log = logging.getLogger("waveglow.synthesize")

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
MEL_SUFFIXES = (".pt", ".npy")
AUDIO_SUFFIXES = (".wav", ".flac")
FILELIST_SUFFIXES = (".txt", ".list", ".lst", ".scp", ".filelist", ".csv")  # .csv: metadata.csv
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")
DENOISER_MELS = ("mean", "silence", "zeros")


# ---------------------------------------------------------------------------------------------
# Device, precision, noise seeds, receptive field, inputs
# ---------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cuda` without a GPU is a user error."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name}: no CUDA device is available here; expected device=auto or cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise UserError(f"device={name}: expected auto, cpu or cuda")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (None for fp32), checked against the device."""
    if precision not in PRECISIONS:
        raise UserError(f"precision={precision}: expected one of {', '.join(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("precision=bf16: this GPU has no bfloat16 support; use precision=fp16 or fp32")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device` (a no-op context for fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def noise_seed(seed: int, key: str | int) -> int:
    """A stable 63-bit generator seed for one file: sha256 of (seed, key).

    Python's `hash()` is salted per process; sha256 gives the same noise in every run.
    """
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def receptive_field_frames(model_cfg: Mapping[str, Any], hop_length: int) -> int:
    """Mel frames on each side of an output frame that can influence it (an upper bound).

    Every coupling's WN stack reads Σ_i 2^i·(k−1)/2 = (2^L − 1)·(k−1)/2 groups to each side of
    a group; couplings compose, so n_flows of them read n_flows times as far. One extra group
    covers the alignment of a frame boundary inside a group. The conv-transpose upsampler maps
    each frame to `upsample_kernel` samples, which reach ceil(kernel/hop) frames; one more frame
    is slack for rounding.

    Args:
        model_cfg: the checkpoint's `model` config (n_group, n_flows, wn, upsample...).
        hop_length: audio samples per mel frame.

    Returns:
        rf, in frames (e.g. 101 for waveglow_256 at hop 256).
    """
    from waveglow.model import resolve_model_config

    cfg = resolve_model_config(model_cfg)  # the model's defaults for keys an old config lacks
    wn = cfg["wn"]
    n_layers, kernel = int(wn["n_layers"]), int(wn["kernel_size"])
    groups = int(cfg["n_flows"]) * (2**n_layers - 1) * ((kernel - 1) // 2) + 1
    samples = groups * int(cfg["n_group"])
    if cfg["upsample"] == "conv_transpose":
        up = math.ceil(int(cfg["upsample_kernel"]) / hop_length)
    else:
        up = 1
    return math.ceil(samples / hop_length) + up + 1


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def resolve_inputs(spec: str | os.PathLike | Sequence[str | os.PathLike],
                   suffixes: Sequence[str]) -> list[Path]:
    """Turn `input=` into a list of files.

    Args:
        spec: a file with one of `suffixes`; a directory (its files with those suffixes, sorted,
            not recursive); a glob (`mels/*.pt`, `**` allowed); a filelist (`.txt`/`.list`/...,
            one path per line, `#` comments; `path|text` lines use the part before `|`; relative
            paths are looked up next to the list first, then in the working directory; bare clip
            ids, as in a corpus's splits/*.txt, are found in the corpus's wavs/ or cache/mels/);
            or a sequence of paths.
        suffixes: accepted file suffixes, e.g. (".pt", ".npy").

    Returns:
        Paths in a stable order. Entries of a filelist are returned even when missing, so that
        the loader reports (or skips) each one by name.

    Raises:
        UserError: the path does not exist, a glob or directory has no matching file, or a
            single file has an unexpected suffix.
    """
    what = "/".join(suffixes)
    if not isinstance(spec, (str, os.PathLike)):
        return [Path(p) for p in spec]
    text = str(spec)
    if not text:
        raise UserError(f"input is empty: expected a {what} file, a directory, a glob or a filelist")
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            raise UserError(f"{path}: directory holds no {what} files")
        return files
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in suffixes:
            return [path]
        if suffix in FILELIST_SUFFIXES:
            return _read_filelist(path, suffixes)
        raise UserError(f"{path}: unexpected file type {path.suffix!r}; expected a {what} file, "
                        f"a directory, a glob or a filelist ({'/'.join(FILELIST_SUFFIXES)})")
    if _has_glob(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True)
                       if Path(p).is_file() and Path(p).suffix.lower() in suffixes)
        if not files:
            raise UserError(f"{text}: the pattern matches no {what} files")
        return files
    raise UserError(f"{path}: no such file or directory; expected a {what} file, a directory, "
                    "a glob or a filelist")


def _read_filelist(path: Path, suffixes: Sequence[str]) -> list[Path]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the filelist ({e}); expected one path per line") from None
    # Bare clip ids (metadata.csv, splits/*.txt) are looked up next to the list and in the
    # corpus root (the list's folder or the one above it): its wavs/ (LJSpeech layout) and its
    # cache/mels/ (the feature cache).
    parent = path.parent
    id_dirs = [d / sub for d in (parent, parent.parent) for sub in (".", "wavs", "cache/mels")]
    out = []
    for line in lines:
        entry = line.split("|", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        if not p.is_absolute() and not p.exists() and (parent / p).exists():
            p = parent / p
        if not p.exists() and p.suffix.lower() not in suffixes and not p.is_absolute():
            found = [d / f"{entry}{suffix}" for d in id_dirs for suffix in suffixes
                     if (d / f"{entry}{suffix}").is_file()]
            p = found[0] if found else p
        out.append(p)
    if not out:
        raise UserError(f"{path}: the filelist is empty; expected one path per line")
    return out


# ---------------------------------------------------------------------------------------------
# Chunk planning
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Piece:
    """One decode job: frames [start, end) of item `item`, of which [keep_start, keep_end) is used.

    `fade_in` / `fade_out` are the frame positions of the crossfade centres at the left / right
    of the kept region (None at the item's ends).
    """

    item: int
    start: int
    end: int
    keep_start: int
    keep_end: int
    fade_in: int | None = None
    fade_out: int | None = None

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_pieces(item: int, n_frames: int, chunk_frames: int, overlap: int,
                crossfade_frames: int) -> list[Piece]:
    """Cut an item of `n_frames` frames into pieces for synthesis.

    Cores of near-equal length (ceil(F / chunk_frames) of them) tile [0, F); each piece keeps
    its core plus crossfade_frames/2 on each inner side, and synthesizes `overlap` more frames
    of context beyond that.

    Args:
        item: index of the item the pieces belong to.
        n_frames: F.
        chunk_frames: the longest core; F <= chunk_frames gives one piece.
        overlap: context frames on each side of a kept region.
        crossfade_frames: width of each crossfade (even; frames).

    Returns:
        The pieces in time order.
    """
    if n_frames <= chunk_frames:
        return [Piece(item, 0, n_frames, 0, n_frames)]
    n = math.ceil(n_frames / chunk_frames)
    bounds = [round(c * n_frames / n) for c in range(n + 1)]
    half = crossfade_frames // 2
    pieces = []
    for c in range(n):
        keep_start = max(0, bounds[c] - half) if c > 0 else 0
        keep_end = min(n_frames, bounds[c + 1] + half) if c < n - 1 else n_frames
        pieces.append(Piece(
            item, max(0, keep_start - overlap), min(n_frames, keep_end + overlap), keep_start, keep_end,
            fade_in=bounds[c] if c > 0 and half > 0 else None,
            fade_out=bounds[c + 1] if c < n - 1 and half > 0 else None,
        ))
    return pieces


def _crossfade_weights(piece: Piece, hop: int, half_samples: int) -> Tensor | None:
    """Weights [hop·(keep_end−keep_start)] for the kept region (None when no fade applies).

    Linear ramps centred on each boundary; the fade-out of one piece is exactly 1 minus the
    fade-in of the next, so the weights of overlapping pieces sum to one.
    """
    if piece.fade_in is None and piece.fade_out is None:
        return None
    t = torch.arange(piece.keep_start * hop, piece.keep_end * hop, dtype=torch.float64) + 0.5
    w = torch.ones_like(t)
    width = 2.0 * half_samples
    if piece.fade_in is not None:
        w = w * ((t - (piece.fade_in * hop - half_samples)) / width).clamp(0.0, 1.0)
    if piece.fade_out is not None:
        w = w * (1.0 - ((t - (piece.fade_out * hop - half_samples)) / width).clamp(0.0, 1.0))
    return w.float()


# ---------------------------------------------------------------------------------------------
# Denoiser
# ---------------------------------------------------------------------------------------------


class Denoiser(nn.Module):
    """Removes the model's bias tone: subtract strength × its magnitude spectrum, keep phase.

    The bias spectrum is the STFT magnitude of what the model outputs for a "zero-level" mel at
    sigma 0 (no noise), averaged over the frames away from the clip's edges (where the output is
    stationary). The reference takes one frame of an all-zeros mel fed to an un-normalized model,
    i.e. the upsampler sees zeros and every conditioning path reduces to its biases. Our models
    normalize the raw log-mel internally, so the input with that property is the model's own
    `mel_mean` ("mean", the default): it normalizes to exactly zero, and for a model with
    identity statistics (an imported NVIDIA checkpoint) it *is* the reference's all-zeros mel.
    "silence" (the log-mel floor, log(log_clamp)) measures what the model adds to digital silence
    instead, and "zeros" is raw log-mel 0 (a loud, flat frame for our convention).

    Args:
        bias_audio: float [T] the model's sigma-0 output for the zero-level mel.
        n_fft, hop_length, win_length: STFT settings (the checkpoint's audio config).
    """

    def __init__(self, bias_audio: Tensor, n_fft: int = 1024, hop_length: int = 256,
                 win_length: int = 1024) -> None:
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        mag = self._stft(bias_audio.detach().float().reshape(1, -1)).abs()[0]  # [bins, frames]
        n = mag.shape[-1]
        lo, hi = n // 4, max(n // 4 + 1, 3 * n // 4)
        self.register_buffer("bias_spec", mag[:, lo:hi].mean(dim=-1, keepdim=True))  # [bins, 1]

    def _stft(self, audio: Tensor) -> Tensor:
        return torch.stft(audio, self.n_fft, self.hop_length, self.win_length, self.window.to(audio.device),
                          center=True, pad_mode="reflect", return_complex=True)

    def forward(self, audio: Tensor, strength: float = 0.1) -> Tensor:
        """Denoise audio [T] or [B, T]; returns the same shape (float32).

        |X| − strength·|bias| (floored at 0) with the phase of X, back through the inverse STFT.
        """
        if strength <= 0:
            return audio
        squeeze = audio.dim() == 1
        x = audio.float().reshape(-1, audio.shape[-1])
        length = x.shape[-1]
        if length <= self.n_fft // 2:
            # Reflect padding needs more than n_fft/2 samples.
            x = torch.nn.functional.pad(x, (0, self.n_fft // 2 + 1 - length))
        spec = self._stft(x)
        mag = (spec.abs() - strength * self.bias_spec.to(spec.device)).clamp_min(0.0)
        spec = torch.polar(mag, spec.angle())
        out = torch.istft(spec, self.n_fft, self.hop_length, self.win_length,
                          self.window.to(x.device), center=True, length=x.shape[-1])[:, :length]
        return out[0] if squeeze else out


# ---------------------------------------------------------------------------------------------
# Synthesizer
# ---------------------------------------------------------------------------------------------


@dataclass
class SynthesisReport:
    """What `to_files` did: written files, skipped ones, and how fast."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    samples: int = 0
    clipped_samples: int = 0
    clipped_files: int = 0

    @property
    def rtf(self) -> float:
        """Real-time factor: audio seconds produced per wall second (> 1 is faster than real time)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    @property
    def khz(self) -> float:
        """Output samples per second, in kHz."""
        return self.samples / self.wall_seconds / 1000 if self.wall_seconds > 0 else float("inf")

    def summary(self) -> str:
        """One line: files, audio seconds, wall seconds, real-time factor, kHz, clipping."""
        line = (f"synthesized {len(self.written)} files, {self.audio_seconds:.2f} s of audio in "
                f"{self.wall_seconds:.2f} s wall: real-time factor {self.rtf:.2f} (audio s / wall s), "
                f"{self.khz:.1f} kHz; clipped samples: {self.clipped_samples} in {self.clipped_files} files")
        if self.failed:
            line += f"; {len(self.failed)} files skipped"
        return line


class Synthesizer:
    """Inference wrapper around a checkpoint: mel -> audio, batched and chunked.

    Args:
        checkpoint: path of a checkpoint of this project.
        device: "auto" (CUDA when available), "cpu" or "cuda[:i]".
        precision: "fp32", "fp16" or "bf16" (autocast; 1×1 inverses and output stay float32).
        chunk_frames: mels longer than this are synthesized in overlapping pieces.
        overlap: context frames per side of each piece (None: the receptive field, exact).
        crossfade_frames: crossfade width at piece boundaries, in frames.

    Example:
        >>> synth = Synthesizer("checkpoints/run/best.pt", device="auto", precision="bf16")
        >>> audio = synth.from_mel(torch.load("mel.pt", weights_only=True))   # [256·F]
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device = "auto",
                 precision: str = "fp32", chunk_frames: int = 1024, overlap: int | None = None,
                 crossfade_frames: int = 4) -> None:
        from waveglow.checkpoint import load_model

        dev = resolve_device(device)
        model = load_model(checkpoint, device="cpu")
        self._setup(model, model.config, dev, precision, chunk_frames, overlap, crossfade_frames)
        self.checkpoint = Path(checkpoint)

    @classmethod
    def from_model(cls, model: nn.Module, config: Mapping[str, Any], device: str | torch.device = "auto",
                   precision: str = "fp32", chunk_frames: int = 1024, overlap: int | None = None,
                   crossfade_frames: int = 4) -> Synthesizer:
        """Wrap an in-memory WaveGlow (its weight norm is folded in place).

        Args:
            model: a WaveGlow.
            config: resolved config with `audio` and `model` sections.
        """
        self = cls.__new__(cls)
        self._setup(model, config, resolve_device(device), precision, chunk_frames, overlap,
                    crossfade_frames)
        self.checkpoint = None
        return self

    def _setup(self, model: nn.Module, config: Mapping[str, Any], device: torch.device, precision: str,
               chunk_frames: int, overlap: int | None, crossfade_frames: int) -> None:
        self.device = device
        self.precision = precision
        self.amp_dtype = check_precision(precision, device)
        self.config = config
        audio = config["audio"]
        self.sampling_rate = int(audio["sampling_rate"])
        self.hop_length = int(audio["hop_length"])
        self.n_mels = int(audio["n_mels"])
        self.mel_floor = math.log(float(audio.get("log_clamp", 1e-5)))
        self.receptive_field = receptive_field_frames(config["model"], self.hop_length)
        if int(chunk_frames) < 1:
            raise UserError(f"chunk_frames={chunk_frames}: expected a positive number of frames")
        crossfade_frames = int(crossfade_frames)
        if crossfade_frames < 0 or crossfade_frames % 2 or 2 * crossfade_frames > int(chunk_frames):
            raise UserError(f"crossfade_frames={crossfade_frames}: expected an even number of frames, "
                            f"at most chunk_frames/2 ({int(chunk_frames) // 2})")
        if overlap is not None and int(overlap) < 0:
            raise UserError(f"overlap={overlap}: expected a non-negative number of frames (or null)")
        self.chunk_frames = int(chunk_frames)
        self.crossfade_frames = crossfade_frames
        self.overlap = self.receptive_field if overlap is None else int(overlap)
        # Fold weight norm once; afterwards the kernels are plain parameters.
        model.remove_weight_norm()
        self.model = model.to(device).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # The 1×1-conv inverses, once per load (the parts cache them while the weights stay put).
        with torch.no_grad():
            for m in self.model.modules():
                if hasattr(m, "inverse_matrix"):
                    m.inverse_matrix()
        self._denoisers: dict[str, Denoiser] = {}

    # -- latent-space access ------------------------------------------------------------------

    def encode(self, audio: Tensor, mel: Tensor) -> Tensor:
        """audio [B, T] (T multiple of n_group), mel [B, n_mels, >= T/hop] -> z [B, T] (float32)."""
        with torch.inference_mode():
            return self.model.encode(audio.float().to(self.device), mel.float().to(self.device)).float().cpu()

    def decode(self, z: Tensor, mel: Tensor) -> Tensor:
        """z [B, T], mel [B, n_mels, >= T/hop] -> audio [B, T] (float32), in this precision."""
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            return self.model.decode(z.float().to(self.device), mel.float().to(self.device)).float().cpu()

    # -- core ---------------------------------------------------------------------------------

    def _decode_batch(self, mels: list[Tensor], zs: list[Tensor]) -> list[Tensor]:
        """Decode equal- or unequal-length (mel [n_mels, L], z [hop·L]) pairs in one batch.

        Shorter items are padded at the end (mel with the log-mel floor, z with zeros) and their
        outputs cut back; the caller repairs the padded items' last receptive-field frames.
        Returns CPU float32 [hop·L] per item.
        """
        hop = self.hop_length
        lengths = [m.shape[-1] for m in mels]
        n = max(lengths)
        mel = torch.full((len(mels), self.n_mels, n), self.mel_floor, dtype=torch.float32)
        z = torch.zeros(len(mels), hop * n, dtype=torch.float32)
        for b, (m, zz) in enumerate(zip(mels, zs)):
            mel[b, :, : m.shape[-1]] = m
            z[b, : zz.shape[-1]] = zz
        mel, z = mel.to(self.device, non_blocking=True), z.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            out = self.model.decode(z, mel)
        out = out.float().cpu()
        return [out[b, : hop * L] for b, L in enumerate(lengths)]

    def _run(self, n_frames: Sequence[int], get_mel: Callable[[int], Tensor], seeds: Sequence[int],
             sigma: float, batch_size: int) -> Iterator[tuple[int, Tensor]]:
        """Synthesize items; yields (index, audio float32 [hop·F]) as each item completes.

        Args:
            n_frames: F of each item.
            get_mel: index -> mel [n_mels, F] (called while the item is being synthesized; the
                result is held until the item completes, so inputs can be loaded lazily).
            seeds: per-item noise seeds.
            sigma: latent std.
            batch_size: pieces per decode call.
        """
        hop, rf = self.hop_length, self.receptive_field
        half = (self.crossfade_frames // 2) * hop
        pieces: list[Piece] = []
        for i, n in enumerate(n_frames):
            pieces += plan_pieces(i, int(n), self.chunk_frames, self.overlap, self.crossfade_frames)
        remaining = Counter(p.item for p in pieces)
        longest = defaultdict(int)
        for p in pieces:
            longest[p.item] = max(longest[p.item], p.length)
        # Items by decreasing (longest piece) length, each item's pieces together: the heaviest
        # batch runs first (an out-of-memory shows at once), neighbours have similar lengths (little
        # padding), and at most a batch's worth of items is in flight, which bounds memory.
        order = sorted(pieces, key=lambda p: (-longest[p.item], p.item, p.start))
        noise: dict[int, Tensor] = {}
        mels: dict[int, Tensor] = {}
        outputs: dict[int, Tensor] = {}

        def mel_full(i: int) -> Tensor:
            if i not in mels:
                mels[i] = get_mel(i)
            return mels[i]

        def z_of(p: Piece) -> Tensor:
            if p.item not in noise:
                # The whole file's noise from the file's own generator (see module docstring).
                gen = torch.Generator().manual_seed(int(seeds[p.item]))
                z = torch.randn(hop * int(n_frames[p.item]), generator=gen)
                noise[p.item] = z.mul_(float(sigma))
            return noise[p.item][p.start * hop: p.end * hop]

        def mel_of(p: Piece, start: int | None = None) -> Tensor:
            return mel_full(p.item)[:, (p.start if start is None else start): p.end]

        for first in range(0, len(order), batch_size):
            # Inference mode per batch, not around the `yield`: the caller's code between two
            # batches must not run inside it.
            with torch.inference_mode():
                batch = order[first: first + batch_size]
                n_max = max(p.length for p in batch)
                # A padded piece whose kept region reaches into its last rf frames needs repair.
                # If the repair window (2·rf) covers the whole piece, the padded decode would be
                # thrown away entirely, so such pieces skip it and are decoded alone instead.
                needs_fix = [p.length < n_max and p.keep_end > p.end - rf for p in batch]
                whole = [fix and p.length <= 2 * rf for p, fix in zip(batch, needs_fix)]
                main = [p for p, w in zip(batch, whole) if not w]
                results: dict[int, Tensor] = {}
                if main:
                    outs = self._decode_batch([mel_of(p) for p in main], [z_of(p) for p in main])
                    results = {id(p): o for p, o in zip(main, outs)}
                    n_main = max(p.length for p in main)
                else:
                    n_main = 0
                # Tails: (piece, first frame of the window) grouped by window length; equal
                # lengths batch without padding, hence exactly.
                tails: dict[int, list[tuple[Piece, int]]] = defaultdict(list)
                for p, w in zip(batch, whole):
                    if w:
                        tails[p.length].append((p, p.start))
                    elif p.length < n_main and p.keep_end > p.end - rf:
                        tails[2 * rf].append((p, p.end - 2 * rf))
                for group in tails.values():
                    for g0 in range(0, len(group), batch_size):
                        sub = group[g0: g0 + batch_size]
                        outs = self._decode_batch(
                            [mel_of(p, s) for p, s in sub],
                            [z_of(p)[(s - p.start) * hop:] for p, s in sub])
                        for (p, s), o in zip(sub, outs):
                            if s == p.start:
                                results[id(p)] = o
                            else:
                                # Keep the tail's last rf frames (its first rf frames see the
                                # tail's own artificial start).
                                fixed = results[id(p)].clone()
                                fixed[(p.end - rf - p.start) * hop:] = o[rf * hop:]
                                results[id(p)] = fixed
                for p in batch:
                    audio = results[id(p)][(p.keep_start - p.start) * hop: (p.keep_end - p.start) * hop]
                    w = _crossfade_weights(p, hop, half)
                    if w is None and remaining[p.item] == 1 and p.item not in outputs:
                        outputs[p.item] = audio.clone()  # the common one-piece case
                    else:
                        buf = outputs.setdefault(p.item, torch.zeros(hop * int(n_frames[p.item])))
                        seg = buf[p.keep_start * hop: p.keep_end * hop]
                        seg += audio if w is None else audio * w
                    remaining[p.item] -= 1
                done = [p.item for p in batch if remaining[p.item] == 0 and p.item in outputs]
                finished = [(i, outputs.pop(i)) for i in dict.fromkeys(done)]
                for i, _ in finished:
                    noise.pop(i, None)
                    mels.pop(i, None)
            yield from finished

    # -- public API ---------------------------------------------------------------------------

    def _check_mel(self, mel: Tensor, name: str) -> Tensor:
        from waveglow.mel import check_mel

        return check_mel(torch.as_tensor(mel).detach().float().cpu(), self.n_mels, name).contiguous()

    def from_mel(self, mel: Tensor, sigma: float = 0.6, seed: int = 0,
                 keys: Sequence[str | int] | None = None, lengths: Sequence[int] | None = None,
                 batch_size: int = 8, denoiser_strength: float = 0.0) -> Tensor:
        """Synthesize raw log-mels (the checkpoint's feature convention).

        Args:
            mel: [n_mels, F] or [B, n_mels, F] (any device; CPU float32 is used for planning).
            sigma: std of the latent noise (0.6 is the reference's default; 0 is deterministic).
            seed: noise seed; item b draws its noise from `noise_seed(seed, keys[b])`.
            keys: per-item noise keys (default: the batch index; `to_files` uses the file stem,
                so `from_mel(m, keys=["LJ001-0001"])` reproduces that file's synthesis).
            lengths: valid frames per item of a padded [B, n_mels, F] batch (default: all F).
            batch_size: items decoded together (results do not depend on it).
            denoiser_strength: > 0 applies the bias denoiser with that strength.

        Returns:
            float32 CPU audio [hop·F] (or [B, hop·F]; samples past hop·lengths[b] are zero),
            not clipped.
        """
        single = torch.as_tensor(mel).dim() == 2
        mel_b = torch.as_tensor(mel)[None] if single else torch.as_tensor(mel)
        if mel_b.dim() != 3:
            raise UserError(f"mel: expected [n_mels, F] or [B, n_mels, F], got shape {list(mel_b.shape)}")
        B, F = mel_b.shape[0], mel_b.shape[-1]
        lengths = [F] * B if lengths is None else [int(n) for n in lengths]
        if len(lengths) != B or any(n < 1 or n > F for n in lengths):
            raise UserError(f"lengths={lengths}: expected {B} values in [1, {F}]")
        keys = list(range(B)) if keys is None else list(keys)
        if len(keys) != B:
            raise UserError(f"keys: expected {B} keys, got {len(keys)}")
        items = [self._check_mel(mel_b[b, :, : lengths[b]], f"mel[{b}]") for b in range(B)]
        seeds = [noise_seed(seed, k) for k in keys]
        out = torch.zeros(B, self.hop_length * F)
        frames = [m.shape[-1] for m in items]
        for i, audio in self._run(frames, items.__getitem__, seeds, sigma, max(1, int(batch_size))):
            out[i, : audio.shape[-1]] = self.denoise(audio, denoiser_strength)
        return out[0] if single else out

    def denoiser(self, mode: str = "mean") -> Denoiser:
        """The bias denoiser of this checkpoint (computed once per mode and cached).

        Args:
            mode: zero-level mel: "mean" (the model's mel_mean, i.e. normalized zero; default),
                "silence" (the log-mel floor) or "zeros" (raw zeros). See `Denoiser`.
        """
        if mode not in DENOISER_MELS:
            raise UserError(f"denoiser_mel={mode}: expected one of {', '.join(DENOISER_MELS)}")
        if mode not in self._denoisers:
            # Long enough that the middle half is free of edge effects (> 2 receptive fields).
            n = max(88, 2 * self.receptive_field + 32)
            if mode == "mean":
                level = self.model.mel_mean.detach().float().cpu().reshape(-1, 1)
            elif mode == "silence":
                level = torch.full((self.n_mels, 1), self.mel_floor)
            else:
                level = torch.zeros(self.n_mels, 1)
            mel = level.expand(self.n_mels, n).contiguous()
            with torch.inference_mode():
                bias = self._decode_batch([mel], [torch.zeros(self.hop_length * n)])[0]
            audio = self.config["audio"]
            self._denoisers[mode] = Denoiser(bias, int(audio.get("n_fft", 1024)), self.hop_length,
                                             int(audio.get("win_length", 1024)))
        return self._denoisers[mode]

    def denoise(self, audio: Tensor, strength: float, mode: str = "mean") -> Tensor:
        """Apply the bias denoiser (a no-op for strength <= 0)."""
        if strength <= 0:
            return audio
        with torch.inference_mode():
            return self.denoiser(mode)(audio, strength)

    def to_files(self, inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 sigma: float = 0.6, seed: int = 0, batch_size: int = 8, denoiser_strength: float = 0.0,
                 denoiser_mel: str = "mean", subtype: str = "PCM_16", on_error: str = "fail",
                 progress: bool = True) -> SynthesisReport:
        """Synthesize mel files into `<output_dir>/<stem>.wav` (hop·F samples each).

        Every input is loaded and checked before anything is synthesized, so with
        on_error="fail" a bad file stops the run before any WAV is written. Each WAV is written
        to a temporary name and renamed, so no partial file is ever left behind.

        Args:
            inputs: a `resolve_inputs` spec (file, directory, glob, filelist) or a list of paths.
            output_dir: created if missing.
            sigma, seed, batch_size, denoiser_strength: as `from_mel`; each file's noise key
                is its stem.
            denoiser_mel: the denoiser's zero-level mel (see `denoiser`).
            subtype: "PCM_16", "PCM_24" or "FLOAT".
            on_error: "fail" (raise UserError on the first bad file) or "skip" (continue and
                list the bad files in the report).
            progress: show a progress bar over files.

        Returns:
            A `SynthesisReport`.

        Raises:
            UserError: a bad input with on_error="fail", or nothing could be synthesized.
        """
        from waveglow.mel import load_mel

        job = _Job(self, output_dir, sigma, seed, batch_size, denoiser_strength, denoiser_mel, subtype,
                   on_error, progress)
        for path in resolve_inputs(inputs, MEL_SUFFIXES):
            if job.claim(path):
                try:
                    n_frames = load_mel(path, self.n_mels).shape[-1]
                except UserError as e:
                    job.bad(path, str(naming(path, e)))
                    continue
                # Checked now, loaded again when its batch comes: memory holds only the mels in
                # flight, not the whole input set.
                job.add(path, n_frames, lambda path=path: load_mel(path, self.n_mels))
        return job.run()


class _Job:
    """One `to_files`-style run: checked inputs, the synthesis loop, atomic writes, the report.

    Shared by mel-file synthesis and copy synthesis (`resynthesize`), which adds per-file
    output lengths and a callback that sees each written waveform.
    """

    def __init__(self, synth: Synthesizer, output_dir: str | os.PathLike, sigma: float, seed: int,
                 batch_size: int, denoiser_strength: float, denoiser_mel: str, subtype: str,
                 on_error: str, progress: bool) -> None:
        if on_error not in ("fail", "skip"):
            raise UserError(f"on_error={on_error}: expected fail or skip")
        if subtype not in SUBTYPES:
            raise UserError(f"format={subtype}: expected one of {', '.join(SUBTYPES)}")
        if not (sigma >= 0 and math.isfinite(sigma)):
            raise UserError(f"sigma={sigma}: expected a finite value >= 0")
        if not denoiser_strength >= 0:
            raise UserError(f"denoiser_strength={denoiser_strength}: expected a value >= 0")
        if int(batch_size) < 1:
            raise UserError(f"batch_size={batch_size}: expected >= 1")
        if denoiser_strength > 0:
            synth.denoiser(denoiser_mel)  # check the mode (and build the denoiser) before any work
        self.out_dir = Path(output_dir)
        try:  # before any loading or synthesis: an unusable destination fails in a second
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.out_dir}: cannot create the output folder ({e.strerror or e})") from None
        self.t0 = time.perf_counter()
        self.synth = synth
        self.sigma, self.seed, self.batch_size = float(sigma), int(seed), int(batch_size)
        self.strength, self.denoiser_mel, self.subtype = float(denoiser_strength), denoiser_mel, subtype
        self.on_error, self.progress = on_error, progress
        self.report = SynthesisReport()
        self.paths: list[Path] = []
        self.n_frames: list[int] = []
        self.loaders: list[Callable[[], Tensor]] = []
        self.lengths: list[int | None] = []
        self.owners: dict[str, Path] = {}

    def bad(self, path: Path | str, message: str) -> None:
        """Record a bad input: raise with on_error=fail, else warn and remember it."""
        if self.on_error == "fail":
            raise UserError(message)
        log.warning("skipping %s", message)
        self.report.failed.append((str(path), message))

    def claim(self, path: Path) -> bool:
        """Reserve `<stem>.wav` for `path` (False, and a bad-input record, if already taken)."""
        if path.stem in self.owners:
            self.bad(path, f"{path}: output {path.stem}.wav would overwrite the synthesis of "
                           f"{self.owners[path.stem]}; expected unique file stems")
            return False
        self.owners[path.stem] = path
        return True

    def add(self, path: Path, n_frames: int, load: Callable[[], Tensor], length: int | None = None) -> None:
        """Queue a checked input of `n_frames` frames; `load()` gives its mel [n_mels, F] when
        needed. The output is cut to `length` samples if given."""
        self.paths.append(path)
        self.n_frames.append(int(n_frames))
        self.loaders.append(load)
        self.lengths.append(length)

    def run(self, on_written: Any = None) -> SynthesisReport:
        """Synthesize the queue; `on_written(index, audio [T] as written, path)` per file."""
        from tqdm import tqdm

        from waveglow.audio import save_audio

        s, report = self.synth, self.report
        seeds = [noise_seed(self.seed, p.stem) for p in self.paths]
        bar = tqdm(total=len(self.paths), unit="file", desc="synthesize", disable=not self.progress,
                   leave=False)

        def get_mel(i: int) -> Tensor:
            mel = self.loaders[i]()
            if mel.shape[-1] != self.n_frames[i]:
                raise UserError(f"{self.paths[i]}: changed while being synthesized; expected "
                                f"{self.n_frames[i]} frames, found {mel.shape[-1]}")
            return mel

        for i, audio in s._run(self.n_frames, get_mel, seeds, self.sigma, self.batch_size):
            bar.update(1)
            path = self.paths[i]
            if self.lengths[i] is not None:
                audio = audio[: self.lengths[i]]
            if not torch.isfinite(audio).all():
                self.bad(path, f"{path}: synthesis produced NaN/Inf samples (precision={s.precision}); "
                               "expected finite audio - try precision=fp32")
                continue
            audio = s.denoise(audio, self.strength, self.denoiser_mel)
            target = self.out_dir / f"{path.stem}.wav"
            try:
                clipped = save_audio(target, audio, s.sampling_rate, subtype=self.subtype)
            except OSError as e:  # disk full, folder removed: every later file would fail too
                raise UserError(f"{target}: cannot write ({e.strerror or e})") from None
            if clipped:
                log.info("%s: %d samples clipped to [-1, 1]", target, clipped)
                report.clipped_samples += clipped
                report.clipped_files += 1
            report.written.append(target)
            report.samples += audio.shape[-1]
            report.audio_seconds += audio.shape[-1] / s.sampling_rate
            if on_written is not None:
                on_written(i, audio.clamp(-1.0, 1.0), path)
        bar.close()
        report.wall_seconds = time.perf_counter() - self.t0
        if not report.written:
            listed = "; ".join(reason for _, reason in report.failed) or "no inputs"
            raise UserError(f"no file could be synthesized ({listed})")
        return report


@dataclass
class ResynthesisResult:
    """Copy-synthesis outcome: the synthesis report and the per-file / mean distances."""

    report: SynthesisReport
    rows: list[dict[str, Any]]
    mean: dict[str, float]
    metrics_csv: Path
    metrics_json: Path


def resynthesize(synth: Synthesizer, inputs: str | os.PathLike | Sequence[str | os.PathLike],
                 output_dir: str | os.PathLike, sigma: float = 0.6, seed: int = 0, batch_size: int = 8,
                 denoiser_strength: float = 0.0, denoiser_mel: str = "mean", subtype: str = "PCM_16",
                 on_error: str = "fail", progress: bool = True) -> ResynthesisResult:
    """Copy synthesis: WAV -> log-mel (the checkpoint's frontend) -> WAV of the input's length.

    Each output is compared with its input: mel L1 (mean |Δ log-mel|) and the multi-resolution
    STFT distance (`waveglow.metrics`), per file and as the mean over files, written to
    `<output_dir>/metrics.csv` (last row: mean) and `metrics.json`.

    Returns:
        A `ResynthesisResult`.
    """
    import json

    from waveglow.audio import load_audio, warn_once_per_rate
    from waveglow.mel import MelSpectrogram
    from waveglow.metrics import mel_l1, multi_resolution_stft_distance

    mel_fn = MelSpectrogram.from_config(synth.config["audio"]).eval()
    job = _Job(synth, output_dir, sigma, seed, batch_size, denoiser_strength, denoiser_mel, subtype,
               on_error, progress)
    references: dict[int, Tensor] = {}
    warn = warn_once_per_rate(set())

    def load(i: int, path: Path) -> Tensor:
        # The input is read again when its batch comes (memory holds only what is in flight)
        # and kept until its output has been measured.
        audio = torch.from_numpy(load_audio(path, synth.sampling_rate, warn=lambda *a: None))
        references[i] = audio
        with torch.inference_mode():
            return mel_fn(audio)

    for path in resolve_inputs(inputs, AUDIO_SUFFIXES):
        if not job.claim(path):
            continue
        try:
            audio = torch.from_numpy(load_audio(path, synth.sampling_rate, warn=warn))
            with torch.inference_mode():
                n_frames = mel_fn(audio).shape[-1]  # also rejects audio too short for one frame
            n_samples = audio.numel()
        except UserError as e:
            job.bad(path, str(naming(path, e)))
            continue
        i = len(job.paths)
        job.add(path, n_frames, lambda i=i, path=path: load(i, path), length=n_samples)
    rows: list[dict[str, Any]] = []

    def measure(i: int, audio: Tensor, path: Path) -> None:
        ref = references.pop(i)
        with torch.inference_mode():
            mr = multi_resolution_stft_distance(ref, audio)
            rows.append({"file": str(path), "seconds": ref.numel() / synth.sampling_rate,
                         "mel_l1": mel_l1(ref, audio, mel_fn), "mrstft": mr["distance"],
                         "spectral_convergence": mr["spectral_convergence"],
                         "log_magnitude_l1": mr["log_magnitude_l1"]})

    report = job.run(on_written=measure)
    rows.sort(key=lambda r: r["file"])
    keys = ("mel_l1", "mrstft", "spectral_convergence", "log_magnitude_l1")
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in keys}
    out_dir = Path(output_dir)
    header = ["file", "seconds", *keys]
    lines = [",".join(header)]
    lines += [",".join([_csv_cell(r["file"]), f"{r['seconds']:.4f}", *(f"{r[k]:.6f}" for k in keys)]) for r in rows]
    lines.append(",".join(["mean", f"{sum(r['seconds'] for r in rows):.4f}", *(f"{mean[k]:.6f}" for k in keys)]))
    metrics_csv, metrics_json = out_dir / "metrics.csv", out_dir / "metrics.json"
    write_text_atomic(metrics_csv, "\n".join(lines) + "\n")
    write_text_atomic(metrics_json, json.dumps({"files": rows, "mean": mean, "failed": [
        {"file": f, "error": e} for f, e in report.failed]}, indent=1))
    return ResynthesisResult(report, rows, mean, metrics_csv, metrics_json)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text
