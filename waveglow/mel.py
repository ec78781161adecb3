"""The log-mel frontend (Tacotron 2 / NVIDIA WaveGlow convention), mel files, mel statistics.

The features must match what Tacotron 2 produces, or its mels will not vocode: magnitude (not
power) STFT with a periodic Hann window and reflect padding, a Slaney-normalized mel
filterbank, and natural log of the magnitude clamped at 1e-5.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from waveglow.config import AudioConfig, to_dict
from waveglow.errors import UserError
from waveglow.fileio import atomic_write, write_bytes_atomic

MEL_SUFFIXES = (".pt", ".npy")


class MelSpectrogram(nn.Module):
    """Float audio in [-1, 1] -> natural-log mel magnitude spectrogram.

    Frame f is centred at sample f * hop_length (the signal is reflect-padded by n_fft / 2),
    so T samples give 1 + T // hop_length frames.

    Args:
        sampling_rate: Hz.
        n_fft: FFT size.
        hop_length: samples between frames.
        win_length: Hann window length (<= n_fft, zero-padded to n_fft on both sides).
        n_mels: mel channels.
        fmin, fmax: filterbank range in Hz (fmax None -> sampling_rate / 2).
        log_clamp: magnitudes below this are raised to it before the log.
    """

    window: torch.Tensor
    mel_basis: torch.Tensor

    def __init__(self, sampling_rate: int = 22050, n_fft: int = 1024, hop_length: int = 256,
                 win_length: int = 1024, n_mels: int = 80, fmin: float = 0.0,
                 fmax: float | None = 8000.0, log_clamp: float = 1e-5) -> None:
        super().__init__()
        if not 0 < win_length <= n_fft:
            raise UserError(f"audio.win_length={win_length}: expected 0 < win_length <= n_fft ({n_fft})")
        if hop_length <= 0 or n_mels <= 0 or log_clamp <= 0:
            raise UserError("audio settings: hop_length, n_mels and log_clamp must be positive")
        nyquist = sampling_rate / 2
        if fmax is not None and not fmin < fmax <= nyquist:
            raise UserError(f"audio.fmax={fmax}: expected fmin ({fmin}) < fmax <= sampling_rate/2 ({nyquist})")
        import librosa.filters  # slow import; only needed once per module

        self.sampling_rate = int(sampling_rate)
        self.n_fft = int(n_fft)
        self.hop_length = int(hop_length)
        self.win_length = int(win_length)
        self.n_mels = int(n_mels)
        self.fmin = float(fmin)
        self.fmax = float(fmax) if fmax is not None else None
        self.log_clamp = float(log_clamp)
        basis = librosa.filters.mel(sr=sampling_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax,
                                    htk=False, norm="slaney", dtype=np.float32)
        # Buffers (not parameters): they move with .to(device) but are not trained. Not
        # persistent: they are a pure function of the settings, which checkpoints store.
        self.register_buffer("window", torch.hann_window(win_length, periodic=True), persistent=False)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)

    @classmethod
    def from_config(cls, audio_cfg: AudioConfig | Mapping[str, Any]) -> MelSpectrogram:
        """Build from the `audio` settings (typed, or the plain dict a checkpoint stores)."""
        if not isinstance(audio_cfg, Mapping):
            audio_cfg = to_dict(audio_cfg)
        fmax = audio_cfg.get("fmax")
        return cls(sampling_rate=int(audio_cfg["sampling_rate"]), n_fft=int(audio_cfg["n_fft"]),
                   hop_length=int(audio_cfg["hop_length"]), win_length=int(audio_cfg["win_length"]),
                   n_mels=int(audio_cfg["n_mels"]), fmin=float(audio_cfg.get("fmin", 0.0)),
                   fmax=None if fmax is None else float(fmax),
                   log_clamp=float(audio_cfg.get("log_clamp", 1e-5)))

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for `n_samples` of audio (centred framing)."""
        return 1 + n_samples // self.hop_length

    def forward(self, audio: torch.Tensor, center: bool = True) -> torch.Tensor:
        """Log-mel spectrogram.

        Args:
            audio: float [B, T] or [T], nominally in [-1, 1].
            center: True (the convention) reflect-pads n_fft/2 on both sides; False frames the
                input as given (the caller supplies the context), giving 1 + (T - n_fft) // hop.

        Returns:
            [B, n_mels, 1 + T // hop] (or [n_mels, F] for 1-D input); float32 for half/bfloat16
            input (the STFT needs at least single precision), else the input's dtype.
        """
        squeeze = audio.dim() == 1
        if squeeze:
            audio = audio.unsqueeze(0)
        if audio.dim() != 2:
            raise UserError(f"MelSpectrogram: expected audio [B, T] or [T], got shape {list(audio.shape)}")
        n = audio.shape[-1]
        min_len = self.n_fft // 2 + 1 if center else self.n_fft
        if n < min_len:
            raise UserError(f"audio too short for a mel spectrogram: {n} samples, need at least {min_len} "
                            f"(n_fft={self.n_fft})")
        dtype = audio.dtype if audio.dtype in (torch.float32, torch.float64) else torch.float32
        audio = audio.to(dtype)
        # Under mixed precision the filterbank product would run in half precision, where the
        # 1e-5 clamp is subnormal and quiet channels lose their digits.
        with torch.autocast(device_type=audio.device.type, enabled=False):
            spec = torch.stft(audio, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
                              window=self.window.to(dtype=dtype, device=audio.device), center=center,
                              pad_mode="reflect", normalized=False, onesided=True, return_complex=True)
            magnitude = spec.abs()  # [B, n_fft/2 + 1, F]
            mel = torch.matmul(self.mel_basis.to(dtype=dtype, device=audio.device), magnitude)
            mel = torch.log(torch.clamp(mel, min=self.log_clamp))
        return mel[0] if squeeze else mel


