"""What an evaluation runs on: the checkpoints (a file, a list, a run directory) and the clips
(a corpus split or `input=` files through the one input resolver), each clip checked.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from waveglow.data.audio import AUDIO_SUFFIXES, read_audio, resample
from waveglow.data.inputs import InputFile, resolve_inputs
from waveglow.errors import UserError

log = logging.getLogger("waveglow.eval")

_STEP = re.compile(r"^step_(\d+)\.pt$")
SILENCE_PEAK = 1e-4  # below about 3 int16 LSBs: nothing for PESQ/STOI to hear


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint to evaluate: its label in the tables, its file, its training step (None
    until read from the file), and the run directory it belongs to (for TensorBoard)."""

    label: str
    path: Path
    run_dir: Path | None = None


def _run_checkpoints(run_dir: Path) -> list[CheckpointEntry]:
    """Every step_<N>.pt of a run directory in step order, then best.pt."""
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    steps = sorted((int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _STEP.match(p.name)))
    found = [CheckpointEntry(p.stem, p, run_dir) for _, p in steps]
    if (folder / "best.pt").is_file():
        found.append(CheckpointEntry("best", folder / "best.pt", run_dir))
    if not found:
        raise UserError(f"checkpoint={run_dir}: a folder without step_<N>.pt or best.pt checkpoints (looked in "
                        f"{folder.resolve()}); expected a checkpoint file, a list of them or a run directory")
    return found


def resolve_checkpoints(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[CheckpointEntry]:
    """`checkpoint=` as entries: a file, a list of files, or a run directory.

    Labels are the file stems (`step_400`, `best`, `nvidia_v5`); stems that repeat across
    folders get their folder's name in front (`runA/best`).

    Raises:
        UserError: an empty list, or a folder with no checkpoints. A missing file is reported
            when it is loaded (with the path tried).
    """
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    if not items:
        raise UserError("checkpoint=[]: expected a checkpoint file, a list of them or a run directory")
    entries: list[CheckpointEntry] = []
    for item in items:
        path = Path(str(item)).expanduser()
        if path.is_dir():
            entries += _run_checkpoints(path)
        else:
            entries.append(CheckpointEntry(path.stem, path))
    labels = [e.label for e in entries]
    out = []
    for e in entries:
        if labels.count(e.label) > 1:
            owner = e.run_dir or e.path.parent
            e = CheckpointEntry(f"{owner.name}/{e.label}", e.path, e.run_dir)
        out.append(e)
    seen: set[str] = set()
    unique = []
    for e in out:  # the same file listed twice is evaluated once
        if e.label not in seen:
            seen.add(e.label)
            unique.append(e)
    return unique


def corpus_clips(data_cfg: object, split: str) -> list[InputFile]:
    """The clips of a corpus split (`<root>/splits/<split>.txt`) as inputs named by clip id.

    Raises:
        UserError: the corpus has no written splits yet, or the split is empty.
    """
    from waveglow.data.corpus import discover_corpus
    from waveglow.data.splits import read_splits, split_files

    splits = read_splits(data_cfg)
    if splits is None:
        raise UserError(f"data.root={data_cfg.root}: no splits written yet (expected "
                        f"{split_files(data_cfg)[split].absolute()}); run waveglow-preprocess data=... first, "
                        "or pass input=<wavs>")
    ids = splits[split]
    if not ids:
        raise UserError(f"{split_files(data_cfg)[split].absolute()}: the {split} split lists no clips; "
                        "pass split=val or input=<wavs>")
    by_id = discover_corpus(data_cfg).by_id()
    out = []
    for clip_id in ids:
        clip = by_id.get(clip_id)
        path = clip.path if clip else Path(str(data_cfg.root)) / "wavs" / f"{clip_id}.wav"
        out.append(InputFile(path, Path(clip_id)))
    return out


def input_clips(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[InputFile]:
    """`input=` (WAV/FLAC files, a folder, a glob or a filelist) through the one input resolver."""
    return resolve_inputs(spec, AUDIO_SUFFIXES, kind="audio")


def load_clip(path: Path, sampling_rate: int, min_seconds: float) -> np.ndarray:
    """A clip as float32 [T] at `sampling_rate`, checked for what the metrics need.

    A file at a higher rate is resampled down (the model's band is inside the file's); one at a
    lower rate is refused: its upsampled ground truth would lack the top of the band the model
    is measured on.

    Raises:
        UserError: one line naming the file: unreadable, recorded at a lower rate than the
            checkpoint's, silent, or shorter than `min_seconds`.
    """
    try:
        audio, rate = read_audio(path)
    except UserError as e:
        raise UserError(f"{path}: unreadable ({_short(e, path)})") from None
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate < sampling_rate:
        raise UserError(f"{path}: recorded at {rate} Hz, the checkpoint synthesizes {sampling_rate} Hz (rate "
                        "mismatch); evaluate with a checkpoint trained at this rate (audio= preset)")
    if rate != sampling_rate:
        audio = resample(audio, rate, sampling_rate)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size < min_seconds * sampling_rate:
        raise UserError(f"{path}: {audio.size / sampling_rate:.3f} s long, shorter than one PESQ window "
                        f"({min_seconds:g} s)")
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not np.isfinite(audio).all():
        raise UserError(f"{path}: holds NaN or Inf samples")
    if peak < SILENCE_PEAK:
        raise UserError(f"{path}: silent (peak {peak:.1e}): PESQ and STOI are undefined for silence")
    return audio


def _short(e: Exception, path: Path) -> str:
    text = str(e)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text
