"""`waveglow-score checkpoint=<ckpt> input=<wavs> output=<file.csv|file.json>`: likelihoods.

The exact log-likelihood of each file given its own mel, in nats per sample, overall and per
mel frame, with the suspect regions (robust z-score below -threshold) in seconds.
Exit status: 0 on success (with on_error=skip: at least one file scored); 2 on a user error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from waveglow.cli.common import hydra_app, number, save_resolved_config
from waveglow.cli.synthesize import input_spec, report_failures, require
from waveglow.errors import UserError

log = logging.getLogger("waveglow.score")


@hydra_app("waveglow_score")
def main(cfg: DictConfig) -> None:
    """Score every input file and write the table."""
    from waveglow.score import Scorer, format_regions, write_scores
    from waveglow.synthesize import Synthesizer

    require(cfg, ("checkpoint", "input", "output"),
            "waveglow-score checkpoint=<ckpt> input=<wav | dir | glob | filelist> output=<scores.csv|scores.json>")
    output = Path(str(cfg.output))
    if output.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"output={output}: expected a .csv or .json file name")
    t0 = time.perf_counter()
    synth = Synthesizer(str(cfg.checkpoint), device=str(cfg.device), precision=str(cfg.precision),
                        chunk_frames=number(cfg, "chunk_frames", int), crossfade_frames=0)
    scorer = Scorer(synth, threshold=number(cfg, "threshold", float), merge_gap=number(cfg, "merge_gap", int),
                    dither=number(cfg, "dither", float))
    scores, failed = scorer.score_files(input_spec(cfg.input), on_error=str(cfg.on_error),
                                        progress=bool(cfg.get("progress", True)))
    meta = {"checkpoint": str(cfg.checkpoint), "sampling_rate": synth.sampling_rate,
            "hop_length": synth.hop_length, "threshold": scorer.threshold, "merge_gap": scorer.merge_gap,
            "dither": scorer.dither, "unit": "nats per sample"}
    written = write_scores(output, scores, failed, meta)
    save_resolved_config(cfg, output.parent)
    for s in scores:
        sus = f"; suspect: {format_regions(s.regions)}" if s.regions else ""
        log.info("%s: %.4f nats/sample (frames: median %.4f, MAD %.4f)%s", s.file, s.nats_per_sample,
                 s.median, s.mad, sus)
    report_failures(failed)
    seconds = sum(s.seconds for s in scores)
    samples = sum(s.samples for s in scores)
    wall = time.perf_counter() - t0
    mean = sum(s.nats_per_sample * s.samples for s in scores) / max(samples, 1)
    print(f"scored {len(scores)} files, {seconds:.2f} s of audio: {mean:.4f} nats/sample; "
          f"{sum(len(s.regions) for s in scores)} suspect regions; {wall:.2f} s wall "
          f"({seconds / max(wall, 1e-9):.1f}x real time); wrote {', '.join(map(str, written))}", flush=True)
