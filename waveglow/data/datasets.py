"""The datasets training and validation read, and the clips of a split.

Both datasets use the feature cache of `waveglow.data.preprocess` when it is valid and compute
mels on the fly when it is not; either way a segment's mel equals the slice of its clip's mel.
With paired mels (`data.mel_dir`, e.g. Tacotron 2 GTA outputs) the clip's mel is its paired
mel (the cache's fitted copy, or the paired file fitted on the fly), never one computed from
the audio.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from waveglow.data.audio import (
    INT16_SCALE,
    dither,
    load_audio,
    read_audio,
    resampled_length,
    warn_once_per_rate,
)
from waveglow.data.corpus import cache_dir, corpus_root, discover_corpus
from waveglow.data.paired import find_paired_mel, load_paired_mel, missing_reason, paired_mel_dir
from waveglow.data.preprocess import CorpusSettings, cache_settings, features_match, read_manifest
from waveglow.data.splits import SPLITS, ensure_splits
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram, check_mel, load_mel

log = logging.getLogger("waveglow.data")

# Padding for clips shorter than a segment: Gaussian noise of about one int16 LSB, i.e. the
# noise floor of a quiet recording. Zeros would give the flow a perfectly predictable region
# (unbounded likelihood) and clamped log-mels, which destabilizes training.
PAD_NOISE_STD = 1.0 / INT16_SCALE
# ----------------------------------------------------------------------------- datasets

@dataclass(frozen=True)
class ClipInfo:
    """A usable clip as the datasets see it."""

    id: str
    path: Path
    n_samples: int           # at the configured sampling rate
    file_rate: int           # the file's own rate
    mel_path: Path | None    # cached mel (or, without a valid cache, the paired mel); None: compute it


def split_clips(cfg: CorpusSettings, split: str) -> list[ClipInfo]:
    """The usable clips of one split, from the manifest when the cache is valid, else from the files.

    Args:
        cfg: config with `audio` and `data` blocks.
        split: "train", "val" or "test".
    """
    if split not in SPLITS:
        raise UserError(f"split={split}: expected one of {', '.join(SPLITS)}")
    data_cfg = cfg.data
    ids = ensure_splits(data_cfg)[split]
    root, cache = corpus_root(data_cfg), cache_dir(data_cfg)
    features = cache_settings(cfg)
    pairs = paired_mel_dir(data_cfg)
    sr = features["sampling_rate"]
    manifest = cache / "manifest.jsonl"
    if manifest.is_file() and features_match(cache, features):
        rows = read_manifest(cache)
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
        log.warning("%s was computed with other audio settings or mel source; %s on the fly "
                    "(run waveglow-preprocess to refresh it)", cache,
                    "reading paired mels" if pairs else "computing mels")
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
        paired = find_paired_mel(pairs, cid) if pairs is not None else None
        if pairs is not None and paired is None:
            log.warning("%s: %s; skipped", clip.path, missing_reason(pairs, cid))
            continue
        if n > 0:
            out.append(ClipInfo(cid, clip.path, n, int(info.samplerate), paired))
    return out


class _ClipReader:
    """Audio and mel access shared by the datasets (cache when valid, on-the-fly otherwise)."""

    def __init__(self, cfg: CorpusSettings, split: str, segment_length: int | None,
                 clips: Sequence[ClipInfo] | None) -> None:
        self.mel_fn = MelSpectrogram.from_config(cfg.audio)
        self.paired = paired_mel_dir(cfg.data) is not None  # the clip's mel is its paired mel
        self.sr = self.mel_fn.sampling_rate
        self.hop = self.mel_fn.hop_length
        self.n_mels = self.mel_fn.n_mels
        self.policy = policy = str(cfg.data.short_clip_policy)
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
            raise UserError(f"{corpus_root(cfg.data).absolute()}: no usable clips in the {split} split "
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
        """The clip's cached mel [n_mels, 1 + n // hop], or None (no cache, or it does not fit).

        With paired mels: the paired mel fitted to the clip, never None.

        Raises:
            UserError: paired mels only: missing, unreadable or beyond the frame tolerance.
        """
        if self.paired:
            if clip.mel_path is None:
                raise UserError(f"{clip.path}: no paired mel for clip {clip.id!r} (data.mel_dir)")
            return load_paired_mel(clip.mel_path, self.n_mels, self.mel_fn.n_frames(clip.n_samples))[0]
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
            mel = self.mel_of(clean)
            own = self.cached_mel(clip) if self.paired else None
            if own is not None:  # the frames centred inside the clip are its paired frames; the rest pad
                mel = torch.cat([own[:, :mel.shape[1]], mel[:, own.shape[1]:]], dim=1)
            return clean, mel
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

    def __init__(self, cfg: CorpusSettings, split: str = "train", *, segment_length: int | None = None,
                 dither: float | None = None, generator: torch.Generator | None = None,
                 clips: Sequence[ClipInfo] | None = None) -> None:
        length = int(segment_length if segment_length is not None else cfg.data.segment_length)
        self.reader = _ClipReader(cfg, split, length, clips)
        self.segment_length = length
        self.dither = float(dither if dither is not None else cfg.data.dither)
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

    def __init__(self, cfg: CorpusSettings, split: str = "val", *, segment_length: int | None = None,
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
