"""File jobs: mel (or audio) files in, `<output_dir>/<name>.wav` out, and the report.

`<name>` is the input's output name from the shared `input=` resolver (`waveglow.data.inputs`):
its stem, or its path below an input folder (`x/b` for `<folder>/x/b.pt`), which is also the
key of its noise.

A job checks every input before anything is synthesized (so with on_error="fail" a bad file
stops the run before any WAV is written), then loads each input again when its batch comes
(memory holds only the inputs in flight; the output audio of a file is held whole, 4 B per
sample) and writes each WAV atomically.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from tqdm import tqdm

from waveglow.config import SynthesizeApp
from waveglow.data.audio import save_audio
from waveglow.data.inputs import InputFile, resolve_inputs
from waveglow.errors import UserError, naming
from waveglow.inference.checks import check_settings
from waveglow.inference.denoiser import zero_level_mel
from waveglow.inference.melcheck import check_recorded_settings, input_root
from waveglow.inference.noise import latent
from waveglow.mel import MEL_SUFFIXES, load_mel
from waveglow.runtime import one_thread_rate, slow_warning

if TYPE_CHECKING:  # the synthesizer imports this module
    from waveglow.inference.synthesizer import Synthesizer

log = logging.getLogger("waveglow.synthesize")

Inputs = str | os.PathLike | Sequence[str | os.PathLike]  # `input=`: file, folder, glob, filelist, or paths
OnWritten = Callable[[int, Tensor, Path], None]


@dataclass
class SynthesisReport:
    """What `to_files` did: written files, skipped ones, and how fast."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0
    samples: int = 0
    clipped_samples: int = 0
    clipped_files: int = 0

    @property
    def rtf(self) -> float:
        """Real-time factor: audio seconds produced per wall second (> 1 is faster than real time)."""
        return self.audio_seconds / self.wall_seconds if self.wall_seconds > 0 else float("inf")

    @property
    def khz(self) -> float:
        """Output samples per second, in kHz."""
        return self.samples / self.wall_seconds / 1000 if self.wall_seconds > 0 else float("inf")

    def summary(self) -> str:
        """One line: files, audio seconds, wall seconds, real-time factor, kHz, clipping."""
        line = (f"synthesized {files(len(self.written))}, {self.audio_seconds:.2f} s of audio in "
                f"{self.wall_seconds:.2f} s wall: real-time factor {self.rtf:.2f} (audio s / wall s), "
                f"{self.khz:.1f} kHz; clipped samples: {self.clipped_samples} in {files(self.clipped_files)}")
        if self.failed:
            line += f"; {files(len(self.failed))} skipped"
        return line


def files(n: int) -> str:
    """'1 file', '3 files'."""
    return f"{n} file" if n == 1 else f"{n} files"


def show_progress(progress: bool) -> bool:
    """A progress bar only when asked for and stderr is a terminal: a bar's `\r` redraws would
    otherwise fill a redirected log."""
    return bool(progress) and sys.stderr.isatty()


