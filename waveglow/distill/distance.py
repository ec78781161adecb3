"""How close a student is to its teacher (and both to the ground truth) on held-out clips.

Each clip is decoded by both models from the same latent z ~ N(0, sigma^2) (seeded per clip),
then scored with the toolkit's copy-synthesis distances (mel L1 and the multi-resolution STFT
distance of `waveglow.inference.metrics`, through `waveglow.train.quality.QualityFigures`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import Tensor

from waveglow.distill.objective import common_multiple
from waveglow.model import WaveGlow
from waveglow.train.quality import QualityFigures


@torch.no_grad()
def teacher_distances(student: WaveGlow, teacher: WaveGlow, clips: Iterable[Mapping[str, Tensor]], *,
                      sigma: float, seed: int, mel_fn: Callable[[Tensor], Tensor],
                      with_teacher_truth: bool = True, cache: dict[int, Tensor] | None = None
                      ) -> dict[str, float]:
    """Mean distances over `clips` (lower is better).

    Args:
        student, teacher: the two flows (same device; eval or train mode alike: no dropout).
        clips: items {"audio": [T], "mel": [n_mels, F]} (T cut to a length both accept).
        sigma: std of the shared latent.
        seed: clip i's latent is seeded with seed + i (its own generator: global RNGs untouched).
        mel_fn: audio [T] -> log-mel [n_mels, F'] on the CPU (the run's MelSpectrogram).
        with_teacher_truth: also the teacher's own distance to the ground truth.
        cache: clip index -> the teacher's output, filled and reused (the teacher and each clip's
            latent do not change between validations of a run: decoded once).

    Returns:
        {"mel_l1_teacher", "mr_stft_teacher"}: student vs teacher output;
        {"mel_l1_truth", "mr_stft_truth"}: student output vs the original clip;
        {"teacher_mel_l1_truth", "teacher_mr_stft_truth"}: teacher output vs the original clip.
        Empty without clips.
    """
    device = next(student.parameters()).device
    multiple = common_multiple(student, teacher)
    to_teacher, to_truth, teacher_truth = QualityFigures(), QualityFigures(), QualityFigures()
    for i, clip in enumerate(clips):
        audio = clip["audio"].float()
        n = audio.shape[-1] - audio.shape[-1] % multiple
        if n <= 0:
            continue
        audio = audio[:n]
        mel = clip["mel"][None].float().to(device)
        gen = torch.Generator().manual_seed(int(seed) + i)
        z = (torch.randn(1, n, generator=gen) * float(sigma)).to(device)
        if cache is not None and i in cache:
            t_out = cache[i]
        else:
            t_out = _clean(teacher.decode(z, mel)[0])
            if cache is not None:
                cache[i] = t_out
        s_out = _clean(student.decode(z, mel)[0])
        to_teacher.add(t_out, s_out, mel_fn)
        to_truth.add(audio, s_out, mel_fn)
        if with_teacher_truth:
            teacher_truth.add(audio, t_out, mel_fn)
    if not to_truth.mel_l1:
        return {}
    mean = lambda xs: float(sum(xs) / len(xs))  # noqa: E731
    out = {"mel_l1_teacher": mean(to_teacher.mel_l1), "mr_stft_teacher": mean(to_teacher.mr_stft),
           "mel_l1_truth": mean(to_truth.mel_l1), "mr_stft_truth": mean(to_truth.mr_stft)}
    if with_teacher_truth:
        out.update({"teacher_mel_l1_truth": mean(teacher_truth.mel_l1),
                    "teacher_mr_stft_truth": mean(teacher_truth.mr_stft)})
    return out


def _clean(audio: Tensor) -> Tensor:
    """A decoded clip as a WAV would hold it: finite, in [-1, 1], float32 on the CPU."""
    return torch.nan_to_num(audio.float(), nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1, 1).cpu()
