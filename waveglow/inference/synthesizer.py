"""Mel spectrograms -> waveforms: batched, chunked, on CPU or CUDA, with the bias denoiser.

`Synthesizer` wraps a loaded checkpoint for inference (weight norm folded once, eval mode,
`torch.inference_mode`, autocast for fp16/bf16 with the 1×1-conv inverses and the output in
float32) and is what `waveglow-synthesize`, `waveglow-resynthesize` and `waveglow-score` use.
Its results do not depend on batching, chunking or streaming: the noise of every stretch of an
input is fixed by (seed, key, block) (`noise`), and the scheduler (`chunks`) and the stream
(`stream`) decode padded and cut items exactly within the receptive field.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from waveglow.checkpoint import load_model
from waveglow.config import AudioConfig, ModelConfig, SynthesizeApp, from_dict, to_dict
from waveglow.errors import UserError
from waveglow.inference.checks import check_settings
from waveglow.inference.decoding import Decoder
from waveglow.inference.denoiser import Denoiser, zero_level_mel
from waveglow.inference.jobs import SynthesisReport, synthesize_files
from waveglow.inference.melcheck import ConventionCheck, Reference
from waveglow.inference.noise import latent as latent_frames
from waveglow.inference.noise import receptive_field_frames
from waveglow.inference.stream import stream_synthesis
from waveglow.mel import MelSpectrogram
from waveglow.runtime import autocast, precision_name, resolve_device, resolve_precision

log = logging.getLogger("waveglow.synthesize")


def _resolve(device: str | torch.device, precision: str, chunk_frames: int, overlap: int | None,
             crossfade_frames: int) -> tuple[torch.device, torch.dtype | None]:
    """The settings checked, the device and the autocast dtype: (device, dtype or None for fp32)."""
    check_settings(SynthesizeApp, chunk_frames=chunk_frames, chunk_overlap=overlap,
                   crossfade_frames=crossfade_frames)
    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev)


class Synthesizer:
    """Inference wrapper around a checkpoint: mel -> audio, batched and chunked.

    Args:
        checkpoint: path of a checkpoint of this project.
        device: "auto" (CUDA when available), "cpu" or "cuda[:i]".
        precision: "fp32", "fp16" or "bf16" (autocast; 1×1 inverses and output stay float32).
        chunk_frames: mels longer than this are synthesized in overlapping pieces.
        overlap: context frames per side of each piece (None: the receptive field, exact).
        crossfade_frames: crossfade width at piece boundaries, in frames (even, at most
            chunk_frames/2).

    Example:
        >>> synth = Synthesizer("checkpoints/run/best.pt", device="auto", precision="bf16")
        >>> audio = synth.from_mel(torch.load("mel.pt", weights_only=True))   # [256·F]
    """

    def __init__(self, checkpoint: str | os.PathLike, device: str | torch.device = "auto",
                 precision: str = "fp32", chunk_frames: int = 1024, overlap: int | None = None,
                 crossfade_frames: int = 4) -> None:
        # Settings, device and precision first: a wrong one fails before a large model loads.
        dev, dtype = _resolve(device, precision, chunk_frames, overlap, crossfade_frames)
        model = load_model(checkpoint, device="cpu")
        self._setup(model, model.config, dev, dtype, chunk_frames, overlap, crossfade_frames)
        self.checkpoint: Path | None = Path(checkpoint)

    @classmethod
    def from_model(cls, model: nn.Module, config: Any, device: str | torch.device = "auto",
                   precision: str = "fp32", chunk_frames: int = 1024, overlap: int | None = None,
                   crossfade_frames: int = 4) -> Synthesizer:
        """Wrap an in-memory WaveGlow (its weight norm is folded in place).

        Args:
            model: a WaveGlow.
            config: its settings with `audio` and `model` sections (a plain dict as stored in
                a checkpoint, or a typed config such as `TrainApp`).
        """
        self = cls.__new__(cls)
        dev, dtype = _resolve(device, precision, chunk_frames, overlap, crossfade_frames)
        self._setup(model, config, dev, dtype, chunk_frames, overlap, crossfade_frames)
        self.checkpoint = None
        return self

    def _setup(self, model: nn.Module, config: Any, device: torch.device, amp_dtype: torch.dtype | None,
               chunk_frames: int, overlap: int | None, crossfade_frames: int) -> None:
        self.device = device
        self.amp_dtype = amp_dtype
        self.precision = precision_name(amp_dtype)
        self.config: Mapping[str, Any] = to_dict(config)
        # Stored configs are read, not validated: the model was built from them already.
        self.audio: AudioConfig = from_dict(AudioConfig, self.config["audio"], "audio", strict=False)
        self.model_config: ModelConfig = from_dict(ModelConfig, self.config["model"], "model", strict=False)
        self.sampling_rate = self.audio.sampling_rate
        self.hop_length = self.audio.hop_length
        self.n_mels = self.audio.n_mels
        self.mel_floor = math.log(self.audio.log_clamp)
        self.receptive_field = receptive_field_frames(self.model_config, self.hop_length)
        self.chunk_frames = int(chunk_frames)
        self.crossfade_frames = int(crossfade_frames)
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
        self.decoder = Decoder(self.model, device, amp_dtype, n_mels=self.n_mels, hop_length=self.hop_length,
                               mel_floor=self.mel_floor, receptive_field=self.receptive_field,
                               chunk_frames=self.chunk_frames, overlap=self.overlap,
                               crossfade_frames=self.crossfade_frames)

    def reference(self) -> Reference:
        """The mel level this model expects (its stored statistics; `melcheck`)."""
        return Reference.of_model(self.model.mel_mean, self.model.mel_std)

    def convention_check(self, input_convention: str = "natural") -> ConventionCheck:
        """A fresh `ConventionCheck` of inputs declared in `input_convention` against this model."""
        check_settings(SynthesizeApp, input_convention=input_convention)
        return ConventionCheck(self.reference(), input_convention, self.n_mels, floor=self.mel_floor)

    def frontend(self) -> MelSpectrogram:
        """The checkpoint's log-mel frontend (audio [T] -> log-mel [n_mels, 1 + T // hop]), CPU."""
        return MelSpectrogram(**to_dict(self.audio)).eval()

    # -- latent-space access ------------------------------------------------------------------

    def encode(self, audio: Tensor, mel: Tensor) -> Tensor:
        """audio [B, T] (T multiple of n_group), mel [B, n_mels, >= T/hop] -> z [B, T] (float32)."""
        with torch.inference_mode():
            return self.model.encode(audio.float().to(self.device), mel.float().to(self.device)).float().cpu()

    def decode(self, z: Tensor, mel: Tensor) -> Tensor:
        """z [B, T], mel [B, n_mels, >= T/hop] -> audio [B, T] (float32), in this precision."""
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            return self.model.decode(z.float().to(self.device), mel.float().to(self.device)).float().cpu()

    def latent(self, mel_or_frames: Tensor | int, seed: int = 0, key: str | int = 0, sigma: float = 0.6) -> Tensor:
        """The latent z that `from_mel(mel, seed=seed, key=key, sigma=sigma)` decodes, already
        multiplied by sigma: the ONNX export's `z` input for the same output.

        `waveglow-synthesize seed=S` uses key = the file's output name (its stem, or its path
        below an input folder: `x/b` for `<folder>/x/b.pt`).

        Args:
            mel_or_frames: a mel [n_mels, F] (or [1, n_mels, F]), or F.
            seed, key, sigma: as `from_mel`.

        Returns:
            float32 CPU z [hop·F].
        """
        check_settings(SynthesizeApp, sigma=float(sigma))
        frames = mel_or_frames if isinstance(mel_or_frames, int) else torch.as_tensor(mel_or_frames).shape[-1]
        if int(frames) < 1:
            raise UserError(f"mel_or_frames={mel_or_frames}: expected a mel [n_mels, F] or a frame count >= 1")
        return latent_frames(int(seed), key, 0, int(frames), self.hop_length, float(sigma))

    # -- public API ---------------------------------------------------------------------------

    def from_mel(self, mel: Tensor, sigma: float = 0.6, seed: int = 0,
                 keys: Sequence[str | int] | None = None, lengths: Sequence[int] | None = None,
                 batch_size: int = 8, denoiser_strength: float = 0.0, input_convention: str = "natural",
                 key: str | int | None = None) -> Tensor:
        """Synthesize raw log-mels (the checkpoint's feature convention).

        Args:
            mel: [n_mels, F] or [B, n_mels, F] (any device; CPU float32 is used for planning).
            sigma: std of the latent noise (0.6 is the reference's default; 0 is deterministic).
            seed: noise seed; item b's noise is `noise.latent(seed, keys[b], ...)`.
            keys: per-item noise keys (default: the batch index; `to_files` uses the file's
                name, so `from_mel(m, keys=["LJ001-0001"])` reproduces that file's synthesis).
            lengths: valid frames per item of a padded [B, n_mels, F] batch (default: all F).
            batch_size: items decoded together (results do not depend on it).
            denoiser_strength: > 0 applies the bias denoiser with that strength.
            input_convention: the input's log: "natural" (Tacotron 2, this toolkit), "log10" or
                "db" (20·log10); converted to natural log. An input that looks like another
                convention (or normalized features) gets one warning line.
            key: shorthand for keys=[key] with a single mel [n_mels, F] (as `stream`'s key).

        Returns:
            float32 CPU audio [hop·F] (or [B, hop·F]; samples past hop·lengths[b] are zero),
            not clipped.

        Raises:
            UserError: a wrong shape, NaN/Inf, a constant mel or values beyond any convention.
        """
        check_settings(SynthesizeApp, sigma=float(sigma), input_convention=input_convention)
        mel = torch.as_tensor(mel)
        if mel.layout != torch.strided:
            raise UserError(f"mel: a {str(mel.layout).replace('torch.', '')} tensor; expected a dense float tensor")
        single = mel.dim() == 2
        if key is not None:
            if keys is not None or not single:
                raise UserError("key=: only for a single mel [n_mels, F]; pass keys= for a batch")
            keys = [key]
        checker = self.convention_check(input_convention)
        items, keys = split_batch(mel[None] if single else mel, lengths, keys, checker)
        checker.warn(log)
        out = torch.zeros(len(items), self.hop_length * mel.shape[-1])
        frames = [m.shape[-1] for m in items]
        for i, audio in self.decoder.run(frames, items.__getitem__, keys, seed, sigma, max(1, int(batch_size))):
            out[i, : audio.shape[-1]] = self.denoise(audio, denoiser_strength)
        return out[0] if single else out

    def stream(self, frames: Iterable[Tensor], sigma: float = 0.6, seed: int = 0, key: str | int = 0,
               input_convention: str = "natural", min_frames: int = 1) -> Iterator[Tensor]:
        """Synthesize a mel that arrives in pieces (as a TTS produces it); yield audio as soon as it is final.

        The concatenated output equals `from_mel(whole_mel, sigma, seed, key=key)` (to float
        rounding): frame f's audio is final once frames up to f + receptive_field have arrived,
        and its noise is fixed by (seed, key, block). The algorithmic latency is therefore the
        receptive field (e.g. 7 frames = 81 ms for `tiny`); the last rf frames come when the
        input ends. No denoiser (it works on whole STFT frames of the finished audio).

        Args:
            frames: an iterable of mel pieces [n_mels, f_i] (or [1, n_mels, f_i]), f_i >= 1.
            sigma, seed, key, input_convention: as `from_mel`.
            min_frames: decode only when at least this many frames are final (fewer, longer
                decodes: less recomputed context, more latency). 1: as soon as possible.

        Yields:
            float32 CPU audio chunks [hop·n] (n >= 1).
        """
        check_settings(SynthesizeApp, sigma=float(sigma), input_convention=input_convention)
        if int(min_frames) < 1:
            raise UserError(f"min_frames={min_frames}: expected an integer >= 1")
        return stream_synthesis(self.decoder, frames, sigma=float(sigma), seed=int(seed), key=key,
                                checker=self.convention_check(input_convention), min_frames=int(min_frames))

    def denoiser(self, mode: str = "mean") -> Denoiser:
        """The bias denoiser of this checkpoint (computed once per mode and cached).

        Args:
            mode: zero-level mel: "mean" (the model's mel_mean, i.e. normalized zero; default),
                "silence" (the log-mel floor) or "zeros" (raw zeros). See `Denoiser`.
        """
        if mode not in self._denoisers:
            check_settings(SynthesizeApp, denoiser_mel=mode)
            # Long enough that the middle half is free of edge effects (> 2 receptive fields).
            n = max(88, 2 * self.receptive_field + 32)
            mel = zero_level_mel(mode, self.model.mel_mean, self.mel_floor, n)
            with torch.inference_mode():
                bias = self.decoder.decode_batch([mel], [torch.zeros(self.hop_length * n)])[0]
            self._denoisers[mode] = Denoiser(bias, self.audio.n_fft, self.hop_length, self.audio.win_length)
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
                 progress: bool = True, input_convention: str = "natural") -> SynthesisReport:
        """Synthesize mel files into `<output_dir>/<name>.wav` (hop·F samples each).

        `<name>` is the input's stem, or its path below an input folder (`x/b` for
        `<folder>/x/b.pt`): `waveglow.data.inputs` names every script's outputs alike.

        Every input is loaded and checked before anything is synthesized, so with
        on_error="fail" a bad file stops the run before any WAV is written. Each WAV is written
        to a temporary name and renamed, so no partial file is ever left behind.

        Args:
            inputs: a file, directory, glob or filelist (`input=`), or a list of paths.
            output_dir: created if missing.
            sigma, seed, batch_size, denoiser_strength: as `from_mel`; each file's noise key
                is its `<name>`.
            denoiser_mel: the denoiser's zero-level mel (see `denoiser`).
            subtype: "PCM_16", "PCM_24" or "FLOAT".
            on_error: "fail" (raise UserError on the first bad file) or "skip" (continue and
                list the bad files in the report).
            progress: show a progress bar over files (only when stderr is a terminal).
            input_convention: as `from_mel`; likely mistakes get one warning line per run.

        Returns:
            A `SynthesisReport`.

        Raises:
            UserError: a bad input with on_error="fail", or nothing could be synthesized.
        """
        return synthesize_files(self, inputs, output_dir, sigma=sigma, seed=seed, batch_size=batch_size,
                                denoiser_strength=denoiser_strength, denoiser_mel=denoiser_mel,
                                subtype=subtype, on_error=on_error, progress=progress,
                                input_convention=input_convention)