# Conventions of log-mels in the wild, and how each maps to this toolkit's natural log of the
# magnitude: log10 (many TTS frontends) and dB = 20·log10 (librosa's amplitude_to_db, and
# power_to_db of a power mel, which is the same number).
CONVENTIONS = ("natural", "log10", "db")
_TO_NATURAL = {"natural": 1.0, "log10": math.log(10.0), "db": math.log(10.0) / 20.0}
# No log-mel convention comes near this magnitude (a dB mel of float32 audio stays within ±1000):
# beyond it, the file holds something else and would synthesize clipped noise.
ABSURD_MAGNITUDE = 1.0e4


def to_natural(mel: torch.Tensor, convention: str) -> torch.Tensor:
    """A log-mel in `convention` ("natural", "log10" or "db") as natural log of the magnitude.

    Args:
        mel: [..., n_mels, F].
        convention: one of `CONVENTIONS`.

    Returns:
        The same shape; `mel` itself for "natural".
    """
    if convention not in _TO_NATURAL:
        raise UserError(f"input_convention={convention}: expected one of {', '.join(CONVENTIONS)}")
    return mel if convention == "natural" else mel * _TO_NATURAL[convention]


def convention_scale(convention: str) -> float:
    """Natural-log units per unit of `convention` (1 for natural, ln 10 for log10, ln 10 / 20 for dB)."""
    return _TO_NATURAL[convention]


