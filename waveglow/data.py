"""Corpora, splits, the feature cache, and the datasets training and validation read.

A corpus is LJSpeech layout (`metadata.csv` + `wavs/`) or any folder of WAV/FLAC files. Clip
ids are stable names (the metadata id, or the path below root without suffix); splits are
filelists of ids under `<root>/splits/`. `preprocess_corpus` caches one log-mel per clip under
`<cache_dir>/mels/<id>.pt` with a manifest and the training-split statistics. The datasets
use that cache when it is there and compute mels on the fly when it is not.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import os
import random
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from waveglow.audio import (
    INT16_SCALE,
    dither,
    load_audio,
    read_audio,
    resampled_length,
    warn_once_per_rate,
)
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic
from waveglow.mel import MelSpectrogram, MelStats, check_mel, load_mel, save_mel

log = logging.getLogger("waveglow.data")

AUDIO_SUFFIXES = (".wav", ".flac")
# Audio we recognise but do not read: reported as "wrong extension", not silently ignored.
OTHER_AUDIO_SUFFIXES = frozenset({".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".wma", ".aif",
                                  ".aiff", ".aifc", ".au", ".snd", ".raw", ".pcm", ".sph", ".webm"})
SPLITS = ("train", "val", "test")
SHORT_CLIP_POLICIES = ("noise", "repeat", "drop")
# Padding for clips shorter than a segment: Gaussian noise of about one int16 LSB, i.e. the
# noise floor of a quiet recording. Zeros would give the flow a perfectly predictable region
# (unbounded likelihood) and clamped log-mels, which destabilizes training.
PAD_NOISE_STD = 1.0 / INT16_SCALE
LJSPEECH_HINT = "LJSpeech layout: metadata.csv (id|text|normalized text) and wavs/<id>.wav"
FOLDER_HINT = "a folder of .wav/.flac files (any depth)"


# ----------------------------------------------------------------------------- config access

def _cfg(cfg: Any, key: str, default: Any = ..., prefix: str = "data") -> Any:
    """cfg[key] for a DictConfig or dict; a missing mandatory value (`???`) is a UserError."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(f"{prefix}.{key} is required (set it on the command line: {prefix}.{key}=...)")
        value = cfg.get(key, None if default is ... else default)
    else:
        value = cfg.get(key, None if default is ... else default)
        if value == "???":
            raise UserError(f"{prefix}.{key} is required (set it on the command line: {prefix}.{key}=...)")
    if value is None and default is ...:
        raise UserError(f"{prefix}.{key} is not set")
    return value


def corpus_root(data_cfg: Any) -> Path:
    """The corpus directory (`data.root`; relative paths are relative to the working directory)."""
    return Path(str(_cfg(data_cfg, "root"))).expanduser()


def cache_dir(data_cfg: Any) -> Path:
    """Where mels, manifest and statistics live (`data.cache_dir`, default `<root>/cache`)."""
    cache = _cfg(data_cfg, "cache_dir", None)
    return Path(str(cache)).expanduser() if cache else corpus_root(data_cfg) / "cache"


def feature_settings(audio_cfg: Any) -> dict[str, Any]:
    """The audio settings that determine a mel, normalised (what cached mels are checked against)."""
    m = MelSpectrogram.from_config(audio_cfg)
    return {"sampling_rate": m.sampling_rate, "n_fft": m.n_fft, "hop_length": m.hop_length,
            "win_length": m.win_length, "n_mels": m.n_mels, "fmin": m.fmin, "fmax": m.fmax,
            "log_clamp": m.log_clamp}


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- discovery

@dataclass(frozen=True)
class Clip:
    """One audio file of a corpus."""

    id: str
    path: Path


@dataclass(frozen=True)
class BadFile:
    """A file the pipeline cannot use, and why."""

    path: str
    reason: str
    clip_id: str | None = None  # the clip it stands for, when known


@dataclass
class Corpus:
    """The clips found under a corpus root, and the files that were skipped."""

    root: Path
    layout: str
    clips: list[Clip]
    bad: list[BadFile] = field(default_factory=list)

    def by_id(self) -> dict[str, Clip]:
        return {c.id: c for c in self.clips}


