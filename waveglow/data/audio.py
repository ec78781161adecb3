"""Reading, writing and dithering waveforms.

Everything downstream works on mono float32 audio in [-1, 1] at the configured sampling rate;
this module is the one place that turns files into that (and back).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from waveglow.errors import UserError
from waveglow.fileio import atomic_write

log = logging.getLogger("waveglow.audio")

INT16_SCALE = 32768.0  # one int16 LSB is 1 / 32768 of full scale
# What the toolkit reads (and writes): libsndfile decodes both without extra dependencies.
AUDIO_SUFFIXES = (".wav", ".flac")
# Audio we recognise but do not read: reported as "wrong extension", not silently ignored.
OTHER_AUDIO_SUFFIXES = frozenset({".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif",
                                  ".aiff", ".aifc", ".au", ".snd", ".raw", ".pcm", ".sph", ".webm"})

# Called as warn(path, file_rate, target_rate) when a file has to be resampled.
ResampleWarn = Callable[[Path, int, int], None]


def read_audio(path: str | os.PathLike, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, int]:
    """Read a file (or the frames [start, stop) of it) as mono float32, at its own rate.

    soundfile scales integer PCM by 1 / 2**(bits-1), so int16/int24/int32 files come out in
    [-1, 1); float files are passed through unchanged. Channels are averaged.

    Args:
        path: any format libsndfile reads (WAV, FLAC, ...).
        start, stop: frame range in the file's own rate (stop=None: to the end).

    Returns:
        (audio float32 [T], sampling rate of the file).

    Raises:
        UserError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path.absolute()}: no such audio file")
    _check_wav_complete(path)
    try:
        data, rate = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise UserError(f"{path}: cannot read audio ({_short(e)}); expected a WAV or FLAC file") from None
    # Mean of channels, not the first one: a stereo file with one silent channel still works.
    audio = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(audio, dtype=np.float32), int(rate)


def _check_wav_complete(path: Path) -> None:
    """Refuse a RIFF/WAVE file whose data chunk is cut short.

    libsndfile silently reads what is there, so a half-copied file would otherwise give a
    shorter clip (and a mel that no longer matches its transcript) without a word.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return  # not a plain RIFF WAV (FLAC, RF64, ...): libsndfile's own checks apply
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if chunk_id == b"data":
                if chunk_size == 0xFFFFFFFF:  # streamed WAV with an unknown length
                    return
                available = size - pos - 8
                if chunk_size > available:
                    raise UserError(
                        f"{path}: truncated WAV: the header declares {chunk_size} bytes of audio "
                        f"but the file holds {available}; expected a complete file"
                    )
                return
            pos += 8 + chunk_size + (chunk_size & 1)  # chunks are padded to an even size


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) of float32 audio [T] -> [ceil(T * target/orig)]."""
    if orig_rate == target_rate:
        return audio
    import librosa  # imported here: it is slow to import and most reads need no resampling

    out = librosa.resample(audio, orig_sr=orig_rate, target_sr=target_rate, res_type="soxr_hq")
    return np.ascontiguousarray(out, dtype=np.float32)


def resampled_length(n_samples: int, orig_rate: int, target_rate: int) -> int:
    """Length after `resample` (librosa's rule: ceil(n * target / orig)), known without decoding."""
    if orig_rate == target_rate:
        return n_samples
    return int(np.ceil(n_samples * target_rate / orig_rate))


def warn_once_per_rate(seen: set[int]) -> ResampleWarn:
    """A resample warning that fires once per source rate; `seen` is owned by the caller.

    One set per corpus gives "one warning per corpus" without any process-wide state.
    """

    def warn(path: Path, orig_rate: int, target_rate: int) -> None:
        if orig_rate not in seen:
            seen.add(orig_rate)
            log.warning("%s: %g kHz audio is resampled to %g kHz (files at this rate will not "
                        "be reported again)", path, orig_rate / 1000, target_rate / 1000)

    return warn


def _warn_every_time(path: Path, orig_rate: int, target_rate: int) -> None:
    log.warning("%s: %g kHz audio is resampled to %g kHz", path, orig_rate / 1000, target_rate / 1000)


def load_audio(path: str | os.PathLike, sampling_rate: int, warn: ResampleWarn | None = None) -> np.ndarray:
    """Load a file as mono float32 at `sampling_rate`, checking that it holds usable audio.

    Args:
        path: WAV/FLAC (anything libsndfile reads).
        sampling_rate: target rate in Hz; other rates are resampled.
        warn: called when resampling is needed (default: log a warning every time; pass
            `warn_once_per_rate(seen)` to report each rate once per corpus).

    Returns:
        float32 [T] (int PCM scaled to [-1, 1]).

    Raises:
        UserError: unreadable, empty, or containing NaN/Inf.
    """
    path = Path(path)
    audio, rate = read_audio(path)
    if audio.size == 0:
        raise UserError(f"{path}: empty audio file (0 samples); expected speech audio")
    if not np.isfinite(audio).all():
        raise UserError(f"{path}: audio contains NaN or Inf samples; expected finite PCM or float audio")
    if rate != sampling_rate:
        (warn or _warn_every_time)(path, rate, sampling_rate)
        audio = resample(audio, rate, sampling_rate)
    return audio


# Bits per sample of the integer PCM subtypes the toolkit quantizes itself. libsndfile reads a
# k-valued sample as k / 2**(bits-1) (unsigned 8-bit is offset by 128 in the file, same scale).
PCM_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24, "PCM_32": 32}
# Float subtypes store samples as they are: nothing is rounded and nothing beyond full scale clipped.
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")


