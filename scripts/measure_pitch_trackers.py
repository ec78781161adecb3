#!/usr/bin/env python
"""Which F0 tracker for `waveglow-eval`'s F0 RMSE and V/UV error: librosa's pYIN or torchcrepe.

    .venv/bin/pip install torchcrepe && .venv/bin/pip uninstall -y torchaudio   # see below
    .venv/bin/python scripts/measure_pitch_trackers.py [trackers=pyin,crepe-tiny,crepe-full]
        [clips=12] [checkpoint=checkpoints/demo-tiny/checkpoints/best.pt] [corpus=data/demo]
        [snrs=inf,30,20,10,0] [contours=vibrato-120,vibrato-220,glide-up,glide-down] [crepe_threshold=0.21]
        [json=out.json]

`contours=` (empty: no synthetic signals) and `clips=0` (no corpus clips) select parts; an empty
`checkpoint=` leaves out Griffin-Lim and the model. Every tracker sees the signal as the
evaluation does (resampled to 16 kHz, 10 ms hop, 50-550 Hz) and runs on one thread. Three
measurements:

1. Synthetic harmonic signals with a known F0 (vibrato, rising and falling glides) and known
   unvoiced parts (a noise burst, silence), with white noise at several SNRs: the F0 error in
   cents against the truth over frames voiced in the truth and the track, the share of those
   frames off by more than 50 cents (gross errors), and the V/UV error against the truth.
   Frames within 32 ms (half an analysis window) of a voiced/unvoiced boundary are not scored.
2. Corpus clips against themselves shifted by +50 cents (`librosa.effects.pitch_shift`): the
   F0 difference over frames voiced in both should be +50 cents everywhere, the voicing the same;
   then against Griffin-Lim and the checkpoint's copy synthesis (`waveglow.evaluate`'s WAVs).
3. CPU seconds per second of audio, per tracker (one thread).

Trackers: `pyin` is `waveglow.eval.pitch.track`; `crepe-tiny` / `crepe-full` are torchcrepe's
two models with its default Viterbi decoder (a 20-cent bin grid) and its documented voicing
recipe (periodicity median-filtered over 3 frames, zeroed below -60 dB A-weighted loudness,
voiced at >= 0.21; `crepe_threshold=` changes the last).

torchcrepe's package `__init__` imports torchaudio for its file loader (`torchcrepe.load`), which
is not used here. PyPI's torchaudio (2.11.1 at the time of writing) is a CUDA build for an older
torch and fails to load beside the CPU torch of `make install`; when it cannot be imported an
empty module stands in for it so that torchcrepe's tracker itself can be measured.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, before numpy/torch start their pools
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from waveglow.eval.pitch import FMAX, FMIN, HOP, Pitch, track  # noqa: E402

SR = 16000  # the evaluation tracks its 16 kHz copy of every signal
BOUNDARY = 0.032  # s: frames whose centre lies this close to a V/UV boundary are not scored
GROSS = 50.0  # cents: an F0 error beyond this is a gross error
SHIFT = 50.0  # cents: the known pitch shift of the corpus test
CREPE_THRESHOLD = 0.21  # torchcrepe's documented periodicity threshold


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ------------------------------------------------------------------------------ trackers
def _torchcrepe() -> types.ModuleType:
    try:
        import torchaudio  # noqa: F401
    except Exception:  # see the module docstring: only torchcrepe.load needs it
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        import torchcrepe
    except ImportError:
        _fail("trackers: crepe-* needs torchcrepe (.venv/bin/pip install torchcrepe)")
    return torchcrepe


def crepe_tracker(model: str, threshold: float = CREPE_THRESHOLD) -> Callable[[np.ndarray, int], Pitch]:
    """torchcrepe as a `Pitch` tracker (same frames as `waveglow.eval.pitch.track`)."""
    tc = _torchcrepe()

    def run(audio: np.ndarray, sampling_rate: int) -> Pitch:
        x = torch.from_numpy(audio.astype(np.float32))[None]
        with torch.inference_mode():
            f0, periodicity = tc.predict(x, sampling_rate, HOP, FMIN, FMAX, model, return_periodicity=True,
                                         batch_size=256, device="cpu", pad=True)
            periodicity = tc.filter.median(periodicity, 3)
            periodicity = tc.threshold.Silence(-60.0)(periodicity, x, sampling_rate, HOP)
        voiced = periodicity[0].numpy() >= threshold
        f0 = f0[0].numpy().astype(np.float64)
        return Pitch(np.where(voiced, f0, np.nan), voiced)

    return run


def trackers(names: list[str], threshold: float) -> dict[str, Callable[[np.ndarray, int], Pitch]]:
    out: dict[str, Callable[[np.ndarray, int], Pitch]] = {}
    for n in names:
        if n == "pyin":
            out[n] = track
        elif n in ("crepe-tiny", "crepe-full"):
            out[n] = crepe_tracker(n.split("-")[1], threshold)
        else:
            _fail(f"trackers: unknown tracker {n!r} (expected pyin, crepe-tiny or crepe-full)")
    return out


class Timer:
    """CPU seconds and audio seconds per tracker."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.audio: dict[str, float] = {}

    def run(self, name: str, fn: Callable[[np.ndarray, int], Pitch], audio: np.ndarray) -> Pitch:
        c0 = time.process_time()
        p = fn(audio, SR)
        self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c0
        self.audio[name] = self.audio.get(name, 0.0) + audio.size / SR
        return p


