"""Likelihood-guided repair of damaged stretches of a recording (`waveglow-enhance`).

The loop, per recording, up to `max_iters` rounds:

    1. score: the exact log-likelihood per sample ℓ_t given the recording's own mel (`Scorer`),
       its mean per mel frame, and its mean per 8-sample window (`clicks`);
    2. flag: frames whose robust z-score is below −threshold, merged into regions, each grown
       over its neighbours below −threshold/2; and click spans, 8-sample windows whose z-score
       against their ±1024-sample neighbourhood is below −click_threshold (a single-sample
       click barely moves a frame's mean);
    3. repair each span (below);
    4. rescore; a repair that did not raise the likelihood of its samples (ℓ_t summed over the
       changed samples and 16 on each side) is undone and not tried again; stop when nothing
       is flagged.

**Repair.** For a flagged span [s0, s1):

    a. locate the damage inside it: the samples that an AR (linear-prediction) model of the
       audio on both sides predicts badly from both directions, grouped into runs
       (`clicks.outlier_runs_past_edges`); a run is repaired only where its prediction residual
       stands above the louder side's by `clicks.gate_db` (a click's or a burst's threshold;
       `clicks.residual_contrast_db`): improbable clean speech (an onset, a glottal pulse) is
       predicted about as well as its surroundings, added noise is not. A run that begins or
       ends sound at digital silence (`clicks.at_silence_edge`) is an onset or offset, not
       damage. A span with no run left is left as it is;
    b. a short run (≤ MAX_CLICK samples: a click) is replaced by the least-squares AR
       interpolation (`clicks.ar_fill`): nothing else changes;
    c. a longer run in a frame region (a burst): with fill="envelope" (default) the input's own
       samples over the run (± BURST_PAD), their short-time spectrum (256-sample STFT) capped
       bin by bin at the louder of the two sides' next to the run
       (`repair.attenuate_to_neighbours`): the noise is removed and the speech under it keeps
       its phase; crossfaded over 2 ms. With fill="latent" the frame span is in-filled through
       the flow: a window around it is encoded under the interpolated mel, z inside the span
       drawn at sigma × the std of the encoded latent next to it, decoded, crossfaded over
       margin_ms;
    d. level="rms": the fill is scaled to the input's rms next to its span (a burst's: at most
       the damaged span's own); "mel": (latent fill) the decoded window pulled toward the
       interpolated mel; "none".

Only samples in [s0 − margin, s1 + margin) of a reported region can change; everything else is
copied, and after each round the audio is rounded to the output's PCM grid, so unrepaired
samples are written back bit-identical (and a recording with nothing flagged is copied
unchanged). Measurements (`scripts/measure_repair.py`): docs/enhance_convert.md.

Long recordings are scored in pieces by the `Scorer`; each repair touches only a window around
its span, and long spans are encoded and decoded in pieces (`convert.encode_audio`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from waveglow.config import EnhanceApp
from waveglow.errors import UserError
from waveglow.inference.checks import check_settings
from waveglow.inference.clicks import (
    MAX_CLICK,
    ar_fill,
    at_silence_edge,
    click_spans,
    gate_db,
    outlier_runs_past_edges,
    residual_contrast_db,
)
from waveglow.inference.convert import (
    ENVELOPE_PASSES,
    decode_latent,
    encode_audio,
    match_envelope,
    mono_audio,
)
from waveglow.inference.enhance_io import (  # noqa: F401 (the module's public names since before the split)
    PCM_SCALE,
    SUBTYPES,
    EnhanceReport,
    enhance_files,
    quantize,
    read_input,
    write_report,
)
from waveglow.inference.noise import noise_seed
from waveglow.inference.repair import (
    BURST_MARGIN_MS,
    NEAR_FFT,
    attenuate_to_neighbours,
    crossfade,
    interpolated_mel,
    level_matched,
)
from waveglow.inference.score import (
    FileScore,
    Region,
    Scorer,
    frame_means,
    robust_z,
    suspect_regions,
)
from waveglow.inference.synthesizer import Synthesizer

# Click spans (`clicks.click_spans`): samples added on each side of a suspect window.
CLICK_PAD = 8
# Samples added on each side of a burst's located samples before its fill.
BURST_PAD = 16
# The guard: ℓ_t is compared over the changed samples and this many on each side.
GUARD_PAD = 16
# A burst's fill is scaled to the rms of this much audio (ms) on each side beyond its crossfade.
LEVEL_REACH_MS = 10.0


@dataclass
class RepairedRegion:
    """One repaired stretch (regions repaired in several rounds, or overlapping, are merged):
    start_s/end_s are the samples the repair replaced (crossfades beyond them excluded)."""

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
    still_flagged: int = 0  # spans flagged after the last round (those left as they were included)
    declined: int = 0  # repairs undone because they did not raise the likelihood
    left: list[tuple[float, float]] = field(default_factory=list)  # flagged spans (s) left as they were

    @property
    def changed(self) -> bool:
        return self.changed_samples > 0


@dataclass
class _Repair:
    """One span's repair in a round: the replaced samples [c0, c1), the changed ones [a, b)."""

    s0: int
    s1: int
    c0: int
    c1: int
    a: int
    b: int


