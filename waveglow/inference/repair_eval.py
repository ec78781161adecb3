"""Repairs measured on held-out clips with injected defects (`scripts/measure_repair.py`, tests).

Each clip is damaged in three separate copies, on the int16 grid: three single-sample ±0.9
clicks (at 25/50/75 % of the clip), three 5-sample ±0.9 clicks (same places), and two 20 ms
bursts of 0.1-rms white noise (at 30/70 %). Each copy is enhanced (PCM_16), and so is the clean
clip (false positives). Per kind: the share of defects flagged (a repaired region overlaps the
defect's samples). Per repaired region that covers a defect: its level (rms of the output over
the region's span, in dB against the clean clip's rms over the same samples, and against the
output's rms over 10 ms on each side of the changed samples: the surrounding level), the
waveform rms error against the clean clip over the changed samples (span + crossfade margins)
of the output and of the damaged input, and the mel L1 against the clean clip over the frames
whose window touches a changed sample, of the output and of the damaged input.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch

from waveglow.inference.enhance import Enhancer, quantize

KINDS = ("click1", "click5", "burst20ms")


def damage(clean: torch.Tensor, kind: str, sr: int) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """(the damaged clip on the int16 grid, the defects' sample spans [a, b))."""
    out, n, spans = clean.clone(), clean.numel(), []
    if kind == "burst20ms":
        gen = torch.Generator().manual_seed(1)
        b = int(0.020 * sr)
        for frac in (0.3, 0.7):
            a = int(frac * n)
            out[a: a + b] += 0.1 * torch.randn(b, generator=gen)
            spans.append((a, a + b))
    else:
        width = 1 if kind == "click1" else 5
        for k, frac in enumerate((0.25, 0.5, 0.75)):
            a = int(frac * n)
            sign = 1.0 if k % 2 == 0 else -1.0
            out[a: a + width] = sign * 0.9 * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0][:width])
            spans.append((a, a + width))
    return quantize(out, "PCM_16"), spans


def rms(x: torch.Tensor) -> float:
    """Root mean square of x [T] (0 for no samples)."""
    return float(x.double().pow(2).mean().sqrt()) if x.numel() else 0.0


def db(a: float, b: float) -> float:
    """20·log10(a / b), both floored at 1e-9."""
    return 20 * torch.log10(torch.tensor(max(a, 1e-9) / max(b, 1e-9))).item()


def regions_of(result, bad: torch.Tensor, sr: int, margin: int) -> list[tuple[int, int, int, int]]:
    """(span start, span end, changed start, changed end) per reported region, in samples: the
    changed samples are those within `margin` (the crossfade) of the span."""
    changed = (result.audio != bad).nonzero().flatten()
    out = []
    for r in result.regions:
        s0, s1 = round(r.start_s * sr), round(r.end_s * sr)
        near = changed[(changed >= s0 - margin) & (changed < s1 + margin)]
        c0, c1 = (int(near.min()), int(near.max()) + 1) if near.numel() else (s0, s1)
        out.append((s0, s1, min(c0, s0), max(c1, s1)))
    return out


