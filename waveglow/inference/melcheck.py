"""What a mel input must look like for a checkpoint: its log convention, its statistics, and the
audio settings it was made with.

The most common user mistake with a vocoder is a mel from another frontend: log10, dB, or
mean/variance-normalized features. Synthesized as natural-log mels they give noise or silence
without any error. So every input is compared with what the model was trained on:

- **the reference**: the per-channel mel mean/std stored in the checkpoint (computed on its
  training split), pooled over channels; for a model with identity statistics (an imported
  NVIDIA checkpoint, an untrained model) the level of Tacotron 2 natural-log mels, which span
  about [log 1e-5, 2] = [-11.5, 2]: measured on the bundled demo corpus, -5.27 ± 2.62.
- **the hypotheses**: the input read as natural log, log10, dB (20·log10) or normalized
  features (x·std + mean), each mapped to natural log. Each gets a distance to the reference,
  d = ((mean − ref_mean)/ref_std)² + ln(std/ref_std)², which is ≈ 0 for the right reading and
  grows fast for a wrong one (log10 read as natural: mean and spread ÷ 2.3; dB: × 8.7).
- **the verdict**: when another reading fits clearly better than the declared one (d > 1 and
  four times the best), one warning line names it and the option that fixes it. The audio is
  still written: the check advises, `check_mel_values` refuses.

A constant mel carries no signal and is refused, with one exception: every value at the log
floor (log of the frontend's `log_clamp`, in the declared convention) is what `waveglow-mel`
writes for digital silence. It is accepted, skips the statistics comparison, and gives digital
silence back: hop · frames zero samples (`is_silence`, applied by the decoder to whole inputs).
The model's own output for the floor is not used: it is as loud as the model is untrained
(about −19 dBFS at sigma=0.6 for a tiny model after 150 steps), while zeros are exactly the audio
whose mel is the floor. A stream cannot know that all of it will be silence, so its pieces go
through the model like any other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from waveglow.config import AudioConfig
from waveglow.errors import UserError
from waveglow.mel import CONVENTIONS, check_mel, check_mel_values, convention_scale, to_natural

# Tacotron 2 natural-log mels, pooled over channels (see the module docstring).
# How far (in nats) a constant may sit from the log floor and still be digital silence: a floor
# written as float32 in log10 or dB and converted back is off by ~1e-6.
FLOOR_TOLERANCE = 1e-3
TACOTRON_MEAN, TACOTRON_STD = -5.27, 2.62
NORMALIZED = "normalized"
RECORDED_CONFIGS = ("mel.config.yaml", "preprocess.config.yaml")  # written by waveglow-mel / -preprocess
CHECKED_KEYS = ("sampling_rate", "hop_length", "n_mels")


def is_silence(mel: Tensor, floor: float) -> bool:
    """Whether a natural-log mel [n_mels, F] is digital silence: every value is the log floor.

    Args:
        mel: natural-log mel (any shape; empty is not silence).
        floor: `log(audio.log_clamp)` of the model's frontend.
    """
    if mel.numel() == 0:
        return False
    lo, hi = float(mel.min()), float(mel.max())
    return lo == hi and abs(lo - floor) <= FLOOR_TOLERANCE


@dataclass(frozen=True)
class Reference:
    """The level of the mels a model expects, in natural log: pooled mean and std."""

    mean: float
    std: float
    source: str  # "the checkpoint's mel statistics" or "Tacotron 2 natural-log mels"

    @classmethod
    def of_model(cls, mel_mean: Tensor, mel_std: Tensor) -> Reference:
        """From a model's `mel_mean` / `mel_std` buffers [n_mels] (identity: the Tacotron 2 level)."""
        mean, std = mel_mean.detach().double().cpu().flatten(), mel_std.detach().double().cpu().flatten()
        if bool((mean == 0).all() and (std == 1).all()):
            return cls(TACOTRON_MEAN, TACOTRON_STD, "Tacotron 2 natural-log mels")
        pooled = math.sqrt(float((std**2).mean() + mean.var(unbiased=False)))
        return cls(float(mean.mean()), pooled, "the checkpoint's mel statistics")


