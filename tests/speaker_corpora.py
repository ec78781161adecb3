"""Small multi-speaker corpora in their real layouts, for the corpus and training tests:
VCTK 0.92 (48 kHz FLAC per microphone, `speaker-info.txt`, a speaker without transcripts) and
LibriTTS (nested `<subset>/<speaker>/<chapter>/` folders, 24 kHz WAV with both transcripts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def tone(n: int, freq: float, rate: int) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


VCTK_SPEAKERS = ("p225", "p226", "p227", "p315", "s5")  # p315: no transcripts, as in VCTK 0.92


def make_vctk(root: Path, clips_per_speaker: int = 3, seconds: float = 0.25) -> Path:
    """A VCTK 0.92 layout: 48 kHz FLAC per microphone, txt/ for all but p315, speaker-info.txt."""
    n = int(48000 * seconds)
    lines = ["ID  AGE  GENDER  ACCENTS  REGION COMMENTS"]
    for k, spk in enumerate(VCTK_SPEAKERS):
        lines.append(f"{spk}  23  F    English    Southern  England")
        folder = root / "wav48_silence_trimmed" / spk
        folder.mkdir(parents=True)
        for i in range(1, clips_per_speaker + 1):
            for mic in ("mic1", "mic2"):
                sf.write(folder / f"{spk}_{i:03d}_{mic}.flac", tone(n, 150 + 30 * k, 48000), 48000, format="FLAC")
            if spk != "p315":
                (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
                (root / "txt" / spk / f"{spk}_{i:03d}.txt").write_text("Please call Stella.\n")
    (root / "wav48_silence_trimmed" / "log.txt").write_text("not a speaker folder\n")
    (root / "speaker-info.txt").write_text("\n".join(lines) + "\n")
    return root


def make_libritts(root: Path, seconds: float = 0.25) -> Path:
    """A LibriTTS layout: <subset>/<speaker>/<chapter>/<utt>.wav at 24 kHz with both transcripts."""
    n = int(24000 * seconds)
    layout = {"train-clean-100": {"19": ["198", "227"], "26": ["495"], "32": ["21631"]}, "dev-clean": {"84": ["121123"]}}
    for subset, speakers in layout.items():
        for spk, chapters in speakers.items():
            for chapter in chapters:
                folder = root / subset / spk / chapter
                folder.mkdir(parents=True)
                for u in range(2):
                    stem = f"{spk}_{chapter}_000{u:03d}_000000"
                    sf.write(folder / f"{stem}.wav", tone(n, 180 + int(spk), 24000), 24000)
                    (folder / f"{stem}.normalized.txt").write_text("He was here.")
                    (folder / f"{stem}.original.txt").write_text("He was here.")
                (folder / f"{spk}_{chapter}.book.tsv").write_text("x\n")
    return root