# ------------------------------------------------------------------------------ synthetic signals
def contour(kind: str, t: np.ndarray) -> np.ndarray:
    """The true F0 [T] in Hz of a synthetic signal."""
    if kind == "vibrato-120":  # low voice, +-60 cents at 5.5 Hz
        return 120.0 * 2 ** (60 / 1200 * np.sin(2 * np.pi * 5.5 * t))
    if kind == "vibrato-220":  # high voice, +-60 cents at 6 Hz
        return 220.0 * 2 ** (60 / 1200 * np.sin(2 * np.pi * 6.0 * t + 1.0))
    if kind == "glide-up":  # 90 -> 300 Hz, exponential, over the 2 s
        return 90.0 * (300.0 / 90.0) ** (t / t[-1])
    if kind == "glide-down":  # 400 -> 140 Hz
        return 400.0 * (140.0 / 400.0) ** (t / t[-1])
    raise ValueError(kind)


CONTOURS = ("vibrato-120", "vibrato-220", "glide-up", "glide-down")
# (start, end, kind) in seconds over 2.0 s: voiced, an unvoiced noise burst, voiced, silence.
SEGMENTS = ((0.0, 0.10, "silence"), (0.10, 0.80, "voiced"), (0.80, 1.05, "noise"), (1.05, 1.70, "voiced"),
            (1.70, 2.00, "silence"))


