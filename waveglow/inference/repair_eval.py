"""Repairs measured on held-out clips with injected defects (`scripts/measure_repair.py`, tests).

Each clip is damaged in three separate copies, on the int16 grid: three single-sample ±0.9
clicks (at 25/50/75 % of the clip), three 5-sample ±0.9 clicks (same places), and two 20 ms
bursts of 0.1-rms white noise (at 30/70 %, noise from `torch.Generator().manual_seed(1)`). That
fixed layout is seed 1; any other seed draws each clip's and kind's positions (one defect per
equal stretch of 10–90 % of the clip, so they stay apart) and the burst noise from that seed. Each copy is enhanced (PCM_16), and so is the clean
clip (false positives). Per kind: the share of defects flagged (a flagged span overlaps the
defect's samples, repaired or left as it was) and repaired (a repaired region overlaps it).

Per repaired region that covers a defect:

- *level*: the rms of the output over the changed samples, widened to at least one hop (256
  samples: a click's repair changes 1-5 samples, which have no level of their own), in dB
  against the output's rms over 10 ms on each side of that stretch (`level_vs_surrounding_db`)
  and against the clean clip over the same samples (`level_vs_clean_db`); the clean clip's own
  level against its surroundings over the same stretches (`clean_vs_surrounding_db`) says how
  far the speech itself departs from its surroundings there;
- *waveform error*: rms of output − clean over the changed samples (span + crossfade), next to
  that of damaged − clean;
- *mel error*: L1 of the log-mel against the clean clip's over the frames whose window touches a
  changed sample, of the output and of the damaged input.
"""

from __future__ import annotations

from pathlib import Path

import soundfile as sf
import torch

from waveglow.errors import UserError
from waveglow.inference.clicks import (
    MIN_BURST_CONTRAST_DB,
    MIN_CLICK_CONTRAST_DB,
    at_silence_edge,
    gate_db,
    residual_contrast_db,
)
from waveglow.inference.enhance import Enhancer, quantize

KINDS = ("click1", "click5", "burst20ms")


def positions(kind: str, seed: int, salt: int) -> tuple[float, ...]:
    """Where a kind's defects go, as fractions of the clip: seed 1 is the fixed layout (clicks at
    25/50/75 %, bursts at 30/70 %); any other seed draws one position per equal stretch of 10–90 %
    (kept 10 % of a stretch from its ends, so defects never touch) from (seed, salt)."""
    count = 2 if kind == "burst20ms" else 3
    if seed == 1:
        return (0.3, 0.7) if count == 2 else (0.25, 0.5, 0.75)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + salt)
    u = 0.1 + 0.8 * torch.rand(count, generator=gen, dtype=torch.float64)
    step = 0.8 / count
    return tuple(0.1 + (k + float(u[k])) * step for k in range(count))


def damage(clean: torch.Tensor, kind: str, sr: int, seed: int = 1,
           salt: int = 0) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Damage a clean clip with one kind of defect.

    Args:
        clean: the clean clip [T], float in [-1, 1].
        kind: one of KINDS.
        sr: sampling rate in Hz (a burst lasts 20 ms).
        seed: 1 for the fixed layout the documented figures were measured on; other seeds draw the
            positions and the burst noise (`positions`).
        salt: varies the drawn positions per clip and kind under one seed (ignored for seed 1).

    Returns:
        (the damaged clip [T] on the int16 grid, the defects' sample spans [a, b)).
    """
    out, n, spans = clean.clone(), clean.numel(), []
    fracs = positions(kind, seed, salt)
    if kind == "burst20ms":
        gen = torch.Generator().manual_seed(seed)
        b = int(0.020 * sr)
        for frac in fracs:
            a = int(frac * n)
            out[a: a + b] += 0.1 * torch.randn(b, generator=gen)
            spans.append((a, a + b))
    else:
        width = 1 if kind == "click1" else 5
        for k, frac in enumerate(fracs):
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


def regions_of(result, bad: torch.Tensor) -> list[tuple[int, int, int, int]]:
    """(span start, span end, changed start, changed end) per reported region, in samples: the
    changed samples are those within the region's reach (a burst's crossfade) of the span."""
    sr = round(result.audio.numel() / result.seconds) if result.seconds else 1
    changed = (result.audio != bad).nonzero().flatten()
    out = []
    for r in result.regions:
        s0, s1 = round(r.start_s * sr), round(r.end_s * sr)
        near = changed[(changed >= s0 - REACH) & (changed < s1 + REACH)]
        c0, c1 = (int(near.min()), int(near.max()) + 1) if near.numel() else (s0, s1)
        out.append((s0, s1, min(c0, s0), max(c1, s1)))
    return out


# Samples around a reported span that count as its repair's (the widest crossfade: margin_ms 20
# at 22.05 kHz), the shortest stretch a level is measured on, and the surroundings (10 ms).
REACH = 441
LEVEL_MIN = 256
AROUND_S = 0.010


def level_stretch(c0: int, c1: int, n: int, min_len: int = LEVEL_MIN) -> tuple[int, int]:
    """[c0, c1) widened symmetrically to at least `min_len` samples, within [0, n)."""
    grow = max(0, min_len - (c1 - c0))
    a = max(0, c0 - grow // 2)
    b = min(n, max(c1 + grow - grow // 2, a + min_len))
    return max(0, min(a, b - min_len)), b


def load_clip(corpus: Path, clip: str) -> torch.Tensor:
    """A corpus clip [T] (float32) from its wavs/ folder."""
    return torch.from_numpy(sf.read(corpus / "wavs" / f"{clip}.wav", dtype="float32")[0])


def damage_salt(index: int, kind: str) -> int:
    """The `damage` salt of the `index`-th clip's copy with `kind`: each clip and kind its own draw."""
    return len(KINDS) * index + KINDS.index(kind)