def load_mel(path: str | os.PathLike, n_mels: int, constant_ok: bool = False) -> torch.Tensor:
    """Read a mel file written by this toolkit, Tacotron 2 or NVIDIA inference scripts.

    Every file is distrusted: its size is checked before anything is read, an .npy header is
    checked against the bytes that follow it (so a header that promises terabytes allocates
    nothing), and the values must look like a spectrogram (`check_mel_values`).

    Args:
        path: `.pt` (a plain tensor saved with torch.save; loaded with weights_only=True) or `.npy`.
        n_mels: the expected number of mel channels.
        constant_ok: let a constant through (synthesis judges it: the log floor is digital
            silence, `ConventionCheck.check_constant`).

    Returns:
        float32 [n_mels, F] (a leading batch axis of 1 is dropped).

    Raises:
        UserError: one line naming the file: missing, empty, truncated, not a dense real float
            tensor, wrong shape, no frames, NaN/Inf, constant or absurd values.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such mel file")
    suffix = path.suffix.lower()
    if suffix not in MEL_SUFFIXES:
        raise UserError(f"{path}: unknown mel file type {path.suffix!r}; expected .pt or .npy")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file (0 bytes); expected a float tensor [n_mels={n_mels}, frames]")
    mel = _load_pt(path) if suffix == ".pt" else _load_npy(path)
    return check_mel_values(check_mel(mel, n_mels, str(path)), str(path), constant_ok=constant_ok)


def check_mel(mel: torch.Tensor, n_mels: int, name: str = "mel") -> torch.Tensor:
    """Validate a mel tensor: float32 [n_mels, F] with F >= 1 and finite values (see `load_mel`)."""
    if mel.layout != torch.strided:
        raise UserError(f"{name}: a {str(mel.layout).replace('torch.', '')} tensor; expected a dense float "
                        f"tensor [n_mels={n_mels}, frames]")
    if not mel.is_floating_point():
        raise UserError(f"{name}: expected a real float tensor [n_mels={n_mels}, frames], got dtype {mel.dtype}")
    if mel.dim() == 3 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.dim() != 2:
        raise UserError(f"{name}: expected a mel spectrogram [n_mels={n_mels}, frames], got shape {list(mel.shape)}")
    if mel.shape[0] != n_mels:
        hint = " (transposed? expected channels first)" if mel.shape[1] == n_mels else ""
        raise UserError(f"{name}: expected {n_mels} mel channels [n_mels, frames], got shape "
                        f"{list(mel.shape)}{hint}")
    if mel.shape[1] == 0:
        raise UserError(f"{name}: empty mel spectrogram (0 frames)")
    mel = mel.float()
    if not torch.isfinite(mel).all():
        raise UserError(f"{name}: mel spectrogram contains NaN or Inf")
    return mel.contiguous()


def check_mel_values(mel: torch.Tensor, name: str = "mel", constant_ok: bool = False) -> torch.Tensor:
    """Refuse values no log-mel convention produces: magnitudes beyond `ABSURD_MAGNITUDE`, or
    one value everywhere (a constant "mel" carries no signal; synthesized, it is the model's bias
    tone). Checked for inputs to synthesis, not for the frontend's own output.

    Args:
        mel: float [n_mels, F] (finite; see `check_mel`).
        name: the file or argument named in the error.
        constant_ok: skip the constant check (a piece of a stream, judged as a whole at its end).

    Returns:
        `mel`.
    """
    peak = float(mel.abs().max())
    if peak > ABSURD_MAGNITUDE:
        raise UserError(f"{name}: values up to {peak:.3g} are beyond any log-mel convention (natural, log10, "
                        f"dB stay within ±{ABSURD_MAGNITUDE:g}); expected a log-mel spectrogram")
    lo = float(mel.min())
    if not constant_ok and mel.numel() > 1 and lo == float(mel.max()):
        raise UserError(f"{name}: every value is {lo:g} (a constant, not a spectrogram); expected a log-mel "
                        "spectrogram")
    return mel


def _first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type when it has none."""
    lines = str(e).strip().splitlines()
    return lines[0][:120] if lines else type(e).__name__


def _load_pt(path: Path) -> torch.Tensor:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # weights_only refuses anything but tensors and plain containers: e.g. a pickle that
        # would run code on load. Never retry without it.
        raise UserError(f"{path}: not a tensor file (refused to unpickle arbitrary objects); "
                        "expected a float tensor [n_mels, frames] saved with torch.save") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            TypeError, AttributeError, MemoryError) as e:
        raise UserError(f"{path}: truncated or corrupt .pt file ({_first_line(e)}); "
                        "expected a float tensor [n_mels, frames] saved with torch.save") from None
    if not isinstance(obj, torch.Tensor):
        raise UserError(f"{path}: holds a {type(obj).__name__}, not a tensor; expected a float tensor "
                        "[n_mels, frames] saved with torch.save")
    return obj


