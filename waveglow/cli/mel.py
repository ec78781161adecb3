"""`waveglow-mel input=<wav | folder | filelist> output_dir=<dir>`: audio files -> mel files."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from waveglow.cli.common import Script, app, save_config_beside
from waveglow.config import MelApp
from waveglow.data.audio import AUDIO_SUFFIXES, dither, load_audio, warn_once_per_rate
from waveglow.data.inputs import resolve_inputs
from waveglow.errors import UserError, naming
from waveglow.mel import MelSpectrogram, save_mel

log = logging.getLogger("waveglow.mel")

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
    inputs = resolve_inputs(cfg.input, AUDIO_SUFFIXES)
    out_dir = Path(str(cfg.output_dir)).expanduser()
    sr = int(cfg.audio.sampling_rate)
    mel_fn: MelSpectrogram | None = None  # built on first use: a bad input fails without the slow import
    lsb = cfg.dither
    generator = torch.Generator().manual_seed(cfg.seed)
    warn = warn_once_per_rate(set())
    failures: list[str] = []
    seconds = 0.0
    t0 = time.perf_counter()
    bar = cfg.progress and len(inputs) > 1 and sys.stderr.isatty()  # no `\r` redraws in a redirected log
    for audio_path, rel in tqdm(inputs, unit="file", desc="mels", file=sys.stderr, mininterval=0.5,
                                disable=not bar):
        try:
            audio = torch.from_numpy(load_audio(audio_path, sr, warn=warn))
            mel_fn = mel_fn or MelSpectrogram.from_config(cfg.audio)
            with torch.inference_mode():
                mel = mel_fn(dither(audio, lsb, generator))
            target = out_dir / rel.with_suffix(f".{fmt}")  # folder inputs keep their layout
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
              f"{seconds:.1f} s of audio in {wall:.2f} s ({seconds / max(wall, 1e-9):.3g}x real time)", flush=True)
    if failures:
        if len(inputs) == 1:
            raise UserError(failures[0])
        raise UserError(f"{len(failures)} of {len(inputs)} inputs could not be converted (listed above)")