def readings(mel: Tensor, declared: str, ref: Reference) -> dict[str, float]:
    """The distance to `ref` of each reading of the raw input `mel` (see the module docstring).

    Args:
        mel: the input as given [n_mels, F] (before any conversion).
        declared: the convention the caller declared (only used to order ties).
        ref: the model's reference level.

    Returns:
        {reading: d} for "natural", "log10", "db" and "normalized", the declared one first.
    """
    x = mel.detach().double()
    mean, std = float(x.mean()), max(float(x.std(unbiased=False)), 1e-12)
    out = {}
    for reading in (declared, *[c for c in (*CONVENTIONS, NORMALIZED) if c != declared]):
        if reading == NORMALIZED:
            m, s = mean * ref.std + ref.mean, std * ref.std
        else:
            k = convention_scale(reading)
            m, s = mean * k, std * k
        out[reading] = ((m - ref.mean) / ref.std) ** 2 + math.log(s / ref.std) ** 2
    return out


def likely_convention(mel: Tensor, declared: str, ref: Reference) -> str | None:
    """The reading that fits clearly better than `declared`, or None when the declared one fits."""
    d = readings(mel, declared, ref)
    best = min(d, key=d.__getitem__)
    if best != declared and d[declared] > 1.0 and 4 * d[best] < d[declared]:
        return best
    return None


def advice(reading: str) -> str:
    """What to do about an input that looks like `reading`."""
    if reading == NORMALIZED:
        return ("this model takes raw log-mels and normalizes them with its own statistics: undo the "
                "normalization (x·std + mean of the frontend that made them)")
    return f"pass input_convention={reading}"


def describe(reading: str) -> str:
    return "mean/variance-normalized features" if reading == NORMALIZED else {
        "natural": "natural-log mels", "log10": "log10 mels", "db": "dB mels"}[reading]


@dataclass
class ConventionCheck:
    """Checks inputs against a model's reference and gathers the suspects of a run, so that
    each likely convention gets ONE warning line however many files share it.

    Args:
        ref: the model's `Reference`.
        declared: the declared convention ("natural", "log10", "db").
        n_mels: the model's mel channels.
        floor: the model's log floor in natural log (`log(audio.log_clamp)`): a mel whose every
            value is the floor is digital silence and is accepted (None: every constant refused).
    """

    ref: Reference
    declared: str = "natural"
    n_mels: int = 80
    floor: float | None = None
    suspects: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    checked: int = 0

    def __post_init__(self) -> None:
        if self.declared not in CONVENTIONS:
            raise UserError(f"input_convention={self.declared}: expected one of {', '.join(CONVENTIONS)}")

    def prepare(self, mel: Tensor, name: str, advise: bool = True) -> Tensor:
        """A raw input as the model's natural-log mel, checked.

        Args:
            mel: [n_mels, F] (or [1, n_mels, F]) in the declared convention.
            name: the file or argument named in messages.
            advise: also compare its statistics with the reference (off for the small pieces
                of a stream, which are judged together).

        Returns:
            float32 [n_mels, F], natural log.

        Raises:
            UserError: wrong shape, NaN/Inf, absurd values (`check_mel_values`), or a constant
                other than the log floor (`check_constant`).
        """
        raw = self.check_constant(check_mel_values(check_mel(mel, self.n_mels, name), name, constant_ok=True),
                                  name)
        if advise:
            self.observe(raw, name)
        return to_natural(raw, self.declared)

    def is_floor(self, value: float) -> bool:
        """Whether `value` (in the declared convention) is the model's log floor."""
        return self.floor is not None and abs(value * convention_scale(self.declared) - self.floor) <= FLOOR_TOLERANCE

    def is_silence(self, raw: Tensor) -> bool:
        """Whether every value of the raw input [n_mels, F] is the log floor (digital silence)."""
        return self.floor is not None and is_silence(raw * convention_scale(self.declared), self.floor)

    def check_constant(self, raw: Tensor, name: str) -> Tensor:
        """Refuse a raw input whose values are all one number, unless it is the log floor.

        Returns:
            `raw`.

        Raises:
            UserError: a constant other than the floor, naming the floor a silent mel has.
        """
        if raw.numel() <= 1 or float(raw.min()) != float(raw.max()) or self.is_silence(raw):
            return raw
        value = float(raw.min())
        silent = "" if self.floor is None else (
            f"; digital silence is {self.floor / convention_scale(self.declared):g} everywhere "
            f"(the log floor, {self.declared} log)")
        raise UserError(f"{name}: every value is {value:g} (a constant, not a spectrogram){silent}; expected a "
                        "log-mel spectrogram")

    def observe(self, raw: Tensor, name: str) -> None:
        """Compare one raw input with the reference; remember it if it looks like another convention."""
        if self.is_silence(raw):
            return  # silence has no level to compare: it is neither speech nor a wrong convention
        self.checked += 1
        guess = likely_convention(raw, self.declared, self.ref)
        if guess is not None:
            x = raw.detach().double()
            self.suspects.setdefault(guess, []).append((name, float(x.mean()), float(x.std(unbiased=False))))

    def warnings(self) -> list[str]:
        """One line per likely convention among the inputs observed so far (then forgets them)."""
        lines = []
        k = convention_scale(self.declared)
        for guess, items in self.suspects.items():
            name, mean, std = items[0]
            who = f"{name} looks" if len(items) == 1 else f"{len(items)} of {self.checked} mels look (e.g. {name})"
            lines.append(f"{who} like {describe(guess)}: mean {mean:.2f}, std {std:.2f} as given, while the "
                         f"model expects {self.declared} values near {self.ref.mean / k:.2f} ± {self.ref.std / k:.2f} "
                         f"({self.ref.source}); {advice(guess)}")
        self.suspects = {}
        return lines

    def warn(self, log: logging.Logger) -> None:
        """Log `warnings()`, one line each."""
        for line in self.warnings():
            log.warning("%s", line)