def _missing_root_error(root: Path, layout: str) -> UserError:
    hint = LJSPEECH_HINT if layout == "ljspeech" else FOLDER_HINT
    return UserError(f"{root}: corpus directory not found; expected {hint} (set data.root=...)")


def discover_corpus(data_cfg: Any) -> Corpus:
    """List the clips of the corpus at `data.root` without decoding any audio.

    Args:
        data_cfg: `cfg.data` (root, layout, cache_dir).

    Returns:
        The clips (sorted by id) and the files already known to be unusable (missing, wrong
        extension, duplicate id).

    Raises:
        UserError: no such directory, no metadata.csv (LJSpeech layout), or no clips at all.
    """
    root = corpus_root(data_cfg)
    layout = str(_cfg(data_cfg, "layout", "ljspeech"))
    if layout not in ("ljspeech", "folder"):
        raise UserError(f"data.layout={layout}: expected ljspeech or folder")
    if not root.is_dir():
        raise _missing_root_error(root, layout)
    if layout == "ljspeech":
        corpus = _discover_ljspeech(root)
    else:
        corpus = _discover_folder(root, cache_dir(data_cfg))
    if not corpus.clips:
        hint = LJSPEECH_HINT if layout == "ljspeech" else FOLDER_HINT
        detail = ""
        if corpus.bad:
            detail = f" ({len(corpus.bad)} unusable, e.g. {corpus.bad[0].path}: {corpus.bad[0].reason})"
        raise UserError(f"{root}: no usable audio files found{detail}; expected {hint}")
    return corpus


def _valid_id(clip_id: str) -> bool:
    parts = clip_id.split("/")
    return bool(clip_id) and not clip_id.startswith("/") and ".." not in parts and "" not in parts


def _discover_ljspeech(root: Path) -> Corpus:
    meta = root / "metadata.csv"
    if not meta.is_file():
        raise UserError(f"{meta}: not found; expected {LJSPEECH_HINT} (or data.layout=folder for a plain folder)")
    wav_dir = root / "wavs"
    # One directory listing instead of a stat per clip (LJSpeech has 13,100).
    by_stem: dict[str, list[Path]] = {}
    if wav_dir.is_dir():
        with os.scandir(wav_dir) as entries:
            for entry in entries:
                if entry.is_file() and not entry.name.startswith("."):
                    p = Path(entry.path)
                    by_stem.setdefault(p.stem, []).append(p)
    clips: list[Clip] = []
    bad: list[BadFile] = []
    seen: set[str] = set()
    text = meta.read_text(encoding="utf-8", errors="replace")
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        clip_id = line.split("|", 1)[0].strip()
        where = f"{meta.name} line {lineno}"
        if not _valid_id(clip_id):
            bad.append(BadFile(f"{meta}:{lineno}", f"invalid clip id {clip_id!r}"))
            continue
        if clip_id in seen:
            bad.append(BadFile(f"{meta}:{lineno}", f"duplicate clip id {clip_id!r}"))
            continue
        seen.add(clip_id)
        if "/" in clip_id:  # an id naming a subfolder of wavs/
            candidates = [p for s in AUDIO_SUFFIXES if (p := wav_dir / f"{clip_id}{s}").is_file()]
        else:
            candidates = by_stem.get(clip_id, [])
        # .wav first when a clip exists in both formats
        usable = sorted((p for p in candidates if p.suffix.lower() in AUDIO_SUFFIXES),
                        key=lambda p: p.suffix.lower() != ".wav")
        if usable:
            clips.append(Clip(clip_id, usable[0]))
        elif candidates:
            p = candidates[0]
            bad.append(BadFile(str(p), f"wrong extension {p.suffix!r} (listed in {where}); expected .wav or .flac",
                               clip_id))
        else:
            bad.append(BadFile(str(wav_dir / f"{clip_id}.wav"), f"missing (listed in {where})", clip_id))
    clips.sort(key=lambda c: c.id)
    return Corpus(root, "ljspeech", clips, bad)