def measure(enhancer: Enhancer, corpus: Path, clips: list[str] | None = None) -> dict:
    """Damage, enhance and compare every clip of `clips` (default: the corpus's val + test split).

    Returns:
        {"clips", "flagged": {kind: [found, total]}, "regions": [one dict per repaired defect],
        "false_positives_damaged", "false_positives_clean"}.
    """
    sr, hop = enhancer.synth.sampling_rate, enhancer.synth.hop_length
    mel_fn = enhancer.mel_fn
    ids = clips or [i for s in ("val", "test") for i in (corpus / "splits" / f"{s}.txt").read_text().split()]
    found = {k: [0, 0] for k in KINDS}
    rows, false_pos, clean_fp = [], [], []
    for clip in ids:
        clean = torch.from_numpy(sf.read(corpus / "wavs" / f"{clip}.wav", dtype="float32")[0])
        res = enhancer.enhance_audio(clean, clip, subtype="PCM_16")
        clean_fp += [(clip, r.start_s, r.end_s) for r in res.regions]
        for kind in KINDS:
            bad, defects = damage(clean, kind, sr)
            res = enhancer.enhance_audio(bad, f"{clip}:{kind}", subtype="PCM_16")
            regions = regions_of(res, bad, sr, enhancer.margin)
            found[kind][1] += len(defects)
            found[kind][0] += sum(any(s0 < b and a < s1 for s0, s1, _, _ in regions) for a, b in defects)
            m_clean, m_bad, m_out = mel_fn(clean), mel_fn(bad), mel_fn(res.audio)
            for s0, s1, c0, c1 in regions:
                if not any(s0 < b and a < s1 for a, b in defects):
                    false_pos.append((clip, kind, s0 / sr, s1 / sr))
                    continue
                ref = int(0.010 * sr)
                around = torch.cat([res.audio[max(0, c0 - ref): c0], res.audio[c1: c1 + ref]])
                f0, f1 = max(0, (c0 - 512) // hop), min(m_clean.shape[1], (c1 + 512) // hop + 1)
                rows.append({
                    "clip": clip, "kind": kind, "start_s": round(s0 / sr, 4), "end_s": round(s1 / sr, 4),
                    "changed_samples": c1 - c0,
                    "level_vs_clean_db": round(db(rms(res.audio[s0:s1]), rms(clean[s0:s1])), 2),
                    "level_vs_surrounding_db": round(db(rms(res.audio[s0:s1]), rms(around)), 2),
                    "wave_err_out": rms(res.audio[c0:c1] - clean[c0:c1]),
                    "wave_err_damaged": rms(bad[c0:c1] - clean[c0:c1]),
                    "mel_l1_out": float((m_out - m_clean)[:, f0:f1].abs().mean()),
                    "mel_l1_damaged": float((m_bad - m_clean)[:, f0:f1].abs().mean()),
                })
    return {"clips": ids, "flagged": found, "regions": rows, "false_positives_damaged": false_pos,
            "false_positives_clean": clean_fp}


def summarize(doc: dict) -> str:
    """One line per kind and one for false positives."""
    lines = []
    for kind, (hit, total) in doc["flagged"].items():
        rs = [r for r in doc["regions"] if r["kind"] == kind]
        if not rs:
            lines.append(f"{kind:10s} flagged {hit}/{total}; no region repaired")
            continue
        lv = [r["level_vs_clean_db"] for r in rs]
        ls = [r["level_vs_surrounding_db"] for r in rs]
        we = sum(r["wave_err_out"] < r["wave_err_damaged"] for r in rs)
        me = sum(r["mel_l1_out"] < r["mel_l1_damaged"] for r in rs)
        mean = lambda k, rs=rs: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        lines.append(
            f"{kind:10s} flagged {hit}/{total}; {len(rs)} regions: level vs clean {sum(lv) / len(lv):+.2f} dB "
            f"(min {min(lv):+.2f}, max {max(lv):+.2f}), vs surrounding {sum(ls) / len(ls):+.2f} dB "
            f"(min {min(ls):+.2f}, max {max(ls):+.2f}); waveform rms error {mean('wave_err_damaged'):.4f} -> "
            f"{mean('wave_err_out'):.4f} (lower in {we}/{len(rs)}); mel L1 {mean('mel_l1_damaged'):.3f} -> "
            f"{mean('mel_l1_out'):.3f} (lower in {me}/{len(rs)})")
    lines.append(f"false positives: {len(doc['false_positives_damaged'])} regions on the damaged copies, "
                 f"{len(doc['false_positives_clean'])} on the {len(doc['clips'])} clean clips "
                 f"{sorted({c for c, *_ in doc['false_positives_clean']})}")
    return "\n".join(lines)