def synthetic(kind: str, snr_db: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 2 s harmonic signal with known F0 and voicing.

    Returns:
        audio [T] at 16 kHz, true F0 [frames] in Hz, true voicing [frames], scored [frames] (bool:
        not within `BOUNDARY` of a segment edge).
    """
    rng = np.random.default_rng(seed)
    n = int(2.0 * SR)
    t = np.arange(n) / SR
    f0 = contour(kind, t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    harmonic = np.zeros(n)
    for k in range(1, 40):  # 1/k harmonics (a sawtooth-like glottal source) below 7.5 kHz
        harmonic += np.where(k * f0 < 7500, np.sin(k * phase) / k, 0.0)
    ramp = int(0.010 * SR)
    audio = np.zeros(n)
    for start, end, seg in SEGMENTS:
        a, b = int(start * SR), int(end * SR)
        env = np.ones(b - a)
        env[:ramp] = np.linspace(0, 1, ramp)
        env[-ramp:] = np.linspace(1, 0, ramp)
        if seg == "voiced":
            audio[a:b] = harmonic[a:b] * env
        elif seg == "noise":  # a fricative: high-passed white noise, 6 dB below the voice
            burst = np.diff(rng.standard_normal(b - a + 1))
            audio[a:b] = burst / burst.std() * harmonic.std() * 0.5 * env
    voiced_mask = np.zeros(n, bool)
    for start, end, seg in SEGMENTS:
        if seg == "voiced":
            voiced_mask[int(start * SR):int(end * SR)] = True
    if math.isfinite(snr_db):
        power = np.mean(audio[voiced_mask] ** 2)
        audio = audio + rng.standard_normal(n) * math.sqrt(power / 10 ** (snr_db / 10))
    audio = (0.3 * audio / np.abs(audio).max()).astype(np.float32)
    frames = 1 + n // HOP
    centre = np.arange(frames) * HOP / SR
    f0_frames = np.interp(centre, t, f0)  # the true F0 at each frame's centre
    true_voiced = np.zeros(frames, bool)
    scored = np.ones(frames, bool)
    edges = sorted({e for s, e, _ in SEGMENTS} | {s for s, e, _ in SEGMENTS})
    for start, end, seg in SEGMENTS:
        if seg == "voiced":
            true_voiced |= (centre >= start) & (centre < end)
    for e in edges[1:-1]:
        scored &= np.abs(centre - e) > BOUNDARY
    return audio, f0_frames, true_voiced, scored


def score_truth(p: Pitch, f0: np.ndarray, voiced: np.ndarray, scored: np.ndarray) -> dict[str, float]:
    """F0 error against the truth (frames voiced in truth and track) and V/UV error (scored frames)."""
    n = min(p.f0.size, f0.size)
    tv, pv, sc = voiced[:n], p.voiced[:n] & np.isfinite(p.f0[:n]), scored[:n]
    both = tv & pv & sc
    cents = 1200 * np.log2(p.f0[:n][both] / f0[:n][both]) if both.any() else np.array([np.nan])
    return {
        "f0_rmse_cents": float(np.sqrt(np.mean(cents**2))),
        "f0_gross_pct": float(100 * np.mean(np.abs(cents) > GROSS)),
        "f0_rmse_no_gross_cents": float(np.sqrt(np.mean(cents[np.abs(cents) <= GROSS] ** 2)))
        if (np.abs(cents) <= GROSS).any() else float("nan"),
        "vuv_error_pct": float(100 * np.mean(tv[sc] != p.voiced[:n][sc])),
        "missed_voiced_pct": float(100 * np.mean(~p.voiced[:n][sc & tv])),
        "false_voiced_pct": float(100 * np.mean(p.voiced[:n][sc & ~tv])),
    }


def measure_synthetic(tr: dict[str, Callable], contours: list[str], snrs: list[float], timer: Timer
                      ) -> dict[str, dict]:
    results: dict[str, dict] = {name: {} for name in tr}
    for i, kind in enumerate(CONTOURS):
        if kind not in contours:
            continue
        for snr in snrs:
            audio, f0, voiced, scored = synthetic(kind, snr, seed=1000 + i)
            for name, fn in tr.items():
                r = score_truth(timer.run(name, fn, audio), f0, voiced, scored)
                results[name][f"{kind}@{snr:g}dB"] = r
                print(f"  synthetic {kind:12s} SNR {snr:>4g} dB  {name:10s} F0 RMSE {r['f0_rmse_cents']:7.1f} c  "
                      f"gross {r['f0_gross_pct']:5.1f} %  V/UV {r['vuv_error_pct']:5.1f} %", flush=True)
    return results


# ------------------------------------------------------------------------------ corpus clips
def corpus_clips(corpus: Path, count: int) -> list[Path]:
    """The test, then val, then train clips of a corpus (split files), the first `count`."""
    names: list[str] = []
    for split in ("test", "val", "train"):
        f = corpus / "splits" / f"{split}.txt"
        if f.exists():
            names += [n.strip() for n in f.read_text().splitlines() if n.strip()]
    return [corpus / "wavs" / f"{n}.wav" for n in names[:count]]


def _at16k(audio: np.ndarray, sr: int) -> np.ndarray:
    import librosa

    return audio if sr == SR else librosa.resample(audio, orig_sr=sr, target_sr=SR).astype(np.float32)


def pair_stats(ref: Pitch, out: Pitch, expected: float = 0.0) -> dict[str, float]:
    """F0 difference out - ref over frames voiced in both, and the voicing disagreement."""
    n = min(ref.f0.size, out.f0.size)
    both = ref.voiced[:n] & out.voiced[:n] & np.isfinite(ref.f0[:n]) & np.isfinite(out.f0[:n])
    d = 1200 * np.log2(out.f0[:n][both] / ref.f0[:n][both]) if both.any() else np.array([np.nan])
    return {
        "f0_rmse_cents": float(np.sqrt(np.mean(d**2))),
        "median_cents": float(np.median(d)),
        "spread_cents": float(np.sqrt(np.mean((d - expected) ** 2))),  # RMS deviation from the expected shift
        "off_pct": float(100 * np.mean(np.abs(d - expected) > GROSS)),
        "vuv_error_pct": float(100 * np.mean(ref.voiced[:n] != out.voiced[:n])),
        "voiced_pct": float(100 * np.mean(ref.voiced[:n])),
        "frames": int(n),
    }


def measure_corpus(tr: dict[str, Callable], clips: list[Path], checkpoint: str | None, timer: Timer
                   ) -> dict[str, dict]:
    import librosa
    import soundfile as sf

    systems: dict[str, dict[str, np.ndarray]] = {}  # clip -> label -> 16 kHz audio
    rates = set()
    for path in clips:
        audio, sr = sf.read(path, dtype="float32")
        rates.add(sr)
        shifted = librosa.effects.pitch_shift(audio, sr=sr, n_steps=SHIFT / 100.0)
        systems[path.stem] = {"ground_truth": _at16k(audio, sr), "shift+50c": _at16k(shifted, sr)}
    if checkpoint:
        import soundfile as sf

        from waveglow import evaluate

        with tempfile.TemporaryDirectory() as tmp:
            evaluate(checkpoint, [str(p) for p in clips], metrics=["mel_l1"], output_dir=tmp, workers=0,
                     progress=False)
            for folder in sorted((Path(tmp) / "wavs").iterdir()):
                if folder.name == "ground_truth":
                    continue
                label = "griffin_lim" if folder.name == "griffin_lim" else "model"
                for wav in folder.glob("*.wav"):
                    audio, sr = sf.read(wav, dtype="float32")
                    systems[wav.stem][label] = _at16k(audio, sr)
    print(f"  corpus: {len(clips)} clips at {sorted(rates)} Hz", flush=True)
    results: dict[str, dict] = {name: {} for name in tr}
    for name, fn in tr.items():
        per: dict[str, list[dict]] = {}
        for sig in systems.values():
            ref = timer.run(name, fn, sig["ground_truth"])
            for label, audio in sig.items():
                if label == "ground_truth":
                    continue
                stats = pair_stats(ref, timer.run(name, fn, audio), SHIFT if label.startswith("shift") else 0.0)
                per.setdefault(label, []).append(stats)
        for label, rows in per.items():
            mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0] if k != "frames"}
            results[name][label] = {"mean": mean, "clips": rows}
            print(f"  corpus {label:12s} {name:10s} F0 RMSE {mean['f0_rmse_cents']:6.1f} c  median "
                  f"{mean['median_cents']:+6.1f} c  spread {mean['spread_cents']:6.1f} c  off>50c "
                  f"{mean['off_pct']:5.1f} %  V/UV {mean['vuv_error_pct']:5.1f} %  voiced {mean['voiced_pct']:4.1f} %",
                  flush=True)
    return results


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    known = {"trackers", "clips", "checkpoint", "corpus", "snrs", "contours", "crepe_threshold", "json"}
    if set(opts) - known:
        _fail(f"unknown options {sorted(set(opts) - known)} (known: {sorted(known)})")
    torch.set_num_threads(1)
    names = opts.get("trackers", "pyin,crepe-tiny,crepe-full").split(",")
    snrs = [float(s) for s in opts.get("snrs", "inf,30,20,10,0").split(",")]
    contours = [c for c in opts.get("contours", ",".join(CONTOURS)).split(",") if c]
    if set(contours) - set(CONTOURS):
        _fail(f"contours: expected some of {','.join(CONTOURS)}")
    checkpoint = opts.get("checkpoint", "checkpoints/demo-tiny/checkpoints/best.pt") or None
    clips = corpus_clips(Path(opts.get("corpus", "data/demo")), int(opts.get("clips", 12)))
    tr = trackers(names, float(opts.get("crepe_threshold", CREPE_THRESHOLD)))
    for fn in tr.values():  # warm-up: model loading and first-call compilation are not timed
        fn(np.zeros(SR // 2, np.float32) + 0.01 * np.sin(np.arange(SR // 2) / 10).astype(np.float32), SR)
    timer = Timer()
    t0 = time.perf_counter()
    print("1. synthetic signals (truth known)", flush=True)
    synth = measure_synthetic(tr, contours, snrs, timer)
    print("2. corpus clips", flush=True)
    corpus = measure_corpus(tr, clips, checkpoint, timer) if clips else {}
    print("3. CPU seconds per second of audio (1 thread)", flush=True)
    speed = {n: timer.cpu[n] / timer.audio[n] for n in tr if timer.audio.get(n)}
    for n, v in speed.items():
        print(f"  {n:10s} {v:6.3f} CPU s per audio s  ({timer.audio[n]:.0f} audio s tracked)")
    summary = {}
    for n in tr:
        rows = list(synth[n].values())
        if not rows:
            continue
        summary[n] = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
        print(f"  synthetic mean {n:10s} " + "  ".join(f"{k} {v:.2f}" for k, v in summary[n].items()))
    print(f"wall {time.perf_counter() - t0:.0f} s")
    if "json" in opts:
        Path(opts["json"]).parent.mkdir(parents=True, exist_ok=True)
        Path(opts["json"]).write_text(json.dumps({"synthetic": synth, "synthetic_mean": summary, "corpus": corpus,
                                                  "cpu_s_per_audio_s": speed, "clips": [p.stem for p in clips]},
                                                 indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
