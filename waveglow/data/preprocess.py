"""Preprocessing: the feature cache, its manifest, the training-split statistics and the bad-file report.

`preprocess_corpus` caches one log-mel per clip under `<cache_dir>/mels/<id>.pt` (in worker
processes), lists the usable clips in `manifest.jsonl`, the unusable files in `bad_files.tsv`,
and writes the per-channel statistics of the training split to `stats.pt`. `load_stats` reads
those statistics (computing them first when they are missing or stale).
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from waveglow.config import AudioConfig, DataConfig
from waveglow.data.audio import load_audio, resampled_length, warn_once_per_rate
from waveglow.data.corpus import SPLITS, BadFile, Corpus, cache_dir, discover_corpus, ensure_splits
from waveglow.errors import UserError
from waveglow.fileio import atomic_write, remove_stale_temps, write_text_atomic
from waveglow.mel import MelSpectrogram, MelStats, load_mel, save_mel
from waveglow.runtime import available_cores

log = logging.getLogger("waveglow.data")


class CorpusSettings(Protocol):
    """What the preprocessing and the datasets read of a config (`PreprocessApp`, `TrainApp`, ...)."""

    audio: AudioConfig
    data: DataConfig

def feature_settings(audio_cfg: AudioConfig) -> dict[str, Any]:
    """The audio settings that determine a mel, normalised (what cached mels are checked against)."""
    m = MelSpectrogram.from_config(audio_cfg)
    return {"sampling_rate": m.sampling_rate, "n_fft": m.n_fft, "hop_length": m.hop_length,
            "win_length": m.win_length, "n_mels": m.n_mels, "fmin": m.fmin, "fmax": m.fmax,
            "log_clamp": m.log_clamp}


# ----------------------------------------------------------------------------- preprocessing

@dataclass
class PreprocessReport:
    """What `preprocess_corpus` did."""

    cache_dir: Path
    n_clips: int = 0            # clips listed in the splits
    n_ok: int = 0               # clips with a valid cached mel after the run
    n_computed: int = 0         # of which computed in this run
    n_reused: int = 0           # of which already cached and valid
    bad: list[BadFile] = field(default_factory=list)
    seconds_audio: float = 0.0  # usable audio, all splits
    seconds_computed: float = 0.0
    wall_seconds: float = 0.0   # the mel pass (workers included), which the speed refers to
    total_seconds: float = 0.0  # everything: discovery, splits, writing the manifest and stats
    workers: int = 1
    split_counts: dict[str, int] = field(default_factory=dict)
    manifest_path: Path | None = None
    stats_path: Path | None = None
    report_path: Path | None = None

    @property
    def realtime_factor(self) -> float:
        """Seconds of audio turned into mels per second of wall time (this run's computed clips)."""
        return self.seconds_computed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def summary(self) -> str:
        speed = (f"{self.seconds_computed / 60:.1f} min of audio in {self.wall_seconds:.1f} s = "
                 f"{self.realtime_factor:.0f}x real time on {self.workers} worker(s)") if self.n_computed else \
                f"nothing to compute ({self.wall_seconds:.1f} s)"
        splits = ", ".join(f"{k} {v}" for k, v in self.split_counts.items())
        return (f"preprocessed {self.n_ok}/{self.n_clips} clips ({self.seconds_audio / 3600:.2f} h; {splits}): "
                f"{self.n_computed} computed, {self.n_reused} reused from cache, {len(self.bad)} bad; "
                f"{speed}; {self.total_seconds:.1f} s in all; cache: {self.cache_dir}")


@dataclass(frozen=True)
class _Task:
    clip_id: str
    audio_path: str
    mel_path: str
    want_stats: bool
    may_reuse: bool
    not_before_ns: int  # a cached mel older than this (features or source changed) is stale


class _ClipProcessor:
    """Turns one clip into a cached mel (or reuses the cached one); runs in worker processes."""

    def __init__(self, features: Mapping[str, Any]) -> None:
        self.mel = MelSpectrogram(**features)
        self.sampling_rate = int(features["sampling_rate"])

    def __call__(self, task: _Task) -> dict[str, Any]:
        out: dict[str, Any] = {"id": task.clip_id, "path": task.audio_path, "reused": False}
        try:
            info = sf.info(task.audio_path)
            out["file_rate"] = int(info.samplerate)
            mel = self._reuse(task, info) if task.may_reuse else None
            if mel is not None:
                out["reused"] = True
                out["n_samples"] = resampled_length(int(info.frames), int(info.samplerate), self.sampling_rate)
            else:
                audio = load_audio(task.audio_path, self.sampling_rate, warn=lambda *_: None)
                problem = self._problem(audio)
                if problem:
                    return {**out, "bad": problem}
                with torch.inference_mode():
                    mel = self.mel(torch.from_numpy(audio))
                save_mel(task.mel_path, mel)
                out["n_samples"] = int(audio.shape[0])
        except UserError as e:
            return {**out, "bad": _reason(e, task.audio_path)}
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            return {**out, "bad": f"cannot read audio ({str(e).splitlines()[0] if str(e) else type(e).__name__})"}
        out["n_frames"] = int(mel.shape[1])
        if task.want_stats:
            stats = MelStats(mel.shape[0])
            stats.update(mel)
            out["stats"] = (stats.count, stats.mean, stats.m2)
        return out

    def _reuse(self, task: _Task, info: Any) -> torch.Tensor | None:
        """The cached mel if it exists, is newer than the source and the settings, and fits the clip."""
        try:
            st = os.stat(task.mel_path)
        except FileNotFoundError:
            return None
        if st.st_mtime_ns < max(task.not_before_ns, os.stat(task.audio_path).st_mtime_ns):
            return None
        n = resampled_length(int(info.frames), int(info.samplerate), self.sampling_rate)
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


def _reason(e: UserError, path: str) -> str:
    """A UserError message without the leading '<path>: '."""
    msg = str(e)
    return msg[len(path) + 2:] if msg.startswith(f"{path}: ") else msg


# The worker processes' processor, set once by the pool initializer (one per process).
_worker_processor: _ClipProcessor | None = None


def _init_worker(features: dict[str, Any]) -> None:
    global _worker_processor
    # Several workers share the cores: intra-op threads would only oversubscribe them.
    torch.set_num_threads(1)
    _worker_processor = _ClipProcessor(features)


def _run_task(task: _Task) -> dict[str, Any]:
    assert _worker_processor is not None
    return _worker_processor(task)


def _results(tasks: Sequence[_Task], features: dict[str, Any], workers: int) -> Iterator[dict[str, Any]]:
    """Process tasks in-process (workers == 1) or in a pool, yielding results as they finish."""
    if workers <= 1:
        processor = _ClipProcessor(features)
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


def _features_path(cache: Path) -> Path:
    return cache / "features.json"


def features_match(cache: Path, features: Mapping[str, Any]) -> bool:
    """True when the cache at `cache` was computed with these feature settings."""
    try:
        return json.loads(_features_path(cache).read_text()) == dict(features)
    except (OSError, ValueError):
        return False


def _split_of(corpus: Corpus, splits: Mapping[str, list[str]]) -> tuple[dict[str, str], list[BadFile]]:
    """The split of each listed clip, and the bad files (the corpus's, plus listed ids not found)."""
    clips = corpus.by_id()
    split_of: dict[str, str] = {}
    bad = list(corpus.bad)
    reported = {b.clip_id for b in corpus.bad}
    for name in SPLITS:
        for clip_id in splits[name]:
            if clip_id in split_of:
                continue  # a clip listed twice (1-clip corpus: train == val) is processed once
            split_of[clip_id] = name
            if clip_id not in clips and clip_id not in reported:
                bad.append(BadFile(str(corpus.root / "splits" / f"{name}.txt"),
                                   f"clip {clip_id!r} is listed but not found in the corpus"))
    unsplit = [c for c in clips if c not in split_of]
    if unsplit:
        log.warning("%s: %d clips are in no split (added after the splits were written; delete %s to "
                    "redraw them), e.g. %s", corpus.root, len(unsplit), corpus.root / "splits", unsplit[0])
    return split_of, bad


def _write_bad_files(path: Path, bad: Sequence[BadFile]) -> None:
    """`bad_files.tsv` (path, reason), each also logged."""
    write_text_atomic(path, "path\treason\n" + "".join(f"{b.path}\t{b.reason}\n" for b in bad))
    for b in bad:
        log.warning("skipped %s: %s", b.path, b.reason)
    if bad:
        log.warning("%d unusable files listed in %s", len(bad), path)


def read_manifest(cache: Path) -> dict[str, dict[str, Any]]:
    """The rows of `<cache>/manifest.jsonl` by clip id (id, split, path, mel, n_samples, n_frames, file_rate)."""
    rows = {}
    for line in (cache / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["id"]] = row
    return rows


def preprocess_corpus(cfg: CorpusSettings, *, num_workers: int | None = None, progress: bool = True) -> PreprocessReport:
    """Cache a log-mel for every clip in the splits, then write the manifest and statistics.

    Clips whose cached mel is valid (newer than the audio and the feature settings, right
    shape, finite) are reused, so an interrupted run resumes where it stopped. Files that
    cannot be used (unreadable, empty, NaN/Inf, all-zero, too short, missing, wrong extension)
    are skipped and listed in `<cache_dir>/bad_files.tsv`.

    Writes into the cache dir: `mels/<id>.pt` (float32 [n_mels, F]), `manifest.jsonl`,
    `stats.pt` ({"mean", "std"}: float32 [n_mels] over the training split), `features.json`
    (the audio settings), `bad_files.tsv`.

    Args:
        cfg: config with `audio` and `data` blocks.
        num_workers: worker processes (default `data.num_workers`, else the number of cores).
        progress: show a progress bar.

    Returns:
        A PreprocessReport.

    Raises:
        UserError: missing corpus, or no usable training clip at all.
    """
    t0 = time.perf_counter()
    data_cfg, audio_cfg = cfg.data, cfg.audio
    corpus = discover_corpus(data_cfg)  # first: a wrong path is reported before anything slow
    features = feature_settings(audio_cfg)
    sr = features["sampling_rate"]
    splits = ensure_splits(data_cfg)
    cache = cache_dir(data_cfg)
    mel_dir = cache / "mels"
    try:
        mel_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{cache.absolute()}: cannot create the feature cache ({e.strerror}); set data.cache_dir=...") from None
    remove_stale_temps(mel_dir, recursive=True)  # left by a killed run (ids may name sub-folders)

    # A cached mel is trusted only if written after the current settings were recorded.
    reuse = features_match(cache, features)
    if not reuse:
        if any(mel_dir.iterdir()):
            log.info("%s: audio settings changed (or unknown); recomputing every mel", cache)
        write_text_atomic(_features_path(cache), json.dumps(features, indent=1) + "\n")
    not_before = _features_path(cache).stat().st_mtime_ns

    clips = corpus.by_id()
    split_of, bad = _split_of(corpus, splits)
    train_ids = set(splits["train"])
    tasks = [_Task(cid, str(clips[cid].path), str(mel_dir / f"{cid}.pt"), cid in train_ids, reuse, not_before)
             for cid in sorted(split_of) if cid in clips]

    workers = int(num_workers or data_cfg.num_workers or available_cores())
    workers = max(1, min(workers, len(tasks)))
    report = PreprocessReport(cache_dir=cache, n_clips=len(tasks), workers=workers)
    stats = MelStats(features["n_mels"])
    seen_rates: set[int] = set()
    warn = warn_once_per_rate(seen_rates)
    rows: list[dict[str, Any]] = []
    t_mels = time.perf_counter()
    bar = tqdm(total=len(tasks), unit="clip", desc="mels", disable=not progress, file=sys.stderr,
               mininterval=0.5, dynamic_ncols=True)
    with bar:
        for res in _results(tasks, features, workers):
            bar.update(1)
            if "bad" in res:
                bad.append(BadFile(res["path"], res["bad"]))
                continue
            if res["file_rate"] != sr:
                warn(Path(res["path"]), res["file_rate"], sr)
            seconds = res["n_samples"] / sr
            report.seconds_audio += seconds
            if res["reused"]:
                report.n_reused += 1
            else:
                report.n_computed += 1
                report.seconds_computed += seconds
            if "stats" in res:
                part = MelStats(features["n_mels"])
                part.count, part.mean, part.m2 = res["stats"]
                stats.merge(part)
            rows.append({"id": res["id"], "split": split_of[res["id"]],
                         "path": _relative(Path(res["path"]), corpus.root),
                         "mel": f"mels/{res['id']}.pt", "n_samples": res["n_samples"],
                         "n_frames": res["n_frames"], "file_rate": res["file_rate"]})
    report.wall_seconds = time.perf_counter() - t_mels
    report.n_ok = len(rows)
    report.bad = sorted(bad, key=lambda b: b.path)
    report.split_counts = {name: sum(r["split"] == name for r in rows) for name in SPLITS}

    report.report_path = cache / "bad_files.tsv"
    _write_bad_files(report.report_path, report.bad)
    if not rows:
        raise UserError(f"{corpus.root.absolute()}: no usable clips ({len(report.bad)} bad files, see {report.report_path})")
    if stats.count == 0:
        raise UserError(f"{corpus.root.absolute()}: no usable clip in the training split ({len(report.bad)} bad files, "
                        f"see {report.report_path})")

    rows.sort(key=lambda r: r["id"])
    report.manifest_path = cache / "manifest.jsonl"
    write_text_atomic(report.manifest_path, "".join(json.dumps(r) + "\n" for r in rows))
    report.stats_path = cache / "stats.pt"
    atomic_write(report.stats_path, lambda f: torch.save(stats.to_dict(), f))
    report.total_seconds = time.perf_counter() - t0
    return report


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def load_stats(cfg: CorpusSettings, *, compute_if_missing: bool = True, num_workers: int | None = None,
               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel log-mel mean and std of the training split.

    Read from `<cache_dir>/stats.pt`; when that is missing, stale (other audio settings) or
    damaged, the corpus is preprocessed first (which also fills the mel cache).

    Args:
        cfg: config with `audio` and `data` blocks.
        compute_if_missing: False raises instead of preprocessing.
        num_workers, progress: passed to `preprocess_corpus`.

    Returns:
        (mean, std), float32 [n_mels] each.
    """
    cache = cache_dir(cfg.data)
    path = cache / "stats.pt"
    features = feature_settings(cfg.audio)
    if not path.is_file():
        problem = "not found"
    elif not features_match(cache, features):
        problem = "computed with other audio settings"
    else:
        problem = _check_stats(path, features["n_mels"])
    if problem:
        if not compute_if_missing:
            raise UserError(f"{path.absolute()}: {problem}; run waveglow-preprocess data={cfg.data.name}")
        log.info("%s: %s; preprocessing the corpus to compute them", path, problem)
        preprocess_corpus(cfg, num_workers=num_workers, progress=progress)
        problem = _check_stats(path, features["n_mels"])
        if problem:  # pragma: no cover - preprocess_corpus just wrote it
            raise UserError(f"{path.absolute()}: {problem}")
    stats = torch.load(path, map_location="cpu", weights_only=True)
    return stats["mean"].float(), stats["std"].float()


def _check_stats(path: Path, n_mels: int) -> str | None:
    """Why stats.pt cannot be used, or None."""
    if not path.is_file():
        return "not found"
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # any load failure means: recompute
        return "unreadable"
    if not isinstance(stats, dict) or not all(isinstance(stats.get(k), torch.Tensor) for k in ("mean", "std")):
        return "not a {'mean', 'std'} tensor dict"
    mean, std = stats["mean"], stats["std"]
    if mean.shape != (n_mels,) or std.shape != (n_mels,):
        return f"shape {list(mean.shape)} does not match n_mels={n_mels}"
    if not (torch.isfinite(mean).all() and torch.isfinite(std).all() and (std > 0).all()):
        return "non-finite or non-positive values"
    return None


