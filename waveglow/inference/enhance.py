"""Likelihood-guided repair of damaged stretches of a recording (`waveglow-enhance`).

The loop, per recording, up to `max_iters` rounds:

    1. score: the exact log-likelihood per sample ℓ_t given the recording's own mel (`Scorer`),
       its mean per mel frame, and its mean per 8-sample window (`clicks`);
    2. flag: frames whose robust z-score is below −threshold, merged into regions, each grown
       over its neighbours below −threshold/2; and click spans, 8-sample windows whose z-score
       against their ±1024-sample neighbourhood is below −click_threshold (a single-sample
       click barely moves a frame's mean);
    3. repair each span (below);
    4. rescore; stop when nothing is flagged.

**Repair.** For a flagged span [s0, s1) of samples:

    a. the log-mel frames whose analysis window touches the span are replaced by a linear
       interpolation between the nearest untouched frames on either side (the damage is in
       the mel too: a click or a burst is broadband energy the speech does not have);
    b. the fill. Click spans (and frame regions with fill="latent"): a window around the span
       (plus the margin and the model's receptive field on each side) is encoded under that
       mel, z = f(x; mel'), exact; z inside the span is drawn as noise of sigma × the std of
       the encoded latent next to it (seeded by (seed, file, span)), z outside it is kept, and
       the window is decoded. (A zero latent, the model's mean, decodes a small model's span
       20-27 dB below its surroundings.) Frame regions with fill="envelope" (the default):
       the input's own samples, their STFT pulled toward the interpolated mel, which removes
       the energy the mel says the span did not hold and keeps the speech's phase;
    c. level="rms": the fill scaled to the input's rms next to the span;
    d. crossfade (raised cosine) from the input to the fill over `margin_ms` on each side of a
       frame region, 1 ms on each side of a click span.

Only samples in [s0 − margin, s1 + margin) can change; everything else is copied, and after
each round the audio is rounded to the output's PCM grid, so unrepaired samples are written
back bit-identical (and a recording with nothing flagged is copied unchanged). Measurements of
these choices against the alternatives (`scripts/measure_repair.py`): docs/enhance_convert.md.

Long recordings are scored in pieces by the `Scorer`; each repair touches only a window around
its span, and long spans are encoded and decoded in pieces (`convert.encode_audio`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf
import torch
from torch import Tensor
from tqdm import tqdm

from waveglow.config import EnhanceApp
from waveglow.data.audio import load_audio, save_audio
from waveglow.errors import UserError
from waveglow.fileio import write_bytes_atomic, write_text_atomic
from waveglow.inference.checks import check_settings
from waveglow.inference.clicks import click_spans
from waveglow.inference.convert import (
    ENVELOPE_PASSES,
    Inputs,
    checked_inputs,
    decode_latent,
    encode_audio,
    match_envelope,
    mono_audio,
)
from waveglow.inference.jobs import show_progress
from waveglow.inference.noise import noise_seed
from waveglow.inference.score import (
    FileScore,
    Region,
    Scorer,
    frame_means,
    robust_z,
    suspect_regions,
)
from waveglow.inference.synthesizer import Synthesizer

log = logging.getLogger("waveglow.enhance")

# Full scale of each writable PCM subtype (libsndfile reads integer PCM as k / scale).
PCM_SCALE = {"PCM_S8": 2.0**7, "PCM_U8": 2.0**7, "PCM_16": 2.0**15, "PCM_24": 2.0**23}
SUBTYPES = (*PCM_SCALE, "FLOAT")
# Click spans (`clicks.click_spans`): samples added on each side of a suspect window, and the
# crossfade on each side of their repair (short: a click is a few samples, and every sample of
# the margin that changes is error where there was none).
CLICK_PAD = 8
CLICK_MARGIN_MS = 1.0


def quantize(audio: Tensor, subtype: str) -> Tensor:
    """Round float audio [T] to what a file of `subtype` stores (clipped to its range).

    Samples already on the grid (read from such a file) come back unchanged, bit for bit.
    """
    if subtype == "FLOAT":
        return audio.float()
    scale = PCM_SCALE[subtype]
    return (torch.round(audio.double() * scale).clamp(-scale, scale - 1) / scale).float()


@dataclass
class RepairedRegion:
    """One repaired stretch (regions repaired in several rounds, or overlapping, are merged)."""

    file: str
    start_s: float
    end_s: float
    first_frame: int
    last_frame: int
    nats_before: float  # nats/sample over the region's frames, before any repair
    nats_after: float  # the same frames in the output
    min_z: float  # the lowest robust z-score of the region before repair
    iterations: int  # rounds in which (part of) it was repaired


@dataclass
class EnhanceResult:
    """The outcome for one recording."""

    file: str
    audio: Tensor  # float32 [T], on the output's PCM grid
    regions: list[RepairedRegion] = field(default_factory=list)
    changed_samples: int = 0
    seconds: float = 0.0
    nats_before: float = 0.0  # whole file, nats/sample
    nats_after: float = 0.0
    still_flagged: int = 0  # regions flagged after the last round

    @property
    def changed(self) -> bool:
        return self.changed_samples > 0


class Enhancer:
    """Find and repair improbable regions of recordings with a checkpoint.

    Args:
        synth: a `Synthesizer` (fp32 recommended: likelihoods need the precision).
        threshold: robust z-score below which a frame is suspect (positive number).
        merge_gap: suspect frames at most this far apart form one region.
        max_iters: score -> repair -> rescore rounds at most.
        margin_ms: crossfade on each side of a repaired frame region, in milliseconds (click
            spans: 1 ms, or less when margin_ms is smaller).
        sigma: std of the latent drawn inside a span filled through the flow, relative to the std
            of the encoded latent next to it (0: the latent's mean, a quiet fill).
        seed: noise seed of the repairs.
        click_threshold: local robust z-score of 8-sample windows below which a click span is
            flagged (0: frame-level detection only).
        level: "rms" (each fill scaled to the input's rms next to its span), "mel" (the decoded
            window pulled toward the interpolated mel) or "none".
        fill: of frame regions: "envelope" (the input's samples, spectrum pulled toward the
            interpolated mel) or "latent" (through the flow, as click spans always are).
    """

    def __init__(self, synth: Synthesizer, threshold: float = 5.0, merge_gap: int = 2, max_iters: int = 3,
                 margin_ms: float = 20.0, sigma: float = 1.0, seed: int = 0, click_threshold: float = 30.0,
                 level: str = "rms", fill: str = "envelope") -> None:
        check_settings(EnhanceApp, threshold=float(threshold), merge_gap=merge_gap, max_iters=max_iters,
                       margin_ms=float(margin_ms), sigma=float(sigma), seed=seed,
                       click_threshold=float(click_threshold), level=level, fill=fill)
        self.synth = synth
        self.scorer = Scorer(synth, threshold=threshold, merge_gap=merge_gap, dither=0.0)
        self.mel_fn = self.scorer.mel_fn
        self.max_iters = int(max_iters)
        self.margin = round(float(margin_ms) * synth.sampling_rate / 1000)
        self.click_margin = min(self.margin, round(CLICK_MARGIN_MS * synth.sampling_rate / 1000))
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.click_threshold = float(click_threshold)
        self.level = level
        self.fill = fill

    def score(self, x: Tensor, name: str) -> tuple[FileScore, Tensor, list[tuple[int, int]]]:
        """(frame scores as `Scorer.score_audio`, per-sample ℓ_t [T'], click spans) of audio [T]."""
        with torch.inference_mode():
            mel = self.mel_fn(x)
        ll = self.scorer.per_sample(x, mel)
        s = self.synth
        frames = frame_means(ll, s.hop_length, mel.shape[-1])
        z, med, mad = robust_z(frames)
        regions = suspect_regions(frames, z, self.scorer.threshold, self.scorer.merge_gap, s.hop_length,
                                  s.sampling_rate)
        fs = FileScore(file=name, samples=int(ll.numel()), seconds=ll.numel() / s.sampling_rate,
                       nats_per_sample=float(ll.double().mean()), frame_nats=frames.tolist(), frame_z=z.tolist(),
                       regions=regions, median=med, mad=mad)
        clicks = (click_spans(ll, self.click_threshold, pad=CLICK_PAD, merge=CLICK_PAD)
                  if self.click_threshold > 0 else [])
        return fs, ll, clicks

    def plan(self, score: FileScore, clicks: list[tuple[int, int]], n_samples: int) -> list[tuple[int, int, int]]:
        """The spans to repair this round, (s0, s1, margin in samples): the flagged frame regions
        grown over their neighbours, then the click spans that lie outside them."""
        out = [(*self.span(*self.grow(r, score.frame_z), n_samples), self.margin) for r in score.regions]
        for a, b in clicks:
            if not any(a < s1 and s0 < b for s0, s1, _ in out):
                out.append((a, b, self.click_margin))
        return sorted(out)

    # -- one span -----------------------------------------------------------------------------
    def grow(self, region: Region, frame_z: list[float]) -> tuple[int, int]:
        """A region's frames extended over its neighbours whose z-score is below −threshold/2
        (hysteresis: the flagged core of a burst is narrower than the burst)."""
        a, b, low = region.first_frame, region.last_frame, -self.scorer.threshold / 2
        while a > 0 and frame_z[a - 1] < low:
            a -= 1
        while b < len(frame_z) - 1 and frame_z[b + 1] < low:
            b += 1
        return a, b

    def span(self, first_frame: int, last_frame: int, n_samples: int) -> tuple[int, int]:
        """The samples [s0, s1) of frames [first_frame, last_frame] (frame f spans f·hop ± hop/2)."""
        hop = self.synth.hop_length
        return (max(0, first_frame * hop - hop // 2), min(n_samples, last_frame * hop + hop - hop // 2))

    def interpolated_mel(self, mel: Tensor, s0: int, s1: int) -> Tensor:
        """`mel` [n_mels, F] with the frames whose window touches [s0, s1) interpolated linearly
        (in log-mel) between the nearest untouched frames; at a file edge the one side is held."""
        hop, half = self.synth.hop_length, self.mel_fn.n_fft // 2
        F = mel.shape[-1]
        fa = max(0, math.floor((s0 - half) / hop) + 1)
        fb = min(F - 1, math.ceil((s1 + half) / hop) - 1)
        left, right = fa - 1, fb + 1
        out = mel.clone()
        if left < 0 and right >= F:
            return out  # the whole recording is one span: nothing clean to interpolate from
        a = mel[:, left] if left >= 0 else mel[:, right]
        b = mel[:, right] if right < F else mel[:, left]
        t = (torch.arange(fa, fb + 1, dtype=torch.float32) - left) / (right - left)
        out[:, fa: fb + 1] = a[:, None] * (1 - t) + b[:, None] * t
        return out

    def window(self, s0: int, s1: int, n_samples: int) -> tuple[int, int]:
        """The samples [w0, w1) a repair of [s0, s1) reads: the span, its margins and the
        receptive field on each side, on frame boundaries (w1 may pass the end by < one hop)."""
        hop, M = self.synth.hop_length, self.margin
        ctx = self.synth.receptive_field * hop
        return (max(0, ((s0 - M) // hop) * hop - ctx),
                min(-(-n_samples // hop) * hop, -(-(s1 + M) // hop) * hop + ctx))

    def repair(self, audio: Tensor, mel: Tensor, s0: int, s1: int, key: str, margin: int | None = None,
               fill: str = "latent") -> Tensor:
        """Repair samples [s0, s1) of `audio` [T]; only [s0 − margin, s1 + margin) changes.

        Args:
            audio: float32 [T] (not modified).
            mel: its log-mel [n_mels, F].
            s0, s1: the span.
            key: the file's noise key.
            margin: crossfade samples on each side (default: margin_ms's).
            fill: "latent" (in-fill through the flow) or "envelope" (the input's own samples with
                their spectrum pulled toward the interpolated mel).

        Returns:
            The repaired audio, float32 [T].
        """
        hop, M = self.synth.hop_length, self.margin if margin is None else margin
        w0, w1 = self.window(s0, s1, audio.numel())
        cond = self.interpolated_mel(mel, s0, s1)[:, w0 // hop:]
        window = audio[w0:w1]
        reach = max(M, hop)
        if fill == "envelope":
            # Excess energy (noise) removed bin by bin where the input's spectrum exceeds what the
            # interpolated mel says the span held; the speech under it keeps its own phase.
            decoded = window.clone()
            for _ in range(ENVELOPE_PASSES):
                decoded = match_envelope(decoded, cond[:, : 1 + decoded.numel() // hop], self.mel_fn)
            if self.level == "rms":
                decoded = self.level_matched(audio, decoded, w0, s0, s1, reach)
            return self.crossfade(audio, decoded, w0, s0, s1, M)
        z = encode_audio(self.synth, window, cond)
        # The span's latent: noise as strong as the encoded latent next to it (one hop, or the
        # margin, on each side), times sigma. (A fixed std such as synthesis's 0.6 is far louder
        # than what a small model's latent of quiet speech holds; docs/enhance_convert.md.)
        around = torch.cat([z[max(0, s0 - w0 - reach): s0 - w0], z[s1 - w0: min(window.numel(), s1 - w0 + reach)]])
        scale = self.sigma * float(around.std()) if around.numel() > 1 else 0.0
        gen = torch.Generator().manual_seed(noise_seed(self.seed, f"{key}@{s0}-{s1}"))
        z[s0 - w0: s1 - w0] = torch.randn(s1 - s0, generator=gen) * scale
        decoded = decode_latent(self.synth, z, cond)[: window.numel()]
        if self.level == "rms":
            decoded = self.level_matched(audio, decoded, w0, s0, s1, reach)
        elif self.level == "mel":
            # The decoded window's spectrum pulled toward the interpolated mel (the level and
            # envelope the span should have), as conversion does after changing the mel.
            for _ in range(ENVELOPE_PASSES):
                decoded = match_envelope(decoded, cond[:, : 1 + decoded.numel() // hop], self.mel_fn)
        return self.crossfade(audio, decoded, w0, s0, s1, M)

    def level_matched(self, audio: Tensor, decoded: Tensor, w0: int, s0: int, s1: int, reach: int) -> Tensor:
        """`decoded` (the window from w0) with its span [s0, s1) scaled to the input's rms over
        `reach` samples on each side of the span (the surrounding level; gain at most +12 dB)."""
        T = audio.numel()
        ref = torch.cat([audio[max(0, s0 - reach): s0], audio[s1: min(T, s1 + reach)]]).double()
        fill = decoded[s0 - w0: s1 - w0].double()
        if ref.numel() == 0 or fill.numel() == 0:
            return decoded
        gain = float(ref.pow(2).mean().sqrt() / fill.pow(2).mean().sqrt().clamp_min(1e-9))
        out = decoded.clone()
        out[s0 - w0: s1 - w0] *= min(gain, 4.0)  # silence around: a silent span
        return out

    def crossfade(self, audio: Tensor, repaired: Tensor, w0: int, s0: int, s1: int, margin: int | None = None) -> Tensor:
        """`audio` [T] with `repaired` (the window from sample w0 on) on [s0, s1) and raised-cosine
        crossfades over the margins: samples outside [s0 − margin, s1 + margin) are not touched."""
        T, M = audio.numel(), self.margin if margin is None else margin
        a, b = max(0, s0 - M), min(T, s1 + M, w0 + repaired.numel())
        pos = torch.arange(a, b, dtype=torch.float64)
        ramp_in = 0.5 - 0.5 * torch.cos(math.pi * (pos - (s0 - M)) / max(M, 1))
        ramp_out = 0.5 - 0.5 * torch.cos(math.pi * ((s1 + M) - pos) / max(M, 1))
        w = torch.where(pos < s0, ramp_in, torch.where(pos >= s1, ramp_out, torch.ones_like(pos))).float()
        out = audio.clone()
        out[a:b] = audio[a:b] * (1 - w) + repaired[a - w0: b - w0] * w
        return out

    # -- one recording ------------------------------------------------------------------------
    def enhance_audio(self, audio: Tensor, name: str = "audio", key: str | None = None,
                      subtype: str = "FLOAT", dry_run: bool = False) -> EnhanceResult:
        """Score, repair and rescore one recording (the loop in the module docstring).

        Args:
            audio: float [T] at the checkpoint's sampling rate.
            name: the file name in the result and the report.
            key: noise key of its repairs (default: `name`).
            subtype: the output's sample format ("PCM_16", "PCM_24", "FLOAT", ...): each round's
                result is rounded to it, so what is rescored is what is written.
            dry_run: score and flag only (no repair); the regions are reported with
                nats_after = nats_before and 0 iterations.

        Returns:
            An `EnhanceResult`.
        """
        if subtype not in SUBTYPES:
            raise UserError(f"subtype={subtype}: expected one of {', '.join(SUBTYPES)}")
        x0 = mono_audio(audio)
        key = name if key is None else key
        x = x0.clone()
        first, _, first_clicks = self.score(x, name)
        score, clicks = first, first_clicks
        spans: list[list[int]] = []  # [first sample, end sample, iterations, round of last repair]
        rounds = 0 if dry_run else self.max_iters
        for it in range(1, rounds + 1):
            todo = self.plan(score, clicks, x.numel())
            if not todo:
                break
            with torch.inference_mode():
                mel = self.mel_fn(x)
            for s0, s1, margin in todo:
                x = self.repair(x, mel, s0, s1, key, margin, self.fill if margin == self.margin else "latent")
                _merge(spans, s0, s1, it)
            x = quantize(x, subtype)
            score, _, clicks = self.score(x, name)
        if dry_run:
            spans = [[s0, s1, 0, 0] for s0, s1, _ in self.plan(first, first_clicks, x.numel())]
        result = EnhanceResult(file=name, audio=x, seconds=x.numel() / self.synth.sampling_rate,
                               nats_before=first.nats_per_sample, nats_after=score.nats_per_sample,
                               changed_samples=int((x != x0).sum()),
                               still_flagged=len(self.plan(score, clicks, x.numel())))
        result.regions = [self._row(name, first, score, s0, s1, n) for s0, s1, n, _ in spans]
        return result

    def _row(self, name: str, before: FileScore, after: FileScore, s0: int, s1: int, n: int) -> RepairedRegion:
        hop, sr = self.synth.hop_length, self.synth.sampling_rate
        last = len(before.frame_z) - 1
        a, b = min(last, (s0 + hop // 2) // hop), min(last, (s1 - 1 + hop // 2) // hop)
        mean = lambda v: float(torch.tensor(v[a: b + 1]).mean())  # noqa: E731
        return RepairedRegion(
            file=name, start_s=s0 / sr, end_s=s1 / sr,
            first_frame=a, last_frame=b, nats_before=mean(before.frame_nats), nats_after=mean(after.frame_nats),
            min_z=float(min(before.frame_z[a: b + 1])), iterations=n)


def enhance(synth: Synthesizer, audio: Tensor, threshold: float = 5.0, merge_gap: int = 2, max_iters: int = 3,
            margin_ms: float = 20.0, sigma: float = 1.0, seed: int = 0, subtype: str = "FLOAT",
            dry_run: bool = False, click_threshold: float = 30.0, level: str = "rms",
            fill: str = "envelope") -> EnhanceResult:
    """Repair one recording: `Enhancer(synth, ...).enhance_audio(audio, ...)`.

    Args:
        synth: a `Synthesizer` (fp32 recommended).
        audio: float mono [T] or [1, T] at the checkpoint's sampling rate (anything else: UserError).
        threshold, merge_gap, max_iters, margin_ms, sigma, seed, click_threshold, level, fill: as `Enhancer`.
        subtype: the sample format the result is rounded to ("PCM_16", "PCM_24", "FLOAT", ...).
        dry_run: flag only.

    Returns:
        An `EnhanceResult` (`.audio` float32 [T], `.regions`).

    Example:
        >>> result = enhance(Synthesizer("best.pt", device="cpu"), audio, subtype="PCM_16")
    """
    enhancer = Enhancer(synth, threshold=threshold, merge_gap=merge_gap, max_iters=max_iters,
                        margin_ms=margin_ms, sigma=sigma, seed=seed, click_threshold=click_threshold,
                        level=level, fill=fill)
    return enhancer.enhance_audio(audio, subtype=subtype, dry_run=dry_run)


def _merge(spans: list[list[int]], a: int, b: int, it: int) -> None:
    """Add samples [a, b) repaired in round `it` to `spans`, merging overlapping/adjacent ones."""
    hits = [s for s in spans if s[0] <= b and a <= s[1]]
    for s in hits:
        spans.remove(s)
    lo = min([a, *(s[0] for s in hits)])
    hi = max([b, *(s[1] for s in hits)])
    n = max([0, *(s[2] for s in hits)])
    spans.append([lo, hi, n + 1 if all(s[3] != it for s in hits) else n, it])
    spans.sort()


# ------------------------------------------------------------------------------------- files
@dataclass
class EnhanceReport:
    """What `enhance_files` did (each result's audio is dropped once written)."""

    results: list[EnhanceResult] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    report: Path | None = None
    wall_seconds: float = 0.0

    def summary(self) -> str:
        seconds = sum(r.seconds for r in self.results)
        regions = sum(len(r.regions) for r in self.results)
        n, changed = len(self.results), sum(r.changed for r in self.results)
        verb = "flagged" if not self.written else "repaired"
        return (f"enhanced {n} {'file' if n == 1 else 'files'}, {seconds:.2f} s of audio: {regions} "
                f"{'region' if regions == 1 else 'regions'} {verb}, {changed} {'file' if changed == 1 else 'files'} "
                f"changed ({sum(r.changed_samples for r in self.results)} samples); {self.wall_seconds:.2f} s wall "
                f"({self.wall_seconds / max(seconds, 1e-9):.2f} s per audio second); report: {self.report}")


def read_input(path: Path, sampling_rate: int) -> tuple[Tensor, str]:
    """An input to enhance: (audio float32 [T], its sample format), or a one-line UserError.

    The output keeps the input's samples, so the file must already be what the model takes:
    mono, at the checkpoint's sampling rate (nothing is resampled), in a sample format that
    float32 holds exactly.
    """
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        info = None  # load_audio reports a missing or unreadable file in the usual words
    if info is not None:
        if info.samplerate != sampling_rate:
            raise UserError(f"{path}: {info.samplerate / 1000:g} kHz audio but a {sampling_rate / 1000:g} kHz "
                            f"checkpoint; expected {sampling_rate} Hz audio (enhance does not resample, so "
                            "that unrepaired samples stay bit-identical)")
        if info.channels != 1:
            raise UserError(f"{path}: {info.channels} channels; expected mono audio")
        if info.subtype not in SUBTYPES:
            raise UserError(f"{path}: sample format {info.subtype}; expected one of {', '.join(SUBTYPES)}")
    audio = torch.from_numpy(load_audio(path, sampling_rate))
    return audio, info.subtype if info is not None else "FLOAT"


def enhance_files(enhancer: Enhancer, inputs: Inputs, output_dir: str | os.PathLike,
                  report: str = "enhance_report.csv", dry_run: bool = False, on_error: str = "fail",
                  progress: bool = True) -> EnhanceReport:
    """Enhance WAV/FLAC files into `<output_dir>/<name>.wav` (same rate, length and sample format)
    and write the report `<output_dir>/<report>` (.csv: a row per repaired region; .json: also
    per-file totals). Every input is checked before anything is written.

    Args:
        enhancer: the `Enhancer`.
        inputs: `input=`: a file, folder, glob, filelist or list of paths.
        output_dir: created if missing.
        report: the report's file name inside output_dir (.csv or .json).
        dry_run: write the report only.
        on_error: "fail" (the first bad input stops the run, nothing written) or "skip".
        progress: progress bar over files.

    Raises:
        UserError: a bad report name, a bad input (on_error="fail"), or no usable input.
    """
    check_settings(EnhanceApp, report=report, on_error=on_error)
    t0 = time.perf_counter()
    out_dir, sr = Path(output_dir), enhancer.synth.sampling_rate
    report_path = out_dir / report
    if report_path.suffix.lower() not in (".csv", ".json") or Path(report).name != report:
        raise UserError(f"report={report}: expected a .csv or .json file name (written inside output_dir)")
    min_len = enhancer.mel_fn.n_fft // 2 + 1
    done = EnhanceReport(report=report_path)
    ok = checked_inputs(inputs, out_dir, min_len, lambda p: read_input(p, sr)[0].numel(), on_error, done.failed)
    if not ok:
        raise UserError("no file could be enhanced (" + "; ".join(r for _, r in done.failed) + ")")
    for inp in tqdm(ok, unit="file", desc="enhance", disable=not show_progress(progress), leave=False):
        audio, subtype = read_input(inp.path, sr)
        res = enhancer.enhance_audio(audio, str(inp.path), key=inp.name.as_posix(), subtype=subtype,
                                     dry_run=dry_run)
        if not dry_run:
            path = out_dir / inp.name.with_suffix(".wav")
            path.parent.mkdir(parents=True, exist_ok=True)
            if not res.changed and inp.path.suffix.lower() == ".wav":
                write_bytes_atomic(path, inp.path.read_bytes())  # nothing repaired: the file as it was
            else:
                save_audio(path, res.audio, sr, subtype=subtype)
            done.written.append(path)
        res.audio = res.audio[:0]
        done.results.append(res)
    done.wall_seconds = time.perf_counter() - t0
    write_report(report_path, done, {"threshold": enhancer.scorer.threshold, "max_iters": enhancer.max_iters,
                                     "margin_ms": enhancer.margin * 1000 / sr, "sigma": enhancer.sigma,
                                     "click_threshold": enhancer.click_threshold, "level": enhancer.level,
                                     "fill": enhancer.fill,
                                     "dry_run": dry_run, "unit": "nats per sample"})
    return done


def write_report(path: Path, done: EnhanceReport, meta: dict[str, Any]) -> Path:
    """The report by suffix, atomically: .csv (a row per region) or .json (files, regions, failures)."""
    rows = [r for res in done.results for r in res.regions]
    if path.suffix.lower() == ".json":
        files = [{k: v for k, v in asdict(res).items() if k != "audio"} for res in done.results]
        doc = {**meta, "files": files, "failed": [{"file": f, "error": e} for f, e in done.failed]}
        return write_text_atomic(path, json.dumps(doc, indent=1))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["file", "start_s", "end_s", "nats_per_sample_before", "nats_per_sample_after",
                     "iterations", "min_z"])
    for r in rows:
        writer.writerow([r.file, f"{r.start_s:.4f}", f"{r.end_s:.4f}", f"{r.nats_before:.4f}",
                         f"{r.nats_after:.4f}", r.iterations, f"{r.min_z:.2f}"])
    return write_text_atomic(path, buf.getvalue())
