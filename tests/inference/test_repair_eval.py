"""The defect layouts of `waveglow.inference.repair_eval` (what `scripts/measure_repair.py` measures)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from waveglow.errors import UserError
from waveglow.inference.enhance import EnhanceResult
from waveglow.inference.repair_eval import KINDS, damage, measure, split_clips, summarize_runs

SR = 22050


def quiet_clip(n: int = SR) -> torch.Tensor:
    """A low sine on the int16 grid [n]: every ±0.9 click and 0.1-rms burst stands out of it."""
    t = torch.arange(n, dtype=torch.float32) / SR
    return torch.round(0.01 * torch.sin(2 * torch.pi * 220 * t) * 32768) / 32768


def damaged_starts(clean: torch.Tensor, bad: torch.Tensor) -> list[int]:
    """First sample of each stretch where `bad` departs from `clean` (gaps under 10 samples joined)."""
    idx = (bad - clean).ne(0).nonzero().flatten().tolist()
    return [i for k, i in enumerate(idx) if k == 0 or i - idx[k - 1] > 10]


def test_seed_1_is_the_fixed_layout() -> None:
    clean = quiet_clip()
    n = clean.numel()
    for kind, fracs in (("click1", (0.25, 0.5, 0.75)), ("click5", (0.25, 0.5, 0.75)), ("burst20ms", (0.3, 0.7))):
        for salt in (0, 7):  # the salt only matters for other seeds
            bad, spans = damage(clean, kind, SR, seed=1, salt=salt)
            assert [a for a, _ in spans] == [int(f * n) for f in fracs]
            assert damaged_starts(clean, bad) == [a for a, _ in spans]
    # The burst noise of seed 1 is the one the documented figures were measured with.
    bad, spans = damage(clean, "burst20ms", SR)
    a, b = spans[0]
    expected = clean[a:b] + 0.1 * torch.randn(b - a, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(bad[a:b], expected.clamp(-1, 1), atol=1 / 32768)


def test_other_seeds_move_the_defects_reproducibly() -> None:
    clean = quiet_clip()
    n = clean.numel()
    for kind in KINDS:
        fixed = damage(clean, kind, SR, seed=1)[1]
        layouts = {seed: damage(clean, kind, SR, seed=seed)[1] for seed in (2, 3)}
        assert layouts[2] != fixed and layouts[3] != fixed and layouts[2] != layouts[3]
        assert damage(clean, kind, SR, seed=2)[1] == layouts[2]
        assert damage(clean, kind, SR, seed=2, salt=1)[1] != layouts[2]
        for spans in layouts.values():
            assert len(spans) == len(fixed)
            assert all(0.1 * n <= a and b <= 0.9 * n for a, b in spans)
            assert all(b0 < a1 for (_, b0), (a1, _) in zip(spans, spans[1:]))  # apart, in order


class Recorder:
    """An enhancer that repairs nothing and keeps every clip it is given (measure's plumbing)."""

    def __init__(self) -> None:
        self.synth = SimpleNamespace(sampling_rate=SR, hop_length=256)
        self.mel_fn = lambda x: x[: x.numel() // 256 * 256].reshape(-1, 256).abs().T
        self.seen: dict[str, torch.Tensor] = {}

    def enhance_audio(self, audio: torch.Tensor, name: str, subtype: str) -> EnhanceResult:
        self.seen[name] = audio.clone()
        return EnhanceResult(name, audio.clone(), seconds=audio.numel() / SR)


def test_measure_passes_the_seed_and_split(tmp_path: Path) -> None:
    (tmp_path / "wavs").mkdir()
    (tmp_path / "splits").mkdir()
    for split, clip in (("val", "v1"), ("test", "t1"), ("train", "r1")):
        sf.write(tmp_path / "wavs" / f"{clip}.wav", quiet_clip().numpy().astype(np.float32), SR, subtype="PCM_16")
        (tmp_path / "splits" / f"{split}.txt").write_text(clip + "\n")
    assert split_clips(tmp_path, "val+test") == ["v1", "t1"]
    assert split_clips(tmp_path, "train") == ["r1"]
    with pytest.raises(UserError, match="split=dev"):
        split_clips(tmp_path, "dev")

    starts = {}
    for seed in (1, 2):
        rec = Recorder()
        doc = measure(rec, tmp_path, seed=seed)
        assert doc["clips"] == ["v1", "t1"] and doc["seed"] == seed
        assert doc["flagged"]["click1"] == [0, 6]  # nothing flagged by a recorder; 3 defects × 2 clips
        clean = rec.seen["v1"]
        starts[seed] = {(c, k): damaged_starts(clean, rec.seen[f"{c}:{k}"]) for c in ("v1", "t1") for k in KINDS}
        # Under seed 2 the two clips get different positions (the clip's index salts the draw).
        if seed == 2:
            assert damaged_starts(clean, rec.seen["v1:click1"]) != damaged_starts(clean, rec.seen["t1:click1"])
    n = quiet_clip().numel()
    assert starts[1][("t1", "click5")] == [int(f * n) for f in (0.25, 0.5, 0.75)]
    assert all(starts[1][key] != starts[2][key] for key in starts[1])


def test_summarize_runs_names_the_defects_no_gate_passes() -> None:
    def run(copy: str, c0: int, n: int, db: float, defect: bool, edge: bool = False) -> dict:
        return {"clip": "c", "copy": copy, "span": [c0 - 8, c0 + n + 8], "frames": n > 32, "run": [c0, c0 + n],
                "samples": n, "contrast_db": db, "silence_edge": edge, "defect": defect,
                "gate_db": 20.0 if n <= 32 else 12.0}
    doc = {"runs": [run("click1", 100, 1, 31.0, True), run("click1", 900, 2, 17.5, False),
                    run("clean", 900, 2, 17.5, False),  # the same speech run in another copy: counted once
                    run("burst20ms", 2000, 300, 9.2, True), run("burst20ms", 5000, 441, 25.0, True, edge=True)],
           "defects": [{"clip": "c", "kind": "click1", "span": [100, 101], "flagged": True},
                       {"clip": "c", "kind": "burst20ms", "span": [1990, 2431], "flagged": True},
                       {"clip": "c", "kind": "burst20ms", "span": [5000, 5441], "flagged": True}]}
    lines = summarize_runs(doc).splitlines()
    assert lines[0] == "click gate 20 dB: defect runs 1 (lowest [31.0]), speech runs 1 (highest [17.5])"
    assert lines[1] == "burst gate 12 dB: defect runs 1 (lowest [9.2]), speech runs 0 (highest [])"
    assert lines[2] == "silence-edge runs (left as they are): 1, on a defect 1"
    assert lines[3:] == ["  flagged, no run passes: c burst20ms at 1990 samples: 300 samples +9.20 dB",
                         "  flagged, no run passes: c burst20ms at 5000 samples: 441 samples +25.00 dB (silence edge)"]