def split_clips(corpus: Path, split: str) -> list[str]:
    """The clip ids of `split` ("val+test" or "train"; "+" joins split files) of a corpus."""
    ids = []
    for s in split.split("+"):
        f = corpus / "splits" / f"{s}.txt"
        if s not in ("train", "val", "test") or not f.is_file():
            raise UserError(f"split={split}: expected val+test or train, with {f} present")
        ids += f.read_text().split()
    return ids


def measure(enhancer: Enhancer, corpus: Path, clips: list[str] | None = None, seed: int = 1) -> dict:
    """Damage, enhance and compare every clip of `clips` (default: the corpus's val + test split),
    with the defect layout of `seed` (1: the fixed one; `damage`).

    Returns:
        {"clips", "flagged": {kind: [flagged, total]}, "repaired": {kind: [repaired, total]},
        "regions": [one dict per repaired defect], "false_positives_damaged",
        "false_positives_clean" (repaired regions covering no defect), "left_clean" (flagged
        spans of the clean clips left as they were)}.
    """
    sr, hop = enhancer.synth.sampling_rate, enhancer.synth.hop_length
    mel_fn = enhancer.mel_fn
    ids = clips or split_clips(corpus, "val+test")
    flagged = {k: [0, 0] for k in KINDS}
    repaired = {k: [0, 0] for k in KINDS}
    rows, false_pos, clean_fp, clean_left = [], [], [], []
    ref = int(AROUND_S * sr)
    for index, clip in enumerate(ids):
        clean = load_clip(corpus, clip)
        res = enhancer.enhance_audio(clean, clip, subtype="PCM_16")
        clean_fp += [(clip, r.start_s, r.end_s) for r in res.regions]
        clean_left += [(clip, a, b) for a, b in res.left]
        for kind in KINDS:
            bad, defects = damage(clean, kind, sr, seed, salt=damage_salt(index, kind))
            res = enhancer.enhance_audio(bad, f"{clip}:{kind}", subtype="PCM_16")
            regions = regions_of(res, bad)
            spans = [(s0, s1) for s0, s1, _, _ in regions] + [(round(a * sr), round(b * sr)) for a, b in res.left]
            for tally, have in ((repaired, [(s0, s1) for s0, s1, _, _ in regions]), (flagged, spans)):
                tally[kind][1] += len(defects)
                tally[kind][0] += sum(any(s0 < b and a < s1 for s0, s1 in have) for a, b in defects)
            m_clean, m_bad, m_out = mel_fn(clean), mel_fn(bad), mel_fn(res.audio)
            for s0, s1, c0, c1 in regions:
                if not any(s0 < b and a < s1 for a, b in defects):
                    false_pos.append((clip, kind, s0 / sr, s1 / sr))
                    continue
                l0, l1 = level_stretch(c0, c1, clean.numel())
                around = lambda x, l0=l0, l1=l1: torch.cat([x[max(0, l0 - ref): l0], x[l1: l1 + ref]])  # noqa: E731
                f0, f1 = max(0, (c0 - 512) // hop), min(m_clean.shape[1], (c1 + 512) // hop + 1)
                rows.append({
                    "clip": clip, "kind": kind, "start_s": round(s0 / sr, 4), "end_s": round(s1 / sr, 4),
                    "changed_samples": c1 - c0,
                    "level_vs_surrounding_db": round(db(rms(res.audio[l0:l1]), rms(around(res.audio))), 2),
                    "clean_vs_surrounding_db": round(db(rms(clean[l0:l1]), rms(around(clean))), 2),
                    "level_vs_clean_db": round(db(rms(res.audio[l0:l1]), rms(clean[l0:l1])), 2),
                    "wave_err_out": rms(res.audio[c0:c1] - clean[c0:c1]),
                    "wave_err_damaged": rms(bad[c0:c1] - clean[c0:c1]),
                    "mel_l1_out": float((m_out - m_clean)[:, f0:f1].abs().mean()),
                    "mel_l1_damaged": float((m_bad - m_clean)[:, f0:f1].abs().mean()),
                })
    return {"clips": ids, "seed": seed, "flagged": flagged, "repaired": repaired, "regions": rows,
            "false_positives_damaged": false_pos, "false_positives_clean": clean_fp, "left_clean": clean_left}


def candidate_runs(enhancer: Enhancer, corpus: Path, clips: list[str] | None = None, seed: int = 1) -> dict:
    """The first round's candidates of every copy `measure` enhances (the clean clip and its three
    damaged copies): each flagged span's runs of damaged samples (`Enhancer.find_runs`, as the repair) with their
    residual contrast (`clicks.residual_contrast_db`), whether they begin or end sound at digital
    silence (left as they are), whether they overlap a defect, and the gate they face (clicks up to
    MAX_CLICK samples, bursts longer). Later rounds (after the first round's repairs) are not
    included. This shows how far the gates are from the runs on each side of them.

    Returns:
        {"clips", "seed", "runs": [{"clip", "copy" ("clean" or a kind), "span": [s0, s1],
        "frames" (a frame region, else a click span), "run": [c0, c1], "samples", "contrast_db",
        "silence_edge", "defect", "gate_db"}], "defects": [{"clip", "kind", "span", "flagged"}]}.
    """
    sr = enhancer.synth.sampling_rate
    ids = clips or split_clips(corpus, "val+test")
    runs, defects = [], []
    for index, clip in enumerate(ids):
        clean = load_clip(corpus, clip)
        copies = [("clean", clean, [])] + [(kind, *damage(clean, kind, sr, seed, salt=damage_salt(index, kind)))
                                           for kind in KINDS]
        for copy, x, spans in copies:
            score, _, clicks = enhancer.score(x, clip)
            plan = enhancer.plan(score, clicks, x.numel())
            for s0, s1, frames in plan:
                found, a0, a1 = enhancer.find_runs(x, s0, s1)
                for c0, c1 in found:
                    runs.append({
                        "clip": clip, "copy": copy, "span": [s0, s1], "frames": frames, "run": [c0, c1],
                        "samples": c1 - c0, "contrast_db": round(residual_contrast_db(x, a0, a1, c0, c1), 2),
                        "silence_edge": at_silence_edge(x, c0, c1),
                        "defect": any(c0 < b and a < c1 for a, b in spans), "gate_db": gate_db(c0, c1)})
            defects += [{"clip": clip, "kind": copy, "span": [a, b],
                         "flagged": any(s0 < b and a < s1 for s0, s1, _ in plan)} for a, b in spans]
    return {"clips": ids, "seed": seed, "runs": runs, "defects": defects}


def summarize_runs(doc: dict) -> str:
    """Per gate: the lowest runs on a defect of its kind (clicks for the click gate, bursts for the
    burst gate) and the highest runs on no defect (speech; one run found in several copies of a
    clip counted once), silence-edge runs apart; then the first-round flagged defects with no run
    that passes."""
    lines = []
    for name, gate_of, kinds in (("click gate", MIN_CLICK_CONTRAST_DB, ("click1", "click5")),
                                 ("burst gate", MIN_BURST_CONTRAST_DB, ("burst20ms",))):
        rs = [r for r in doc["runs"] if r["gate_db"] == gate_of and not r["silence_edge"]]
        hit = sorted(r["contrast_db"] for r in rs if r["defect"] and r["copy"] in kinds)
        miss = sorted({(r["clip"], *r["run"], r["contrast_db"]) for r in rs if not r["defect"]}, key=lambda t: t[-1])
        miss = [t[-1] for t in miss]
        lines.append(f"{name} {gate_of:g} dB: defect runs {len(hit)} (lowest {hit[:3]}), speech runs {len(miss)} "
                     f"(highest {miss[-3:][::-1]})")
    edge = [r for r in doc["runs"] if r["silence_edge"]]
    lines.append(f"silence-edge runs (left as they are): {len(edge)}, on a defect {sum(r['defect'] for r in edge)}")
    for d in doc["defects"]:
        a, b = d["span"]
        rs = [r for r in doc["runs"] if r["clip"] == d["clip"] and r["copy"] == d["kind"]
              and r["run"][0] < b and a < r["run"][1]]
        if d["flagged"] and not any(not r["silence_edge"] and r["contrast_db"] >= r["gate_db"] for r in rs):
            lines.append(f"  flagged, no run passes: {d['clip']} {d['kind']} at {a} samples: " + (", ".join(
                f"{r['samples']} samples {r['contrast_db']:+.2f} dB" + (" (silence edge)" if r["silence_edge"] else "")
                for r in rs) or "no run stands out"))
    return "\n".join(lines)


def within(rows: list[dict], key: str, db_limit: float = 1.0) -> int:
    """How many rows have |row[key]| <= db_limit."""
    return sum(abs(r[key]) <= db_limit for r in rows)


def summarize(doc: dict) -> str:
    """One line per kind and one for false positives."""
    lines = []
    for kind, (hit, total) in doc["flagged"].items():
        fixed = doc["repaired"][kind][0]
        rs = [r for r in doc["regions"] if r["kind"] == kind]
        head = f"{kind:10s} flagged {hit}/{total}, repaired {fixed}/{total}"
        if not rs:
            lines.append(f"{head}; no region repaired")
            continue
        ls = [r["level_vs_surrounding_db"] for r in rs]
        lc = [r["level_vs_clean_db"] for r in rs]
        we = sum(r["wave_err_out"] < r["wave_err_damaged"] for r in rs)
        me = sum(r["mel_l1_out"] < r["mel_l1_damaged"] for r in rs)
        mean = lambda k, rs=rs: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        lines.append(
            f"{head}; {len(rs)} regions: level vs surrounding {mean('level_vs_surrounding_db'):+.2f} dB "
            f"(min {min(ls):+.2f}, max {max(ls):+.2f}; within ±1 dB {within(rs, 'level_vs_surrounding_db')}/{len(rs)}, "
            f"the clean clip's own {within(rs, 'clean_vs_surrounding_db')}/{len(rs)}), vs clean "
            f"{mean('level_vs_clean_db'):+.2f} dB (min {min(lc):+.2f}, max {max(lc):+.2f}; within ±1 dB "
            f"{within(rs, 'level_vs_clean_db')}/{len(rs)}); waveform rms error {mean('wave_err_damaged'):.4f} -> "
            f"{mean('wave_err_out'):.4f} (lower in {we}/{len(rs)}); mel L1 {mean('mel_l1_damaged'):.3f} -> "
            f"{mean('mel_l1_out'):.3f} (lower in {me}/{len(rs)})")
    lines.append(f"false positives: {len(doc['false_positives_damaged'])} regions on the damaged copies, "
                 f"{len(doc['false_positives_clean'])} on the {len(doc['clips'])} clean clips "
                 f"{sorted({c for c, *_ in doc['false_positives_clean']})}; flagged and left as they were on the "
                 f"clean clips: {len(doc['left_clean'])}")
    return "\n".join(lines)


def region_table(doc: dict) -> str:
    """One line per repaired defect: level (dB vs surrounding, the clean clip's own, vs clean),
    waveform and mel error of the damage and of the repair."""
    head = (f"{'clip':14s} {'kind':9s} {'start_s':>8s} {'samples':>7s} {'lvl/sur':>8s} {'clean/sur':>9s} "
            f"{'lvl/clean':>9s} {'wave dmg':>9s} {'wave out':>9s} {'mel dmg':>8s} {'mel out':>8s}")
    lines = [head]
    for r in doc["regions"]:
        lines.append(f"{r['clip']:14s} {r['kind']:9s} {r['start_s']:8.4f} {r['changed_samples']:7d} "
                     f"{r['level_vs_surrounding_db']:+8.2f} {r['clean_vs_surrounding_db']:+9.2f} "
                     f"{r['level_vs_clean_db']:+9.2f} {r['wave_err_damaged']:9.4f} {r['wave_err_out']:9.4f} "
                     f"{r['mel_l1_damaged']:8.3f} {r['mel_l1_out']:8.3f}")
    return "\n".join(lines)
