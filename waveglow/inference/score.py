"""Exact log-likelihood of audio given its own mel, per file and per mel frame, and the frames
that the model finds improbable (clicks, clipping, noise bursts, edits).

The flow's log-density decomposes over time. With z = f(x) in the audio layout and the parts
walked forward:

    log p(x | mel) = Σ_t log N(z_t; 0, σ²)                      one term per audio sample
                   + Σ_k Σ_g Σ_c log s_k[c, g]                   per coupling k, per group g
                   + Σ_k N·log|det W_k|                          per 1×1 conv: the same for every group

Group g holds samples [g·n_group, (g+1)·n_group); its coupling and 1×1 terms are spread evenly
over those samples, which gives a per-sample log-likelihood ℓ_t whose sum is exactly
`WaveGlow.log_prob`. A mel frame f is centred on sample f·hop (the frontend pads n_fft/2), so
its value is the mean of ℓ_t over [f·hop − hop/2, f·hop + hop/2): nats per sample, the same unit
as the training curves.

Suspect frames are those whose value lies far below the file's own typical value: robust
z-score (v_f − median) / (1.4826·MAD) < −threshold, so a file's overall level (speaker, noise
floor, model quality) does not matter, only departures from it. Neighbouring suspect frames
(within `merge_gap` frames) merge into regions reported in seconds.

Long files are scored in overlapping pieces like synthesis: each term above at group g reads
the input only within the receptive field, so pieces with that much context on each side give
the same per-sample values as the whole file (to float rounding).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from waveglow.config import ScoreApp
from waveglow.data.audio import AUDIO_SUFFIXES, load_audio
from waveglow.data.audio import dither as add_dither
from waveglow.data.inputs import resolve_inputs
from waveglow.errors import UserError, naming
from waveglow.fileio import write_text_atomic
from waveglow.flows import Coupling, Invertible1x1Conv, Squeeze, state_dtype
from waveglow.inference.checks import check_settings
from waveglow.inference.chunks import plan_pieces
from waveglow.inference.jobs import show_progress
from waveglow.inference.noise import noise_seed
from waveglow.inference.synthesizer import Synthesizer
from waveglow.mel import MEL_SUFFIXES, load_mel
from waveglow.runtime import autocast, exact_fp32

log = logging.getLogger("waveglow.score")

MAD_TO_STD = 1.4826  # MAD of a Gaussian times this is its standard deviation


@dataclass
class Region:
    """A run of suspect frames, in seconds (frame f spans f·hop ± hop/2)."""

    start_s: float
    end_s: float
    first_frame: int
    last_frame: int
    min_z: float
    nats_per_sample: float  # mean over the region's frames


@dataclass
class FileScore:
    """Scores of one file."""

    file: str
    samples: int
    seconds: float
    nats_per_sample: float
    frame_nats: list[float] = field(default_factory=list)  # per mel frame, nats per sample
    frame_z: list[float] = field(default_factory=list)  # robust z-scores
    regions: list[Region] = field(default_factory=list)
    median: float = 0.0
    mad: float = 0.0


def per_sample_log_likelihood(model: torch.nn.Module, audio: Tensor, mel: Tensor) -> Tensor:
    """ℓ_t: the log-likelihood decomposed over samples (sums to `model.log_prob`).

    Args:
        model: a WaveGlow (eval mode).
        audio: [B, T] float, T a multiple of n_group.
        mel: [B, n_mels, F] raw log-mel, F >= ceil(T / hop).

    Returns:
        [B, T] float32 (float64 for a float64 model), nats.
    """
    B, T = audio.shape
    G = model.n_group
    if T % G or mel.shape[-1] * model.hop_length < T:
        raise UserError(f"score: {T} samples need a multiple of n_group={G} and at least "
                        f"{-(-T // model.hop_length)} mel frames, got {mel.shape[-1]}")
    # The parts are walked here, not through model.forward: keep TF32 out of every kernel.
    with exact_fp32(audio.device):
        return _per_sample(model, audio, mel)


def _per_sample(model: torch.nn.Module, audio: Tensor, mel: Tensor) -> Tensor:
    B, T = audio.shape
    G = model.n_group
    cond = model.condition(mel, T)
    x = audio.to(state_dtype(model.mel_std.dtype))
    group_terms = x.new_zeros(B, T // G)  # Σ over parts of the per-group log-det terms
    captured: dict[str, Tensor] = {}

    def grab(_module: Any, _inputs: Any, output: Tensor) -> None:
        captured["wn"] = output

    for part in model.flows.values():
        hook = part.wn.register_forward_hook(grab) if isinstance(part, Coupling) else None
        try:
            x, logdet = part(x, cond)
        finally:
            if hook is not None:
                hook.remove()
        if isinstance(part, Coupling):
            if part.affine:
                # The conditioner's second half is log s [B, half, N] (see flows.Coupling).
                log_s = captured.pop("wn")[:, part.half:].to(group_terms.dtype)
                group_terms = group_terms + log_s.sum(dim=1)
        elif isinstance(part, Invertible1x1Conv):
            group_terms = group_terms + part.log_abs_det().to(group_terms.dtype)
        elif isinstance(part, Squeeze):
            pass  # permutations (Squeeze and Unsqueeze): log-det 0
        elif bool((logdet != 0).any()):
            # A part this decomposition does not know: spread its log-det evenly over time.
            group_terms = group_terms + (logdet / (T // G))[:, None]
    z = x.to(group_terms.dtype)
    var = model.sigma**2
    gauss = -0.5 * z.pow(2) / var - 0.5 * math.log(2 * math.pi * var)
    return gauss + group_terms.repeat_interleave(G, dim=1) / G


def frame_means(values: Tensor, hop: int, n_frames: int) -> Tensor:
    """Mean of per-sample values [T] over each frame's span [f·hop − hop/2, f·hop + hop/2).

    Returns [n'] for the frames (of n_frames) that contain at least one sample.
    """
    T = values.shape[-1]
    f = torch.arange(n_frames)
    lo = (f * hop - hop // 2).clamp(0, T)
    hi = (f * hop + hop - hop // 2).clamp(0, T)
    keep = lo < hi
    lo, hi = lo[keep], hi[keep]
    c = torch.cat([values.new_zeros(1, dtype=torch.float64), values.double().cumsum(0)])
    return ((c[hi] - c[lo]) / (hi - lo)).to(values.dtype)


def robust_z(values: Tensor, floor: float = 1e-3) -> tuple[Tensor, float, float]:
    """(v − median) / (1.4826·MAD) with MAD floored at `floor` nats; returns (z, median, mad)."""
    med = float(values.median())
    mad = float((values - med).abs().median())
    return (values - med) / (MAD_TO_STD * max(mad, floor)), med, mad


def suspect_regions(frame_nats: Tensor, z: Tensor, threshold: float, merge_gap: int, hop: int,
                    sampling_rate: int) -> list[Region]:
    """Merge frames with z < −threshold (gaps of up to merge_gap frames bridged) into regions."""
    idx = (z < -threshold).nonzero().flatten().tolist()
    runs: list[list[int]] = []
    for f in idx:
        if runs and f - runs[-1][-1] <= merge_gap + 1:
            runs[-1].append(f)
        else:
            runs.append([f])
    regions = []
    for run in runs:
        a, b = run[0], run[-1]
        regions.append(Region(
            start_s=max(0.0, (a * hop - hop / 2) / sampling_rate),
            end_s=(b * hop + hop / 2) / sampling_rate,
            first_frame=a, last_frame=b,
            min_z=float(z[a: b + 1].min()),
            nats_per_sample=float(frame_nats[a: b + 1].mean()),
        ))
    return regions


class Scorer:
    """Log-likelihood scoring with a checkpoint (shares loading and devices with synthesis).

    Args:
        synth: a `Synthesizer` (its model, device, precision and chunking settings are used).
        threshold: robust z-score below which a frame is suspect (as a positive number).
        merge_gap: suspect frames this many frames apart or closer form one region.
        dither: uniform noise in int16 LSBs added before scoring (0: score the file as is).
    """

    def __init__(self, synth: Synthesizer, threshold: float = 8.0, merge_gap: int = 2,
                 dither: float = 0.0) -> None:
        check_settings(ScoreApp, threshold=float(threshold), merge_gap=merge_gap, dither=float(dither))
        self.synth = synth
        self.threshold = float(threshold)
        self.merge_gap = int(merge_gap)
        self.dither = float(dither)
        self.mel_fn = synth.frontend()

    def per_sample(self, audio: Tensor, mel: Tensor) -> Tensor:
        """ℓ_t [T'] for audio [T] and its mel [n_mels, F] (T' = T rounded down to n_group).

        Files longer than the synthesizer's chunk_frames are scored in pieces with
        receptive-field context (exact; see the module docstring).
        """
        s, model = self.synth, self.synth.model
        hop, G = s.hop_length, model.n_group
        T = audio.shape[-1] - audio.shape[-1] % G
        if T == 0:
            raise UserError(f"audio of {audio.shape[-1]} samples is shorter than one group of {G}")
        n_frames = -(-T // hop)
        chunkable = hop % G == 0
        pieces = plan_pieces(0, n_frames, s.chunk_frames if chunkable else n_frames, s.overlap, 0)
        out = torch.empty(T)
        with torch.inference_mode(), autocast(s.device, s.amp_dtype):
            for p in pieces:
                a0, a1 = p.start * hop, min(p.end * hop, T)
                x = audio[a0:a1].float()[None].to(s.device)
                m = mel[:, p.start: p.end].float()[None].to(s.device)
                ll = per_sample_log_likelihood(model, x, m)[0].float().cpu()
                k0, k1 = p.keep_start * hop, min(p.keep_end * hop, T)
                out[k0:k1] = ll[k0 - a0: k1 - a0]
        return out

    def score_audio(self, audio: Tensor, name: str = "audio", key: str | None = None, mel: Tensor | None = None,
                    input_convention: str = "natural") -> FileScore:
        """Score one waveform [T] at the checkpoint's sampling rate.

        Args:
            audio: [T].
            name: named in messages and in the result.
            key: the dither noise key (default: name).
            mel: the conditioning [n_mels, >= ceil(T/hop)] to score against (e.g. a TTS's mel
                for this audio); default: the checkpoint's frontend applied to `audio`.
            input_convention: the log of `mel` ("natural", "log10", "db"); checked against the
                model's statistics like a synthesis input (one warning line on a likely mistake).
        """
        audio = torch.as_tensor(audio).float().flatten()
        if self.dither > 0:
            gen = torch.Generator().manual_seed(noise_seed(0, key or name))
            audio = add_dither(audio, self.dither, generator=gen)
        if mel is None:
            with torch.inference_mode():
                mel = self.mel_fn(audio)
        else:
            checker = self.synth.convention_check(input_convention)
            mel = checker.prepare(torch.as_tensor(mel), name)
            checker.warn(log)
            need = -(-(audio.numel() - audio.numel() % self.synth.model.n_group) // self.synth.hop_length)
            if mel.shape[-1] < need:
                raise UserError(f"{name}: the mel has {mel.shape[-1]} frames; expected at least {need} for "
                                f"{audio.numel()} samples at hop {self.synth.hop_length}")
        ll = self.per_sample(audio, mel)
        s = self.synth
        frames = frame_means(ll, s.hop_length, mel.shape[-1])
        z, med, mad = robust_z(frames)
        regions = suspect_regions(frames, z, self.threshold, self.merge_gap, s.hop_length, s.sampling_rate)
        return FileScore(
            file=name, samples=int(ll.numel()), seconds=ll.numel() / s.sampling_rate,
            nats_per_sample=float(ll.double().mean()), frame_nats=frames.tolist(), frame_z=z.tolist(),
            regions=regions, median=med, mad=mad,
        )

    def score_files(self, inputs: str | os.PathLike | Sequence[str | os.PathLike], on_error: str = "fail",
                    progress: bool = True, mel_dir: str | os.PathLike | None = None,
                    input_convention: str = "natural") -> tuple[list[FileScore], list[tuple[str, str]]]:
        """Score WAV/FLAC files; returns (scores, failed (path, reason)).

        Args:
            inputs: a file, folder, glob, filelist or list of paths.
            on_error: "fail" or "skip".
            progress: a progress bar (only when stderr is a terminal).
            mel_dir: score against given mels `<mel_dir>/<name>.pt|.npy` (name: the input's
                path below its folder, no suffix) instead of the audio's own.
            input_convention: the log of those mels (see `score_audio`).
        """
        check_settings(ScoreApp, on_error=on_error, input_convention=input_convention)
        if mel_dir is None and input_convention != "natural":
            raise UserError(f"input_convention={input_convention}: applies to given mels (mel_dir=); without "
                            "them the mels are computed from the audio")
        files = resolve_inputs(inputs, AUDIO_SUFFIXES, kind="audio")
        scores, failed = [], []
        for path, name in tqdm(files, unit="file", desc="score", disable=not show_progress(progress), leave=False,
                               file=sys.stderr):
            try:
                audio = torch.from_numpy(load_audio(path, self.synth.sampling_rate))
                if audio.numel() < self.synth.model.n_group:
                    raise UserError(f"{path}: {audio.numel()} samples; expected at least "
                                    f"{self.synth.model.n_group}")
                mel = None if mel_dir is None else self._given_mel(Path(mel_dir), name, path)
                scores.append(self.score_audio(audio, str(path), key=name.as_posix(), mel=mel,
                                               input_convention=input_convention))
            except UserError as e:
                if on_error == "fail":
                    raise
                log.warning("skipping %s", e)
                failed.append((str(path), str(e)))
        if not scores:
            raise UserError("no file could be scored (" + "; ".join(r for _, r in failed) + ")")
        return scores, failed


    def _given_mel(self, mel_dir: Path, name: Path, audio_path: Path) -> Tensor:
        """The raw mel `<mel_dir>/<name>.pt|.npy` given for `audio_path` (as stored)."""
        for suffix in MEL_SUFFIXES:
            candidate = mel_dir / f"{name.as_posix()}{suffix}"
            if candidate.is_file():
                try:
                    return load_mel(candidate, self.synth.n_mels)
                except UserError as e:
                    raise naming(candidate, e) from None
        raise UserError(f"{audio_path}: no mel {(mel_dir / name).resolve()}.pt or .npy in mel_dir={mel_dir}")


def format_regions(regions: Sequence[Region]) -> str:
    """'0.512-0.546 s (z -12.3); ...' for logs and CSV cells."""
    return "; ".join(f"{r.start_s:.3f}-{r.end_s:.3f} s (z {r.min_z:.1f})" for r in regions)


def write_scores(path: str | os.PathLike, scores: Sequence[FileScore], failed: Sequence[tuple[str, str]],
                 meta: dict[str, Any]) -> list[Path]:
    """Write the scores by suffix: `.json` (everything, per-frame values included) or `.csv`
    (one row per file, plus `<stem>_frames.csv` with one row per frame). Atomic writes.

    Returns:
        The files written.
    """
    path = Path(path)
    if path.suffix.lower() not in (".json", ".csv"):
        raise UserError(f"output={path}: expected a .csv or .json file name")
    total_samples = sum(s.samples for s in scores)
    summary = {
        "files": len(scores),
        "audio_seconds": sum(s.seconds for s in scores),
        "nats_per_sample": sum(s.nats_per_sample * s.samples for s in scores) / max(total_samples, 1),
        "suspect_regions": sum(len(s.regions) for s in scores),
        "failed": [{"file": f, "error": e} for f, e in failed],
    }
    written = []
    if path.suffix.lower() == ".json":
        doc = {**meta, "summary": summary, "files": [asdict(s) for s in scores]}
        write_text_atomic(path, json.dumps(doc, indent=1))
        written.append(path)
    else:
        rows = [["file", "seconds", "samples", "nats_per_sample", "frames", "suspect_frames",
                 "suspect_regions"]]
        for s in scores:
            n_sus = sum(r.last_frame - r.first_frame + 1 for r in s.regions)
            rows.append([s.file, f"{s.seconds:.4f}", s.samples, f"{s.nats_per_sample:.6f}",
                         len(s.frame_nats), n_sus, format_regions(s.regions)])
        write_text_atomic(path, _csv_text(rows))
        frames_path = path.with_name(f"{path.stem}_frames.csv")
        hop, sr = meta["hop_length"], meta["sampling_rate"]
        frows: list[list[Any]] = [["file", "frame", "time_s", "nats_per_sample", "robust_z", "suspect"]]
        for s in scores:
            for f, (v, z) in enumerate(zip(s.frame_nats, s.frame_z)):
                frows.append([s.file, f, f"{f * hop / sr:.4f}", f"{v:.6f}", f"{z:.3f}",
                              int(z < -meta["threshold"])])
        write_text_atomic(frames_path, _csv_text(frows))
        written += [path, frames_path]
    return written


def _csv_text(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()
