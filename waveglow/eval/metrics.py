"""The objective metrics of a vocoder evaluation: what each one is, its unit and direction, and
how one clip's reference and output are measured.

Each metric is a thin wrapper over the library that defines it (PESQ: `pesq`, ITU-T P.862.2
wide-band; STOI / extended STOI: `pystoi`; F0 and voicing: librosa's pYIN, `pitch`; MCD:
`mcd`) or over the toolkit's own definition (log-mel L1 and the multi-resolution STFT distance of
`waveglow.inference.metrics`, as training validation reports them). The exact log-likelihood and
the real-time factor are measured where the model runs (`run`), not here.

A metric that cannot be defined for a clip (PESQ and STOI of a silent clip, F0 error without a
frame voiced in both) is None for that clip, with the reason in the record's notes.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from waveglow.inference.metrics import mel_l1, multi_resolution_stft_distance

log = logging.getLogger("waveglow.eval")

PESQ_RATE = 16000  # wide-band PESQ is defined at 16 kHz: every clip is resampled to it
PESQ_MIN_SECONDS = 0.25  # the pesq package refuses shorter buffers ("at least 1/4 of a second")


@dataclass(frozen=True)
class Metric:
    """What a column of the results means.

    Attributes:
        name: the column name (metrics.csv, summary.json, TensorBoard `eval/<name>`).
        title: for tables and the report.
        unit: the unit (or scale) of the values.
        higher_is_better: the direction.
        source: the library (or toolkit module) that computes it.
        package: the importable module it needs ("" for none beyond the core dependencies).
    """

    name: str
    title: str
    unit: str
    higher_is_better: bool
    source: str
    package: str = ""

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"

    @property
    def label(self) -> str:
        """'PESQ (MOS-LQO, higher is better)'."""
        return f"{self.title} ({self.unit}, {self.direction})"


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("log_likelihood", "log-likelihood", "nats/sample", True, "the model's exact flow density"),
    Metric("mel_l1", "log-mel L1", "ln units", False, "waveglow.inference.metrics (training validation)"),
    Metric("mr_stft", "MR-STFT distance", "SC + log-mag L1", False, "waveglow.inference.metrics"),
    Metric("pesq", "PESQ wide-band", "MOS-LQO 1-4.64", True, "pesq (ITU-T P.862.2, 16 kHz)", "pesq"),
    Metric("stoi", "STOI", "0-1", True, "pystoi", "pystoi"),
    Metric("estoi", "extended STOI", "0-1", True, "pystoi (extended=True)", "pystoi"),
    Metric("f0_rmse", "F0 RMSE", "cents", False, "librosa pYIN, frames voiced in both"),
    Metric("vuv_error", "V/UV error", "% of frames", False, "librosa pYIN voicing decisions"),
    Metric("mcd", "MCD (DTW)", "dB", False, "mel-cepstra of the log-mel, librosa DTW"),
    Metric("rtf", "real-time factor", "audio s / wall s", True, "wall clock of the synthesis"),
)}

# Measured from the audio of a clip and its reference (in worker processes).
PAIRWISE = ("mel_l1", "mr_stft", "pesq", "stoi", "estoi", "f0_rmse", "vuv_error", "mcd")
# Measured where the system runs.
SYSTEM_LEVEL = ("log_likelihood", "rtf")
# The extra that installs a metric's package.
EXTRA = "eval"


def available(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split metric names into (computable, missing) by whether their package imports.

    One warning per missing package names the extra that installs it.
    """
    ok, missing, warned = [], [], set()
    for name in names:
        package = METRICS[name].package
        if package and importlib.util.find_spec(package) is None:
            missing.append(name)
            if package not in warned:
                warned.add(package)
                skipped = [n for n in names if METRICS[n].package == package]
                log.warning("%s: the package %r is not installed, skipping %s; install it with "
                            "pip install 'waveglow[%s]' (or make install)", ", ".join(skipped), package,
                            "it" if len(skipped) == 1 else "them", EXTRA)
        else:
            ok.append(name)
    return ok, missing


# ------------------------------------------------------------------------------ measurements
def pesq_wb(reference16: np.ndarray, output16: np.ndarray) -> float:
    """Wide-band PESQ (MOS-LQO, 1.04 ... 4.64) of 16 kHz signals [T] (the shorter length is used).

    Raises:
        ValueError: undefined for this pair (shorter than 0.25 s, no utterance found).
    """
    from pesq import PesqError, pesq

    n = min(reference16.size, output16.size)
    try:
        return float(pesq(PESQ_RATE, reference16[:n].astype(np.float64), output16[:n].astype(np.float64), "wb"))
    except PesqError as e:
        raise ValueError(f"PESQ undefined ({type(e).__name__})") from None


