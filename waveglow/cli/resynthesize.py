"""`waveglow-resynthesize checkpoint=<ckpt> input=<wavs> output_dir=<dir>`: copy synthesis.

WAV -> log-mel (the checkpoint's MelSpectrogram) -> WAV, with mel L1 and multi-resolution STFT
distance between input and output per file and in total (<output_dir>/metrics.csv and .json).
Exit status as waveglow-synthesize.
"""

from __future__ import annotations

import logging

from waveglow.cli.common import Script, app, save_config_beside
from waveglow.cli.synthesize import input_spec, make_synthesizer, report_failures
from waveglow.config import ResynthesizeApp
from waveglow.errors import UserError
from waveglow.inference import resynthesize

log = logging.getLogger("waveglow.resynthesize")

SCRIPT = Script(
    name="waveglow-resynthesize", config="waveglow_resynthesize",
    summary="Copy synthesis, the everyday quality check: WAV -> mel (the checkpoint's own audio settings) "
            "-> WAV, with the mel L1 and multi-resolution STFT distance of each output to its input "
            "(<output_dir>/metrics.csv and metrics.json). Outputs have the input's length.",
    usage="checkpoint=<ckpt> input=<wav | folder | glob | filelist> output_dir=<dir>",
    examples=("waveglow-resynthesize checkpoint=run/checkpoints/best.pt input=data/demo/wavs "
              "output_dir=outputs/resynth",),
)


@app(SCRIPT)
def main(cfg: ResynthesizeApp) -> None:
    """Resynthesize every input file and report the distances."""
    if cfg.input_convention != "natural":
        raise UserError(f"input_convention={cfg.input_convention}: waveglow-resynthesize computes the mels from "
                        "the audio itself (natural log); the option is for waveglow-synthesize")
    synth = make_synthesizer(cfg)
    result = resynthesize(
        synth, input_spec(cfg.input), cfg.output_dir, sigma=cfg.sigma, seed=cfg.seed, batch_size=cfg.batch_size,
        denoiser_strength=cfg.denoiser_strength, denoiser_mel=cfg.denoiser_mel, subtype=cfg.format,
        on_error=cfg.on_error, progress=cfg.progress,
    )
    save_config_beside(cfg, cfg.output_dir, "resynthesize", is_dir=True)
    for row in result.rows:
        log.info("%s: mel L1 %.4f, MR-STFT distance %.4f", row["file"], row["mel_l1"], row["mrstft"])
    report_failures(result.report.failed)
    print(result.report.summary(), flush=True)
    print(f"mean over {len(result.rows)} {'file' if len(result.rows) == 1 else 'files'}: mel L1 "
          f"{result.mean['mel_l1']:.4f}, multi-resolution STFT distance {result.mean['mrstft']:.4f} "
          f"(spectral convergence {result.mean['spectral_convergence']:.4f} + log-magnitude L1 "
          f"{result.mean['log_magnitude_l1']:.4f}); metrics in {result.metrics_csv}", flush=True)
