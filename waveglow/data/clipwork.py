"""The per-clip work of preprocessing: one clip in, its cached mel and a result record out.

Runs in worker processes (or in-process for one worker). A clip's mel is computed from its
audio, or, with paired mels (`data.mel_dir`), read from its paired file and fitted to the
audio's frame count; either way it is written to the cache, or the valid cached copy is reused.

A cached mel is valid while its sources are the files it was made from: the size and
modification time (ns) of the audio and of the paired mel, recorded in the manifest when the
mel was made, must still be what `os.stat` says (a file regenerated in place, even with an
older time, is noticed). Rows of manifests written before these were recorded fall back, once,
to the older rule: the cached mel must be newer than its sources.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import soundfile as sf
import torch

from waveglow.data.audio import load_audio, resampled_length
from waveglow.data.paired import MEL_FRAME_TOLERANCE, fit_frames, frame_mismatch
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram, MelStats, load_mel, save_mel


@dataclass(frozen=True)
class ClipTask:
    """One clip to turn into a cached mel."""

    clip_id: str
    audio_path: str
    mel_path: str            # the cache file to write
    may_reuse: bool          # the cache was written with the current settings
    not_before_ns: int       # a cached mel older than this (features or source changed) is stale
    paired_path: str = ""    # the paired mel (data.mel_dir), "" for mels computed from the audio
    tolerance: int = MEL_FRAME_TOLERANCE
    # [size, mtime ns] of the sources when the cached mel was made (the manifest's audio_stat /
    # paired_stat); None: not recorded (an older manifest, or a clip not cached before).
    recorded_audio: tuple[int, int] | None = None
    recorded_paired: tuple[int, int] | None = None


class ClipProcessor:
    """Turns one clip into a cached mel (or reuses the cached one).

    The result is a dict: id, path, reused, and either `bad` (why the clip is unusable) or
    `fatal` (a paired mel that makes the whole run wrong, e.g. another channel count) or
    file_rate, n_samples, n_frames, stats (count, mean, m2 of the clip's mel frames),
    audio_stat ([size, mtime ns] of the audio, taken before it was read) and, for paired mels,
    paired_stat and frame_diff (paired frames - frames the audio needs).
    """

    def __init__(self, features: Mapping[str, Any]) -> None:
        self.mel = MelSpectrogram(**{k: features[k] for k in _MEL_KEYS})
        self.sampling_rate = int(features["sampling_rate"])

    def __call__(self, task: ClipTask) -> dict[str, Any]:
        out: dict[str, Any] = {"id": task.clip_id, "path": task.audio_path, "reused": False}
        # Stat before reading: a file replaced while it is read shows as changed at the next start.
        out["audio_stat"] = source_stat(task.audio_path)
        if task.paired_path:
            out["paired_stat"] = source_stat(task.paired_path)
        try:
            info = sf.info(task.audio_path)
            out["file_rate"] = int(info.samplerate)
            n = resampled_length(int(info.frames), int(info.samplerate), self.sampling_rate)
            mel = self._reuse(task, n, out) if task.may_reuse else None
            reused = mel is not None
            if not reused:  # decode: the audio must be usable whichever mel conditions it
                audio = load_audio(task.audio_path, self.sampling_rate, warn=lambda *_: None)
                problem = self._problem(audio)
                if problem:
                    return {**out, "bad": problem}
                n = int(audio.shape[0])
            if task.paired_path:
                paired = self._paired(task, n, out)  # read even when reused: the report counts the fits
                if paired is None:
                    return out
                if not reused:
                    mel = paired
                    save_mel(task.mel_path, mel)
            elif not reused:
                with torch.inference_mode():
                    mel = self.mel(torch.from_numpy(audio))
                save_mel(task.mel_path, mel)
            out["reused"] = reused
            out["n_samples"] = n
        except UserError as e:
            return {**out, "bad": _reason(e, task.audio_path)}
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            return {**out, "bad": f"cannot read audio ({str(e).splitlines()[0] if str(e) else type(e).__name__})"}
        out["n_frames"] = int(mel.shape[1])
        stats = MelStats(mel.shape[0])
        stats.update(mel)
        out["stats"] = (stats.count, stats.mean, stats.m2)
        return out

    def _paired(self, task: ClipTask, n: int, out: dict[str, Any]) -> torch.Tensor | None:
        """The paired mel fitted to n samples; None (with out["bad"] or out["fatal"] set) if unusable."""
        try:
            mel = load_mel(task.paired_path, self.mel.n_mels)
        except UserError as e:
            # A paired mel that does not load (another channel count, NaN, not a tensor) means
            # the folder is not what the run assumes: stop, naming the file.
            out["fatal"] = str(e)
            return None
        need = self.mel.n_frames(n)
        problem = frame_mismatch(int(mel.shape[1]), need, task.tolerance)
        if problem:
            out["bad"] = f"{problem}: {task.paired_path}"
            return None
        out["frame_diff"] = int(mel.shape[1]) - need
        return fit_frames(mel, need)

    def _reuse(self, task: ClipTask, n: int, out: Mapping[str, Any]) -> torch.Tensor | None:
        """The cached mel if it exists, was made from the sources as they are now (recorded size
        and mtime; newer than them for rows without a record) and after the settings, and fits."""
        try:
            st = os.stat(task.mel_path)
        except FileNotFoundError:
            return None
        if st.st_mtime_ns < task.not_before_ns:
            return None
        now = [(task.recorded_audio, out["audio_stat"])]
        if task.paired_path:
            now.append((task.recorded_paired, out.get("paired_stat")))
        for recorded, current in now:
            if current is None:
                return None
            if recorded is not None and list(recorded) != current:
                return None  # regenerated or replaced since the mel was made
            if recorded is None and st.st_mtime_ns < current[1]:
                return None  # no record (older manifest): the cached mel must be the newer file
        try:
            mel = load_mel(task.mel_path, self.mel.n_mels)
        except UserError:
            return None  # half-written or damaged: recompute
        return mel if mel.shape[1] == self.mel.n_frames(n) else None

    def _problem(self, audio: np.ndarray) -> str | None:
        if not np.any(audio):
            return "all-zero audio (digital silence)"
        min_len = self.mel.n_fft // 2 + 1
        if audio.shape[0] < min_len:
            return f"too short ({audio.shape[0]} samples; need at least {min_len})"
        return None


_MEL_KEYS = ("sampling_rate", "n_fft", "hop_length", "win_length", "n_mels", "fmin", "fmax", "log_clamp")


def _reason(e: UserError, path: str) -> str:
    """A UserError message without the leading '<path>: '."""
    msg = str(e)
    return msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg


def source_stat(path: str | os.PathLike) -> list[int] | None:
    """[size in bytes, modification time in ns] of a source file, or None when it is gone.

    What the manifest records per source and what every start compares (one `stat`, no read).
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return [int(st.st_size), int(st.st_mtime_ns)]


# The worker processes' processor, set once by the pool initializer (one per process).
_worker_processor: ClipProcessor | None = None


def _init_worker(features: dict[str, Any]) -> None:
    global _worker_processor
    # Several workers share the cores: intra-op threads would only oversubscribe them.
    torch.set_num_threads(1)
    _worker_processor = ClipProcessor(features)


def _run_task(task: ClipTask) -> dict[str, Any]:
    assert _worker_processor is not None
    return _worker_processor(task)


def process_clips(tasks: Sequence[ClipTask], features: dict[str, Any], workers: int) -> Iterator[dict[str, Any]]:
    """Process tasks in-process (workers == 1) or in a pool, yielding results as they finish."""
    if workers <= 1:
        processor = ClipProcessor(features)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one short clip at a time: thread start-up costs more than it gains
        try:
            for task in tasks:
                yield processor(task)
        finally:
            torch.set_num_threads(threads)
        return
    # fork is cheap to start (spawn re-imports torch in every worker, ~1.5 s each); workers use
    # one thread and no accelerator, the same conditions under which DataLoader workers fork.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    chunksize = max(1, min(16, len(tasks) // (workers * 8)))
    pool = mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(features,))
    try:
        yield from pool.imap_unordered(_run_task, tasks, chunksize=chunksize)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
