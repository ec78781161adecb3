"""`waveglow-score checkpoint=<ckpt> input=<wavs> output=<file.csv|file.json>`: likelihoods.

The exact log-likelihood of each file given its own mel, in nats per sample, overall and per
mel frame, with the suspect regions (robust z-score below -threshold) in seconds.

Exit status: 0 on success (with on_error=skip: at least one file scored); 2 on a user error.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from waveglow.cli.common import Script, app, save_config_beside
from waveglow.cli.synthesize import input_spec, make_synthesizer, report_failures
from waveglow.config import ScoreApp
from waveglow.errors import UserError
from waveglow.inference import Scorer, format_regions, write_scores

log = logging.getLogger("waveglow.score")

SCRIPT = Script(
    name="waveglow-score", config="waveglow_score",
    summary="Score recordings with the model's exact log-likelihood given their own mels: nats per "
            "sample per file and per mel frame, and the improbable (suspect) regions in seconds. "
            ".json holds everything; .csv gets one row per file plus <stem>_frames.csv.",
    usage="checkpoint=<ckpt> input=<wav | folder | glob | filelist> output=<scores.csv | scores.json>",
    examples=("waveglow-score checkpoint=run/checkpoints/best.pt input=data/demo/wavs output=scores.csv",),
)


@app(SCRIPT)
def main(cfg: ScoreApp) -> None:
    """Score every input file and write the table."""
    output = Path(cfg.output)
    if output.suffix.lower() not in (".csv", ".json"):
        raise UserError(f"output={output}: expected a .csv or .json file name")
    t0 = time.perf_counter()
    synth = make_synthesizer(cfg, crossfade_frames=0)
    scorer = Scorer(synth, threshold=cfg.threshold, merge_gap=cfg.merge_gap, dither=cfg.dither)
    # mel_dir: score against given mels (e.g. a TTS's) where the schema offers it.
    scores, failed = scorer.score_files(input_spec(cfg.input), on_error=cfg.on_error, progress=cfg.progress,
                                        mel_dir=getattr(cfg, "mel_dir", None),
                                        input_convention=cfg.input_convention)
    meta = {"checkpoint": cfg.checkpoint, "sampling_rate": synth.sampling_rate,
            "hop_length": synth.hop_length, "threshold": scorer.threshold, "merge_gap": scorer.merge_gap,
            "dither": scorer.dither, "unit": "nats per sample"}
    written = write_scores(output, scores, failed, meta)
    save_config_beside(cfg, output, "score", is_dir=False)
    for s in scores:
        sus = f"; suspect: {format_regions(s.regions)}" if s.regions else ""
        log.info("%s: %.4f nats/sample (frames: median %.4f, MAD %.4f)%s", s.file, s.nats_per_sample,
                 s.median, s.mad, sus)
    report_failures(failed)
    seconds = sum(s.seconds for s in scores)
    samples = sum(s.samples for s in scores)
    wall = time.perf_counter() - t0
    mean = sum(s.nats_per_sample * s.samples for s in scores) / max(samples, 1)
    print(f"scored {len(scores)} {'file' if len(scores) == 1 else 'files'}, {seconds:.2f} s of audio: "
          f"{mean:.4f} nats/sample; {sum(len(s.regions) for s in scores)} suspect regions; {wall:.2f} s wall "
          f"({seconds / max(wall, 1e-9):.1f}x real time); wrote {', '.join(map(str, written))}", flush=True)