class FileJob:
    """One `to_files`-style run: checked inputs, the synthesis loop, atomic writes, the report.

    Shared by mel-file synthesis and copy synthesis (`resynthesize`), which adds per-file
    output lengths and a callback that sees each written waveform. Arguments as `to_files`.
    """

    def __init__(self, synth: Synthesizer, output_dir: str | os.PathLike, sigma: float, seed: int,
                 batch_size: int, denoiser_strength: float, denoiser_mel: str, subtype: str,
                 on_error: str, progress: bool, label: str = "synthesize") -> None:
        check_settings(SynthesizeApp, sigma=float(sigma), batch_size=batch_size,
                       denoiser_strength=float(denoiser_strength), denoiser_mel=denoiser_mel,
                       format=subtype, on_error=on_error)
        if denoiser_strength > 0:
            synth.denoiser(denoiser_mel)  # built before any work (a bad checkpoint fails now)
        self.out_dir = Path(output_dir)
        try:  # before any loading or synthesis: an unusable destination fails in a second
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{self.out_dir}: cannot create the output folder ({e.strerror or e})") from None
        self.t0 = time.perf_counter()
        self.synth = synth
        self.sigma, self.seed, self.batch_size = float(sigma), int(seed), int(batch_size)
        self.strength, self.denoiser_mel, self.subtype = float(denoiser_strength), denoiser_mel, subtype
        self.on_error, self.progress, self.label = on_error, progress, label
        self.report = SynthesisReport()
        self.inputs: list[InputFile] = []
        self.n_frames: list[int] = []
        self.loaders: list[Callable[[], Tensor]] = []
        self.lengths: list[int | None] = []

    def bad(self, path: Path | str, message: str) -> None:
        """Record a bad input: raise with on_error=fail, else warn and remember it."""
        if self.on_error == "fail":
            raise UserError(message)
        log.warning("skipping %s", message)
        self.report.failed.append((str(path), message))

    def add(self, inp: InputFile, n_frames: int, load: Callable[[], Tensor], length: int | None = None) -> None:
        """Queue a checked input of `n_frames` frames; `load()` gives its mel [n_mels, F] when
        needed. The output is cut to `length` samples if given."""
        self.inputs.append(inp)
        self.n_frames.append(int(n_frames))
        self.loaders.append(load)
        self.lengths.append(length)

    def _mel(self, i: int) -> Tensor:
        mel = self.loaders[i]()
        if mel.shape[-1] != self.n_frames[i]:
            raise UserError(f"{self.inputs[i].path}: changed while being synthesized; expected "
                            f"{self.n_frames[i]} frames, found {mel.shape[-1]}")
        return mel

    def run(self, on_written: OnWritten | None = None) -> SynthesisReport:
        """Synthesize the queue; `on_written(index, audio [T] as written, path)` per file."""
        s, report = self.synth, self.report
        keys = [inp.name.as_posix() for inp in self.inputs]
        bar = tqdm(total=len(self.inputs), unit="file", desc=self.label, disable=not show_progress(self.progress),
                   leave=False, file=sys.stderr)
        for i, audio in s.decoder.run(self.n_frames, self._mel, keys, self.seed, self.sigma, self.batch_size):
            bar.update(1)
            path, name = self.inputs[i]
            if self.lengths[i] is not None:
                audio = audio[: self.lengths[i]]
            if not torch.isfinite(audio).all():
                self.bad(path, f"{path}: synthesis produced NaN/Inf samples (precision={s.precision}); "
                               "expected finite audio - try precision=fp32")
                continue
            audio = s.denoise(audio, self.strength, self.denoiser_mel)
            self._write(name, audio)
            if on_written is not None:
                on_written(i, audio.clamp(-1.0, 1.0), path)
        bar.close()
        report.wall_seconds = time.perf_counter() - self.t0
        message = slow_synthesis_warning(s, report.khz, report.wall_seconds)
        if message:
            log.warning(message)
        if not report.written:
            listed = "; ".join(reason for _, reason in report.failed) or "no inputs"
            raise UserError(f"no file could be synthesized ({listed})")
        return report

    def _write(self, name: Path, audio: Tensor) -> None:
        s, report = self.synth, self.report
        target = self.out_dir / name.parent / f"{name.name}.wav"
        try:
            clipped = save_audio(target, audio, s.sampling_rate, subtype=self.subtype)
        except OSError as e:  # disk full, folder removed: every later file would fail too
            raise UserError(f"{target}: cannot write ({e.strerror or e})") from None
        if clipped:
            log.info("%s: %d samples clipped to [-1, 1]", target, clipped)
            report.clipped_samples += clipped
            report.clipped_files += 1
        report.written.append(target)
        report.samples += audio.shape[-1]
        report.audio_seconds += audio.shape[-1] / s.sampling_rate


# A job shorter than this is not worth a one-thread measurement, whatever its speed.
CHECK_AFTER_S = 3.0