def quantize_pcm(audio: np.ndarray, subtype: str) -> tuple[np.ndarray, int]:
    """Round float audio to the integer grid of a PCM subtype, as the file will store it.

    Rounding is to the nearest step, half to even (`np.rint`), so the quantization error has
    zero mean (libsndfile's own float conversion can truncate: a −½ LSB bias). Samples beyond
    the grid's range [-2**(bits-1), 2**(bits-1) − 1] are clipped to it; +1.0 becomes the largest
    code (1 LSB below full scale) without counting as clipped.

    Args:
        audio: float [T] nominally in [-1, 1] (float64 keeps PCM_32 exact; float32 holds 24 bits).
        subtype: a key of `PCM_BITS`.

    Returns:
        (integer codes [T] in the container libsndfile writes exactly — int16 for 8/16-bit,
        int32 left-aligned for 24-bit, int32 for 32-bit —, number of samples beyond [-1, 1]).
    """
    bits = PCM_BITS[subtype]
    scale = float(2 ** (bits - 1))
    n_clipped = int(np.count_nonzero(np.abs(audio) > 1.0))
    codes = np.clip(np.rint(audio.astype(np.float64) * scale), -scale, scale - 1)
    # libsndfile converts short -> 8 bit and int -> 24 bit by dropping the low 8 bits, so the
    # codes go in left-aligned and come out exact; 16 and 32 bit are written as they are.
    if bits == 8:
        return (codes.astype(np.int16) << 8), n_clipped
    if bits == 16:
        return codes.astype(np.int16), n_clipped
    if bits == 24:
        return (codes.astype(np.int32) << 8), n_clipped
    return codes.astype(np.int32), n_clipped


def save_audio(path: str | os.PathLike, audio: np.ndarray | torch.Tensor, sampling_rate: int,
               subtype: str = "PCM_16") -> int:
    """Write mono audio atomically (`waveglow.fileio.atomic_write`: temp file, then rename).

    Every WAV/FLAC the toolkit writes goes through here. Integer PCM subtypes are quantized by
    `quantize_pcm` (round half to even, clipped at full scale), so a signal already on the
    subtype's grid is written bit for bit and rounding carries no bias. FLOAT and DOUBLE files
    keep every sample as given, including samples beyond [-1, 1]. Other subtypes (μ-law, ADPCM)
    get float samples clipped to [-1, 1] and are encoded by libsndfile.

    Args:
        path: output file; the format follows the suffix (.wav, .flac).
        audio: float [T] (or [1, T]) nominally in [-1, 1]. NaN is written as 0 and ±Inf as ±1.
        sampling_rate: Hz.
        subtype: libsndfile subtype ("PCM_16", "PCM_24", "PCM_32", "PCM_U8", "PCM_S8", "FLOAT",
            "DOUBLE", ...) that the format supports.

    Returns:
        The number of samples beyond [-1, 1] that had to be clipped (always 0 for FLOAT/DOUBLE).

    Raises:
        UserError: not mono, an unknown suffix, or a subtype the format cannot hold.
    """
    path = Path(path)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu()
        audio = (audio.double() if audio.dtype == torch.float64 else audio.float()).numpy()
    audio = np.asarray(audio)
    # float64 stays float64 (PCM_32 and DOUBLE need its precision); anything else is float32.
    audio = audio.astype(np.float64 if audio.dtype == np.float64 else np.float32, copy=False).squeeze()
    if audio.ndim != 1:
        raise UserError(f"{path}: expected mono audio [T] to write, got shape {list(audio.shape)}")
    fmt = {".wav": "WAV", ".flac": "FLAC"}.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: cannot write audio with suffix {path.suffix!r}; expected .wav or .flac")
    if not sf.check_format(fmt, subtype):
        raise UserError(f"{path}: a {fmt} file cannot hold subtype={subtype}; expected one of "
                        f"{', '.join(sf.available_subtypes(fmt))}")
    audio = np.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0)
    data: np.ndarray
    if subtype in PCM_BITS:
        data, n_clipped = quantize_pcm(audio, subtype)
    elif subtype in FLOAT_SUBTYPES:
        data, n_clipped = audio.astype(np.float64 if subtype == "DOUBLE" else np.float32), 0
    else:
        n_clipped = int(np.count_nonzero(np.abs(audio) > 1.0))
        data = np.clip(audio, -1.0, 1.0)
    atomic_write(path, lambda f: sf.write(f, data, int(sampling_rate), subtype=subtype, format=fmt))
    return n_clipped


def dither(audio: torch.Tensor, lsb: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Add uniform dequantization noise U(-0.5, 0.5) * lsb int16 steps.

    int16 audio lives on a grid; a continuous density on a grid has unbounded likelihood, and
    digital silence would give log(0) mels. Spreading each sample over its quantization cell
    fixes both.

    Args:
        audio: float tensor of any shape (e.g. [T] or [B, T]).
        lsb: noise width in int16 LSBs (0 returns the input unchanged).
        generator: torch RNG to draw from (default: the global one).

    Returns:
        A new tensor, same shape/dtype/device.
    """
    if lsb <= 0:
        return audio
    noise = torch.rand(audio.shape, generator=generator, dtype=audio.dtype, device=audio.device)
    return audio + (noise - 0.5) * (lsb / INT16_SCALE)


def _short(e: BaseException) -> str:
    """The first line of an exception message (libsndfile's can be long)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
