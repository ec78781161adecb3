"""`waveglow-mel input=<wav | folder | filelist> output_dir=<dir>`: audio files -> mel files."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from waveglow.audio import dither, load_audio, warn_once_per_rate
from waveglow.cli.common import Script, app, save_config_beside
from waveglow.config import MelApp
from waveglow.data import OTHER_AUDIO_SUFFIXES
from waveglow.errors import UserError, naming
from waveglow.mel import MelSpectrogram, save_mel

log = logging.getLogger("waveglow.mel")

AUDIO_SUFFIXES = (".wav", ".flac")


def collect_inputs(spec: str) -> list[tuple[Path, Path]]:
    """Expand `input=` into (audio file, output path without suffix relative to output_dir).

    Args:
        spec: a .wav/.flac file, a folder (recursive; the layout below it is kept), or a text
            filelist with one path per line (`path|text` lines use the path; `#` comments).

    Returns:
        Pairs in input order (folders: sorted).
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise UserError(f"{path}: no .wav/.flac files in this folder")
        return [(p, p.relative_to(path).with_suffix("")) for p in files]
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder; expected input=<.wav/.flac file | folder | filelist>")
    suffix = path.suffix.lower()
    if suffix in AUDIO_SUFFIXES:
        return [(path, Path(path.stem))]
    if suffix in OTHER_AUDIO_SUFFIXES:
        raise UserError(f"{path}: unsupported audio type {path.suffix!r}; expected .wav or .flac")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError):
        raise UserError(f"{path}: neither a .wav/.flac file nor a text filelist (one audio path per line)") from None
    pairs: list[tuple[Path, Path]] = []
    owner: dict[str, Path] = {}
    for line in lines:
        entry = line.split("|", 1)[0].strip()
        if not entry or entry.startswith("#"):
            continue
        audio = Path(entry).expanduser()
        if not audio.is_absolute() and not audio.exists() and (path.parent / audio).exists():
            audio = path.parent / audio
        if audio.stem in owner:
            raise UserError(f"{path}: {owner[audio.stem]} and {audio} would both be written as {audio.stem}.*; "
                            "give the files distinct names")
        owner[audio.stem] = audio
        pairs.append((audio, Path(audio.stem)))
    if not pairs:
        raise UserError(f"{path}: empty filelist; expected one audio path per line")
    return pairs


SCRIPT = Script(
    name="waveglow-mel", config="waveglow_mel",
    summary="Compute log-mel spectrograms of audio files, in the format Tacotron 2 / NVIDIA inference "
            "and waveglow-synthesize read: float32 [n_mels, frames], natural log, one file per input.",
    usage="input=<wav file | folder | glob | filelist> output_dir=<dir>",
    examples=("waveglow-mel input=data/demo/wavs output_dir=outputs/mels",
              "waveglow-mel input=speech.flac output_dir=mels format=npy"),
)


@app(SCRIPT)
def main(cfg: MelApp) -> None:
    """Write one mel file per input audio file (no dither unless asked: deterministic output)."""
    fmt = cfg.format
    inputs = collect_inputs(str(cfg.input))
    out_dir = Path(str(cfg.output_dir)).expanduser()
    sr = int(cfg.audio.sampling_rate)
    mel_fn: MelSpectrogram | None = None  # built on first use: a bad input fails without the slow import
    lsb = cfg.dither
    generator = torch.Generator().manual_seed(cfg.seed)
    warn = warn_once_per_rate(set())
    failures: list[str] = []
    seconds = 0.0
    t0 = time.perf_counter()
    for audio_path, rel in tqdm(inputs, unit="file", desc="mels", file=sys.stderr, mininterval=0.5,
                                disable=not cfg.progress or len(inputs) < 2):
        try:
            audio = torch.from_numpy(load_audio(audio_path, sr, warn=warn))
            mel_fn = mel_fn or MelSpectrogram.from_config(cfg.audio)
            with torch.inference_mode():
                mel = mel_fn(dither(audio, lsb, generator))
            target = out_dir / rel.with_suffix(f".{fmt}")
            try:
                save_mel(target, mel)
            except OSError as e:
                # An unwritable destination fails every file alike: stop at the first one.
                raise UserError(f"{target.parent}: cannot write mel files ({e.strerror or e})") from None
            seconds += audio.numel() / sr
        except UserError as e:
            failures.append(str(naming(audio_path, e)))
            if len(inputs) > 1:
                log.warning("skipped %s", e)
    wall = time.perf_counter() - t0
    written = len(inputs) - len(failures)
    if written:  # an all-failed run leaves no output folder behind
        save_config_beside(cfg, out_dir, "mel", is_dir=True)
    if written:
        print(f"wrote {written} mel {'file' if written == 1 else 'files'} (.{fmt}, float32 [{cfg.audio.n_mels}, frames]) to {out_dir}: "
              f"{seconds:.1f} s of audio in {wall:.2f} s ({seconds / max(wall, 1e-9):.0f}x real time)", flush=True)
    if failures:
        if len(inputs) == 1:
            raise UserError(failures[0])
        raise UserError(f"{len(failures)} of {len(inputs)} inputs could not be converted (listed above)")
