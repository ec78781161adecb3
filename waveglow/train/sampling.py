"""The training data plumbing: which examples each rank sees, and with what randomness.

Every example's random crop and dither noise are a function of (seed, epoch, index) only, so
the data of a run does not depend on the number of ranks, the loader workers or where the run
was resumed (`item_seed`, `ResumableDistributedSampler`, `SeededItems`).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from waveglow.config import TrainApp
from waveglow.data import ClipDataset, SegmentDataset, load_stats
from waveglow.errors import UserError
from waveglow.runtime import available_cores, resolve_loader_workers

log = logging.getLogger("waveglow")
T = TypeVar("T")


def _splitmix64(x: int) -> int:
    """One round of the SplitMix64 mixer (a well-spread 64-bit hash of an integer)."""
    mask = 2**64 - 1
    x = (x + 0x9E3779B97F4A7C15) & mask
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & mask
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & mask
    return x ^ (x >> 31)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A seed for one training example that depends only on (seed, epoch, index).

    So the random crop and dither noise of an example do not depend on the rank, the number of
    ranks, the loader workers or where a run was resumed.
    """
    return _splitmix64(_splitmix64(_splitmix64(seed) ^ epoch) ^ index) >> 1


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start mid-epoch and tags each index with its example seed.

    Every rank draws the same permutation of the whole split (seeded by seed + epoch) and takes
    every world_size-th index, so global batch j is the same set of examples for any number
    of ranks with the same global batch. Yields `(index, example_seed)`.

    A split smaller than one global batch is sampled with replacement instead: each epoch is one
    global batch of clips drawn uniformly (seeded by seed + epoch); a clip drawn twice gets two
    example seeds, hence two different random crops.

    Args:
        n_items: examples in the split.
        num_replicas, rank: the process group.
        seed: `train.seed`.
        global_batch: examples per optimizer step over all ranks; a split smaller than this is
            sampled with replacement (0: never).
    """

    def __init__(self, n_items: int, num_replicas: int, rank: int, seed: int, global_batch: int = 0) -> None:
        super().__init__(range(n_items), num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.n_items = n_items
        self.replacement = n_items < global_batch
        if self.replacement:
            self.total_size = global_batch
            self.num_samples = global_batch // num_replicas
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` indices of this rank's share of the current epoch."""
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        if not self.replacement:
            indices = list(super().__iter__())[self.start:]
            for index in indices:
                yield index, item_seed(self.seed, self.epoch, index)
            return
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.randint(self.n_items, (self.total_size,), generator=gen).tolist()
        # Seeded by the draw's place in the epoch (not the clip): repeated clips differ.
        for position in range(self.rank, self.total_size, self.num_replicas)[self.start:]:
            yield draws[position], item_seed(self.seed, self.epoch, self.n_items + position)

    def __len__(self) -> int:
        return self.num_samples - self.start