def _discover_folder(root: Path, cache: Path) -> Corpus:
    skip = {(root / "splits").resolve(), cache.resolve()}
    clips: dict[str, Clip] = {}
    bad: list[BadFile] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and (here / d).resolve() not in skip)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            suffix = path.suffix.lower()
            if suffix in AUDIO_SUFFIXES:
                clip_id = path.relative_to(root).with_suffix("").as_posix()
                if clip_id in clips:
                    bad.append(BadFile(str(path), f"duplicate clip id {clip_id!r} (also {clips[clip_id].path.name})"))
                else:
                    clips[clip_id] = Clip(clip_id, path)
            elif suffix in OTHER_AUDIO_SUFFIXES:
                bad.append(BadFile(str(path), f"wrong extension {path.suffix!r}; expected .wav or .flac",
                                   path.relative_to(root).with_suffix("").as_posix()))
    return Corpus(root, "folder", [clips[k] for k in sorted(clips)], bad)


# ----------------------------------------------------------------------------- splits

def _split_sizes(n: int, n_val: int, n_test: int) -> tuple[int, int, bool]:
    """Held-out sizes for a corpus of n clips: (n_val, n_test, shrunk)."""
    n_val, n_test = max(1, int(n_val)), max(0, int(n_test))
    if n < 2:
        return 1, 0, True
    budget = n // 2  # never hold out more than half of the corpus
    if n_val + n_test <= budget:
        return n_val, n_test, False
    val = max(1, round(budget * n_val / (n_val + n_test)))
    return val, max(0, budget - val), True


