"""Preprocessing: the feature cache, its manifest, the training-split statistics and the bad-file report.

`preprocess_corpus` caches one log-mel per clip under `<cache_dir>/mels/<id>.pt` (in worker
processes), computed from the audio or taken from the clip's paired mel (`data.mel_dir`), lists
the usable clips in `manifest.jsonl`, the unusable files in `bad_files.tsv`, draws the splits
from the usable clips (first time only) and writes the per-channel statistics of the training
split to `stats.pt`. `load_stats` reads those statistics (computing them first when they are
missing or stale).

The manifest records, per clip, the size and modification time (ns) of its audio and of its
paired mel. Every start (`load_stats`, so every `waveglow-train`) compares them with one `stat`
per source, reading nothing: a source that changed makes the corpus be preprocessed again, which
recomputes that clip's mel only, and a source that is gone makes its clip unusable, listed in
`bad_files.tsv` and the log. A manifest without these records (written by an older version) is
treated as unknown: the next start preprocesses once, reusing each cached mel that is newer than
its sources (the older rule) and recording sizes and times from then on.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from waveglow.config import AudioConfig, DataConfig
from waveglow.data.audio import warn_once_per_rate
from waveglow.data.clipwork import ClipTask, process_clips, source_stat
from waveglow.data.corpus import BadFile, Corpus, cache_dir, corpus_root, discover_corpus
from waveglow.data.paired import find_paired_mel, missing_reason, paired_mel_dir
from waveglow.data.splits import SPLITS, ensure_splits, read_splits, split_files
from waveglow.errors import UserError
from waveglow.fileio import atomic_write, remove_stale_temps, write_text_atomic
from waveglow.mel import MelSpectrogram, MelStats, load_mel
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


def cache_settings(cfg: CorpusSettings) -> dict[str, Any]:
    """What the cached mels depend on: the feature settings, and the paired-mel folder if any.

    A cache of mels computed from the audio has no `mel_dir` key, so caches written before paired
    mels existed stay valid.
    """
    settings = feature_settings(cfg.audio)
    pairs = paired_mel_dir(cfg.data)
    if pairs is not None:
        settings["mel_dir"] = str(pairs.resolve())
    return settings


# ----------------------------------------------------------------------------- preprocessing

@dataclass
class PreprocessReport:
    """What `preprocess_corpus` did."""

    cache_dir: Path
    n_clips: int = 0            # audio clips found in the corpus
    n_ok: int = 0               # clips in the splits with a valid cached mel after the run
    n_computed: int = 0         # clips whose mel was written in this run
    n_reused: int = 0           # clips whose cached mel was valid
    bad: list[BadFile] = field(default_factory=list)
    seconds_audio: float = 0.0  # usable audio, all splits
    seconds_computed: float = 0.0
    wall_seconds: float = 0.0   # the mel pass (workers included), which the speed refers to
    total_seconds: float = 0.0  # everything: discovery, splits, writing the manifest and stats
    workers: int = 1
    split_counts: dict[str, int] = field(default_factory=dict)
    paired_dir: Path | None = None  # data.mel_dir, when the mels come from there
    n_trimmed: int = 0          # paired mels longer than the audio's frames (trailing frames cut)
    n_padded: int = 0           # paired mels shorter (last frame repeated)
    max_frame_diff: int = 0     # the largest |paired frames - audio frames| that was fitted
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
        paired = ""
        if self.paired_dir is not None:
            paired = (f"; paired mels from {self.paired_dir}: {self.n_trimmed} trimmed, {self.n_padded} padded "
                      f"(at most {self.max_frame_diff} frames)")
        return (f"preprocessed {self.n_ok}/{self.n_clips} clips ({self.seconds_audio / 3600:.2f} h; {splits}): "
                f"{self.n_computed} computed, {self.n_reused} reused from cache, {len(self.bad)} bad{paired}; "
                f"{speed}; {self.total_seconds:.1f} s in all; cache: {self.cache_dir}")


def _features_path(cache: Path) -> Path:
    return cache / "features.json"


def features_match(cache: Path, features: Mapping[str, Any]) -> bool:
    """True when the cache at `cache` was computed with these feature settings."""
    try:
        return json.loads(_features_path(cache).read_text()) == dict(features)
    except (OSError, ValueError):
        return False


def _split_of(corpus: Corpus, splits: Mapping[str, list[str]]) -> tuple[dict[str, str], list[BadFile]]:
    """The split of each listed clip, and the listed ids that are not in the corpus."""
    clips = corpus.by_id()
    split_of: dict[str, str] = {}
    bad: list[BadFile] = []
    reported = {b.clip_id for b in corpus.bad}
    for name in SPLITS:
        for clip_id in splits[name]:
            if clip_id in split_of:
                continue  # a clip listed twice (tiny corpus: val within train) belongs to the first
            split_of[clip_id] = name
            if clip_id not in clips and clip_id not in reported:
                bad.append(BadFile(str(corpus.root / "splits" / f"{name}.txt"),
                                   f"clip {clip_id!r} is listed but not found in the corpus"))
    return split_of, bad


def _warn_split_problems(corpus: Corpus, split_of: Mapping[str, str], usable: Sequence[str],
                         bad: Sequence[BadFile]) -> None:
    """Warn about usable clips in no split, and unusable clips that hold places in written splits."""
    unsplit = [c for c in usable if c not in split_of]
    if unsplit:
        log.warning("%s: %d clips are in no split (added after the splits were written; delete %s to "
                    "redraw them), e.g. %s", corpus.root, len(unsplit), corpus.root / "splits", unsplit[0])
    listed_bad: dict[str, int] = {}
    for b in bad:
        if b.clip_id is not None and b.clip_id in split_of:
            listed_bad[split_of[b.clip_id]] = listed_bad.get(split_of[b.clip_id], 0) + 1
    if listed_bad:
        log.warning("%s: the splits list %d unusable clips (%s; see bad_files.tsv); they are left out. Delete %s "
                    "to redraw the splits from the usable clips", corpus.root, sum(listed_bad.values()),
                    ", ".join(f"{k} {v}" for k, v in listed_bad.items()), corpus.root / "splits")


def _write_bad_files(path: Path, bad: Sequence[BadFile]) -> None:
    """`bad_files.tsv` (path, reason), each also logged."""
    write_text_atomic(path, "path\treason\n" + "".join(f"{b.path}\t{b.reason}\n" for b in bad))
    for b in bad:
        log.warning("skipped %s: %s", b.path, b.reason)
    if bad:
        log.warning("%d unusable files listed in %s", len(bad), path)


def read_manifest(cache: Path) -> dict[str, dict[str, Any]]:
    """The rows of `<cache>/manifest.jsonl` by clip id (id, split, path, mel, n_samples, n_frames,
    file_rate, audio_stat [size, mtime ns]; with paired mels also paired and paired_stat)."""
    rows = {}
    for line in (cache / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["id"]] = row
    return rows


def preprocess_corpus(cfg: CorpusSettings, *, num_workers: int | None = None, progress: bool = True) -> PreprocessReport:
    """Cache a log-mel for every clip, draw the splits if needed, write the manifest and statistics.

    Clips whose cached mel is valid (newer than its sources and the settings, right shape,
    finite) are reused, so an interrupted run resumes where it stopped. Files that cannot be
    used (unreadable, empty, NaN/Inf, all-zero, too short, missing, wrong extension; with
    `data.mel_dir`: no paired mel, or one whose frames differ by more than the tolerance) are
    skipped and listed in `<cache_dir>/bad_files.tsv`. Splits not yet written are drawn from
    the usable clips only.

    Writes into the cache dir: `mels/<id>.pt` (float32 [n_mels, F]), `manifest.jsonl`,
    `stats.pt` ({"mean", "std"}: float32 [n_mels] over the training split), `features.json`
    (the audio settings and the paired-mel folder), `bad_files.tsv`.

    Args:
        cfg: config with `audio` and `data` blocks.
        num_workers: worker processes (default `data.num_workers`, else the number of cores).
        progress: show a progress bar.

    Returns:
        A PreprocessReport.

    Raises:
        UserError: missing corpus or mel folder, a paired mel that does not load (e.g. another
            channel count; the message names the file), or no usable training clip at all.
    """
    t0 = time.perf_counter()
    data_cfg = cfg.data
    corpus = discover_corpus(data_cfg)  # first: a wrong path is reported before anything slow
    pairs = paired_mel_dir(data_cfg)
    features = cache_settings(cfg)
    sr, n_mels = features["sampling_rate"], features["n_mels"]
    written = read_splits(data_cfg)
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
            log.info("%s: audio settings or mel source changed (or unknown); recomputing every mel", cache)
        write_text_atomic(_features_path(cache), json.dumps(features, indent=1) + "\n")
    not_before = _features_path(cache).stat().st_mtime_ns

    clips = corpus.by_id()
    split_of, bad = _split_of(corpus, written) if written is not None else ({}, [])
    bad = list(corpus.bad) + bad
    recorded = _recorded_stats(cache, corpus.root) if reuse else {}
    tasks = []
    for cid in sorted(clips):  # every clip, listed or not: bad_files.tsv names all unusable files
        paired = find_paired_mel(pairs, cid) if pairs is not None else None
        if pairs is not None and paired is None:
            bad.append(BadFile(str(clips[cid].path), missing_reason(pairs, cid), cid))
            continue
        # The recorded sizes and times count only for the same files (an id may now be a .flac).
        rec = recorded.get(cid)
        same = rec is not None and rec[0] == (_resolved(clips[cid].path), _resolved(paired) if paired else "")
        audio_rec, paired_rec = (rec[1], rec[2]) if same else (None, None)
        tasks.append(ClipTask(cid, str(clips[cid].path), str(mel_dir / f"{cid}.pt"), reuse, not_before,
                              str(paired or ""), recorded_audio=audio_rec, recorded_paired=paired_rec))
    if tasks and tasks[0].paired_path:
        load_mel(tasks[0].paired_path, n_mels)  # fail fast on another channel count, naming the file

    by_id_task = {t.clip_id: t for t in tasks}
    workers = int(num_workers or data_cfg.num_workers or available_cores())
    workers = max(1, min(workers, len(tasks)))
    report = PreprocessReport(cache_dir=cache, n_clips=len(clips), workers=workers, paired_dir=pairs)
    clip_stats: dict[str, tuple[int, Any, Any]] = {}
    # One resample warning per rate, and in a mix per corpus (its id prefix).
    warns: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    t_mels = time.perf_counter()
    bar = tqdm(total=len(tasks), unit="clip", desc="mels", disable=not progress, file=sys.stderr,
               mininterval=0.5, dynamic_ncols=True)
    with bar:
        for res in process_clips(tasks, features, workers):
            bar.update(1)
            if "fatal" in res:
                raise UserError(res["fatal"])
            if "bad" in res:
                bad.append(BadFile(res["path"], res["bad"], res["id"]))
                continue
            if res["file_rate"] != sr:
                part = res["id"].split("/", 1)[0] if data_cfg.layout == "mix" else ""
                warns.setdefault(part, warn_once_per_rate(set()))(Path(res["path"]), res["file_rate"], sr)
            seconds = res["n_samples"] / sr
            report.seconds_audio += seconds
            if res["reused"]:
                report.n_reused += 1
            else:
                report.n_computed += 1
                report.seconds_computed += seconds
            diff = res.get("frame_diff", 0)
            report.n_trimmed += diff > 0
            report.n_padded += diff < 0
            report.max_frame_diff = max(report.max_frame_diff, abs(diff))
            clip_stats[res["id"]] = res["stats"]
            row = {"id": res["id"], "path": _relative(Path(res["path"]), corpus.root),
                   "mel": f"mels/{res['id']}.pt", "n_samples": res["n_samples"],
                   "n_frames": res["n_frames"], "file_rate": res["file_rate"], "audio_stat": res["audio_stat"]}
            if "paired_stat" in res:
                row["paired"] = _resolved(by_id_task[res["id"]].paired_path)
                row["paired_stat"] = res["paired_stat"]
            rows.append(row)
    report.wall_seconds = time.perf_counter() - t_mels
    report.bad = sorted(bad, key=lambda b: b.path)
    report.report_path = cache / "bad_files.tsv"
    _write_bad_files(report.report_path, report.bad)
    if not rows:
        raise UserError(f"{corpus.root.absolute()}: no usable clips ({len(report.bad)} bad files, see {report.report_path})")

    usable = sorted(r["id"] for r in rows)
    if written is None:  # first run: the splits hold usable clips only
        split_of = {}
        for name, ids in ensure_splits(data_cfg, usable).items():
            for cid in ids:
                split_of.setdefault(cid, name)
    _warn_split_problems(corpus, split_of, usable, report.bad)
    rows = sorted(({**r, "split": split_of[r["id"]]} for r in rows if r["id"] in split_of), key=lambda r: r["id"])
    stats = MelStats(n_mels)
    for r in rows:
        if r["split"] == "train":
            part = MelStats(n_mels)
            part.count, part.mean, part.m2 = clip_stats[r["id"]]
            stats.merge(part)
    report.n_ok = len(rows)
    report.split_counts = {name: sum(r["split"] == name for r in rows) for name in SPLITS}
    if stats.count == 0:
        raise UserError(f"{corpus.root.absolute()}: no usable clip in the training split ({len(report.bad)} bad files, "
                        f"see {report.report_path})")

    report.manifest_path = cache / "manifest.jsonl"
    write_text_atomic(report.manifest_path, "".join(json.dumps(r) + "\n" for r in rows))
    report.stats_path = cache / "stats.pt"
    atomic_write(report.stats_path, lambda f: torch.save(stats.to_dict(), f))
    report.total_seconds = time.perf_counter() - t0
    return report


def _recorded_stats(cache: Path, root: Path) -> dict[str, tuple[tuple[str, str], Any, Any]]:
    """Per clip id in the current manifest: ((audio path, paired path), audio_stat, paired_stat),
    the stats as tuples or None where not recorded. Empty without a readable manifest."""
    try:
        rows = read_manifest(cache)
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    out = {}
    for cid, r in rows.items():
        audio = Path(r["path"]) if Path(r["path"]).is_absolute() else root / r["path"]
        stats = [tuple(r[k]) if isinstance(r.get(k), list) and len(r[k]) == 2 else None
                 for k in ("audio_stat", "paired_stat")]
        out[cid] = ((_resolved(audio), str(r.get("paired", ""))), stats[0], stats[1])
    return out


def _resolved(path: str | Path) -> str:
    return str(Path(path).resolve())


def stale_sources(cfg: CorpusSettings) -> str | None:
    """Why the cached mels no longer match their sources, or None when every source is as recorded.

    One `os.stat` per audio file and paired mel listed in the manifest; nothing is read. A
    manifest without recorded sizes and times (an older version's) counts as stale once.

    Args:
        cfg: config with `audio` and `data` blocks.

    Returns:
        None, or a one-line reason naming how many sources changed or vanished (with an example).
    """
    cache = cache_dir(cfg.data)
    try:
        rows = read_manifest(cache)
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no manifest: the caller's other checks decide
    root = corpus_root(cfg.data)
    changed: list[str] = []
    vanished: list[str] = []
    unknown = 0
    for r in rows.values():
        audio = Path(r["path"]) if Path(r["path"]).is_absolute() else root / r["path"]
        sources = [(audio, r.get("audio_stat"))]
        if "paired" in r:
            sources.append((Path(r["paired"]), r.get("paired_stat")))
        for path, recorded in sources:
            if not isinstance(recorded, list):
                unknown += 1
                continue
            now = source_stat(path)
            if now is None:
                vanished.append(str(path))
            elif now != recorded:
                changed.append(str(path))
    parts = []
    if changed:
        parts.append(f"{len(changed)} changed (e.g. {changed[0]})")
    if vanished:
        parts.append(f"{len(vanished)} gone (e.g. {vanished[0]})")
    if unknown:
        parts.append(f"{unknown} without a recorded size and time (a manifest of an older version)")
    return f"sources of cached mels: {'; '.join(parts)}" if parts else None


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def load_stats(cfg: CorpusSettings, *, compute_if_missing: bool = True, num_workers: int | None = None,
               progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel log-mel mean and std of the training split.

    Read from `<cache_dir>/stats.pt`; when that is missing, stale (other audio settings, another
    `data.mel_dir`, splits missing or edited since, an audio file or paired mel changed or gone
    since its mel was cached: `stale_sources`) or damaged, the corpus is preprocessed first
    (which also refreshes the mel cache). With paired mels these are the paired mels' statistics.

    Args:
        cfg: config with `audio` and `data` blocks.
        compute_if_missing: False raises instead of preprocessing.
        num_workers, progress: passed to `preprocess_corpus`.

    Returns:
        (mean, std), float32 [n_mels] each.
    """
    cache = cache_dir(cfg.data)
    path = cache / "stats.pt"
    features = cache_settings(cfg)
    train_list = split_files(cfg.data)["train"]
    stale = None
    if not path.is_file():
        problem = "not found"
    elif not features_match(cache, features):
        problem = "computed with other audio settings or another data.mel_dir"
    elif read_splits(cfg.data) is None:
        problem = "the splits are not written yet"
    elif train_list.stat().st_mtime_ns > path.stat().st_mtime_ns:
        problem = f"older than {train_list} (the training split changed)"
    else:
        stale = stale_sources(cfg)
        problem = stale or _check_stats(path, features["n_mels"])
    if problem:
        if not compute_if_missing:
            raise UserError(f"{path.absolute()}: {problem}; run waveglow-preprocess data={cfg.data.name}")
        if stale:  # the user changed files under a cache: say so, it is not routine
            log.warning("%s: %s; preprocessing again (changed clips are recomputed, gone ones listed in %s)",
                        cache, stale, cache / "bad_files.tsv")
        else:
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


