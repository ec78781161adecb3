#!/usr/bin/env python3
"""Generate the bundled demo corpus (data/demo) with the espeak-ng speech synthesizer.

The corpus is small (about 40 clips, 1-3 s each, ~2.5 MB) and in LJSpeech layout:

    data/demo/metadata.csv        id|text|normalized text
    data/demo/wavs/<id>.wav       22,050 Hz, mono, 16-bit PCM, peak at -3 dBFS

Clip ids are DEMO<voice>-<n> (e.g. DEMO002-0007): one "chapter" per voice setting, as in
LJSpeech's LJ<chapter>-<n>. The splits (data/demo/splits/) are not written here; the data
pipeline writes them once, the first time the corpus is used.

Usage (from the repository root; needs only the project venv and `espeak-ng` on PATH):

    .venv/bin/python scripts/make_demo_corpus.py [--out data/demo]

The output is deterministic for a given espeak-ng build: running it twice gives identical files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from waveglow.data.audio import save_audio

SAMPLING_RATE = 22050
PEAK_DBFS = -3.0
# espeak-ng ends every utterance with ~0.3 s of digital silence; keep a natural-sounding tail
# instead (LJSpeech clips end shortly after the last word).
TAIL_SECONDS = 0.12
SILENCE_THRESHOLD = 1e-3  # of full scale; below this a sample counts as silence
MAX_SECONDS = 3.0
MIN_SECONDS = 1.0
# The short one-word clips are deliberately below one training segment (16,000 samples) so the
# data pipeline's short-clip policy is exercised by the tests.
MAX_SHORT_CLIPS = 2


@dataclass(frozen=True)
class Voice:
    """One espeak-ng voice setting: voice name (with optional +variant), pitch 0-99, words/min."""

    name: str
    pitch: int
    speed: int


# A couple of accents, a lower and a higher voice; pitch/speed also vary per clip (below).
VOICES = (
    Voice("en-us", 45, 165),
    Voice("en-gb+m3", 38, 160),
    Voice("en-us+f3", 60, 170),
    Voice("en-gb-x-rp+f2", 55, 160),
)

# (written text, normalized text): the normalized column spells out numbers and abbreviations,
# as LJSpeech's third column does; the synthesizer reads the normalized text.
SENTENCES: tuple[tuple[str, str], ...] = (
    ("Yes.", "Yes."),
    ("The quick brown fox jumps over the dog.", "The quick brown fox jumps over the dog."),
    ("Please close the window.", "Please close the window."),
    ("It rained for 3 days.", "It rained for three days."),
    ("The train leaves at noon.", "The train leaves at noon."),
    ("She read the letter twice.", "She read the letter twice."),
    ("Dr. Hale arrived late.", "Doctor Hale arrived late."),
    ("Bring me a cup of tea.", "Bring me a cup of tea."),
    ("The river was cold and clear.", "The river was cold and clear."),
    ("We counted 12 boats.", "We counted twelve boats."),
    ("Okay.", "Okay."),
    ("A small bird sang outside.", "A small bird sang outside."),
    ("The court met on Monday.", "The court met on Monday."),
    ("He paid $5 for the map.", "He paid five dollars for the map."),
    ("Turn left at the old mill.", "Turn left at the old mill."),
    ("The lamp flickered and went out.", "The lamp flickered and went out."),
    ("Mr. Gray owns a bakery.", "Mister Gray owns a bakery."),
    ("Every page was numbered.", "Every page was numbered."),
    ("The bridge opened in 1890.", "The bridge opened in eighteen ninety."),
    ("Snow covered the hills.", "Snow covered the hills."),
    ("Where did you put the keys?", "Where did you put the keys?"),
    ("They walked along the shore.", "They walked along the shore."),
    ("The clock struck nine.", "The clock struck nine."),
    ("Fresh bread smells wonderful.", "Fresh bread smells wonderful."),
    ("The witness spoke quietly.", "The witness spoke quietly."),
    ("Open the door, please.", "Open the door, please."),
    ("Our team won by 2 points.", "Our team won by two points."),
    ("The garden needs water.", "The garden needs water."),
    ("A ship sailed into the harbor.", "A ship sailed into the harbor."),
    ("Is this seat taken?", "Is this seat taken?"),
    ("The report was finished on time.", "The report was finished on time."),
    ("Green apples are sour.", "Green apples are sour."),
    ("The 4th floor is closed.", "The fourth floor is closed."),
    ("Music drifted from the hall.", "Music drifted from the hall."),
    ("Keep your voice down.", "Keep your voice down."),
    ("The candle burned all night.", "The candle burned all night."),
    ("He signed his name slowly.", "He signed his name slowly."),
    ("Lunch is ready.", "Lunch is ready."),
    ("The wind shook the trees.", "The wind shook the trees."),
    ("We will meet again soon.", "We will meet again soon."),
)


def require_espeak() -> str:
    """Path of the espeak-ng executable, or exit with an install hint."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        sys.exit("error: espeak-ng not found on PATH; install it (Debian/Ubuntu: "
                 "`sudo apt-get install espeak-ng`, macOS: `brew install espeak-ng`) and rerun")
    return exe


