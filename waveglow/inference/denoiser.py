"""The bias denoiser: subtracts the model's own bias tone from its output, in the STFT domain."""

from __future__ import annotations

import torch
from torch import Tensor, nn


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
    `Synthesizer.denoiser(mode)` builds one per mode.

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


def zero_level_mel(mode: str, mel_mean: Tensor, mel_floor: float, n_frames: int) -> Tensor:
    """The constant mel [n_mels, n_frames] whose sigma-0 synthesis is the bias tone (see `Denoiser`).

    Args:
        mode: "mean" (the model's `mel_mean`, i.e. normalized zero), "silence" (the log-mel
            floor `mel_floor`) or "zeros" (raw log-mel 0).
        mel_mean: the model's mel statistics [n_mels] (any shape with n_mels elements).
    """
    n_mels = mel_mean.numel()
    if mode == "mean":
        level = mel_mean.detach().float().cpu().reshape(-1, 1)
    elif mode == "silence":
        level = torch.full((n_mels, 1), mel_floor)
    else:
        level = torch.zeros(n_mels, 1)
    return level.expand(n_mels, n_frames).contiguous()