def split_batch(mel: Tensor, lengths: Sequence[int] | None, keys: Sequence[str | int] | None,
                checker: ConventionCheck) -> tuple[list[Tensor], list[str | int]]:
    """`from_mel`'s batch as checked natural-log items: ([n_mels, lengths[b]] CPU float32, keys).

    Args:
        mel: [B, n_mels, F].
        lengths, keys: as `from_mel` (None: all F frames; the batch index).
        checker: converts and checks each item (and notes likely convention mistakes).

    Raises:
        UserError: a wrong shape, lengths or keys, or a mel that `ConventionCheck.prepare` rejects.
    """
    if mel.layout != torch.strided:
        raise UserError(f"mel: a {str(mel.layout).replace('torch.', '')} tensor; expected a dense float tensor")
    if mel.dim() != 3:
        raise UserError(f"mel: expected [n_mels, F] or [B, n_mels, F], got shape {list(mel.shape)}")
    B, F = mel.shape[0], mel.shape[-1]
    lengths = [F] * B if lengths is None else [int(n) for n in lengths]
    if len(lengths) != B or any(n < 1 or n > F for n in lengths):
        raise UserError(f"lengths={lengths}: expected {B} values in [1, {F}]")
    keys = list(range(B)) if keys is None else list(keys)
    if len(keys) != B:
        raise UserError(f"keys: expected {B} keys, got {len(keys)}")
    items = [checker.prepare(mel[b, :, : lengths[b]].detach().float().cpu(), f"mel[{b}]").contiguous()
             for b in range(B)]
    return items, keys
