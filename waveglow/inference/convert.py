"""Latent voice conversion: encode a recording with its own mel, change the conditioning and/or
the latent, decode.

The flow is invertible, so z = f(x; mel(x)) holds everything about x that its mel does not:
the fine structure (phase, excitation, noise). Decoding that z with a *different* mel keeps the
fine structure and takes the spectral envelope from the new mel:

    formant_shift α   the mel's spectral envelope (cepstrally liftered log-mel: the first 20
                      DCT coefficients along the channels) warped so that its value at f moves
                      to α·f, and the fine structure (log-mel − envelope: the harmonic ripple
                      below ~1 kHz) added back unwarped, so α > 1 moves formants up, α < 1
                      down, and the pitch stays (`shift_formants`);
    target            a second recording's mel, DTW-aligned to the source's frames (`dtw`),
                      replaces the source's (voice transfer between two takes of a sentence);
    latent_scale      z multiplied by this (< 1 smoother, > 1 more detail and noise).

With the identity settings (α = 1, no target, scale 1) the output is decode(encode(x)) = x up
to float rounding. Long recordings are encoded and decoded in pieces of the synthesizer's
`chunk_frames` with receptive-field context on each side, which is exact (see
`waveglow.inference.noise`): encode and decode read their input only within that reach.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf
import torch
from torch import Tensor
from tqdm import tqdm

from waveglow.config import ConvertApp
from waveglow.data.audio import AUDIO_SUFFIXES, load_audio, resample, save_audio
from waveglow.data.inputs import InputFile, resolve_inputs
from waveglow.errors import UserError, naming
from waveglow.inference.checks import check_settings
from waveglow.inference.chunks import plan_pieces
from waveglow.inference.dtw import align
from waveglow.inference.jobs import show_progress
from waveglow.inference.synthesizer import Synthesizer
from waveglow.mel import MelSpectrogram

log = logging.getLogger("waveglow.convert")

Inputs = str | os.PathLike | list[str | os.PathLike]
# Passes of `match_envelope` after decoding with a changed mel (each one gets closer; the STFT
# consistency of the result limits how close).
ENVELOPE_PASSES = 3
# Cepstral coefficients (along the 80 mel channels) that make the spectral envelope
# `shift_formants` moves: periods of 2·80/20 = 8 channels and longer (formants); the harmonic
# ripple of a voice below ~1 kHz (~3 channels apart) is left where it is.
ENVELOPE_QUEFRENCIES = 20


@dataclass
class ConvertReport:
    """What `convert_files` did."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    clipped_samples: int = 0

    def summary(self) -> str:
        rtf = self.audio_seconds / max(self.wall_seconds, 1e-9)
        n = len(self.written)
        return (f"converted {n} {'file' if n == 1 else 'files'}, {self.audio_seconds:.2f} s of audio in "
                f"{self.wall_seconds:.2f} s ({rtf:.1f}x real time)"
                + (f"; {self.clipped_samples} samples clipped to [-1, 1]" if self.clipped_samples else ""))


# ------------------------------------------------------------------------------ conditioning
def channel_centres_hz(mel_fn: MelSpectrogram) -> Tensor:
    """Centre frequency of each mel channel [n_mels] in Hz: its filter's weighted mean frequency."""
    basis = mel_fn.mel_basis.double()  # [n_mels, n_fft/2 + 1]
    freqs = torch.linspace(0, mel_fn.sampling_rate / 2, basis.shape[1], dtype=torch.float64)
    return (basis * freqs).sum(1) / basis.sum(1).clamp_min(1e-12)


