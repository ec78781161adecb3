#!/usr/bin/env python
"""Measure `waveglow-enhance` repairs on held-out clips with injected defects.

    .venv/bin/python scripts/measure_repair.py checkpoint=<ckpt> [corpus=data/demo] [threads=1]
        [threshold=5] [click_threshold=30] [sigma=1] [level=rms] [fill=envelope] [margin_ms=20]
        [json=<out.json>]

Damages each held-out clip of the corpus with single-sample clicks, 5-sample clicks and 20 ms noise
bursts, enhances it, and prints per kind the share of defects flagged and, per repaired region,
level and error against the clean clip (`waveglow.inference.repair_eval`). json= also writes
every region's figures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from waveglow.errors import UserError
from waveglow.inference import Synthesizer
from waveglow.inference.enhance import Enhancer
from waveglow.inference.repair_eval import measure, summarize


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    unknown = set(opts) - {"checkpoint", "corpus", "threads", "threshold", "click_threshold", "sigma", "level", "fill",
                           "margin_ms", "json"}
    if "checkpoint" not in opts or unknown:
        print(f"error: usage: {Path(__file__).name} checkpoint=<ckpt> [corpus= threads= threshold= "
              f"click_threshold= sigma= level= fill= margin_ms= json=]"
              + (f" (unknown: {sorted(unknown)})" if unknown else ""), file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(int(opts.get("threads", 1)))
    enhancer = Enhancer(Synthesizer(opts["checkpoint"], device="cpu"), threshold=float(opts.get("threshold", 5)),
                        click_threshold=float(opts.get("click_threshold", 30)), sigma=float(opts.get("sigma", 1)),
                        level=opts.get("level", "rms"), fill=opts.get("fill", "envelope"),
                        margin_ms=float(opts.get("margin_ms", 20)))
    doc = measure(enhancer, Path(opts.get("corpus", "data/demo")))
    doc["settings"] = {k: v for k, v in opts.items() if k != "json"}
    print(summarize(doc))
    if "json" in opts:
        Path(opts["json"]).write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
