"""Hostile and broken input, table-driven, through the real console scripts.

Every row of `CASES` writes one kind of bad input (a file, a corpus, a setting) into its own
folder and runs one console script on it as a subprocess. What a user must see:

* error rows: exit status 2, exactly one `error: ...` line
  on stderr that names the offending file or setting and says what is wrong, no traceback;
* ok rows (8 channels, 8 kHz, 48 kHz): exit 0 and outputs of the expected length (resampled to
  the configured rate, channels averaged);
* skip rows (`on_error=skip`, preprocessing's skip-and-report): exit 0, every bad file named
  with its problem, the good files written;
* always: nothing written for the bad file (no .wav/.pt/.npy of its stem, no output file), no
  temporary file left anywhere in the case folder, and no sentinel file from a malicious pickle
  (its `__reduce__` would `touch` it if the file were ever unpickled the unsafe way).

A console script costs about 3 s of CPU to start (importing torch), 70 starts more than the
rest of the module together, so the rows run as forked children of one process that imported the
toolkit once (`cli_forks.run_forked`: each still its own process, exit status, stdout/stderr and
working directory, calling the script's entry point as the console-script wrapper does), several
at a time, once per module (`outcomes`); each test only checks its row's result. The installed
wrapper scripts themselves are run by tests/cli/test_cli_config.py (`--help` of every script).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from cli_forks import Job, run_forked
from conftest import DEMO_ROOT, compose

from waveglow.checkpoint import build_checkpoint, build_model, save_checkpoint
from waveglow.config import to_dict

SR = 22050
HOP = 256
N_MELS = 80
OUTPUT_SUFFIXES = {".wav", ".flac", ".pt", ".npy"}
# Temp names used by the toolkit: the atomic writer's `.<name>.<pid>.<random>.tmp` and the
# download's extraction folder `.<corpus>.extracting-<random>`.
TEMP_NAME = re.compile(r"^\..*(\.tmp\d*|\.extracting-.*)$")
PARALLEL_RUNS = 2  # children at a time: the machine's 2 cores


class Payload:
    """Unpickled the usual way (`torch.load(weights_only=False)`), this runs `os.system(command)`."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (self.command,))


# ------------------------------------------------------------------------------ the table


@dataclass
class Plan:
    """How to run one case and what to expect.

    Attributes:
        args: Hydra overrides for the console script.
        expect: "error" (exit `rc`, one `error:` line), "ok" or "skip" (exit 0).
        names: strings (paths, setting names) the error line must contain.
        problem: regex (case-insensitive) the error line must match.
        rc: expected exit status of an error case.
        out_dirs: folders that must hold no output of a stem in `bad_stems`.
        bad_stems: stems of the bad inputs.
        absent: paths that must not exist afterwards (output files, folders not to create).
        sentinel: the file a malicious pickle would create.
        skipped: for skip cases, bad path -> regex of its problem; each must be named on stderr.
        check: extra checks of a successful run (outputs and their lengths).
    """

    args: list[str]
    expect: str = "error"
    names: list[str] = field(default_factory=list)
    problem: str = ""
    rc: int = 2
    out_dirs: list[Path] = field(default_factory=list)
    bad_stems: list[str] = field(default_factory=list)
    absent: list[Path] = field(default_factory=list)
    sentinel: Path | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    check: Callable[[subprocess.CompletedProcess], None] | None = None


@dataclass(frozen=True)
class Shared:
    """Fixtures every case may use (built once per module).

    Attributes:
        root: folder of the shared files.
        checkpoint: a good checkpoint of an untrained tiny model.
        config: its resolved config (plain dict).
        state: its state_dict.
        mel: a good mel file [80, 20] (.pt).
        wav: a good 22.05 kHz clip of the demo corpus.
    """

    root: Path
    checkpoint: Path
    config: dict
    state: dict
    mel: Path
    wav: Path


@dataclass(frozen=True)
class Case:
    """One kind of bad input: `build(case_dir, shared) -> Plan` writes it and says what to expect."""

    id: str
    cli: str
    build: Callable[[Path, Shared], Plan]
    bug: str | None = None  # set while a CLI is known to mishandle this input (xfail, strict)


# ------------------------------------------------------------------------------ writers