# ----------------------------------------------------------------------- recorded audio settings


def recorded_settings(mel_path: Path, root: Path | None, cache: dict[Path, Any] | None = None
                      ) -> tuple[Path, Mapping[str, Any]] | None:
    """The audio settings recorded beside a mel file by waveglow-mel (`mel.config.yaml`) or
    waveglow-preprocess, looked up from the file's folder up to the input folder `root`.

    Returns:
        (the config file, its `audio` mapping), or None when no folder has one (or it has no
        readable `audio` section: a hand-written file is not ours to judge).
    """
    folder = mel_path.parent
    stop = root.resolve() if root is not None else folder.resolve()
    cache = {} if cache is None else cache
    while True:
        for fname in RECORDED_CONFIGS:
            cfg_path = folder / fname
            if cfg_path not in cache:
                cache[cfg_path] = _read_audio(cfg_path)
            if cache[cfg_path] is not None:
                return cfg_path, cache[cfg_path]
        if folder.resolve() == stop or folder.parent == folder:
            return None
        folder = folder.parent


def _read_audio(path: Path) -> Mapping[str, Any] | None:
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    audio = doc.get("audio") if isinstance(doc, Mapping) else None
    return audio if isinstance(audio, Mapping) else None


def check_recorded_settings(mel_path: Path, root: Path | None, audio: AudioConfig, checkpoint: str,
                            cache: dict[Path, Any] | None = None) -> None:
    """Refuse a mel made with other audio settings than the checkpoint's (rate, hop, mels).

    Raises:
        UserError: naming the mel, its recorded settings (and where), and the checkpoint's.
    """
    found = recorded_settings(mel_path, root, cache)
    if found is None:
        return
    cfg_path, rec = found
    ours = {k: getattr(audio, k) for k in CHECKED_KEYS}
    try:
        theirs = {k: int(rec[k]) for k in CHECKED_KEYS if k in rec}
    except (TypeError, ValueError):
        return
    if any(theirs[k] != ours[k] for k in theirs):
        def fmt(s: Mapping[str, Any]) -> str:
            return (f"{s.get('sampling_rate', '?')} Hz, hop {s.get('hop_length', '?')}, "
                    f"{s.get('n_mels', '?')} mels")
        raise UserError(f"{mel_path}: made at {fmt(theirs)} (recorded in {cfg_path}), but {checkpoint} "
                        f"expects {fmt(ours)}; make the mels with the checkpoint's audio settings or use a "
                        f"checkpoint trained at {theirs.get('sampling_rate', '?')} Hz")


def input_root(path: Path, name: Path) -> Path:
    """The input folder a resolved input came from (`name` is its path below it, no suffix)."""
    depth = len(name.parts)
    return path.parents[depth - 1] if depth >= 1 and len(path.parents) >= depth else path.parent
