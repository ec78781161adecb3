"""`waveglow-synthesize checkpoint=<ckpt> input=<mels> output_dir=<dir>`: mel files -> WAV files.

Exit status: 0 when every file was written; 2 on a user error (bad checkpoint, bad input with
on_error=fail, nothing synthesized). With on_error=skip, bad files are listed at the end and the
exit status is 0 as long as at least one file was written.
"""

from __future__ import annotations

import logging
from typing import Any

from waveglow.cli.common import Script, Sweep, app, save_config_beside
from waveglow.config import InferenceSettings, SynthesizeApp
from waveglow.inference import Synthesizer

log = logging.getLogger("waveglow.synthesize")

SCRIPT = Script(
    name="waveglow-synthesize", config="waveglow_synthesize",
    summary="Turn mel spectrograms (.pt/.npy, [n_mels, frames], natural-log, e.g. from Tacotron 2) into "
            "WAV files with a trained checkpoint: batched, chunked for long inputs, on CPU or CUDA. "
            "Each input gives <output_dir>/<stem>.wav of exactly hop x frames samples.",
    usage="checkpoint=<ckpt> input=<mel file | folder | glob | filelist> output_dir=<dir>",
    examples=("waveglow-synthesize checkpoint=run/checkpoints/best.pt input=mels/ output_dir=wavs",
              "waveglow-synthesize checkpoint=ckpt.pt input=tts_mels/ output_dir=wavs input_convention=log10",
              "waveglow-synthesize checkpoint=ckpt.pt input='mels/*.npy' output_dir=wavs sigma=0.8 "
              "denoiser_strength=0.02",
              "waveglow-synthesize -m checkpoint=ckpt.pt input=mels/ output_dir=wavs sigma=0.6,0.8"),
    # -m: one output folder per job, <output_dir>/<job number>-<swept settings>
    sweep=Sweep(dir_key="output_dir", default_dir=lambda cfg, stamp: cfg.output_dir, nested=True),
)


def input_spec(value: Any) -> Any:
    """`input=x` (string) or `input=[a,b]` (list of paths) as the library takes it."""
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return str(value)


def make_synthesizer(cfg: InferenceSettings, crossfade_frames: int | None = None) -> Synthesizer:
    """A Synthesizer from the settings every inference script shares."""
    return Synthesizer(
        cfg.checkpoint, device=cfg.device, precision=cfg.precision, chunk_frames=cfg.chunk_frames,
        overlap=getattr(cfg, "chunk_overlap", None),
        crossfade_frames=getattr(cfg, "crossfade_frames", 4) if crossfade_frames is None else crossfade_frames,
    )


def report_failures(failed: list[tuple[str, str]]) -> None:
    if failed:
        log.warning("skipped %d bad %s:", len(failed), "file" if len(failed) == 1 else "files")
        for _, reason in failed:
            log.warning("  %s", reason)


@app(SCRIPT)
def main(cfg: SynthesizeApp) -> None:
    """Synthesize every input mel into <output_dir>/<stem>.wav."""
    synth = make_synthesizer(cfg)
    log.info("%s: %s, %s, %d Hz, hop %d, receptive field ±%d frames", cfg.checkpoint, synth.device,
             synth.precision, synth.sampling_rate, synth.hop_length, synth.receptive_field)
    report = synth.to_files(
        input_spec(cfg.input), cfg.output_dir, sigma=cfg.sigma, seed=cfg.seed, batch_size=cfg.batch_size,
        denoiser_strength=cfg.denoiser_strength, denoiser_mel=cfg.denoiser_mel, subtype=cfg.format,
        on_error=cfg.on_error, progress=cfg.progress, input_convention=cfg.input_convention,
    )
    save_config_beside(cfg, cfg.output_dir, "synthesize", is_dir=True)
    report_failures(report.failed)
    print(report.summary(), flush=True)
