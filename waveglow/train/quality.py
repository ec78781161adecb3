"""The quality report of a training run: how close resynthesized validation clips are to their
originals (mel L1 and multi-resolution STFT distance, `waveglow.inference.metrics`), next to
the same figures for a Griffin-Lim resynthesis of the same mels: a vocoder-free reference line.

Griffin-Lim fits the magnitudes to the mel directly, so its mel L1 is low (0.18 on the demo
clips) and hard to reach for a vocoder sampling at sigma 0.6; the MR-STFT distance, which also
sees the detail between mel bands, is the fairer comparison (see docs/training.md)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from waveglow.config import AudioConfig
from waveglow.inference.metrics import mel_l1, multi_resolution_stft_distance

GRIFFIN_LIM_ITERS = 32


def griffin_lim(mel: Tensor, audio_cfg: AudioConfig, length: int, n_iter: int = GRIFFIN_LIM_ITERS,
                seed: int = 0) -> Tensor:
    """Invert a log-mel without a vocoder: least-squares magnitude, then Griffin-Lim phases.

    Args:
        mel: natural-log mel magnitudes [n_mels, F] (this toolkit's convention).
        audio_cfg: the feature settings the mel was made with.
        length: audio samples to return.
        n_iter: Griffin-Lim iterations.
        seed: seeds the random initial phases (its own generator: the global RNGs, which a
            resumed run restores, are left alone).

    Returns:
        float32 audio [length] in [-1, 1].
    """
    import librosa  # slow to import, needed once per run

    a = audio_cfg
    magnitude_mel = np.exp(mel.detach().double().cpu().numpy())
    spec = librosa.feature.inverse.mel_to_stft(
        magnitude_mel, sr=int(a.sampling_rate), n_fft=int(a.n_fft), power=1.0, fmin=float(a.fmin),
        fmax=None if a.fmax is None else float(a.fmax), htk=False, norm="slaney")
    audio = librosa.griffinlim(spec, n_iter=n_iter, hop_length=int(a.hop_length), win_length=int(a.win_length),
                               n_fft=int(a.n_fft), window="hann", center=True, pad_mode="reflect",
                               length=length, random_state=np.random.default_rng(seed))
    return torch.from_numpy(np.clip(audio, -1.0, 1.0).astype(np.float32))


@dataclass
class QualityFigures:
    """Mean distances of resynthesized clips from their originals (lower is better).

    mel_l1: mean |log-mel difference| (natural-log units).
    mr_stft: spectral convergence + log-magnitude L1, averaged over 3 STFT resolutions.
    """

    mel_l1: list[float] = field(default_factory=list)
    mr_stft: list[float] = field(default_factory=list)

    def add(self, reference: Tensor, output: Tensor, mel_fn: Callable[[Tensor], Tensor]) -> None:
        """Score one clip: reference and output audio [T] (cut to the shorter)."""
        reference, output = reference.float().cpu(), output.float().cpu()
        self.mel_l1.append(mel_l1(reference, output, mel_fn))
        self.mr_stft.append(multi_resolution_stft_distance(reference, output)["distance"])

    def scalars(self, suffix: str = "") -> dict[str, float]:
        """{"val/mel_l1<suffix>": mean, "val/mr_stft<suffix>": mean} (empty without clips)."""
        if not self.mel_l1:
            return {}
        return {f"val/mel_l1{suffix}": float(np.mean(self.mel_l1)),
                f"val/mr_stft{suffix}": float(np.mean(self.mr_stft))}