def _load_npy(path: Path) -> torch.Tensor:
    """An .npy array, its header checked against the file before any data is read.

    numpy allocates what the header declares; a header that lies (or a truncated file) would
    otherwise ask for hundreds of GiB. The data is memory-mapped, so only what the file really
    holds is read.
    """
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran_order, dtype = read_header(f)
            offset = f.tell()
    except (ValueError, EOFError, OSError, SyntaxError, TypeError) as e:
        raise UserError(f"{path}: not a readable .npy file ({_first_line(e)}); expected a float array "
                        "[n_mels, frames]") from None
    if dtype.hasobject or dtype.kind != "f":
        raise UserError(f"{path}: expected a float array [n_mels, frames], got dtype {dtype}")
    if len(shape) not in (2, 3) or 0 in shape:
        # Shape errors are reported by check_mel with the channel hint; an empty or 1-D array
        # is cheap to build, so let it through to get the same message.
        if math.prod(shape) * dtype.itemsize > 16 * 2**20:
            raise UserError(f"{path}: expected a mel spectrogram [n_mels, frames], got shape {list(shape)}")
    need = math.prod(shape) * dtype.itemsize
    if need > size - offset:
        raise UserError(f"{path}: truncated .npy file: its header promises shape {list(shape)} ({need:,} bytes "
                        f"of {dtype}) but the file holds {max(size - offset, 0):,} bytes of data")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False) if need else np.load(path, allow_pickle=False)
        arr = np.array(arr, dtype=np.float32, order="C")  # reads the mapped bytes once
    except (ValueError, EOFError, OSError) as e:
        raise UserError(f"{path}: truncated or not a numeric .npy array ({_first_line(e)})") from None
    return torch.from_numpy(arr)


def save_mel(path: str | os.PathLike, mel: torch.Tensor | np.ndarray) -> Path:
    """Write a mel [n_mels, F] as float32, atomically; `.pt` (torch.save of a plain tensor) or `.npy`.

    Returns:
        The path written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MEL_SUFFIXES:
        raise UserError(f"{path}: cannot write mel with suffix {path.suffix!r}; expected .pt or .npy")
    if isinstance(mel, np.ndarray):
        mel = torch.from_numpy(mel)
    # clone(): torch.save of a view would store the whole underlying storage.
    mel = mel.detach().to("cpu", torch.float32).contiguous().clone()
    if suffix == ".pt":
        write_bytes_atomic(path, _pt_bytes(mel))
    else:
        atomic_write(path, lambda f: np.save(f, mel.numpy(), allow_pickle=False))
    return path


def _pt_bytes(mel: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(mel, buf)
    return buf.getvalue()


class MelStats:
    """Streaming per-channel mean and standard deviation of log-mels.

    Accumulates count, mean and the sum of squared deviations in float64 and merges batches
    with the pairwise (Chan et al.) update, so millions of frames lose no precision and
    partial results from worker processes combine exactly.

    Args:
        n_mels: number of channels.
    """

    def __init__(self, n_mels: int) -> None:
        self.n_mels = n_mels
        self.count = 0
        self.mean = np.zeros(n_mels, dtype=np.float64)
        self.m2 = np.zeros(n_mels, dtype=np.float64)

    def update(self, mel: torch.Tensor | np.ndarray) -> None:
        """Add the frames of one mel [n_mels, F]."""
        x = mel.detach().cpu().double().numpy() if isinstance(mel, torch.Tensor) else np.asarray(mel, np.float64)
        if x.ndim != 2 or x.shape[0] != self.n_mels:
            raise ValueError(f"MelStats.update: expected [{self.n_mels}, F], got {list(x.shape)}")
        n = x.shape[1]
        if n == 0:
            return
        mean = x.mean(axis=1)
        m2 = ((x - mean[:, None]) ** 2).sum(axis=1)
        self._combine(n, mean, m2)

    def merge(self, other: MelStats) -> None:
        """Fold in the frames counted by another MelStats."""
        if other.n_mels != self.n_mels:
            raise ValueError("MelStats.merge: channel counts differ")
        if other.count:
            self._combine(other.count, other.mean, other.m2)

    def _combine(self, n: int, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total

    def std(self, floor: float = 1e-5) -> np.ndarray:
        """Population standard deviation per channel (float64), floored so it can divide."""
        if self.count == 0:
            raise ValueError("MelStats: no frames")
        return np.maximum(np.sqrt(self.m2 / self.count), floor)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """{"mean": float32 [n_mels], "std": float32 [n_mels]} (the stats.pt format)."""
        if self.count == 0:
            raise ValueError("MelStats: no frames")
        return {"mean": torch.from_numpy(self.mean.astype(np.float32)),
                "std": torch.from_numpy(self.std().astype(np.float32))}