def tone(n: int, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Speech-level test audio: a 220 Hz tone with harmonics and a little noise, [n] or [n, channels]."""
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    base = 0.2 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.sin(2 * np.pi * 660 * t)
    if channels == 1:
        return (base + 0.01 * rng.standard_normal(n)).astype(np.float32)
    return np.stack([base * (1 + 0.1 * c) + 0.01 * rng.standard_normal(n) for c in range(channels)],
                    axis=1).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, sr, subtype=subtype)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_pt(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def good_mel(frames: int = 20, seed: int = 0) -> torch.Tensor:
    """A plausible raw log-mel [80, frames] (values around log(0.01))."""
    g = torch.Generator().manual_seed(seed)
    return -4.0 + torch.randn(N_MELS, frames, generator=g)


def make_corpus(root: Path, n_good: int, extra_ids: tuple[str, ...] = ()) -> Path:
    """An LJSpeech-layout corpus: the first `n_good` demo clips plus metadata lines `extra_ids`."""
    (root / "wavs").mkdir(parents=True)
    lines = (DEMO_ROOT / "metadata.csv").read_text().strip().splitlines()[:n_good]
    for line in lines:
        clip_id = line.split("|", 1)[0]
        shutil.copy(DEMO_ROOT / "wavs" / f"{clip_id}.wav", root / "wavs" / f"{clip_id}.wav")
    lines += [f"{clip_id}|Some text.|Some text." for clip_id in extra_ids]
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    return root


def corpus_args(root: Path) -> list[str]:
    """Overrides for a small corpus in tmp: one val and one test clip, one worker."""
    return ["data=demo", f"data.root={root}", "data.splits.n_val=1", "data.splits.n_test=1",
            "data.num_workers=1", "progress=false"]


def checkpoint_dict(shared: Shared, **changes: Any) -> dict:
    state = {"format_version": 1, "model": shared.state, "config": shared.config, "step": 0, "epoch": 0,
             "metrics": {}}
    state.update(changes)
    return state


def sentinel_payload(case_dir: Path) -> tuple[Payload, Path]:
    sentinel = case_dir / "PWNED"
    return Payload(f"touch {sentinel}"), sentinel


def a_regular_file(case_dir: Path) -> Path:
    """A plain file, so that `<it>/sub` is an output folder that cannot be created.

    The tests run as root, and root ignores permission bits: a `chmod 555` folder stays
    writable. Creating a folder below a regular file fails with ENOTDIR for every user (root
    included) on every file system, so it is the unwritable output used here.
    """
    return write_bytes(case_dir / "not_a_dir", b"a file, not a folder\n")


# ------------------------------------------------------------------------------ builders
# Each returns the Plan for its case; `d` is the case's own empty folder.


def synth_args(shared: Shared, inp: Path, out: Path, *extra: str) -> list[str]:
    return [f"checkpoint={shared.checkpoint}", f"input={inp}", f"output_dir={out}", "device=cpu",
            "progress=false", *extra]


def score_args(ckpt: Path, inp: Path, out: Path) -> list[str]:
    return [f"checkpoint={ckpt}", f"input={inp}", f"output={out}", "device=cpu", "progress=false"]


def mel_error(d: Path, path: Path, problem: str) -> Plan:
    """waveglow-mel on one bad audio file."""
    out = d / "out"
    return Plan([f"input={path}", f"output_dir={out}", "progress=false"], names=[str(path)],
                problem=problem, out_dirs=[out], bad_stems=[path.stem])


def resynth_error(d: Path, s: Shared, path: Path, problem: str) -> Plan:
    """waveglow-resynthesize on one bad audio file."""
    out = d / "out"
    return Plan(synth_args(s, path, out), names=[str(path)], problem=problem, out_dirs=[out],
                bad_stems=[path.stem], absent=[out / "metrics.csv"])


def score_error(d: Path, path: Path, problem: str, ckpt: Path) -> Plan:
    """waveglow-score of one audio file with checkpoint `ckpt`."""
    out = d / "out" / "scores.csv"
    return Plan(score_args(ckpt, path, out), names=[str(path)], problem=problem,
                absent=[out, out.with_name("scores_frames.csv")])


def synth_error(d: Path, s: Shared, mel: Path, problem: str, ckpt: Path | None = None) -> Plan:
    """waveglow-synthesize of one mel file (with a bad mel or a bad checkpoint)."""
    out = d / "out"
    args = synth_args(s, mel, out)
    if ckpt is not None:
        args[0] = f"checkpoint={ckpt}"
    bad = ckpt if ckpt is not None else mel
    return Plan(args, names=[str(bad)], problem=problem, out_dirs=[out], bad_stems=[mel.stem])


def b_wav_corrupt(d: Path, s: Shared) -> Plan:
    # A RIFF/WAVE header followed by noise: no fmt or data chunk libsndfile can parse.
    junk = np.random.default_rng(1).bytes(4000)
    path = write_bytes(d / "corrupt.wav", b"RIFF" + struct.pack("<I", 4 + len(junk)) + b"WAVE" + junk)
    return mel_error(d, path, r"cannot read|corrupt")


def b_wav_truncated_header(d: Path, s: Shared) -> Plan:
    path = write_bytes(d / "cut_header.wav", s.wav.read_bytes()[:30])
    return resynth_error(d, s, path, r"cannot read|truncated")


def b_wav_truncated_data(d: Path, s: Shared) -> Plan:
    # An interrupted copy: the header promises 12,462 samples, the file holds half of them.
    data = s.wav.read_bytes()
    path = write_bytes(d / "cut_data.wav", data[: len(data) // 2])
    return mel_error(d, path, r"truncated")


def b_wav_empty_file(d: Path, s: Shared) -> Plan:
    path = write_bytes(d / "empty.wav", b"")
    return score_error(d, path, r"cannot read|empty", s.checkpoint)


def b_wav_is_text(d: Path, s: Shared) -> Plan:
    path = write_bytes(d / "notes.wav", b"these are my notes, not audio\n" * 20)
    return mel_error(d, path, r"cannot read")


def b_mp3_named_text(d: Path, s: Shared) -> Plan:
    path = write_bytes(d / "song.mp3", b"ID3 not really an mp3\n" * 20)
    return mel_error(d, path, r"unsupported|\.wav")


def b_wav_zero_frames(d: Path, s: Shared) -> Plan:
    path = write_wav(d / "no_frames.wav", np.zeros(0, np.float32))
    return resynth_error(d, s, path, r"empty|0 samples")


def b_wav_one_sample_mel(d: Path, s: Shared) -> Plan:
    path = write_wav(d / "one_sample.wav", np.full(1, 0.1, np.float32))
    return mel_error(d, path, r"too short|1 sample")


def b_wav_one_sample_resynth(d: Path, s: Shared) -> Plan:
    path = write_wav(d / "one_sample.wav", np.full(1, 0.1, np.float32))
    return resynth_error(d, s, path, r"too short|1 sample")


def b_wav_nan(d: Path, s: Shared) -> Plan:
    audio = tone(SR // 2, SR)
    audio[1000:1010] = np.nan
    path = write_wav(d / "nan.wav", audio, subtype="FLOAT")
    return score_error(d, path, r"NaN", s.checkpoint)


def b_wav_inf(d: Path, s: Shared) -> Plan:
    audio = tone(SR // 2, SR)
    audio[500] = np.inf
    path = write_wav(d / "inf.wav", audio, subtype="FLOAT")
    return mel_error(d, path, r"Inf")


def _mel_frames_check(path: Path, frames: int) -> Callable[[subprocess.CompletedProcess], None]:
    def check(proc: subprocess.CompletedProcess) -> None:
        mel = torch.load(path, map_location="cpu", weights_only=True)
        assert tuple(mel.shape) == (N_MELS, frames), mel.shape
        assert torch.isfinite(mel).all()

    return check


def b_wav_8_channels(d: Path, s: Shared) -> Plan:
    n = SR // 2
    path = write_wav(d / "eight.wav", tone(n, SR, channels=8))
    out = d / "out"
    frames_check = _mel_frames_check(out / "eight.pt", 1 + n // HOP)

    def check(proc: subprocess.CompletedProcess) -> None:
        frames_check(proc)
        # Mixed down as the mean of the channels (not, e.g., the first channel only).
        from waveglow.mel import MelSpectrogram

        audio, _ = sf.read(path, dtype="float32", always_2d=True)
        want = MelSpectrogram.from_config(s.config["audio"])(torch.from_numpy(audio.mean(axis=1)))
        got = torch.load(out / "eight.pt", map_location="cpu", weights_only=True)
        assert (got - want).abs().max().item() < 1e-3

    return Plan([f"input={path}", f"output_dir={out}", "progress=false"], expect="ok", check=check)


def b_wav_8khz(d: Path, s: Shared) -> Plan:
    n = 4000  # 0.5 s at 8 kHz -> ceil(4000 * 22050 / 8000) = 11025 samples at 22.05 kHz
    path = write_wav(d / "low.wav", tone(n, 8000), sr=8000)
    out = d / "out"
    mel_check = _mel_frames_check(out / "low.pt", 1 + 11025 // HOP)

    def check(proc: subprocess.CompletedProcess) -> None:
        mel_check(proc)
        assert re.search(r"8 kHz.*resampled", proc.stderr), proc.stderr

    return Plan([f"input={path}", f"output_dir={out}", "progress=false"], expect="ok", check=check)


def b_wav_48khz(d: Path, s: Shared) -> Plan:
    n = 24000  # 0.5 s at 48 kHz -> 11025 samples at 22.05 kHz
    path = write_wav(d / "high.wav", tone(n, 48000), sr=48000)
    out = d / "out"

    def check(proc: subprocess.CompletedProcess) -> None:
        audio, sr = sf.read(out / "high.wav", dtype="float32")
        assert sr == SR and audio.shape == (11025,), (sr, audio.shape)
        assert (out / "metrics.csv").exists()
        assert re.search(r"48 kHz.*resampled", proc.stderr), proc.stderr

    return Plan(synth_args(s, path, out), expect="ok", check=check)


def b_mel_wrong_n_mels(d: Path, s: Shared) -> Plan:
    return synth_error(d, s, write_pt(d / "forty.pt", good_mel()[:40]), r"80 mel channels")


def b_mel_1d(d: Path, s: Shared) -> Plan:
    return synth_error(d, s, write_pt(d / "flat.pt", good_mel()[:, 0]), r"shape")


def b_mel_nan(d: Path, s: Shared) -> Plan:
    mel = good_mel()
    mel[3, 5] = float("nan")
    return synth_error(d, s, write_pt(d / "nan.pt", mel), r"NaN")


def b_mel_empty(d: Path, s: Shared) -> Plan:
    return synth_error(d, s, write_pt(d / "empty.pt", torch.zeros(N_MELS, 0)), r"empty|0 frames")


def b_pt_truncated(d: Path, s: Shared) -> Plan:
    data = s.mel.read_bytes()
    path = write_bytes(d / "cut.pt", data[: len(data) // 2])
    return synth_error(d, s, path, r"truncated|corrupt")


def b_pt_dict(d: Path, s: Shared) -> Plan:
    return synth_error(d, s, write_pt(d / "wrapped.pt", {"mel": good_mel()}), r"dict.*not a tensor")


def b_pickle_in_mel(d: Path, s: Shared) -> Plan:
    payload, sentinel = sentinel_payload(d)
    plan = synth_error(d, s, write_pt(d / "evil.pt", payload), r"refused|not a tensor")
    plan.sentinel = sentinel
    return plan


def npy_with_header(path: Path, shape: tuple[int, ...], descr: str = "<f4", fortran: bool = False,
                    data: bytes = b"") -> Path:
    """An .npy file whose header says `shape`/`descr` followed by `data` (which may be far less)."""
    header = {"descr": descr, "fortran_order": fortran, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)  # magic, header length, header
    return write_bytes(path, buf.getvalue() + data)


def b_pt_zero_bytes(d: Path, s: Shared) -> Plan:
    return synth_error(d, s, write_bytes(d / "zero.pt", b""), r"empty.*0 bytes")


def b_npy_header_promises_more(d: Path, s: Shared) -> Plan:
    # The header promises 80 x 100,000 float32 (32 MB); 400 bytes follow.
    path = npy_with_header(d / "liar.npy", (N_MELS, 100_000), data=b"\0" * 400)
    return synth_error(d, s, path, r"truncated.*header promises")


def b_npy_huge_frame_count(d: Path, s: Shared) -> Plan:
    # 80 x 2^40 float32 would be 320 TiB: must be refused from the header, never allocated.
    path = npy_with_header(d / "huge.npy", (N_MELS, 2**40), data=good_mel().numpy().tobytes())
    return synth_error(d, s, path, r"truncated.*header promises")


def b_mel_file_neighbours(d: Path, s: Shared) -> Plan:
    """The neighbours of the lying-file kinds, on_error=skip in one run: each bad file named with
    its problem, the unusual but valid ones (Fortran order, big-endian float64) synthesized."""
    inp, out = d / "mels", d / "out"
    inp.mkdir()
    objects = inp / "objects.npy"
    np.save(objects, np.array([{"mel": 1}], dtype=object), allow_pickle=True)
    np.save(inp / "ints.npy", np.zeros((N_MELS, 20), dtype=np.int16))
    np.save(inp / "complex.npy", good_mel().numpy().astype(np.complex64))
    np.save(inp / "fortran.npy", np.asfortranarray(good_mel(20, seed=3).numpy()))
    np.save(inp / "big_endian.npy", good_mel(17, seed=4).numpy().astype(">f8"))
    bad = {
        write_bytes(inp / "zero.npy", b""): r"empty.*0 bytes",
        objects: r"dtype object",
        inp / "ints.npy": r"float array.*dtype int16",
        inp / "complex.npy": r"float array.*dtype complex64",
        write_bytes(inp / "notes.npy", b"80 20\n1 2 3\n" * 10): r"not a readable \.npy",
        write_bytes(inp / "magic.npy", np.lib.format.magic(1, 0)): r"not a readable \.npy",
        npy_with_header(inp / "short.npy", (N_MELS, 20), data=b"\0" * 100): r"truncated.*header promises",
        write_pt(inp / "complex_t.pt", good_mel().to(torch.complex64)): r"dtype.*complex",
        write_pt(inp / "ints_t.pt", torch.zeros(N_MELS, 20, dtype=torch.int32)): r"dtype.*int32",
        write_pt(inp / "bools.pt", torch.ones(N_MELS, 20, dtype=torch.bool)): r"dtype.*bool",
        write_pt(inp / "scalar.pt", torch.tensor(-4.0)): r"shape",
        write_pt(inp / "nested.pt", {"a": [good_mel()]}): r"dict.*not a tensor",
    }

    def check(proc: subprocess.CompletedProcess) -> None:
        for stem, frames in (("fortran", 20), ("big_endian", 17)):
            audio, sr = sf.read(out / f"{stem}.wav", dtype="float32")
            assert sr == SR and audio.shape == (HOP * frames,)
        assert f"{len(bad)} files skipped" in proc.stdout, proc.stdout

    return Plan(synth_args(s, inp, out, "on_error=skip"), expect="skip", out_dirs=[out],
                bad_stems=[p.stem for p in bad], skipped={str(p): problem for p, problem in bad.items()},
                check=check)


def b_pt_sparse(d: Path, s: Shared) -> Plan:
    return synth_error(d, s, write_pt(d / "sparse.pt", good_mel().to_sparse()), r"sparse")


def b_mel_absurd_values(d: Path, s: Shared) -> Plan:
    mel = good_mel()
    mel[:, 5] = 1e30
    return synth_error(d, s, write_pt(d / "absurd.pt", mel), r"beyond any log-mel convention")


def b_mel_constant(d: Path, s: Shared) -> Plan:
    return synth_error(d, s, write_pt(d / "flat.pt", torch.zeros(N_MELS, 20)), r"constant")


def b_mel_db_convention_warns(d: Path, s: Shared) -> Plan:
    """A dB mel given as natural log: written, with ONE warning line that names the fix."""
    out = d / "out"
    path = write_pt(d / "decibels.pt", good_mel(40, seed=5) * 20 / float(np.log(10.0)))
    plan = Plan(synth_args(s, path, out), expect="ok")

    def check(proc: subprocess.CompletedProcess) -> None:
        audio, sr = sf.read(out / "decibels.wav", dtype="float32")
        assert sr == SR and audio.shape == (HOP * 40,)
        hints = [line for line in proc.stderr.splitlines() if "looks like" in line]
        assert len(hints) == 1 and "dB" in hints[0] and "input_convention=db" in hints[0], proc.stderr

    plan.check = check
    return plan


def b_mel_folder_other_rate(d: Path, s: Shared) -> Plan:
    """Mels that waveglow-mel made at 16 kHz (its mel.config.yaml says so) for a 22.05 kHz model."""
    folder, out = d / "mels16k", d / "out"
    write_pt(folder / "a.pt", good_mel())
    (folder / "mel.config.yaml").write_text("audio:\n  sampling_rate: 16000\n  hop_length: 200\n  n_mels: 80\n")
    return Plan(synth_args(s, folder, out), names=[str(folder / "a.pt"), "16000 Hz", "22050 Hz"],
                problem=r"made at", out_dirs=[out], bad_stems=["a"])


def b_mels_skip(d: Path, s: Shared) -> Plan:
    """Several bad mels next to a good one, on_error=skip: the good one is synthesized."""
    inp = d / "mels"
    inp.mkdir()
    shutil.copy(s.mel, inp / "good.pt")
    inf = good_mel().numpy()
    inf[0, 0] = np.inf
    np.save(inp / "inf.npy", inf)
    payload, sentinel = sentinel_payload(d)
    bad = {
        write_pt(inp / "a_list.pt", [good_mel()]): r"list.*not a tensor",
        write_pt(inp / "a_string.pt", "DEMO001-0001"): r"str.*not a tensor",
        write_pt(inp / "transposed.pt", good_mel().T.contiguous()): r"transposed",
        write_pt(inp / "integers.pt", torch.zeros(N_MELS, 20, dtype=torch.int64)): r"dtype",
        write_pt(inp / "batch_of_two.pt", good_mel().expand(2, N_MELS, 20).clone()): r"shape",
        write_pt(inp / "evil.pt", payload): r"refused|not a tensor",
        inp / "inf.npy": r"NaN or Inf",
    }
    out = d / "out"

    def check(proc: subprocess.CompletedProcess) -> None:
        audio, sr = sf.read(out / "good.wav", dtype="float32")
        assert sr == SR and audio.shape == (HOP * 20,)
        assert f"{len(bad)} files skipped" in proc.stdout, proc.stdout
        assert "synthesized 1 file," in proc.stdout, proc.stdout  # never "1 files"

    return Plan(synth_args(s, inp, out, "on_error=skip"), expect="skip", out_dirs=[out],
                bad_stems=[p.stem for p in bad], sentinel=sentinel,
                skipped={str(p): problem for p, problem in bad.items()}, check=check)


def b_ckpt_other_model_config(d: Path, s: Shared) -> Plan:
    # Weights of `tiny`, config edited to another size: the weights no longer fit.
    config = {**s.config, "model": {**s.config["model"], "wn": {**s.config["model"]["wn"], "n_channels": 48}}}
    ckpt = write_pt(d / "resized.pt", checkpoint_dict(s, config=config))
    return synth_error(d, s, s.mel, r"do not match", ckpt=ckpt)


def b_ckpt_other_format_version(d: Path, s: Shared) -> Plan:
    ckpt = write_pt(d / "future.pt", checkpoint_dict(s, format_version=2))
    plan = score_error(d, s.wav, r"format version 2", ckpt)
    plan.names = [str(ckpt)]
    return plan


def b_ckpt_bare_state_dict(d: Path, s: Shared) -> Plan:
    ckpt = write_pt(d / "weights_only.pt", s.state)
    return synth_error(d, s, s.mel, r"not a checkpoint of this project", ckpt=ckpt)


def b_ckpt_truncated(d: Path, s: Shared) -> Plan:
    data = s.checkpoint.read_bytes()
    ckpt = write_bytes(d / "cut.pt", data[: len(data) * 3 // 5])
    return synth_error(d, s, s.mel, r"truncated|not a readable", ckpt=ckpt)


def b_ckpt_missing(d: Path, s: Shared) -> Plan:
    plan = score_error(d, s.wav, r"not found", d / "no_such_checkpoint.pt")
    plan.names = [str(d / "no_such_checkpoint.pt")]
    return plan


def b_pickle_in_checkpoint(d: Path, s: Shared) -> Plan:
    payload, sentinel = sentinel_payload(d)
    ckpt = write_pt(d / "evil_ckpt.pt", checkpoint_dict(s, model=payload))
    out = d / "out"
    args = synth_args(s, s.wav, out)
    args[0] = f"checkpoint={ckpt}"
    return Plan(args, names=[str(ckpt)], problem=r"refused", out_dirs=[out], bad_stems=[s.wav.stem],
                absent=[out / "metrics.csv"], sentinel=sentinel)


def b_pickle_in_nvidia_checkpoint(d: Path, s: Shared) -> Plan:
    payload, sentinel = sentinel_payload(d)
    src = write_pt(d / "waveglow_256channels.pt", {"model": payload, "iteration": 1})
    out = d / "out" / "imported.pt"
    return Plan([f"input={src}", f"output={out}"], names=[str(src)], problem=r"refused",
                absent=[out, out.with_name("imported.import.yaml")], sentinel=sentinel)


def b_corpus_missing_preprocess(d: Path, s: Shared) -> Plan:
    root = d / "no_corpus"
    return Plan(corpus_args(root), names=[str(root)], problem=r"not found", absent=[root])


def b_corpus_missing_train(d: Path, s: Shared) -> Plan:
    root, run = d / "no_corpus", d / "run"
    plan = Plan([*corpus_args(root)[:-1], "model=tiny", f"run_dir={run}"], names=[str(root)],
                problem=r"not found", absent=[root])
    plan.check = _no_files_under(run)
    return plan


def b_metadata_missing_wav(d: Path, s: Shared) -> Plan:
    """Preprocessing skips and reports: a listed wav that is missing, a corrupt one, a NaN one."""
    root = make_corpus(d / "corpus", 6, extra_ids=("GHOST-0001", "BROKEN-0001", "NANS-0001"))
    write_bytes(root / "wavs" / "BROKEN-0001.wav", b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    nan_audio = tone(SR // 2, SR)
    nan_audio[100] = np.nan
    write_wav(root / "wavs" / "NANS-0001.wav", nan_audio, subtype="FLOAT")
    cache = root / "cache"
    skipped = {str(root / "wavs" / "GHOST-0001.wav"): r"missing",
               str(root / "wavs" / "BROKEN-0001.wav"): r"cannot read",
               str(root / "wavs" / "NANS-0001.wav"): r"NaN"}

    def check(proc: subprocess.CompletedProcess) -> None:
        report = (cache / "bad_files.tsv").read_text()
        for path in skipped:
            assert path in report, report
        assert len((cache / "manifest.jsonl").read_text().splitlines()) == 6
        assert len(list((cache / "mels").glob("*.pt"))) == 6
        assert "6/6 clips" in proc.stdout or "preprocessed 6/" in proc.stdout, proc.stdout

    return Plan(corpus_args(root), expect="skip", out_dirs=[cache / "mels"],
                bad_stems=["GHOST-0001", "BROKEN-0001", "NANS-0001"], skipped=skipped, check=check)


def b_metadata_only_missing_wavs(d: Path, s: Shared) -> Plan:
    root = make_corpus(d / "corpus", 0, extra_ids=("GHOST-0001", "GHOST-0002"))
    return Plan(corpus_args(root), names=[str(root)], problem=r"no usable", absent=[root / "cache" / "mels"])


def b_archive_path_traversal(d: Path, s: Shared) -> Plan:
    """A corpus archive (right checksum) with a member that climbs out of the extraction folder."""
    import hashlib
    import io
    import tarfile

    src = d / "upload" / "LJSpeech-1.1.tar.bz2"
    src.parent.mkdir()
    escaped = d / "escaped.txt"
    with tarfile.open(src, "w:bz2") as tar:
        for name, data in (("LJSpeech-1.1/metadata.csv", b"LJ001-0001|a|a\n"),
                           ("LJSpeech-1.1/../../escaped.txt", b"written outside the corpus\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    root, archive = d / "data" / "LJSpeech-1.1", d / "data" / "lj.tar.bz2"
    args = ["data=ljspeech", f"data.root={root}", f"data.download.url={src.as_uri()}",
            f"data.download.sha256={sha}", f"data.download.archive={archive}", "progress=false"]
    return Plan(args, names=[str(archive), "escaped.txt"], problem=r"refusing", absent=[root, escaped],
                sentinel=escaped)


def b_output_dir_under_file_mel(d: Path, s: Shared) -> Plan:
    out = a_regular_file(d) / "mels"
    return Plan([f"input={s.wav}", f"output_dir={out}", "progress=false"], names=[str(out)],
                problem=r"cannot|not a directory")


def b_output_dir_under_file_synth(d: Path, s: Shared) -> Plan:
    out = a_regular_file(d) / "wavs"
    return Plan(synth_args(s, s.mel, out), names=[str(out)], problem=r"cannot|not a directory")


def b_cache_dir_under_file_preprocess(d: Path, s: Shared) -> Plan:
    root = make_corpus(d / "corpus", 3)
    cache = a_regular_file(d) / "cache"
    return Plan([*corpus_args(root), f"data.cache_dir={cache}"], names=[str(cache)],
                problem=r"cannot|not a directory")


def b_setting_unknown_key(d: Path, s: Shared) -> Plan:
    return Plan([f"input={s.wav}", f"output_dir={d / 'out'}", "outptu_dir=typo"],
                names=["outptu_dir"], problem=r"unknown setting.*did you mean output_dir", absent=[d / "out"])


def b_setting_typo_synth(d: Path, s: Shared) -> Plan:
    out = d / "out"
    return Plan(synth_args(s, s.mel, out, "sigmaa=0.5"), names=["sigmaa"],
                problem=r"unknown setting.*did you mean sigma\?", absent=[out])


def b_setting_typo_with_plus(d: Path, s: Shared) -> Plan:
    """Hydra's advice for a typo (`+key=...`) must not make the typo pass silently."""
    out = d / "out"
    return Plan(synth_args(s, s.mel, out, "+sigmaa=0.5"), names=["sigmaa"], problem=r"unknown setting",
                absent=[out])


def b_setting_as_flag(d: Path, s: Shared) -> Plan:
    out = d / "out"
    return Plan(["--checkpoint", str(s.checkpoint), f"input={s.mel}", f"output_dir={out}"],
                names=["--checkpoint"], problem=r"unknown option.*key=value", absent=[out])


def b_setting_append_existing_key(d: Path, s: Shared) -> Plan:
    return Plan([f"input={s.wav}", f"output_dir={d / 'out'}", f"+input={s.wav}"],
                names=["input"], problem=r"could not append|already", absent=[d / "out"])


def b_setting_bad_group_value(d: Path, s: Shared) -> Plan:
    return Plan(["data=demo", "model=nope", f"run_dir={d / 'run'}"], names=["model=nope"],
                problem=r"no such model config \(available: [^)]*\bsqueeze, tiny\b", absent=[d / "run"])


def b_setting_missing_required(d: Path, s: Shared) -> Plan:
    out = d / "out"
    return Plan([f"checkpoint={s.checkpoint}", f"output_dir={out}"], names=["input=..."],
                problem=r"required: waveglow-synthesize", absent=[out])


def b_ckpt_is_a_wav(d: Path, s: Shared) -> Plan:
    wav = d / "voice.wav"
    shutil.copy(s.wav, wav)
    plan = synth_error(d, s, s.mel, r"^error: not a checkpoint: \S*voice\.wav is a WAV file; expected", ckpt=wav)
    plan.check = _no_internals
    return plan


def _no_internals(proc: subprocess.CompletedProcess) -> None:
    """The error says what the file is, not how a loader failed on it."""
    assert not re.search(r"\w+Error\b|pop from empty|load key|enforce fail", proc.stderr), proc.stderr


def b_ckpt_is_a_zip(d: Path, s: Shared) -> Plan:
    archive = d / "voices.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("voices/a.txt", "not weights")
    plan = synth_error(d, s, s.mel, r"not a checkpoint: \S*voices\.zip is a zip archive without a torch checkpoint",
                       ckpt=archive)
    plan.check = _no_internals
    return plan


def b_ckpt_is_a_wav_import_nvidia(d: Path, s: Shared) -> Plan:
    wav = d / "waveglow.wav"
    shutil.copy(s.wav, wav)
    out = d / "out" / "imported.pt"
    return Plan([f"input={wav}", f"output={out}"], names=[str(wav)], problem=r"not a readable PyTorch checkpoint: .* is a WAV file",
                absent=[out], check=_no_internals)


def b_wav_given_as_mel(d: Path, s: Shared) -> Plan:
    wav = d / "speech.wav"
    shutil.copy(s.wav, wav)
    return synth_error(d, s, wav, r"unexpected file type '\.wav'.*waveglow-mel.*waveglow-resynthesize")


def b_wav_folder_given_as_mels(d: Path, s: Shared) -> Plan:
    folder = d / "recordings"
    folder.mkdir()
    shutil.copy(s.wav, folder / "speech.wav")
    return synth_error(d, s, folder, r"no \.pt/\.npy files.*but audio files.*waveglow-mel.*waveglow-resynthesize")


def b_ckpt_is_text(d: Path, s: Shared) -> Plan:
    text = write_bytes(d / "notes.pt", b"just some notes, not a checkpoint\n" * 20)
    plan = score_error(d, s.wav, r"not a checkpoint: \S*notes\.pt is a text file", ckpt=text)
    plan.names = [str(text)]
    plan.check = _no_internals
    return plan


def b_ckpt_is_empty(d: Path, s: Shared) -> Plan:
    empty = write_bytes(d / "empty.pt", b"")
    return synth_error(d, s, s.mel, r"not a checkpoint.*empty", ckpt=empty)


def _run_dir(d: Path, s: Shared) -> Path:
    """A training run directory: config.yaml and checkpoints/ of a run, to be left untouched."""
    run = d / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("the run's own config\n")
    shutil.copy(s.checkpoint, run / "checkpoints" / "best.pt")
    return run


def _run_untouched(run: Path) -> Callable[[subprocess.CompletedProcess], None]:
    def check(proc: subprocess.CompletedProcess) -> None:
        assert (run / "config.yaml").read_text() == "the run's own config\n", "the run's config.yaml was replaced"

    return check


def b_score_into_run_dir(d: Path, s: Shared) -> Plan:
    run = _run_dir(d, s)
    plan = Plan(score_args(run / "checkpoints" / "best.pt", s.wav, run / "score.csv"), expect="ok")
    plan.check = lambda proc: (_run_untouched(run)(proc), _exists(run / "score.config.yaml"))
    return plan


def b_synthesize_into_run_dir(d: Path, s: Shared) -> Plan:
    run = _run_dir(d, s)
    plan = Plan(synth_args(s, s.mel, run), expect="ok")
    plan.check = lambda proc: (_run_untouched(run)(proc), _exists(run / "synthesize.config.yaml"))
    return plan


def b_mel_into_run_dir(d: Path, s: Shared) -> Plan:
    run = _run_dir(d, s)
    plan = Plan([f"input={s.wav}", f"output_dir={run}", "progress=false"], expect="ok")
    plan.check = lambda proc: (_run_untouched(run)(proc), _exists(run / "mel.config.yaml"))
    return plan


def _exists(path: Path) -> None:
    assert path.is_file(), f"{path} was not written"


def b_setting_type_train(d: Path, s: Shared) -> Plan:
    root, run = make_corpus(d / "corpus", 6), d / "run"
    plan = Plan([*corpus_args(root)[:-1], "model=tiny", f"run_dir={run}", "train.max_steps=abc",
                 "train.batch_size=2", "train.device=cpu"], names=["train.max_steps"], problem=r"abc")
    plan.check = _no_checkpoint_under(run)
    return plan


def b_setting_type_synth(d: Path, s: Shared) -> Plan:
    out = d / "out"
    return Plan(synth_args(s, s.mel, out, "sigma=abc"), names=["sigma"], problem=r"abc", absent=[out])


def _no_files_under(folder: Path) -> Callable[[subprocess.CompletedProcess], None]:
    def check(proc: subprocess.CompletedProcess) -> None:
        files = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
        assert not files, f"left behind by a run that could not start: {files}"

    return check


def _no_checkpoint_under(folder: Path) -> Callable[[subprocess.CompletedProcess], None]:
    def check(proc: subprocess.CompletedProcess) -> None:
        ckpts = list(folder.rglob("*.pt")) if folder.exists() else []
        assert not ckpts, f"checkpoints written by a run with a bad setting: {ckpts}"

    return check


MEL, PRE, TRAIN = "waveglow-mel", "waveglow-preprocess", "waveglow-train"
SYN, RESYN, SCORE, NV = "waveglow-synthesize", "waveglow-resynthesize", "waveglow-score", "waveglow-import-nvidia"

CASES: list[Case] = [
    # audio files
    Case("wav-corrupt", MEL, b_wav_corrupt),
    Case("wav-truncated-header", RESYN, b_wav_truncated_header),
    Case("wav-truncated-data", MEL, b_wav_truncated_data),
    Case("wav-empty-0-bytes", SCORE, b_wav_empty_file),
    Case("wav-extension-on-text", MEL, b_wav_is_text),
    Case("mp3-name-on-text", MEL, b_mp3_named_text),
    Case("wav-0-frames", RESYN, b_wav_zero_frames),
    Case("wav-1-sample-mel", MEL, b_wav_one_sample_mel),
    Case("wav-1-sample-resynthesize", RESYN, b_wav_one_sample_resynth),
    Case("wav-nan", SCORE, b_wav_nan),
    Case("wav-inf", MEL, b_wav_inf),
    Case("wav-8-channels-ok", MEL, b_wav_8_channels),
    Case("wav-8khz-ok", MEL, b_wav_8khz),
    Case("wav-48khz-ok", RESYN, b_wav_48khz),
    # mel files
    Case("mel-wrong-n-mels", SYN, b_mel_wrong_n_mels),
    Case("mel-1d", SYN, b_mel_1d),
    Case("mel-nan", SYN, b_mel_nan),
    Case("mel-empty", SYN, b_mel_empty),
    Case("pt-truncated", SYN, b_pt_truncated),
    Case("pt-dict-not-tensor", SYN, b_pt_dict),
    Case("pickle-in-mel-pt", SYN, b_pickle_in_mel),
    Case("mels-mixed-on-error-skip", SYN, b_mels_skip),
    Case("pt-0-bytes", SYN, b_pt_zero_bytes),
    Case("npy-header-promises-more-data", SYN, b_npy_header_promises_more),
    Case("npy-header-huge-frame-count", SYN, b_npy_huge_frame_count),
    Case("mel-file-neighbours-on-error-skip", SYN, b_mel_file_neighbours),
    Case("pt-sparse-tensor", SYN, b_pt_sparse),
    Case("mel-absurd-values", SYN, b_mel_absurd_values),
    Case("mel-constant", SYN, b_mel_constant),
    Case("mel-db-given-as-natural-warns", SYN, b_mel_db_convention_warns),
    Case("mel-folder-made-at-other-rate", SYN, b_mel_folder_other_rate),
    # checkpoints
    Case("ckpt-other-model-config", SYN, b_ckpt_other_model_config),
    Case("ckpt-other-format-version", SCORE, b_ckpt_other_format_version),
    Case("ckpt-bare-state-dict", SYN, b_ckpt_bare_state_dict),
    Case("ckpt-truncated", SYN, b_ckpt_truncated),
    Case("ckpt-missing", SCORE, b_ckpt_missing),
    Case("pickle-in-checkpoint", RESYN, b_pickle_in_checkpoint),
    Case("pickle-in-nvidia-checkpoint", NV, b_pickle_in_nvidia_checkpoint),
    Case("ckpt-is-a-wav", SYN, b_ckpt_is_a_wav),
    Case("ckpt-is-text", SCORE, b_ckpt_is_text),
    Case("ckpt-is-empty", SYN, b_ckpt_is_empty),
    Case("ckpt-is-a-zip", SYN, b_ckpt_is_a_zip),
    Case("ckpt-is-a-wav-import-nvidia", NV, b_ckpt_is_a_wav_import_nvidia),
    Case("wav-given-as-mel", SYN, b_wav_given_as_mel),
    Case("wav-folder-given-as-mels", SYN, b_wav_folder_given_as_mels),
    # corpora
    Case("corpus-missing-preprocess", PRE, b_corpus_missing_preprocess),
    Case("corpus-missing-train", TRAIN, b_corpus_missing_train),
    Case("metadata-missing-wav-skip", PRE, b_metadata_missing_wav),
    Case("metadata-only-missing-wavs", PRE, b_metadata_only_missing_wavs),
    Case("archive-path-traversal", "waveglow-download", b_archive_path_traversal),
    # unwritable outputs
    Case("output-dir-under-file-mel", MEL, b_output_dir_under_file_mel),
    Case("output-dir-under-file-synthesize", SYN, b_output_dir_under_file_synth),
    Case("cache-dir-under-file-preprocess", PRE, b_cache_dir_under_file_preprocess),
    # outputs beside a training run never replace its files
    Case("score-output-in-run-dir", SCORE, b_score_into_run_dir),
    Case("synthesize-output-in-run-dir", SYN, b_synthesize_into_run_dir),
    Case("mel-output-in-run-dir", MEL, b_mel_into_run_dir),
    # settings
    Case("setting-unknown-key", MEL, b_setting_unknown_key),
    Case("setting-typo-did-you-mean", SYN, b_setting_typo_synth),
    Case("setting-typo-with-plus", SYN, b_setting_typo_with_plus),
    Case("setting-as-dash-flag", SYN, b_setting_as_flag),
    Case("setting-append-existing-key", MEL, b_setting_append_existing_key),
    Case("setting-bad-group-value", TRAIN, b_setting_bad_group_value),
    Case("setting-missing-required", SYN, b_setting_missing_required),
    Case("setting-type-train-max-steps", TRAIN, b_setting_type_train),
    Case("setting-type-synthesize-sigma", SYN, b_setting_type_synth),
]


# ------------------------------------------------------------------------------ running


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Shared:
    """An untrained tiny checkpoint (the shipped configs), a good mel and a good wav."""
    root = tmp_path_factory.mktemp("hostile_shared")
    config = to_dict(compose("waveglow_train", "model=tiny", "data=demo"))
    torch.manual_seed(0)
    model = build_model(config)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ckpt = save_checkpoint(root / "tiny.pt", build_checkpoint(state, config))
    mel = write_pt(root / "good_mel.pt", good_mel())
    wav = root / "DEMO001-0001.wav"
    shutil.copy(DEMO_ROOT / "wavs" / "DEMO001-0001.wav", wav)
    return Shared(root, ckpt, config, state, mel, wav)


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, shared: Shared,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Plan, subprocess.CompletedProcess, Path]]:
    """Build and run every selected case, several console scripts at a time."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if getattr(item, "module", None) is request.module and hasattr(item, "callspec")}
    root = tmp_path_factory.mktemp("hostile")
    jobs = {}
    for case in CASES:
        if case.id in selected:
            d = root / case.id
            d.mkdir()
            jobs[case.id] = (case, d, case.build(d, shared))

    # Longest first (training starts, preprocessing) so that the runs finish together.
    order = sorted(jobs, key=lambda k: jobs[k][0].cli not in (TRAIN, PRE))
    procs = run_forked([Job(jobs[k][0].cli, jobs[k][2].args, cwd=jobs[k][1], timeout=240) for k in order],
                       parallel=PARALLEL_RUNS)
    return {k: (jobs[k][2], proc, jobs[k][1]) for k, proc in zip(order, procs)}


def _params() -> list[Any]:
    out = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=case.bug)] if case.bug else []
        out.append(pytest.param(case, id=case.id, marks=marks))
    return out


def _show(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"


def _leftovers(case_dir: Path, plan: Plan) -> list[Path]:
    """Temp files anywhere in the case folder, outputs of bad stems, files that must not exist."""
    found = [p for p in case_dir.rglob("*") if TEMP_NAME.match(p.name)]
    for out in plan.out_dirs:
        if out.is_dir():
            found += [p for p in out.rglob("*") if p.is_file() and p.suffix.lower() in OUTPUT_SUFFIXES
                      and p.stem in plan.bad_stems]
    found += [p for p in plan.absent if p.exists()]
    return found


@pytest.mark.parametrize("case", _params())
def test_hostile_input(case: Case, outcomes: dict) -> None:
    plan, proc, case_dir = outcomes[case.id]
    shown = _show(proc)
    assert "Traceback" not in proc.stderr, shown
    if plan.sentinel is not None:
        assert not plan.sentinel.exists(), f"the malicious pickle ran: {plan.sentinel} exists"

    if plan.expect == "error":
        assert proc.returncode == plan.rc, shown
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, f"expected one `error:` line\n{shown}"
        for name in plan.names:
            assert name in errors[0], f"error line does not name {name}\n{shown}"
        assert re.search(plan.problem, errors[0], re.IGNORECASE), f"error line lacks /{plan.problem}/\n{shown}"
    else:
        assert proc.returncode == 0, shown
        lines = proc.stderr.splitlines()
        assert not [line for line in lines if line.startswith("error: ")], shown
        for path, problem in plan.skipped.items():
            named = [line for line in lines if path in line]
            assert named, f"skipped file {path} is not named on stderr\n{shown}"
            assert any(re.search(problem, line, re.IGNORECASE) for line in named), \
                f"{path}: no /{problem}/ on its line\n{shown}"

    leftovers = _leftovers(case_dir, plan)
    assert not leftovers, f"partial outputs or temp files left: {leftovers}\n{shown}"
    if plan.check is not None:
        plan.check(proc)


def test_table_covers_enough_kinds() -> None:
    """The issue asks for at least 20 kinds of bad input; ids are unique."""
    ids = [case.id for case in CASES]
    assert len(set(ids)) == len(ids)
    assert len(ids) >= 24


def test_malicious_payload_is_live(tmp_path: Path) -> None:
    """Control for the pickle rows: the same payload, loaded the unsafe way, does create its sentinel."""
    payload, sentinel = sentinel_payload(tmp_path)
    evil = write_pt(tmp_path / "evil.pt", payload)
    torch.load(evil, weights_only=False)
    assert sentinel.exists()