def synthesize(exe: str, text: str, voice: Voice, pitch: int, speed: int, workdir: Path) -> np.ndarray:
    """Speak `text` with espeak-ng and return float64 mono audio [T] at SAMPLING_RATE.

    Args:
        exe: espeak-ng executable.
        text: what to say.
        voice: voice name (pitch/speed are passed separately so callers can vary them).
        pitch: 0-99 (espeak-ng -p).
        speed: words per minute (espeak-ng -s).
        workdir: scratch directory for the intermediate WAV.

    Returns:
        audio [T] float64 in [-1, 1].
    """
    tmp = workdir / "utt.wav"
    cmd = [exe, "-v", voice.name, "-p", str(pitch), "-s", str(speed), "-w", str(tmp), text]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not tmp.exists():
        sys.exit(f"error: espeak-ng failed ({' '.join(cmd)}): {proc.stderr.strip()}")
    audio, sr = sf.read(tmp, dtype="float64", always_2d=True)
    audio = audio.mean(axis=1)
    if sr != SAMPLING_RATE:
        # Most espeak-ng voices already speak at 22,050 Hz; others (e.g. mbrola) do not.
        import librosa

        audio = librosa.resample(audio, orig_sr=sr, target_sr=SAMPLING_RATE, res_type="soxr_hq")
    return audio


def trim_tail(audio: np.ndarray) -> np.ndarray:
    """Cut trailing silence down to TAIL_SECONDS (leading silence is already short)."""
    loud = np.flatnonzero(np.abs(audio) > SILENCE_THRESHOLD)
    if loud.size == 0:
        raise RuntimeError("espeak-ng produced silence")
    end = min(len(audio), int(loud[-1]) + 1 + int(TAIL_SECONDS * SAMPLING_RATE))
    return audio[:end]


def peak_normalize(audio: np.ndarray, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """Scale so that max |x| equals `peak_dbfs` (a level with headroom, like read speech)."""
    return audio * (10.0 ** (peak_dbfs / 20.0) / np.max(np.abs(audio)))


def make_clip(exe: str, index: int, voice: Voice, text: str, workdir: Path) -> np.ndarray:
    """Synthesize one clip, speeding up (deterministically) until it fits in MAX_SECONDS."""
    # Small per-clip pitch/speed offsets so clips of one voice do not all sound alike.
    pitch = int(np.clip(voice.pitch + (index * 7) % 15 - 7, 0, 99))
    speed = voice.speed + (index * 11) % 25 - 12
    while True:
        audio = trim_tail(synthesize(exe, text, voice, pitch, speed, workdir))
        if len(audio) <= MAX_SECONDS * SAMPLING_RATE or speed >= 260:
            return peak_normalize(audio)
        speed += 15


def write_corpus(out: Path) -> list[tuple[str, int]]:
    """Generate every clip and write metadata.csv + wavs/ under `out`.

    The new wavs/ is built in a temporary directory next to the old one and swapped in, and
    metadata.csv is replaced atomically, so an interrupted run never leaves a half-written corpus.
    Anything else in `out` (splits/, cache/) is left alone.

    Returns:
        [(clip id, n_samples)] in metadata order.
    """
    exe = require_espeak()
    out.mkdir(parents=True, exist_ok=True)
    per_voice = -(-len(SENTENCES) // len(VOICES))
    rows: list[str] = []
    stats: list[tuple[str, int]] = []
    new_wavs = Path(tempfile.mkdtemp(prefix=".wavs.", dir=out))
    new_wavs.chmod(0o755)  # mkdtemp makes it owner-only; the corpus is meant to be shared
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for i, (text, normalized) in enumerate(SENTENCES):
                v = i // per_voice
                clip_id = f"DEMO{v + 1:03d}-{i % per_voice + 1:04d}"
                audio = make_clip(exe, i, VOICES[v], normalized, Path(scratch))
                save_audio(new_wavs / f"{clip_id}.wav", audio, SAMPLING_RATE, subtype="PCM_16")
                rows.append(f"{clip_id}|{text}|{normalized}")
                stats.append((clip_id, len(audio)))
        old_wavs = out / "wavs"
        if old_wavs.exists():
            trash = out / f".wavs.old{os.getpid()}"
            os.replace(old_wavs, trash)
            os.replace(new_wavs, old_wavs)
            shutil.rmtree(trash)
        else:
            os.replace(new_wavs, old_wavs)
        meta_tmp = out / f".metadata.csv.tmp{os.getpid()}"
        meta_tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
        os.replace(meta_tmp, out / "metadata.csv")
    finally:
        if new_wavs.exists():
            shutil.rmtree(new_wavs)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data" / "demo",
                        help="corpus folder to (re)write (default: data/demo)")
    args = parser.parse_args()
    stats = write_corpus(args.out)
    lengths = np.array([n for _, n in stats])
    short = [(cid, n) for cid, n in stats if n < MIN_SECONDS * SAMPLING_RATE]
    if len(short) > MAX_SHORT_CLIPS:  # guards against a different espeak-ng build
        print(f"warning: {len(short)} clips shorter than {MIN_SECONDS} s: {short}", file=sys.stderr)
    size = sum(p.stat().st_size for p in (args.out / "wavs").glob("*.wav"))
    print(f"wrote {len(stats)} clips to {args.out}: {lengths.sum() / SAMPLING_RATE:.1f} s of audio "
          f"at {SAMPLING_RATE / 1000:g} kHz, {size / 1e6:.2f} MB; "
          f"shortest {lengths.min()} samples ({lengths.min() / SAMPLING_RATE:.2f} s), "
          f"longest {lengths.max()} samples ({lengths.max() / SAMPLING_RATE:.2f} s)")


if __name__ == "__main__":
    main()