def stoi_pair(reference: np.ndarray, output: np.ndarray, sampling_rate: int, extended: bool) -> float:
    """STOI or extended STOI (0 ... 1) of two signals [T] at `sampling_rate` (resampled by pystoi).

    Raises:
        ValueError: undefined (pystoi finds fewer than its 30 analysis frames of speech).
    """
    from pystoi import stoi

    n = min(reference.size, output.size)
    if n == 0 or float(np.max(np.abs(reference[:n]))) < 1e-4:
        raise ValueError("STOI undefined (silent reference)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(stoi(reference[:n], output[:n], sampling_rate, extended=extended))
    if any("Not enough STFT frames" in str(w.message) for w in caught) or not math.isfinite(value):
        raise ValueError("STOI undefined (fewer than 30 frames of speech after silence removal)")
    return value


@dataclass
class ClipTask:
    """Everything a worker needs to measure one clip against every system.

    Attributes:
        clip: the clip's name.
        reference: ground-truth audio [T] at `sampling_rate`, float32.
        outputs: system label -> its audio [T'] (cut to T by the measurements).
        sampling_rate: Hz.
        audio: the checkpoint's feature settings (dict), for the log-mel frontend.
        metrics: the pairwise metric names to compute.
    """

    clip: str
    reference: np.ndarray
    outputs: dict[str, np.ndarray]
    sampling_rate: int
    audio: dict[str, Any]
    metrics: tuple[str, ...]


@dataclass
class ClipResult:
    """A worker's answer: per system {metric: value or None}, notes, and per metric the wall and
    the CPU seconds (this worker's process time) spent on the clip, all systems together."""

    clip: str
    values: dict[str, dict[str, float | None]]
    notes: dict[str, list[str]]
    seconds: dict[str, float]
    cpu_seconds: dict[str, float] = field(default_factory=dict)


class _Features:
    """Per-signal intermediate results (16 kHz copy, F0 track, mel-cepstra), computed once."""

    def __init__(self, audio: np.ndarray, sampling_rate: int, mel_fn: Callable[[torch.Tensor], torch.Tensor]):
        self.audio = audio
        self.sr = sampling_rate
        self.mel_fn = mel_fn
        self._cache: dict[str, Any] = {}

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def at16k(self) -> np.ndarray:
        import librosa

        return self.get("16k", lambda: self.audio if self.sr == PESQ_RATE else
                        librosa.resample(self.audio, orig_sr=self.sr, target_sr=PESQ_RATE).astype(np.float32))

    def pitch(self) -> Any:
        from waveglow.eval.pitch import track

        return self.get("pitch", lambda: track(self.at16k(), PESQ_RATE))

    def cepstra(self) -> np.ndarray:
        from waveglow.eval.mcd import mel_cepstra

        def make() -> np.ndarray:
            with torch.inference_mode():
                return mel_cepstra(self.mel_fn(torch.from_numpy(self.audio)).numpy())

        return self.get("cep", make)


def _jobs(ref: _Features, out: _Features, mel_fn: Callable[[torch.Tensor], torch.Tensor]
          ) -> dict[str, Callable[[], float]]:
    """metric name -> how to measure `out` against `ref` (both at the clip's rate)."""
    from waveglow.eval.mcd import mcd_dtw
    from waveglow.eval.pitch import f0_rmse_cents, vuv_error

    ref_t, out_t, sr = torch.from_numpy(ref.audio), torch.from_numpy(out.audio), ref.sr
    return {
        "mel_l1": lambda: mel_l1(ref_t, out_t, mel_fn),
        "mr_stft": lambda: multi_resolution_stft_distance(ref_t, out_t)["distance"],
        "pesq": lambda: pesq_wb(ref.at16k(), out.at16k()),
        "stoi": lambda: stoi_pair(ref.audio, out.audio, sr, extended=False),
        "estoi": lambda: stoi_pair(ref.audio, out.audio, sr, extended=True),
        "f0_rmse": lambda: f0_rmse_cents(ref.pitch(), out.pitch()),
        "vuv_error": lambda: vuv_error(ref.pitch(), out.pitch()),
        "mcd": lambda: mcd_dtw(ref.cepstra(), out.cepstra()),
    }


def measure_clip(task: ClipTask) -> ClipResult:
    """Every pairwise metric of every system of one clip (runs in a worker process).

    Args:
        task: the clip, its reference and the systems' outputs.

    Returns:
        A `ClipResult`; a metric undefined for a system is None with a note saying why.
    """
    from waveglow.mel import MelSpectrogram

    torch.set_num_threads(1)  # one process per core: no oversubscription
    mel_fn = MelSpectrogram(**task.audio).eval()
    sr = task.sampling_rate
    ref = _Features(task.reference.astype(np.float32), sr, mel_fn)
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    values: dict[str, dict[str, float | None]] = {}
    notes: dict[str, list[str]] = {}
    for system, audio in task.outputs.items():
        audio = audio.astype(np.float32)[: ref.audio.size]
        if audio.size < ref.audio.size:
            audio = np.pad(audio, (0, ref.audio.size - audio.size))
        # The ground truth against itself shares the reference's intermediate results.
        out = ref if np.array_equal(audio, ref.audio) else _Features(audio, sr, mel_fn)
        jobs = _jobs(ref, out, mel_fn)
        row: dict[str, float | None] = {}
        why: list[str] = []
        for name in task.metrics:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                with torch.inference_mode():
                    row[name] = float(jobs[name]())
            except ValueError as e:  # undefined for this pair (silence, no voiced frame, ...)
                row[name] = None
                why.append(f"{name}: {e}")
            except Exception as e:  # a library's own failure on one clip: that value only is lost
                row[name] = None
                why.append(f"{name}: failed ({type(e).__name__}: {str(e)[:120]})")
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
            cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0
        values[system] = row
        notes[system] = why
    return ClipResult(task.clip, values, notes, seconds, cpu)
