"""`waveglow-resynthesize checkpoint=<ckpt> input=<wavs> output_dir=<dir>`: copy synthesis.

WAV -> log-mel (the checkpoint's MelSpectrogram) -> WAV, with mel L1 and multi-resolution STFT
distance between input and output per file and in total (<output_dir>/metrics.csv and .json).
Exit status as waveglow-synthesize.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from waveglow.cli.common import hydra_app, number, save_resolved_config
from waveglow.cli.synthesize import input_spec, make_synthesizer, report_failures, require

log = logging.getLogger("waveglow.resynthesize")


@hydra_app("waveglow_resynthesize")
def main(cfg: DictConfig) -> None:
    """Resynthesize every input file and report the distances."""
    from waveglow.synthesize import resynthesize

    require(cfg, ("checkpoint", "input", "output_dir"),
            "waveglow-resynthesize checkpoint=<ckpt> input=<wav | dir | glob | filelist> output_dir=<dir>")
    synth = make_synthesizer(cfg)
    result = resynthesize(
        synth, input_spec(cfg.input), str(cfg.output_dir), sigma=number(cfg, "sigma", float), seed=number(cfg, "seed", int),
        batch_size=number(cfg, "batch_size", int), denoiser_strength=number(cfg, "denoiser_strength", float),
        denoiser_mel=str(cfg.denoiser_mel), subtype=str(cfg.format), on_error=str(cfg.on_error),
        progress=bool(cfg.get("progress", True)),
    )
    save_resolved_config(cfg, str(cfg.output_dir))
    for row in result.rows:
        log.info("%s: mel L1 %.4f, MR-STFT distance %.4f", row["file"], row["mel_l1"], row["mrstft"])
    report_failures(result.report.failed)
    print(result.report.summary(), flush=True)
    print(f"mean over {len(result.rows)} files: mel L1 {result.mean['mel_l1']:.4f}, "
          f"multi-resolution STFT distance {result.mean['mrstft']:.4f} "
          f"(spectral convergence {result.mean['spectral_convergence']:.4f} + log-magnitude L1 "
          f"{result.mean['log_magnitude_l1']:.4f}); metrics in {result.metrics_csv}", flush=True)