def slow_synthesis_warning(synth: Synthesizer, khz: float, wall_seconds: float, *, threads: int | None = None,
                           expected_khz: float | None = None) -> str | None:
    """The warning for a CPU job that ran at under a quarter of one thread's kHz with this model
    (several threads fighting other work for the cores; `waveglow.runtime.slow_warning`), or None.

    Args:
        synth: the synthesizer that ran the job.
        khz: the job's output kHz (wall clock); wall_seconds: its duration.
        threads: its intra-op threads (default: torch's current count).
        expected_khz: one thread's kHz (default: measured now, `one_thread_khz`; only when the
            job ran on the CPU with several threads for at least `CHECK_AFTER_S`).
    """
    threads = torch.get_num_threads() if threads is None else int(threads)
    if synth.device.type != "cpu" or threads <= 1 or wall_seconds < CHECK_AFTER_S:
        return None
    expected = one_thread_khz(synth) if expected_khz is None else float(expected_khz)
    return slow_warning("synthesis", khz, expected, "kHz", threads)


def one_thread_khz(synth: Synthesizer, frames: int | None = None) -> float:
    """kHz of one thread of this machine decoding `frames` frames with `synth` (CPU time: other
    processes on the core do not lower it). Default: 32 frames, 8 for models over 20M parameters
    (about a second for waveglow_256). Short decodes carry more per-call overhead, so the figure
    is below the bench's (tiny: ~70 kHz at 16 frames, ~93 at 64 on a loaded 2-core machine),
    which makes the check cautious rather than quick to warn."""
    if frames is None:
        frames = 8 if sum(p.numel() for p in synth.model.parameters()) > 20_000_000 else 32
    mel = zero_level_mel("mean", synth.model.mel_mean, synth.mel_floor, frames)
    z = latent(0, 0, 0, frames, synth.hop_length, 0.6)

    def decode() -> None:
        with torch.inference_mode():
            synth.decoder.decode_batch([mel], [z])

    return one_thread_rate(decode, synth.hop_length * frames) / 1000.0


def synthesize_files(synth: Synthesizer, inputs: Inputs, output_dir: str | os.PathLike, *, sigma: float = 0.6,
                     seed: int = 0, batch_size: int = 8, denoiser_strength: float = 0.0,
                     denoiser_mel: str = "mean", subtype: str = "PCM_16", on_error: str = "fail",
                     progress: bool = True, input_convention: str = "natural") -> SynthesisReport:
    """`Synthesizer.to_files`: mel files -> `<output_dir>/<stem>.wav` (see there).

    Each input is checked before anything is synthesized: readable, the checkpoint's shape,
    sane values, made with the checkpoint's audio settings when its folder records them
    (`mel.config.yaml`), and compared with the model's mel statistics (one warning line per
    likely convention mistake in the whole run).
    """
    job = FileJob(synth, output_dir, sigma, seed, batch_size, denoiser_strength, denoiser_mel, subtype,
                  on_error, progress)
    checker = synth.convention_check(input_convention)
    recorded: dict[Path, object] = {}
    where = str(synth.checkpoint) if synth.checkpoint is not None else "the model"

    def load(path: Path) -> Tensor:
        return checker.prepare(load_mel(path, synth.n_mels, constant_ok=True), str(path), advise=False)

    for inp in resolve_inputs(inputs, MEL_SUFFIXES, kind="mel"):
        try:
            check_recorded_settings(inp.path, input_root(inp.path, inp.name), synth.audio, where, recorded)
            # A constant is judged by the checker: the log floor (digital silence) is synthesized.
            raw = checker.check_constant(load_mel(inp.path, synth.n_mels, constant_ok=True), str(inp.path))
            checker.observe(raw, str(inp.path))
        except UserError as e:
            job.bad(inp.path, str(naming(inp.path, e)))
            continue
        # Checked now, loaded again when its batch comes: memory holds only the mels in flight,
        # not the whole input set.
        job.add(inp, raw.shape[-1], lambda path=inp.path: load(path))
    checker.warn(log)
    return job.run()
