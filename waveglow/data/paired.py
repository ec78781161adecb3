"""Paired mels (`data.mel_dir`): conditioning from another model instead of from the audio.

Fine-tuning a vocoder on the ground-truth-aligned (GTA) mels of a Tacotron 2 model, i.e. its
teacher-forced outputs, teaches it the acoustic model's smoothing. Each clip `<id>` pairs with
`<mel_dir>/<id>.pt` or `<id>.npy` (`.pt` first), a raw log-mel [n_mels, F] in this toolkit's
convention. Frame f of the paired mel is taken to be centred at sample f·hop, like the
toolkit's own (Tacotron 2 uses the same framing); an acoustic model may emit a few frames more
or fewer (reduction-factor padding, a trimmed last frame): up to `MEL_FRAME_TOLERANCE` frames
are trimmed from or padded at the end, more make the clip unusable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from waveglow.config import DataConfig
from waveglow.errors import UserError
from waveglow.mel import MEL_SUFFIXES, load_mel

# Frames a paired mel may differ from the audio's 1 + n // hop before the clip is refused.
# Tacotron 2 with a reduction factor r pads up to r - 1 frames; framing conventions differ by
# one. More than this is not an alignment detail but another utterance or a failed decode.
MEL_FRAME_TOLERANCE = 4


def paired_mel_dir(data_cfg: DataConfig) -> Path | None:
    """The folder of paired mels (`data.mel_dir`, relative to the working directory), or None.

    Raises:
        UserError: it is set but is not a folder (the message shows where it looked).
    """
    if not data_cfg.mel_dir:
        return None
    path = Path(str(data_cfg.mel_dir)).expanduser()
    if not path.is_dir():
        raise UserError(f"data.mel_dir={data_cfg.mel_dir}: folder of paired mels not found (looked in "
                        f"{path.absolute()}); expected <clip id>.pt or <clip id>.npy files")
    return path


def find_paired_mel(mel_dir: Path, clip_id: str) -> Path | None:
    """`<mel_dir>/<clip id>.pt` or `.npy` (the first that exists), or None."""
    for suffix in MEL_SUFFIXES:
        path = mel_dir / f"{clip_id}{suffix}"
        if path.is_file():
            return path
    return None


def missing_reason(mel_dir: Path, clip_id: str) -> str:
    """The bad-file reason of a clip without a paired mel."""
    return f"no paired mel {clip_id}.pt or {clip_id}.npy in data.mel_dir ({mel_dir})"


def frame_mismatch(found: int, expected: int, tolerance: int = MEL_FRAME_TOLERANCE) -> str | None:
    """Why a paired mel of `found` frames cannot condition audio needing `expected`, or None."""
    if abs(found - expected) <= tolerance:
        return None
    return (f"paired mel has {found} frames, the audio needs {expected} (1 + samples // hop; "
            f"at most {tolerance} frames of difference are trimmed or padded)")


def fit_frames(mel: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Trim trailing frames, or pad by repeating the last frame, to exactly `n_frames`.

    Args:
        mel: [n_mels, F].
        n_frames: the frames the audio needs.

    Returns:
        [n_mels, n_frames] (the input itself when it already fits).
    """
    have = mel.shape[1]
    if have == n_frames:
        return mel
    if have > n_frames:
        return mel[:, :n_frames].contiguous()
    # The tail of an utterance is near-silent: repeating the last frame extends it smoothly.
    return torch.cat([mel, mel[:, -1:].expand(-1, n_frames - have)], dim=1)


def load_paired_mel(path: Path, n_mels: int, n_frames: int,
                    tolerance: int = MEL_FRAME_TOLERANCE) -> tuple[torch.Tensor, int]:
    """A paired mel fitted to the audio it conditions.

    Args:
        path: the mel file.
        n_mels: the channels the audio settings expect.
        n_frames: the frames the audio needs.
        tolerance: the largest frame difference that is trimmed or padded.

    Returns:
        (mel float32 [n_mels, n_frames], frames found - frames needed).

    Raises:
        UserError: unreadable, wrong channel count, NaN (from `load_mel`: the message names the
            file), or a frame difference beyond `tolerance`.
    """
    mel = load_mel(path, n_mels)
    diff = int(mel.shape[1]) - n_frames
    problem = frame_mismatch(int(mel.shape[1]), n_frames, tolerance)
    if problem:
        raise UserError(f"{path}: {problem}")
    return fit_frames(mel, n_frames), diff
