"""The evaluation run: clips -> mel -> every system (checkpoints, Griffin-Lim, ground truth,
noise) -> metrics per clip and system, measured in parallel across clips.

Each checkpoint vocodes the ground truth's own mel (copy synthesis) through `Synthesizer.from_mel`
with the clip's name as the noise key, so a clip's output equals what `waveglow-synthesize`
writes for the same mel, seed and sigma. The model-side figures (the exact log-likelihood of the
ground truth, the real-time factor) are measured in this process, where the model lives; the
pairwise metrics run in a process pool sized to the cores (`metrics.measure_clip`).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from waveglow.config import AudioConfig, from_dict, to_dict
from waveglow.data.audio import save_audio
from waveglow.data.inputs import InputFile
from waveglow.errors import UserError
from waveglow.eval.metrics import (
    METRICS,
    PAIRWISE,
    PESQ_MIN_SECONDS,
    ClipResult,
    ClipTask,
    available,
    measure_clip,
)
from waveglow.eval.sources import CheckpointEntry, input_clips, load_clip, resolve_checkpoints
from waveglow.inference.synthesizer import Synthesizer

log = logging.getLogger("waveglow.eval")

GROUND_TRUTH, GRIFFIN_LIM, NOISE = "ground_truth", "griffin_lim", "noise"
BASELINES = (GROUND_TRUTH, GRIFFIN_LIM, NOISE)


class EvalRecords(list):
    """The per-clip records of an evaluation (a list of dicts, one per clip × system).

    Each record: clip, system, kind ("model" | "baseline"), step (training step of a
    checkpoint, else None), checkpoint (path or None), seconds (clip length), one value per
    metric (None when undefined or not computed) and notes (why a value is missing).

    Attributes:
        systems: the system labels in table order (checkpoints, then baselines).
        metrics: the metric names computed.
        skipped: (clip or checkpoint, reason) for everything left out.
        metric_seconds: metric -> mean wall seconds per clip (all systems of the clip together).
        metric_cpu_seconds: the same in CPU seconds of the process that measured it.
        wall_seconds: the whole evaluation.
        steps: system label -> training step (checkpoints only).
        run_dirs: system label -> run directory (checkpoints found in one).
        sampling_rate: Hz of every system.
        audio: the feature settings (dict) of the checkpoints.
        wavs: (clip, system) -> WAV written (when an output folder was given).
    """

    def __init__(self) -> None:
        super().__init__()
        self.systems: list[str] = []
        self.metrics: list[str] = []
        self.skipped: list[tuple[str, str]] = []
        self.metric_seconds: dict[str, float] = {}
        self.metric_cpu_seconds: dict[str, float] = {}
        self.wall_seconds: float = 0.0
        self.steps: dict[str, int] = {}
        self.run_dirs: dict[str, Path] = {}
        self.sampling_rate: int = 0
        self.audio: dict[str, Any] = {}
        self.wavs: dict[tuple[str, str], Path] = {}


@dataclass
class _System:
    label: str
    synth: Synthesizer | None = None
    entry: CheckpointEntry | None = None
    step: int | None = None
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    rtf: dict[str, float] = field(default_factory=dict)
    ll: dict[str, float] = field(default_factory=dict)


def _load_system(item: Synthesizer | CheckpointEntry, device: str, precision: str, chunk_frames: int
                 ) -> _System:
    if isinstance(item, Synthesizer):
        label = item.checkpoint.stem if item.checkpoint is not None else "model"
        return _System(label, item, step=None)
    import torch as _torch

    synth = Synthesizer(item.path, device=device, precision=precision, chunk_frames=chunk_frames)
    # The step is stored in the checkpoint beside the weights (read back without the tensors).
    state = _torch.load(item.path, map_location="cpu", weights_only=True, mmap=True)
    return _System(item.label, synth, item, int(state.get("step", 0)))


def _same_audio(a: Synthesizer, b: Synthesizer) -> str | None:
    ka, kb = to_dict(a.audio), to_dict(b.audio)
    diff = [k for k in sorted(set(ka) | set(kb)) if ka.get(k) != kb.get(k)]
    return ", ".join(f"{k}: {ka.get(k)} vs {kb.get(k)}" for k in diff) or None


def _workers(requested: int | None, tasks: int) -> int:
    # None: as many processes as this process has threads (the CLI's `threads=`, by default the
    # cores free at start), so a busy core is not oversubscribed.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    n = min(cores, torch.get_num_threads()) if requested is None else int(requested)
    return max(0, min(n, tasks))


def evaluate(synth_or_checkpoint: Synthesizer | str | os.PathLike | Sequence[Any],
             clips: str | os.PathLike | Sequence[Any], *, metrics: Sequence[str] | None = None,
             baselines: Sequence[str] = (GROUND_TRUTH, GRIFFIN_LIM), sigma: float = 0.6, seed: int = 0,
             max_files: int | None = None, output_dir: str | os.PathLike | None = None,
             workers: int | None = None, device: str = "auto", precision: str = "fp32",
             chunk_frames: int = 1024, griffin_lim_iters: int = 32, progress: bool = True) -> EvalRecords:
    """Evaluate one or more vocoders on clips by copy synthesis, next to baselines.

    Args:
        synth_or_checkpoint: a `Synthesizer`, a checkpoint path, a run directory (every
            step_<N>.pt then best.pt) or a list of these.
        clips: WAV/FLAC inputs as `input=` takes them (file, folder, glob, filelist, list of
            paths), or `InputFile`s (path, name) such as `sources.corpus_clips` returns.
        metrics: metric names (default: all of `metrics.METRICS`); one whose package is missing
            is skipped with one warning naming the extra.
        baselines: any of "ground_truth" (the clip against itself: the metrics' ceilings),
            "griffin_lim" (32 iterations from the same mel, the training report's reference) and
            "noise" (white noise at the clip's RMS level: the floor).
        sigma, seed: latent std and noise seed, as `waveglow-synthesize` (key: the clip's name).
        max_files: evaluate the first N clips (None: all).
        output_dir: write each system's WAV to `<output_dir>/wavs/<system>/<clip>.wav`.
        workers: metric processes (None: one per torch thread of this process, at most one per core; 0: in this process).
        device, precision, chunk_frames: where and how the checkpoints synthesize.
        griffin_lim_iters: iterations of the Griffin-Lim baseline.
        progress: progress bars (on a terminal).

    Returns:
        `EvalRecords`: one dict per clip × system.

    Raises:
        UserError: no checkpoint could be loaded, checkpoints of different audio settings, an
            unknown metric or baseline, or no clip left to evaluate.
    """
    t_start = time.perf_counter()
    names = list(METRICS) if metrics is None else list(metrics)
    for n in names:
        if n not in METRICS:
            raise UserError(f"metrics: unknown metric {n!r} (available: {', '.join(METRICS)})")
    for b in baselines:
        if b not in BASELINES:
            raise UserError(f"baselines: unknown baseline {b!r} (available: {', '.join(BASELINES)})")
    names, _ = available(names)
    result = EvalRecords()
    result.metrics = names

    # --- systems ---------------------------------------------------------------------------
    items: list[Any]
    if isinstance(synth_or_checkpoint, Synthesizer):
        items = [synth_or_checkpoint]
    elif isinstance(synth_or_checkpoint, (str, os.PathLike)):
        items = list(resolve_checkpoints(synth_or_checkpoint))
    else:
        items = []
        for x in synth_or_checkpoint:
            items += [x] if isinstance(x, Synthesizer) else resolve_checkpoints(x)
    systems: list[_System] = []
    for item in items:
        try:
            systems.append(_load_system(item, device, precision, chunk_frames))
        except UserError as e:
            if len(items) == 1:
                raise
            log.warning("skipping checkpoint %s", e)
            result.skipped.append((str(item.path), str(e)))
    if not systems:
        raise UserError("no checkpoint could be loaded (" + "; ".join(r for _, r in result.skipped) + ")")
    first = systems[0].synth
    for s in systems[1:]:
        diff = _same_audio(first, s.synth)
        if diff:
            raise UserError(f"checkpoint={s.entry.path if s.entry else s.label}: other audio settings than "
                            f"{systems[0].label} ({diff}); evaluate checkpoints of one feature setup together")
    sr, hop = first.sampling_rate, first.hop_length
    result.sampling_rate = sr
    result.audio = to_dict(first.audio)
    mel_fn = first.frontend()

    # --- clips -------------------------------------------------------------------------------
    if isinstance(clips, (str, os.PathLike)) or (clips and not isinstance(next(iter(clips)), InputFile)):
        inputs = input_clips(clips)
    else:
        inputs = list(clips)
    if max_files is not None:
        inputs = inputs[: int(max_files)]
    min_seconds = PESQ_MIN_SECONDS if "pesq" in names else hop / sr
    references: dict[str, np.ndarray] = {}
    for inp in inputs:
        name = inp.name.as_posix()
        try:
            references[name] = load_clip(Path(inp.path), sr, min_seconds)
        except UserError as e:
            log.warning("skipping %s", e)
            result.skipped.append((name, str(e)))
    if not references:
        raise UserError("nothing could be evaluated: " + ("; ".join(r for _, r in result.skipped)
                                                         or "no clips"))
    mels = {}
    with torch.inference_mode():
        for name, audio in references.items():
            mels[name] = mel_fn(torch.from_numpy(audio))

    # --- synthesis (this process) ------------------------------------------------------------
    bar = _bar(progress, len(systems) * len(references), "synthesize", "clip")
    model_cpu: dict[str, float] = {}  # CPU seconds of this process (all its threads) per task
    for s in systems:
        _synthesize(s, references, mels, sigma, seed, "log_likelihood" in names, bar, model_cpu)
    bar.close()
    baseline_systems = []
    if GRIFFIN_LIM in baselines:
        gl = _System(GRIFFIN_LIM)
        audio_cfg = from_dict(AudioConfig, result.audio, "audio", strict=False)
        from waveglow.train.quality import griffin_lim

        for name, mel in mels.items():
            t0, c0 = time.perf_counter(), time.process_time()
            gl.outputs[name] = griffin_lim(mel, audio_cfg, references[name].size, griffin_lim_iters).numpy()
            gl.rtf[name] = references[name].size / sr / max(time.perf_counter() - t0, 1e-9)
            model_cpu[GRIFFIN_LIM] = model_cpu.get(GRIFFIN_LIM, 0.0) + time.process_time() - c0
        baseline_systems.append(gl)
    if NOISE in baselines:
        nz = _System(NOISE)
        for name, ref in references.items():
            from waveglow.inference.noise import noise_seed

            rng = np.random.default_rng(noise_seed(seed, f"noise/{name}"))
            rms = float(np.sqrt(np.mean(ref.astype(np.float64) ** 2)))
            nz.outputs[name] = (rng.standard_normal(ref.size) * rms).astype(np.float32)
        baseline_systems.append(nz)
    if GROUND_TRUTH in baselines:
        baseline_systems.append(_System(GROUND_TRUTH, outputs=dict(references)))
    every = systems + baseline_systems
    result.systems = [s.label for s in every]
    result.steps = {s.label: s.step for s in systems if s.step is not None}
    result.run_dirs = {s.label: s.entry.run_dir for s in systems if s.entry and s.entry.run_dir}

    if output_dir is not None:
        out = Path(output_dir)
        for s in every:
            for name, audio in s.outputs.items():
                path = out / "wavs" / _safe(s.label) / f"{name}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_audio(path, np.clip(audio, -1.0, 1.0), sr)
                result.wavs[(name, s.label)] = path

    # --- metrics (process pool) ----------------------------------------------------------------
    pairwise = tuple(n for n in names if n in PAIRWISE)
    tasks = [ClipTask(name, ref, {s.label: s.outputs[name] for s in every}, sr, result.audio, pairwise)
             for name, ref in references.items()]
    answers = _measure(tasks, workers, progress)
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for name in references:
        ans = answers[name]
        for k, v in ans.seconds.items():
            seconds[k] = seconds.get(k, 0.0) + v
        for k, v in ans.cpu_seconds.items():
            cpu[k] = cpu.get(k, 0.0) + v
        for s in every:
            rec: dict[str, Any] = {
                "clip": name, "system": s.label, "kind": "model" if s.synth is not None else "baseline",
                "step": s.step, "checkpoint": str(s.entry.path) if s.entry else None,
                "seconds": references[name].size / sr,
            }
            for m in names:
                if m == "log_likelihood":
                    rec[m] = s.ll.get(name)
                elif m == "rtf":
                    rec[m] = s.rtf.get(name)
                else:
                    rec[m] = ans.values[s.label].get(m)
            rec["notes"] = "; ".join(ans.notes.get(s.label, []))
            result.append(rec)
    n = max(len(references), 1)
    result.metric_seconds = {k: v / n for k, v in seconds.items()}
    result.metric_cpu_seconds = {k: v / n for k, v in cpu.items()} | {
        k: v / n for k, v in model_cpu.items()}
    for s in systems:
        if s.rtf:
            result.metric_seconds.setdefault("synthesis", 0.0)
            result.metric_seconds["synthesis"] += sum(references[c].size / sr / r for c, r in s.rtf.items()) / n
    result.wall_seconds = time.perf_counter() - t_start
    return result


def _safe(label: str) -> str:
    return label.replace("/", "__")


def _bar(progress: bool, total: int, desc: str, unit: str) -> tqdm:
    from waveglow.inference.jobs import show_progress

    return tqdm(total=total, desc=desc, unit=unit, disable=not show_progress(progress), leave=False, file=sys.stderr)


def _synthesize(s: _System, references: dict[str, np.ndarray], mels: dict[str, torch.Tensor], sigma: float,
                seed: int, likelihood: bool, bar: tqdm, cpu: dict[str, float]) -> None:
    """Copy synthesis of every clip with one checkpoint, timed, and the ground truth's likelihood."""
    synth = s.synth
    sr = synth.sampling_rate
    # One short untimed synthesis first: lazy initialization is not the model's speed.
    synth.from_mel(next(iter(mels.values()))[:, :8], sigma=sigma, seed=seed, key="warmup")
    scorer = None
    if likelihood:
        from waveglow.inference.score import Scorer

        scorer = Scorer(synth)
    for name, mel in mels.items():
        t0, c0 = time.perf_counter(), time.process_time()
        audio = synth.from_mel(mel, sigma=sigma, seed=seed, key=name)
        wall = time.perf_counter() - t0
        cpu["synthesis"] = cpu.get("synthesis", 0.0) + time.process_time() - c0
        n = references[name].size
        s.outputs[name] = audio[:n].numpy()
        s.rtf[name] = n / sr / max(wall, 1e-9)
        if scorer is not None:
            # The exact log-density of the ground truth given its own mel (no dither), nats/sample.
            c0 = time.process_time()
            ll = scorer.per_sample(torch.from_numpy(references[name]), mel)
            s.ll[name] = float(ll.double().mean())
            cpu["log_likelihood"] = cpu.get("log_likelihood", 0.0) + time.process_time() - c0
        bar.update(1)


def _measure(tasks: list[ClipTask], workers: int | None, progress: bool) -> dict[str, ClipResult]:
    """Run `measure_clip` over the clips: in a process pool (one per core) or in this process."""
    n = _workers(workers, len(tasks))
    bar = _bar(progress, len(tasks), "metrics", "clip")
    out: dict[str, ClipResult] = {}
    if n <= 1:
        for t in tasks:
            out[t.clip] = measure_clip(t)
            bar.update(1)
    else:
        # fork: the workers start at once with the modules already imported (librosa's compiled
        # kernels included); they use torch on one thread each.
        ctx = multiprocessing.get_context("fork") if sys.platform == "linux" else None
        with cf.ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
            futures = {pool.submit(measure_clip, t): t.clip for t in tasks}
            for fut in cf.as_completed(futures):
                res = fut.result()
                out[res.clip] = res
                bar.update(1)
    bar.close()
    return out