def warp_formants(mel: Tensor, factor: float, centres_hz: Tensor) -> Tensor:
    """Warp a log-mel's frequency axis as a whole: channel k takes the value at centre_k / factor.

    This moves everything, the harmonics of the voice included; `shift_formants` moves the
    envelope only and is what conversion uses.

    Args:
        mel: log-mel [n_mels, F].
        factor: > 1 moves the spectrum up, < 1 down; 1 returns `mel` itself.
        centres_hz: [n_mels] increasing channel centres (`channel_centres_hz`).

    Returns:
        log-mel [n_mels, F] (float32). Frequencies beyond the first / last centre take the edge
        channel's value.
    """
    if factor == 1.0:
        return mel
    n = centres_hz.numel()
    # Fractional channel index of each source frequency (piecewise linear in Hz between centres).
    src = (centres_hz / factor).clamp(float(centres_hz[0]), float(centres_hz[-1]))
    upper = torch.searchsorted(centres_hz, src).clamp(1, n - 1)
    lo_hz, hi_hz = centres_hz[upper - 1], centres_hz[upper]
    frac = ((src - lo_hz) / (hi_hz - lo_hz)).float()[:, None]
    return mel[upper - 1] * (1 - frac) + mel[upper] * frac


def dct_basis(n: int) -> Tensor:
    """Orthonormal DCT-II matrix [n, n] (float64): row q is quefrency q, so `basis @ v` is the
    cepstrum of a log spectrum v [n] and `basis.T @ c` inverts it."""
    k = torch.arange(n, dtype=torch.float64)
    basis = torch.cos(math.pi * (k[None, :] + 0.5) * k[:, None] / n) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis


def mel_envelope(mel: Tensor, n_keep: int = ENVELOPE_QUEFRENCIES) -> Tensor:
    """The spectral envelope of a log-mel: cepstrally liftered along the channel axis.

    The DCT over the channels of each frame is kept below quefrency `n_keep` and inverted.
    What is removed, mel − envelope, is the fine structure: the ripple of resolved harmonics
    (below about 1 kHz at 22.05 kHz / 80 channels, where a 120 Hz voice's harmonics are ~3
    channels apart) and noise.

    Args:
        mel: log-mel [n_mels, F].
        n_keep: quefrencies kept (the envelope varies no faster than a period of
            2·n_mels / n_keep channels).

    Returns:
        the envelope [n_mels, F], same dtype as `mel`.
    """
    basis = dct_basis(mel.shape[0])[:n_keep]  # [n_keep, n_mels]
    return (basis.T @ (basis @ mel.double())).to(mel.dtype)


def shift_formants(mel: Tensor, factor: float, centres_hz: Tensor, n_keep: int = ENVELOPE_QUEFRENCIES) -> Tensor:
    """Move a log-mel's spectral envelope (formants) along frequency, keeping its fine structure.

    out = warp(envelope(mel), factor) + (mel − envelope(mel)): the liftered envelope
    (`mel_envelope`) is warped so that its value at f moves to factor·f (`warp_formants`), and
    the fine structure (the harmonic ripple, i.e. the pitch) is added back where it was. A plain
    warp of the log-mel would move the harmonics too, and the envelope match after decoding
    would then pull the output's harmonics toward a ripple at factor × F0.

    Args:
        mel: log-mel [n_mels, F].
        factor: > 1 formants up, < 1 down; 1 returns `mel` itself.
        centres_hz: [n_mels] increasing channel centres (`channel_centres_hz`).
        n_keep: quefrencies of the envelope (`mel_envelope`).

    Returns:
        log-mel [n_mels, F] float32.
    """
    if factor == 1.0:
        return mel
    env = mel_envelope(mel.float(), n_keep)
    return warp_formants(env, factor, centres_hz) + (mel.float() - env)