class Enhancer:
    """Find and repair improbable regions of recordings with a checkpoint.

    Args:
        synth: a `Synthesizer` (fp32 recommended: likelihoods need the precision).
        threshold: robust z-score below which a frame is suspect (positive number).
        merge_gap: suspect frames at most this far apart form one region.
        max_iters: score -> repair -> rescore rounds at most.
        margin_ms: crossfade on each side of a frame region in-filled through the flow
            (fill="latent"), in milliseconds; a burst's fill is crossfaded over min(2, margin_ms).
        sigma: std of the latent drawn inside a span filled through the flow, relative to the std
            of the encoded latent next to it (0: the latent's mean, a quiet fill).
        seed: noise seed of the latent fill.
        click_threshold: local robust z-score of 8-sample windows below which a click span is
            flagged (0: frame-level detection only).
        level: "rms" (a long fill scaled to the input's rms next to its span), "mel" (the latent
            fill's window pulled toward the interpolated mel) or "none".
        fill: of frame regions longer than a click: "envelope" (the input's samples, their
            short-time spectrum capped at the louder side's next to the damage) or "latent"
            (through the flow).
    """

    def __init__(self, synth: Synthesizer, threshold: float = 3.0, merge_gap: int = 2, max_iters: int = 3,
                 margin_ms: float = 20.0, sigma: float = 1.0, seed: int = 0, click_threshold: float = 12.0,
                 level: str = "rms", fill: str = "envelope") -> None:
        check_settings(EnhanceApp, threshold=float(threshold), merge_gap=merge_gap, max_iters=max_iters,
                       margin_ms=float(margin_ms), sigma=float(sigma), seed=seed,
                       click_threshold=float(click_threshold), level=level, fill=fill)
        self.synth = synth
        self.scorer = Scorer(synth, threshold=threshold, merge_gap=merge_gap, dither=0.0)
        self.mel_fn = self.scorer.mel_fn
        self.max_iters = int(max_iters)
        self.margin = round(float(margin_ms) * synth.sampling_rate / 1000)
        self.burst_margin = min(self.margin, round(BURST_MARGIN_MS * synth.sampling_rate / 1000))
        self.level_reach = round(LEVEL_REACH_MS * synth.sampling_rate / 1000)
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

    def plan(self, score: FileScore, clicks: list[tuple[int, int]], n_samples: int) -> list[tuple[int, int, bool]]:
        """The spans flagged this round, (s0, s1, is a frame region): the flagged frame regions
        grown over their neighbours, then the click spans that lie outside them."""
        out = [(*self.span(*self.grow(r, score.frame_z), n_samples), True) for r in score.regions]
        for a, b in clicks:
            if not any(a < s1 and s0 < b for s0, s1, _ in out):
                out.append((a, b, False))
        return sorted(out)

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
        """`mel` [n_mels, F] with the frames whose window touches [s0, s1) interpolated (`repair`)."""
        return interpolated_mel(mel, s0, s1, self.synth.hop_length, self.mel_fn.n_fft)

    def window(self, s0: int, s1: int, n_samples: int, margin: int) -> tuple[int, int]:
        """The samples [w0, w1) a fill of [s0, s1) reads: the span, its margins and the
        receptive field on each side, on frame boundaries (w1 may pass the end by < one hop)."""
        hop = self.synth.hop_length
        ctx = self.synth.receptive_field * hop
        return (max(0, ((s0 - margin) // hop) * hop - ctx),
                min(-(-n_samples // hop) * hop, -(-(s1 + margin) // hop) * hop + ctx))

    # -- one span -----------------------------------------------------------------------------
    def repair_span(self, audio: Tensor, mel: Tensor, s0: int, s1: int, key: str,
                    frames: bool) -> tuple[Tensor, list[_Repair]] | None:
        """Repair a flagged span [s0, s1) of `audio` [T] (steps a-d of the module docstring).

        Args:
            audio: float32 [T] (not modified).
            mel: its log-mel [n_mels, F].
            s0, s1: the span.
            key: the file's noise key (latent fill).
            frames: a frame region (else a click span).

        Returns:
            (the repaired audio float32 [T], one `_Repair` per repaired run of damaged samples), or
            None when the span is left as it is (no run stands out from the speech around it).
        """
        T, out, done = audio.numel(), audio, []
        runs, a0, a1 = self.find_runs(audio, s0, s1)
        runs = [(c0, c1) for c0, c1 in runs
                if not at_silence_edge(audio, c0, c1) and residual_contrast_db(audio, a0, a1, c0, c1) >= gate_db(c0, c1)]
        for c0, c1 in runs:
            if c1 - c0 <= MAX_CLICK:
                out = ar_fill(out, c0, c1)
                done.append(_Repair(s0, s1, c0, c1, c0, c1))
            elif not frames:
                continue  # a click span whose damage is longer than a click: left to the frame regions
            elif self.fill == "latent":
                M = self.margin
                out = self.latent_fill(out, mel, s0, s1, key)
                done.append(_Repair(s0, s1, s0, s1, max(0, s0 - M), min(T, s1 + M)))
                break  # the whole frame span is in-filled
            else:
                b0, b1, M = max(0, c0 - BURST_PAD), min(T, c1 + BURST_PAD), self.burst_margin
                out = self.envelope_fill(out, b0, b1)
                done.append(_Repair(s0, s1, b0, b1, max(0, b0 - M), min(T, b1 + M)))
        return (out, done) if done else None

    def find_runs(self, audio: Tensor, s0: int, s1: int) -> tuple[list[tuple[int, int]], int, int]:
        """The runs of damaged samples in a flagged span [s0, s1) of `audio` [T] and the span
        [a0, a1) they were searched in (`clicks.outlier_runs_past_edges`: past an edge that a
        click reaches, by at most the crossfade margin)."""
        return outlier_runs_past_edges(audio, s0, s1, edge=min(MAX_CLICK, self.margin), max_short=MAX_CLICK)

    def envelope_fill(self, audio: Tensor, b0: int, b1: int) -> Tensor:
        """[b0, b1) of `audio` [T] with the excess short-time spectrum removed
        (`repair.attenuate_to_neighbours`: capped at the louder side's, bin by bin),
        level-matched to the 10 ms beyond the crossfade on each side, crossfaded over the burst
        margin."""
        M = self.burst_margin
        reach = 4 * NEAR_FFT  # the reference frames and the crossfade fit well inside
        w0, w1 = max(0, b0 - M - reach), min(audio.numel(), b1 + M + reach)
        filled = attenuate_to_neighbours(audio[w0:w1], b0 - w0, b1 - w0)
        if self.level == "rms":
            filled = level_matched(audio, filled, w0, b0, b1, self.level_reach, at_most_input=True, skip=M)
        return crossfade(audio, filled, w0, b0, b1, M)

    def latent_fill(self, audio: Tensor, mel: Tensor, s0: int, s1: int, key: str) -> Tensor:
        """[s0, s1) of `audio` [T] in-filled through the flow: the window around it encoded under
        the interpolated mel (exact), z inside the span drawn at sigma × the std of the encoded
        latent next to it (one hop or the margin on each side; seeded by (seed, key, span)),
        decoded, crossfaded over margin_ms. (A zero latent, the model's mean, decodes a small
        model's span 20-27 dB below its surroundings.)"""
        hop, M = self.synth.hop_length, self.margin
        w0, w1 = self.window(s0, s1, audio.numel(), M)
        cond = self.interpolated_mel(mel, s0, s1)[:, w0 // hop:]
        window = audio[w0:w1]
        reach = max(M, hop)
        z = encode_audio(self.synth, window, cond)
        around = torch.cat([z[max(0, s0 - w0 - reach): s0 - w0], z[s1 - w0: min(window.numel(), s1 - w0 + reach)]])
        scale = self.sigma * float(around.std()) if around.numel() > 1 else 0.0
        gen = torch.Generator().manual_seed(noise_seed(self.seed, f"{key}@{s0}-{s1}"))
        z[s0 - w0: s1 - w0] = torch.randn(s1 - s0, generator=gen) * scale
        decoded = decode_latent(self.synth, z, cond)[: window.numel()]
        if self.level == "rms":
            decoded = level_matched(audio, decoded, w0, s0, s1, reach)
        elif self.level == "mel":
            for _ in range(ENVELOPE_PASSES):
                decoded = match_envelope(decoded, cond[:, : 1 + decoded.numel() // hop], self.mel_fn)
        return crossfade(audio, decoded, w0, s0, s1, M)

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
            dry_run: score and flag only (no repair); the flagged spans are reported with
                nats_after = nats_before and 0 iterations.

        Returns:
            An `EnhanceResult`.
        """
        if subtype not in SUBTYPES:
            raise UserError(f"subtype={subtype}: expected one of {', '.join(SUBTYPES)}")
        x0 = mono_audio(audio)
        key = name if key is None else key
        x = x0.clone()
        first, ll, first_clicks = self.score(x, name)
        score, clicks = first, first_clicks
        spans: list[list[int]] = []  # [first sample, end sample, iterations, round of last repair]
        declined: list[tuple[int, int]] = []  # flagged spans whose repair was undone, or left as they are
        n_declined = 0
        for it in range(1, (0 if dry_run else self.max_iters) + 1):
            todo = [t for t in self.plan(score, clicks, x.numel())
                    if not any(t[0] < b and a < t[1] for a, b in declined)]
            if not todo:
                break
            with torch.inference_mode():
                mel = self.mel_fn(x)
            before, done = x, []
            for s0, s1, frames in todo:
                fixed = self.repair_span(x, mel, s0, s1, key, frames)
                if fixed is None:
                    declined.append((s0, s1))
                    continue
                x = fixed[0]
                done.extend(fixed[1])
            if not done:
                break
            x = quantize(x, subtype)
            new_score, new_ll, new_clicks = self.score(x, name)
            # The guard: a repair that does not raise ℓ over what it changed is undone.
            undo = [r for r in done if _gain(ll, new_ll, r.a, r.b) <= 0]
            for r in undo:
                x[r.a: r.b] = before[r.a: r.b]
                declined.append((r.s0, r.s1))
            n_declined += len(undo)
            if undo:
                new_score, new_ll, new_clicks = self.score(x, name)
            for r in done:
                if r not in undo:
                    _merge(spans, r.c0, r.c1, it)
            score, ll, clicks = new_score, new_ll, new_clicks
        if dry_run:
            spans = [[s0, s1, 0, 0] for s0, s1, _ in self.plan(first, first_clicks, x.numel())]
        result = EnhanceResult(file=name, audio=x, seconds=x.numel() / self.synth.sampling_rate,
                               nats_before=first.nats_per_sample, nats_after=score.nats_per_sample,
                               changed_samples=int((x != x0).sum()), declined=n_declined,
                               still_flagged=len(self.plan(score, clicks, x.numel())))
        result.regions = [self._row(name, first, score, s0, s1, n) for s0, s1, n, _ in spans]
        sr = self.synth.sampling_rate
        result.left = [(a / sr, b / sr) for a, b in declined
                       if not any(s[0] < b and a < s[1] for s in spans)]
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


def _gain(before: Tensor, after: Tensor, a: int, b: int) -> float:
    """Σ ℓ_t after − before over [a − GUARD_PAD, b + GUARD_PAD) (nats; ℓ may be a few samples
    shorter than the audio: the last partial group is not scored)."""
    lo, hi = max(0, a - GUARD_PAD), min(before.numel(), b + GUARD_PAD)
    if hi <= lo:
        return 1.0  # nothing scored there (the file's last partial group): nothing to compare
    return float(after[lo:hi].double().sum() - before[lo:hi].double().sum())


def enhance(synth: Synthesizer, audio: Tensor, threshold: float = 3.0, merge_gap: int = 2, max_iters: int = 3,
            margin_ms: float = 20.0, sigma: float = 1.0, seed: int = 0, subtype: str = "FLOAT",
            dry_run: bool = False, click_threshold: float = 12.0, level: str = "rms",
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
