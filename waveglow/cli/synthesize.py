"""`waveglow-synthesize checkpoint=<ckpt> input=<mels> output_dir=<dir>`: mel files -> WAV files.

Exit status: 0 when every file was written; 2 on a user error (bad checkpoint, bad input with
on_error=fail, nothing synthesized). With on_error=skip, bad files are listed at the end and the
exit status is 0 as long as at least one file was written.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, ListConfig

from waveglow.cli.common import hydra_app, number, save_resolved_config
from waveglow.errors import UserError

log = logging.getLogger("waveglow.synthesize")


def require(cfg: DictConfig, keys: tuple[str, ...], usage: str) -> None:
    """UserError naming the first missing key (null or empty)."""
    for key in keys:
        value = cfg.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise UserError(f"{key}=... is required: {usage}")


def input_spec(value: Any) -> Any:
    """`input=x` (string) or `input=[a,b]` (list of paths) as the Synthesizer takes it."""
    if isinstance(value, (ListConfig, list, tuple)):
        return [str(v) for v in value]
    return str(value)


def make_synthesizer(cfg: DictConfig) -> Any:
    """A Synthesizer from the common keys (checkpoint, device, precision, chunking)."""
    from waveglow.synthesize import Synthesizer

    return Synthesizer(
        str(cfg.checkpoint), device=str(cfg.device), precision=str(cfg.precision),
        chunk_frames=number(cfg, "chunk_frames", int), overlap=cfg.get("chunk_overlap"),
        crossfade_frames=number(cfg, "crossfade_frames", int, default=4),
    )


def report_failures(failed: list[tuple[str, str]]) -> None:
    if failed:
        log.warning("skipped %d bad files:", len(failed))
        for _, reason in failed:
            log.warning("  %s", reason)


@hydra_app("waveglow_synthesize")
def main(cfg: DictConfig) -> None:
    """Synthesize every input mel into <output_dir>/<stem>.wav."""
    require(cfg, ("checkpoint", "input", "output_dir"),
            "waveglow-synthesize checkpoint=<ckpt> input=<mel file | dir | glob | filelist> output_dir=<dir>")
    for key, kind in (("sigma", float), ("seed", int), ("batch_size", int), ("denoiser_strength", float)):
        number(cfg, key, kind)  # a typo fails now, not after the checkpoint has been loaded
    synth = make_synthesizer(cfg)
    log.info("%s: %s, %s, %d Hz, hop %d, receptive field ±%d frames", cfg.checkpoint, synth.device,
             synth.precision, synth.sampling_rate, synth.hop_length, synth.receptive_field)
    report = synth.to_files(
        input_spec(cfg.input), str(cfg.output_dir), sigma=number(cfg, "sigma", float), seed=number(cfg, "seed", int),
        batch_size=number(cfg, "batch_size", int), denoiser_strength=number(cfg, "denoiser_strength", float),
        denoiser_mel=str(cfg.denoiser_mel), subtype=str(cfg.format), on_error=str(cfg.on_error),
        progress=bool(cfg.get("progress", True)),
    )
    save_resolved_config(cfg, str(cfg.output_dir))
    report_failures(report.failed)
    print(report.summary(), flush=True)