def match_envelope(audio: Tensor, mel: Tensor, mel_fn: MelSpectrogram, max_gain: float = 3.0) -> Tensor:
    """Correct `audio` toward the log-mel `mel` with a smooth STFT gain (one pass).

    The gain per mel channel and frame is the log ratio mel − mel_fn(audio), clamped to
    ±max_gain nats; each STFT bin takes the filterbank-weighted mean of the channels that cover
    it (bins no channel covers, above fmax, take the nearest covered bin's). Same STFT as the frontend.

    Args:
        audio: float [T].
        mel: the requested log-mel [n_mels, 1 + T // hop].
        mel_fn: the checkpoint's frontend.
        max_gain: the largest correction, in nats of magnitude (3 ≈ 26 dB).

    Returns:
        float32 audio [T].
    """
    window = mel_fn.window.to(audio.dtype)
    spec = torch.stft(audio, mel_fn.n_fft, mel_fn.hop_length, mel_fn.win_length, window=window,
                      center=True, pad_mode="reflect", return_complex=True)  # [n_fft/2 + 1, F]
    log_gain = (mel - mel_fn(audio)).clamp(-max_gain, max_gain)  # [n_mels, F]
    basis = mel_fn.mel_basis  # [n_mels, n_fft/2 + 1]
    weight = basis.sum(0)  # [n_fft/2 + 1]
    covered = (weight > 0).nonzero().flatten()
    per_bin = (basis.T @ log_gain) / weight.clamp_min(1e-12)[:, None]
    # Bins no channel covers (below fmin, above fmax) take the nearest covered bin's gain: what
    # the model puts there is unconstrained by the mel, and left alone it would keep whatever the
    # mismatch between latent and mel put there.
    nearest = covered[torch.searchsorted(covered, torch.arange(weight.numel())).clamp(max=covered.numel() - 1)]
    per_bin = per_bin[nearest]
    out = torch.istft(spec * per_bin.exp(), mel_fn.n_fft, mel_fn.hop_length, mel_fn.win_length, window=window,
                      center=True, length=audio.numel())
    return out.float()


def aligned_target_mel(source_mel: Tensor, target_mel: Tensor) -> Tensor:
    """The target's mel re-timed to the source's frames by DTW: [n_mels, F_source]."""
    return target_mel[:, align(source_mel, target_mel)]


# ------------------------------------------------------------------------------------ inputs
def mono_audio(audio: Tensor, what: str = "audio") -> Tensor:
    """`audio` as a float32 CPU tensor [T], refusing anything but mono [T] or [1, T].

    A stereo [2, T] or [T, 2] tensor flattened would be read as 2T samples of one signal (or
    its channels interleaved); it is refused with one line, as the command-line tools refuse a
    multi-channel file they cannot keep.

    Args:
        audio: float tensor (or array) [T] or [1, T].
        what: the name used in the message (e.g. "target").

    Raises:
        UserError: 0-d, 3-d or more, or more than one channel.
    """
    x = torch.as_tensor(audio)
    if x.dim() == 2 and x.shape[0] == 1:
        x = x[0]
    if x.dim() != 1:
        raise UserError(f"{what}: a tensor of shape {list(x.shape)}; expected mono audio [T] or [1, T] "
                        "(mix or pick a channel first, e.g. audio.mean(0) for [2, T])")
    if not x.is_floating_point():
        raise UserError(f"{what}: a {x.dtype} tensor; expected float audio in [-1, 1]")
    return x.float().cpu()


# ----------------------------------------------------------------------------- latent access
def _padded_length(synth: Synthesizer, n_samples: int) -> tuple[int, bool]:
    """(length the flow takes, whether pieces can be cut at frame boundaries)."""
    hop, G = synth.hop_length, synth.model.n_group
    if hop % G == 0:
        return math.ceil(n_samples / hop) * hop, True
    return math.ceil(n_samples / G) * G, False