def _read_ids(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def ensure_splits(data_cfg: Any) -> dict[str, list[str]]:
    """Train/val/test clip ids, read from `<root>/splits/` or (first time only) written there.

    The split is a seeded shuffle of the sorted clip ids (`data.splits.seed`), so it is the same
    on every machine; once written it is never redrawn (delete the folder to redraw). Corpora
    too small for `data.splits.n_val`/`n_test` hold out at most half of their clips (at least
    one validation clip) and say so.

    Args:
        data_cfg: `cfg.data`.

    Returns:
        {"train": [...], "val": [...], "test": [...]} (ids, sorted).
    """
    root = corpus_root(data_cfg)
    layout = str(_cfg(data_cfg, "layout", "ljspeech"))
    if not root.is_dir():
        raise _missing_root_error(root, layout)
    split_dir = root / "splits"
    files = {name: split_dir / f"{name}.txt" for name in SPLITS}
    present = [name for name, p in files.items() if p.is_file()]
    if present:
        if len(present) != len(SPLITS):
            missing = ", ".join(f"{n}.txt" for n in SPLITS if n not in present)
            raise UserError(f"{split_dir}: incomplete splits (no {missing}); restore the files or delete "
                            "the folder to draw new splits")
        splits = {name: _read_ids(p) for name, p in files.items()}
        if not splits["train"] or not splits["val"]:
            raise UserError(f"{split_dir}: train.txt and val.txt must list at least one clip id each")
        return splits

    corpus = discover_corpus(data_cfg)
    ids = [c.id for c in corpus.clips]
    split_cfg = _cfg(data_cfg, "splits", {})
    n_val, n_test, shrunk = _split_sizes(len(ids), split_cfg.get("n_val", 100), split_cfg.get("n_test", 500))
    seed = int(split_cfg.get("seed", 1234))
    if shrunk:
        log.warning("%s: only %d clips; holding out %d for validation and %d for test instead of %s/%s",
                    root, len(ids), n_val, n_test, split_cfg.get("n_val"), split_cfg.get("n_test"))
    order = list(ids)
    random.Random(seed).shuffle(order)
    val, test = order[:n_val], order[n_val:n_val + n_test]
    train = order[n_val + n_test:] or list(val)  # a one-clip corpus trains on its validation clip
    if len(ids) < 2:
        log.warning("%s: a single clip serves as both training and validation data", root)
    splits = {"train": sorted(train), "val": sorted(val), "test": sorted(test)}
    try:
        for name in SPLITS:
            write_text_atomic(files[name], "".join(f"{i}\n" for i in splits[name]))
    except OSError as e:
        raise UserError(f"{split_dir}: cannot write the split filelists ({e.strerror}); the corpus "
                        "folder must be writable") from None
    log.info("wrote splits to %s: train %d, val %d, test %d clips (seed %d)",
             split_dir, len(splits["train"]), len(splits["val"]), len(splits["test"]), seed)
    return splits


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


def _remove_stale_temps(directory: Path) -> None:
    """Delete temp files (`.<name>.tmp<pid>`) left behind by runs that were killed.

    Files of a process that is still running are kept: it may be writing them right now.
    """
    if not directory.is_dir():
        return
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            if not name.startswith(".") or ".tmp" not in name:
                continue
            pid = name.rsplit(".tmp", 1)[1]
            if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
                continue
            (Path(dirpath) / name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _features_path(cache: Path) -> Path:
    return cache / "features.json"


def _features_match(cache: Path, features: Mapping[str, Any]) -> bool:
    try:
        return json.loads(_features_path(cache).read_text()) == dict(features)
    except (OSError, ValueError):
        return False


def preprocess_corpus(cfg: Any, *, num_workers: int | None = None, progress: bool = True) -> PreprocessReport:
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
    from tqdm import tqdm

    t0 = time.perf_counter()
    data_cfg, audio_cfg = cfg["data"], cfg["audio"]
    policy = str(_cfg(data_cfg, "short_clip_policy", "noise"))
    if policy not in SHORT_CLIP_POLICIES:  # used by training, but a typo is best caught now
        raise UserError(f"data.short_clip_policy={policy}: expected one of {', '.join(SHORT_CLIP_POLICIES)}")
    corpus = discover_corpus(data_cfg)  # first: a wrong path is reported before anything slow
    features = feature_settings(audio_cfg)
    sr = features["sampling_rate"]
    splits = ensure_splits(data_cfg)
    cache = cache_dir(data_cfg)
    mel_dir = cache / "mels"
    try:
        mel_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{cache}: cannot create the feature cache ({e.strerror}); set data.cache_dir=...") from None
    _remove_stale_temps(mel_dir)

    # A cached mel is trusted only if written after the current settings were recorded.
    reuse = _features_match(cache, features)
    if not reuse:
        if any(mel_dir.iterdir()):
            log.info("%s: audio settings changed (or unknown); recomputing every mel", cache)
        write_text_atomic(_features_path(cache), json.dumps(features, indent=1) + "\n")
    not_before = _features_path(cache).stat().st_mtime_ns

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
    train_ids = set(splits["train"])
    tasks = [_Task(cid, str(clips[cid].path), str(mel_dir / f"{cid}.pt"), cid in train_ids, reuse, not_before)
             for cid in sorted(split_of) if cid in clips]

    workers = int(num_workers or _cfg(data_cfg, "num_workers", None) or available_cores())
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
    write_text_atomic(report.report_path, "path\treason\n" + "".join(
        f"{b.path}\t{b.reason}\n" for b in report.bad))
    for b in report.bad:
        log.warning("skipped %s: %s", b.path, b.reason)
    if report.bad:
        log.warning("%d unusable files listed in %s", len(report.bad), report.report_path)
    if not rows:
        raise UserError(f"{corpus.root}: no usable clips ({len(report.bad)} bad files, see {report.report_path})")
    if stats.count == 0:
        raise UserError(f"{corpus.root}: no usable clip in the training split ({len(report.bad)} bad files, "
                        f"see {report.report_path})")

    rows.sort(key=lambda r: r["id"])
    report.manifest_path = cache / "manifest.jsonl"
    write_text_atomic(report.manifest_path, "".join(json.dumps(r) + "\n" for r in rows))
    report.stats_path = cache / "stats.pt"
    _save_torch_atomic(report.stats_path, stats.to_dict())
    report.total_seconds = time.perf_counter() - t0
    return report


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _save_torch_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_stats(cfg: Any, *, compute_if_missing: bool = True, num_workers: int | None = None,
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
    cache = cache_dir(cfg["data"])
    path = cache / "stats.pt"
    features = feature_settings(cfg["audio"])
    if not path.is_file():
        problem = "not found"
    elif not _features_match(cache, features):
        problem = "computed with other audio settings"
    else:
        problem = _check_stats(path, features["n_mels"])
    if problem:
        if not compute_if_missing:
            raise UserError(f"{path}: {problem}; run waveglow-preprocess data={_cfg(cfg['data'], 'name', '?')}")
        log.info("%s: %s; preprocessing the corpus to compute them", path, problem)
        preprocess_corpus(cfg, num_workers=num_workers, progress=progress)
        problem = _check_stats(path, features["n_mels"])
        if problem:  # pragma: no cover - preprocess_corpus just wrote it
            raise UserError(f"{path}: {problem}")
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


# ----------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class ClipInfo:
    """A usable clip as the datasets see it."""

    id: str
    path: Path
    n_samples: int           # at the configured sampling rate
    file_rate: int           # the file's own rate
    mel_path: Path | None    # cached mel, None when there is no valid cache


def split_clips(cfg: Any, split: str) -> list[ClipInfo]:
    """The usable clips of one split, from the manifest when the cache is valid, else from the files.

    Args:
        cfg: config with `audio` and `data` blocks.
        split: "train", "val" or "test".
    """
    if split not in SPLITS:
        raise UserError(f"split={split}: expected one of {', '.join(SPLITS)}")
    data_cfg = cfg["data"]
    ids = ensure_splits(data_cfg)[split]
    root, cache = corpus_root(data_cfg), cache_dir(data_cfg)
    features = feature_settings(cfg["audio"])
    sr = features["sampling_rate"]
    manifest = cache / "manifest.jsonl"
    if manifest.is_file() and _features_match(cache, features):
        rows = {}
        for line in manifest.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                rows[r["id"]] = r
        out = []
        for cid in ids:
            r = rows.get(cid)
            if r is None:
                continue  # a bad file (see bad_files.tsv)
            path = Path(r["path"]) if Path(r["path"]).is_absolute() else root / r["path"]
            out.append(ClipInfo(cid, path, int(r["n_samples"]), int(r.get("file_rate", sr)), cache / r["mel"]))
        if len(out) < len(ids):
            log.info("%s split: %d of %d clips usable (see %s)", split, len(out), len(ids), cache / "bad_files.tsv")
        return out
    if manifest.is_file():
        log.warning("%s was computed with other audio settings; computing mels on the fly "
                    "(run waveglow-preprocess to refresh it)", cache)
    clips = discover_corpus(data_cfg).by_id()
    out = []
    for cid in ids:
        clip = clips.get(cid)
        if clip is None:
            log.warning("%s split: clip %r not found in the corpus; skipped", split, cid)
            continue
        try:
            info = sf.info(str(clip.path))
        except (sf.LibsndfileError, RuntimeError) as e:
            log.warning("%s: unreadable (%s); skipped", clip.path, str(e).splitlines()[0] if str(e) else "?")
            continue
        n = resampled_length(int(info.frames), int(info.samplerate), sr)
        if n > 0:
            out.append(ClipInfo(cid, clip.path, n, int(info.samplerate), None))
    return out


class _ClipReader:
    """Audio and mel access shared by the datasets (cache when valid, on-the-fly otherwise)."""

    def __init__(self, cfg: Any, split: str, segment_length: int | None, clips: Sequence[ClipInfo] | None) -> None:
        self.audio_cfg = cfg["audio"]
        self.mel_fn = MelSpectrogram.from_config(self.audio_cfg)
        self.sr = self.mel_fn.sampling_rate
        self.hop = self.mel_fn.hop_length
        self.n_mels = self.mel_fn.n_mels
        policy = str(_cfg(cfg["data"], "short_clip_policy", "noise"))
        if policy not in SHORT_CLIP_POLICIES:
            raise UserError(f"data.short_clip_policy={policy}: expected one of {', '.join(SHORT_CLIP_POLICIES)}")
        self.policy = policy
        if segment_length is not None and int(segment_length) < self.mel_fn.n_fft:
            raise UserError(f"segment_length={segment_length}: expected at least n_fft={self.mel_fn.n_fft} samples")
        self.segment_length = None if segment_length is None else int(segment_length)
        self.clips = list(clips) if clips is not None else split_clips(cfg, split)
        if self.segment_length is not None and policy == "drop":
            kept = [c for c in self.clips if c.n_samples >= self.segment_length]
            if len(kept) < len(self.clips):
                log.info("%s split: dropped %d clips shorter than %d samples (data.short_clip_policy=drop)",
                         split, len(self.clips) - len(kept), self.segment_length)
            self.clips = kept
        if not self.clips:
            raise UserError(f"{corpus_root(cfg['data'])}: no usable clips in the {split} split "
                            "(run waveglow-preprocess to see which files are bad)")
        self.seen_rates: set[int] = set()
        self.warned_mels: set[str] = set()

    def full_audio(self, clip: ClipInfo) -> np.ndarray:
        audio = load_audio(clip.path, self.sr, warn=warn_once_per_rate(self.seen_rates))
        return audio

    def audio_range(self, clip: ClipInfo, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) at the configured rate; reads only that range when no resampling is needed."""
        if clip.file_rate == self.sr:
            audio, _ = read_audio(clip.path, start, stop)
        else:
            audio = self.full_audio(clip)[start:stop]
        if audio.shape[0] != stop - start:
            raise UserError(f"{clip.path}: shorter than recorded ({clip.n_samples} samples); the file changed "
                            "since preprocessing: run waveglow-preprocess again")
        return audio

    def cached_mel(self, clip: ClipInfo) -> torch.Tensor | None:
        """The clip's cached mel [n_mels, 1 + n // hop], or None (no cache, or it does not fit)."""
        if clip.mel_path is None:
            return None
        try:
            mel = load_mel(clip.mel_path, self.n_mels)
        except UserError as e:
            if clip.id not in self.warned_mels:  # once per clip, not once per segment
                self.warned_mels.add(clip.id)
                log.warning("%s; computing the mel on the fly", e)
            return None
        return mel if mel.shape[1] == self.mel_fn.n_frames(clip.n_samples) else None

    def mel_frames(self, audio: np.ndarray, start: int, length: int) -> torch.Tensor:
        """Frames of the clip's centred mel covering samples [start, start + length), from its audio.

        Equal to slicing the whole-clip mel, but only the needed frames are computed.

        Args:
            audio: the whole clip [n] (undithered).
            start: a multiple of hop.
            length: segment length L.

        Returns:
            [n_mels, 1 + L // hop].
        """
        n_frames = 1 + length // self.hop
        pad = self.mel_fn.n_fft // 2
        padded = np.pad(audio, pad, mode="reflect")
        window = padded[start:start + (n_frames - 1) * self.hop + self.mel_fn.n_fft]
        with torch.inference_mode():
            return self.mel_fn(torch.from_numpy(np.ascontiguousarray(window)), center=False).clone()

    def mel_of(self, audio: np.ndarray) -> torch.Tensor:
        with torch.inference_mode():
            return self.mel_fn(torch.from_numpy(audio)).clone()

    def pad_short(self, audio: np.ndarray, length: int, generator: torch.Generator | None) -> np.ndarray:
        """Extend a clip shorter than `length` samples per the short-clip policy."""
        if self.policy == "repeat":
            return np.tile(audio, math.ceil(length / audio.shape[0]))[:length]
        noise = torch.randn(length - audio.shape[0], generator=generator).numpy() * PAD_NOISE_STD
        return np.concatenate([audio, noise.astype(np.float32)])

    def segment(self, clip: ClipInfo, start: int | None, length: int,
                generator: torch.Generator | None) -> tuple[np.ndarray, torch.Tensor]:
        """(audio [L], mel [n_mels, 1 + L // hop]) for the segment at `start` (None: a random hop-aligned one)."""
        n = clip.n_samples
        if n < length:
            audio = self.full_audio(clip)
            clean = self.pad_short(audio, length, generator)
            return clean, self.mel_of(clean)
        if start is None:
            start = self.hop * int(torch.randint(0, (n - length) // self.hop + 1, (1,), generator=generator))
        mel = self.cached_mel(clip)
        if mel is not None:
            f0 = start // self.hop
            return self.audio_range(clip, start, start + length), mel[:, f0:f0 + 1 + length // self.hop]
        audio = self.full_audio(clip)
        if audio.shape[0] != n:
            raise UserError(f"{clip.path}: {audio.shape[0]} samples, expected {n}; the file changed since "
                            "preprocessing: run waveglow-preprocess again")
        return audio[start:start + length], self.mel_frames(audio, start, length)


class _ClipsDataset(Dataset):
    """A dataset with one item per clip of its `_ClipReader` (`self.reader`)."""

    reader: _ClipReader

    @property
    def clips(self) -> list[ClipInfo]:
        return self.reader.clips

    def __len__(self) -> int:
        return len(self.reader.clips)


class SegmentDataset(_ClipsDataset):
    """Training examples: a random hop-aligned segment of each clip, dithered, with its mel.

    The mel is the clip's undithered log-mel (cached or computed), sliced so that frame f is
    centred at segment sample f * hop. Clips shorter than a segment follow
    `data.short_clip_policy`: `noise` appends low-level noise, `repeat` loops the clip, `drop`
    leaves it out. Randomness comes from torch's global RNG (or `generator`), which DataLoader
    seeds differently in each worker.

    Args:
        cfg: config with `audio` and `data` blocks.
        split: usually "train".
        segment_length: samples per example (default `data.segment_length`); the trainer rounds
            it to a multiple of the model's n_group.
        dither: int16 LSBs of uniform noise (default `data.dither`).
        generator: torch RNG for segment choice, padding and dither.
        clips: use these clips instead of the split's (tests, custom subsets).

    Items:
        {"audio": float32 [L], "mel": float32 [n_mels, 1 + L // hop], "id": str}
    """

    def __init__(self, cfg: Any, split: str = "train", *, segment_length: int | None = None,
                 dither: float | None = None, generator: torch.Generator | None = None,
                 clips: Sequence[ClipInfo] | None = None) -> None:
        length = int(segment_length if segment_length is not None else _cfg(cfg["data"], "segment_length"))
        self.reader = _ClipReader(cfg, split, length, clips)
        self.segment_length = length
        self.dither = float(dither if dither is not None else _cfg(cfg["data"], "dither", 0.0))
        self.generator = generator

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.reader.clips[index]
        audio, mel = self.reader.segment(clip, None, self.segment_length, self.generator)
        audio_t = dither(torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), self.dither, self.generator)
        return {"audio": audio_t, "mel": mel.float().contiguous(), "id": clip.id}


class ClipDataset(_ClipsDataset):
    """Validation/test examples: deterministic, never dithered.

    With `segment_length` every clip gives one fixed segment (centred, hop-aligned; short clips
    padded per policy with noise seeded by the clip index); without it, whole clips trimmed to
    a multiple of `multiple_of` samples.

    Args:
        cfg: config with `audio` and `data` blocks.
        split: "val" (default) or "test" (or "train").
        segment_length: fixed segment length, or None for whole clips.
        multiple_of: whole clips are cut to a multiple of this (the model's n_group).
        max_clips: keep only the first N clips (sorted by id).
        seed: seeds the padding noise of short clips.
        clips: use these clips instead of the split's.

    Items:
        {"audio": float32 [L], "mel": float32 [n_mels, 1 + L // hop], "id": str}
    """

    def __init__(self, cfg: Any, split: str = "val", *, segment_length: int | None = None,
                 multiple_of: int = 1, max_clips: int | None = None, seed: int = 0,
                 clips: Sequence[ClipInfo] | None = None) -> None:
        self.reader = _ClipReader(cfg, split, segment_length, clips)
        if max_clips is not None:
            self.reader.clips = self.reader.clips[:max_clips]
        self.segment_length = segment_length
        self.multiple_of = max(1, int(multiple_of))
        self.seed = int(seed)
        min_len = self.reader.mel_fn.n_fft // 2 + 1
        if segment_length is None:
            short = [c for c in self.reader.clips if c.n_samples - c.n_samples % self.multiple_of < min_len]
            if short:
                log.info("%s split: %d clips too short to validate on whole; skipped", split, len(short))
                self.reader.clips = [c for c in self.reader.clips if c not in short]

    def __getitem__(self, index: int) -> dict[str, Any]:
        clip = self.reader.clips[index]
        r = self.reader
        if self.segment_length is not None:
            length = self.segment_length
            start = r.hop * (max(0, clip.n_samples - length) // 2 // r.hop)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            audio, mel = r.segment(clip, start, length, gen)
        else:
            length = clip.n_samples - clip.n_samples % self.multiple_of
            mel = r.cached_mel(clip)
            audio = r.audio_range(clip, 0, length) if mel is not None else r.full_audio(clip)
            if mel is None:
                mel = r.mel_of(audio)
            audio = audio[:length]
            mel = mel[:, :1 + length // r.hop]
        return {"audio": torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)),
                "mel": check_mel(mel, r.n_mels, clip.id), "id": clip.id}
