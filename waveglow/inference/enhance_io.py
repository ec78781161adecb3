"""Files in, files out, for `waveglow-enhance`: the inputs' checks, the outputs (same rate,
length and sample format; unchanged files copied byte for byte) and the report (.csv / .json).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import soundfile as sf
import torch
from torch import Tensor
from tqdm import tqdm

from waveglow.config import EnhanceApp
from waveglow.data.audio import load_audio, save_audio
from waveglow.errors import UserError
from waveglow.fileio import write_bytes_atomic, write_text_atomic
from waveglow.inference.checks import check_settings
from waveglow.inference.convert import Inputs, checked_inputs
from waveglow.inference.jobs import show_progress

if TYPE_CHECKING:
    from waveglow.inference.enhance import Enhancer, EnhanceResult

# Full scale of each writable PCM subtype (libsndfile reads integer PCM as k / scale).
PCM_SCALE = {"PCM_S8": 2.0**7, "PCM_U8": 2.0**7, "PCM_16": 2.0**15, "PCM_24": 2.0**23}
SUBTYPES = (*PCM_SCALE, "FLOAT")


def quantize(audio: Tensor, subtype: str) -> Tensor:
    """Round float audio [T] to what a file of `subtype` stores (clipped to its range).

    Samples already on the grid (read from such a file) come back unchanged, bit for bit.
    """
    if subtype == "FLOAT":
        return audio.float()
    scale = PCM_SCALE[subtype]
    return (torch.round(audio.double() * scale).clamp(-scale, scale - 1) / scale).float()


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