class SeededItems(Dataset):
    """`base[index]` with its randomness (crop, padding, dither) seeded from the example seed.

    Through the dataset's `generator` attribute when it has one, else by seeding the global
    RNGs around the call. Each example is then a function of (seed, epoch, index) only.
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        if hasattr(self.base, "generator"):
            # The dataset draws from its own generator: give it one per example.
            self.base.generator = torch.Generator().manual_seed(seed)
            return self.base[index]
        py_state, np_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            try:
                return self.base[index]
            finally:
                random.setstate(py_state)
                np.random.set_state(np_state)


def segment_multiple(model: torch.nn.Module) -> int:
    """Audio lengths the model accepts are multiples of this (n_group, or the model's own rule)."""
    return int(getattr(model, "segment_multiple", None) or model.n_group)


def training_segment_length(requested: int, multiple: int) -> int:
    """`data.segment_length` rounded down to a length the model accepts.

    Raises:
        UserError: shorter than one `multiple`.
    """
    length = requested - requested % multiple
    if length <= 0:
        raise UserError(f"data.segment_length={requested}: must be at least {multiple} "
                        f"(a multiple of the model's n_group)")
    if length != requested:
        log.info(f"segment length {requested} rounded down to {length} samples (a multiple of {multiple})")
    return length


def _apportion(total: int, shares: Sequence[float]) -> list[int]:
    """`total` split in proportion to `shares` (largest remainder: the counts sum to `total`,
    each within 1 of its exact share)."""
    exact = [total * s / sum(shares) for s in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _spread(items: Sequence[T], count: int) -> list[T]:
    """`count` picks cycling through `items` in order (each within 1 of count/len(items))."""
    return [items[i % len(items)] for i in range(count)]


def weighted_mix(clips: Sequence[T], weights: dict[str, float], *, by_speaker: bool) -> list[T]:
    """One epoch of a mix's training clips: corpus c fills weight_c / sum(weights) of it.

    So a clip's sampling weight is weight_c / (its corpus's training clips): the weight is the
    share of the training examples (and so, on average, of every batch) each corpus gets,
    whatever its size. The epoch is the shortest in which every clip appears at least once;
    with `by_speaker` every speaker of a corpus fills an equal part of the corpus's share
    (a single-speaker corpus is one speaker).

    Args:
        clips: the training clips (objects with the mix's `id`, `<corpus>/<clip id>`).
        weights: corpus name -> weight (> 0).
        by_speaker: `data.balance=speaker`.

    Returns:
        The clips, repeated in those proportions (each count within 1 of its exact share),
        grouped by corpus; a uniform draw from it follows the weights.
    """
    from waveglow.data.mix import corpus_of
    from waveglow.data.splits import speaker_of

    groups: dict[str, dict[str, list[T]]] = {}
    for c in clips:
        name = corpus_of(c.id)  # type: ignore[attr-defined]
        spk = speaker_of("mix", c.id) if by_speaker else None  # type: ignore[attr-defined]
        groups.setdefault(name, {}).setdefault(spk or name, []).append(c)
    names = sorted(groups)
    shares = [float(weights[n]) for n in names]
    # Clips a corpus needs to show each one once: all of them, or (balanced) every speaker as
    # many as its largest speaker has.
    need = [len(groups[n]) * max(len(v) for v in groups[n].values()) if by_speaker else
            sum(len(v) for v in groups[n].values()) for n in names]
    total = max(math.ceil(k * sum(shares) / w - 1e-9) for k, w in zip(need, shares, strict=True))
    out: list[T] = []
    for name, count in zip(names, _apportion(total, shares), strict=True):
        speakers = [groups[name][k] for k in sorted(groups[name])]
        if by_speaker:
            for group, n in zip(speakers, _apportion(count, [1.0] * len(speakers)), strict=True):
                out += _spread(group, n)
        else:
            out += _spread([c for g in speakers for c in g], count)
    return out


def load_datasets(cfg: TrainApp, segment_length: int, multiple: int, *, progress: bool
                  ) -> tuple[dict[str, torch.Tensor], Dataset, Dataset]:
    """Mel statistics, the training segments and the fixed validation set.

    Args:
        cfg: the run's settings (data, audio, train.val_*).
        segment_length: audio samples per training example (a multiple of `multiple`).
        multiple: the model's length multiple (validation clips are cut to it).
        progress: show a progress bar if the feature cache has to be built.

    Returns:
        ({"mean": [n_mels], "std": [n_mels]}, train set, val set).
    """
    t = cfg.train
    mean, std = load_stats(cfg, progress=progress)
    clips = None
    if cfg.data.layout == "mix":  # the corpora's weights (and speakers, with balance=speaker)
        from waveglow.data.datasets import split_clips
        from waveglow.data.mix import mix_parts

        found = split_clips(cfg, "train")
        weights = {p.name: p.weight for p in mix_parts(cfg.data)}
        by_speaker = getattr(cfg.data, "balance", "none") == "speaker"
        clips = weighted_mix(found, weights, by_speaker=by_speaker)
        total = sum(weights.values())
        log.info("data=mix: %d train clips -> %d per epoch (%s)%s", len(found), len(clips),
                 ", ".join(f"{n} {100 * w / total:.0f}%" for n, w in weights.items()),
                 ", equal per speaker within each corpus" if by_speaker else "")
    elif getattr(cfg.data, "balance", "none") == "speaker":  # every speaker drawn equally often
        from waveglow.data.datasets import split_clips
        from waveglow.data.splits import balance_by_speaker

        found = split_clips(cfg, "train")
        clips = balance_by_speaker(found, str(cfg.data.layout))
        log.info(f"data.balance=speaker: {len(found)} train clips -> {len(clips)} per epoch, equal per speaker")
    train_set = SegmentDataset(cfg, "train", segment_length=segment_length, clips=clips)
    val_seg = t.val_segment_length
    if val_seg:
        val_seg = int(val_seg) - int(val_seg) % multiple
    limit = t.val_max_clips
    val_set = ClipDataset(cfg, "val", segment_length=val_seg or None, multiple_of=multiple,
                          max_clips=int(limit) if limit else None, seed=int(t.seed))
    return {"mean": mean, "std": std}, train_set, val_set


def loader_workers(setting: int | str, *, deterministic: bool, processes: int, report: bool) -> int:
    """DataLoader workers per training process for `data.loader_workers`.

    Args:
        setting: `auto` (from the cores per process on this machine) or a number.
        deterministic: `train.deterministic` (data then loads in the main process).
        processes: training processes on this machine (torchrun's LOCAL_WORLD_SIZE).
        report: log the value used (rank 0).
    """
    workers = resolve_loader_workers(setting, processes=processes)
    note = f"data.loader_workers={setting}"
    if deterministic and workers:
        note += ", but train.deterministic loads data in the main process"
        workers = 0
    if report:
        log.info(f"data loading: {workers} DataLoader worker(s) per process ({note}; "
                 f"{available_cores()} core(s) for {processes} process(es) on this machine)")
    return workers


def train_loader(train_set: Dataset, sampler: ResumableDistributedSampler, batch_size: int, *,
                 workers: int, seed: int, pin_memory: bool) -> DataLoader:
    """The DataLoader of the training segments: batches of {"audio": [B, L], "mel": [B, n_mels, F]}."""
    # The loader's own seed draw uses this generator, not the global RNG (a resume creates
    # its iterator at another point than the uninterrupted run).
    return DataLoader(SeededItems(train_set), batch_size=batch_size, sampler=sampler, drop_last=True,
                      num_workers=workers, pin_memory=pin_memory,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)