def _piecewise(synth: Synthesizer, signal: Tensor, mel: Tensor,
               fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Apply `fn` (encode or decode: [1, T'], [1, n_mels, F'] -> [1, T']) to `signal` [T] in
    pieces of `chunk_frames` with receptive-field context; exact (see the module docstring)."""
    hop = synth.hop_length
    T = signal.shape[-1]
    n_frames = -(-T // hop)
    _, chunkable = _padded_length(synth, T)
    pieces = plan_pieces(0, n_frames, synth.chunk_frames if chunkable else n_frames, synth.overlap, 0)
    out = torch.empty(T)
    for p in pieces:
        a0, a1 = p.start * hop, min(p.end * hop, T)
        y = fn(signal[a0:a1][None], mel[:, p.start: p.end][None])[0]
        k0, k1 = p.keep_start * hop, min(p.keep_end * hop, T)
        out[k0:k1] = y[k0 - a0: k1 - a0]
    return out


def encode_audio(synth: Synthesizer, audio: Tensor, mel: Tensor) -> Tensor:
    """z = f(x; mel), exact, in pieces for long audio.

    Args:
        synth: the synthesizer (its model, device and chunk_frames).
        audio: float [T].
        mel: its log-mel [n_mels, >= ceil(T / hop)].

    Returns:
        z [T'] float32 (T' = T padded with zeros to a whole number of frames, or of n_group).
    """
    n, _ = _padded_length(synth, audio.shape[-1])
    x = torch.nn.functional.pad(audio.float(), (0, n - audio.shape[-1]))
    return _piecewise(synth, x, mel, synth.encode)


def decode_latent(synth: Synthesizer, z: Tensor, mel: Tensor) -> Tensor:
    """x = f⁻¹(z; mel) for z [T'] from `encode_audio` and mel [n_mels, >= T'/hop]; float32 [T']."""
    return _piecewise(synth, z, mel, synth.decode)


# ---------------------------------------------------------------------------------- the API
def convert(synth: Synthesizer, audio: Tensor, formant_shift: float = 1.0, target: Tensor | None = None,
            latent_scale: float = 1.0, envelope: bool = True) -> Tensor:
    """Convert one recording (encode with its own mel, change the conditioning / latent, decode).

    Args:
        synth: a `Synthesizer` (fp32 recommended: the encoder always runs in fp32).
        audio: float mono [T] or [1, T] at the checkpoint's sampling rate (anything else: UserError).
        formant_shift: warp of the mel's frequency axis (> 1 formants up, < 1 down).
        target: float mono audio [T_t] (or [1, T_t]) at the checkpoint's rate whose mel, DTW-aligned to `audio`,
            replaces `audio`'s mel (before the formant shift, which then applies to it).
        latent_scale: multiplies z.
        envelope: when the mel was changed, correct the decoded audio's envelope toward the new
            mel (`match_envelope`). A small model's latent keeps much of the source's envelope,
            which would otherwise cancel most of a formant shift (docs/enhance_convert.md).

    Returns:
        float32 audio [T] (not clipped). The identity settings return `audio` to float rounding.

    Example:
        >>> synth = Synthesizer("best.pt", device="cpu")
        >>> higher = convert(synth, audio, formant_shift=1.1)
    """
    check_settings(ConvertApp, formant_shift=float(formant_shift), latent_scale=float(latent_scale))
    audio = mono_audio(audio)
    target = None if target is None else mono_audio(target, "target")
    mel_fn = synth.frontend()
    with torch.inference_mode():
        mel = mel_fn(audio)
        z = encode_audio(synth, audio, mel)
        cond = mel
        if target is not None:
            cond = aligned_target_mel(mel, mel_fn(target))
        cond = shift_formants(cond, float(formant_shift), channel_centres_hz(mel_fn))
        if latent_scale != 1.0:
            z = z * float(latent_scale)
        out = decode_latent(synth, z, cond)[: audio.numel()]
        if envelope and cond is not mel:
            for _ in range(ENVELOPE_PASSES):
                out = match_envelope(out, cond, mel_fn)
        return out


def convert_files(synth: Synthesizer, inputs: Inputs, output_dir: str | os.PathLike, formant_shift: float = 1.0,
                  target: str | os.PathLike | None = None, latent_scale: float = 1.0, subtype: str = "PCM_16",
                  on_error: str = "fail", progress: bool = True) -> ConvertReport:
    """`convert` every input file into `<output_dir>/<name>.wav` (atomic writes).

    Each output has its input's sampling rate and length: an input at another rate than the
    checkpoint's is resampled to the model's rate, converted, and resampled back.

    Every input is read and checked before anything is written, so with on_error="fail" a bad
    file stops the run with nothing written.

    Args:
        synth: a `Synthesizer`.
        inputs: `input=`: a file, folder, glob, filelist, or a list of paths (WAV/FLAC).
        output_dir: created if missing.
        formant_shift, latent_scale: as `convert`.
        target: a recording whose aligned mel replaces each input's.
        subtype: "PCM_16", "PCM_24" or "FLOAT".
        on_error: "fail" or "skip" (bad files are listed in the report).
        progress: progress bar over files.

    Raises:
        UserError: a bad setting, target or (on_error="fail") input; nothing converted.
    """
    check_settings(ConvertApp, formant_shift=float(formant_shift), latent_scale=float(latent_scale),
                   format=subtype, on_error=on_error)
    t0 = time.perf_counter()
    sr, out_dir = synth.sampling_rate, Path(output_dir)
    min_len = synth.frontend().n_fft // 2 + 1
    target_audio = None
    if target is not None:
        try:
            target_audio = torch.from_numpy(load_audio(target, sr))
        except UserError as e:
            raise UserError(f"target={target}: {e}") from None
        if target_audio.numel() < min_len:
            raise UserError(f"target={target}: {target_audio.numel()} samples; expected at least {min_len}")
    report = ConvertReport()
    ok = checked_inputs(inputs, out_dir, min_len, lambda p: load_audio(p, sr, warn=lambda *a: None).size,
                        on_error, report.failed)
    if not ok:
        raise UserError("no file could be converted (" + "; ".join(r for _, r in report.failed) + ")")
    for inp in tqdm(ok, unit="file", desc="convert", disable=not show_progress(progress), leave=False):
        audio = torch.from_numpy(load_audio(inp.path, sr, warn=lambda *a: None))
        out = convert(synth, audio, formant_shift, target_audio, latent_scale)
        rate, frames = _rate_and_frames(inp.path)
        if rate != sr:
            # Written at the input's rate and length: converted at the model's rate, resampled back.
            log.info("%s: %g kHz input converted at the model's %g kHz and written at %g kHz",
                     inp.path, rate / 1000, sr / 1000, rate / 1000)
            back = torch.from_numpy(resample(out.numpy(), sr, rate))
            out = torch.nn.functional.pad(back, (0, max(0, frames - back.numel())))[:frames]
        path = out_dir / inp.name.with_suffix(".wav")
        path.parent.mkdir(parents=True, exist_ok=True)
        report.clipped_samples += save_audio(path, out, rate, subtype=subtype)
        report.written.append(path)
        report.audio_seconds += audio.numel() / sr
    report.wall_seconds = time.perf_counter() - t0
    return report


def _rate_and_frames(path: Path) -> tuple[int, int]:
    """(sampling rate, frames) of an audio file that `load_audio` has already read."""
    info = sf.info(str(path))
    return int(info.samplerate), int(info.frames)


def checked_inputs(inputs: Inputs, output_dir: Path, min_len: int, length_of: Callable[[Path], int],
                   on_error: str, failed: list[tuple[str, str]]) -> list[InputFile]:
    """The audio inputs that can be processed, every one read once before anything is written.

    Args:
        inputs: `input=` (file, folder, glob, filelist or paths).
        output_dir: where `<name>.wav` outputs go (an output may not replace its input).
        min_len: fewest samples an input may have (one mel window).
        length_of: reads a file (raising a UserError if it cannot) and returns its samples.
        on_error: "fail": the first bad input raises; "skip": it is appended to `failed`.
        failed: (path, reason) of the skipped inputs.
    """
    ok = []
    for inp in resolve_inputs(inputs, AUDIO_SUFFIXES, kind="audio"):
        try:
            check_output_path(inp, output_dir)
            n = length_of(inp.path)
            if n < min_len:
                raise UserError(f"{inp.path}: {n} samples; expected at least {min_len} (one mel window)")
            ok.append(inp)
        except UserError as e:
            if on_error == "fail":
                raise naming(inp.path, e) from None
            log.warning("skipping %s", naming(inp.path, e))
            failed.append((str(inp.path), str(naming(inp.path, e))))
    return ok


def check_output_path(inp: InputFile, output_dir: Path) -> Path:
    """`<output_dir>/<name>.wav`, refused when it is the input file itself (it would be replaced)."""
    path = output_dir / inp.name.with_suffix(".wav")
    if path.exists() and inp.path.exists() and os.path.samefile(path, inp.path):
        raise UserError(f"{inp.path}: output_dir={output_dir} would overwrite this input; "
                        "expected another output folder")
    return path
