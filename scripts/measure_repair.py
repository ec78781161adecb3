#!/usr/bin/env python
"""Measure `waveglow-enhance` repairs on held-out clips with injected defects.

    .venv/bin/python scripts/measure_repair.py checkpoint=<ckpt> [corpus=data/demo] [threads=1]
        [threshold=3] [click_threshold=12] [sigma=1] [level=rms] [fill=envelope] [margin_ms=20]
        [seed=1] [split=val+test|train] [json=<out.json>] [runs=<runs.json>]

Damages each held-out clip of the corpus (split=val+test, the default; split=train measures the
training clips instead: the model saw those clips, though never with these defects) with
single-sample clicks, 5-sample clicks and 20 ms noise bursts, enhances it, and prints per kind the
share of defects flagged and repaired, then one line per repaired defect: its level in dB against
its surroundings (and the clean clip's own level against the same surroundings), against the
clean clip, and the waveform and mel error against the clean clip of the damaged input and of
the repair (`waveglow.inference.repair_eval`). seed=1 (the default) is the fixed defect layout
the documented figures were measured on; another seed draws other positions and burst noise.
json= also writes every region's figures. runs= instead writes the first round's candidate runs
of every copy with their residual contrast against the click and burst gates
(`repair_eval.candidate_runs`; no repair) and prints the runs nearest the gates. Unset settings
take `Enhancer`'s defaults (the CLI's).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from waveglow.errors import UserError
from waveglow.inference import Synthesizer
from waveglow.inference.enhance import Enhancer
from waveglow.inference.repair_eval import (
    candidate_runs,
    measure,
    region_table,
    split_clips,
    summarize,
    summarize_runs,
)


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    unknown = set(opts) - {"checkpoint", "corpus", "threads", "threshold", "click_threshold", "sigma", "level", "fill",
                           "margin_ms", "seed", "split", "json", "runs"}
    if "checkpoint" not in opts or unknown:
        print(f"error: usage: {Path(__file__).name} checkpoint=<ckpt> [corpus= threads= threshold= "
              f"click_threshold= sigma= level= fill= margin_ms= seed= split= json= runs=]"
              + (f" (unknown: {sorted(unknown)})" if unknown else ""), file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(int(opts.get("threads", 1)))
    numbers = {k: float(opts[k]) for k in ("threshold", "click_threshold", "sigma", "margin_ms") if k in opts}
    words = {k: opts[k] for k in ("level", "fill") if k in opts}
    enhancer = Enhancer(Synthesizer(opts["checkpoint"], device="cpu"), **numbers, **words)
    try:
        seed = int(opts.get("seed", 1))
    except ValueError:
        raise UserError(f"seed={opts['seed']}: expected an integer") from None
    corpus = Path(opts.get("corpus", "data/demo"))
    clips = split_clips(corpus, opts.get("split", "val+test"))
    if "runs" in opts:
        doc = candidate_runs(enhancer, corpus, clips, seed=seed)
        doc["settings"] = {k: v for k, v in opts.items() if k != "runs"}
        print(summarize_runs(doc))
        Path(opts["runs"]).write_text(json.dumps(doc, indent=1))
        return
    doc = measure(enhancer, corpus, clips, seed=seed)
    doc["settings"] = {k: v for k, v in opts.items() if k != "json"}
    print(summarize(doc))
    print(region_table(doc))
    if "json" in opts:
        Path(opts["json"]).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
