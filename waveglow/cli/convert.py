"""`waveglow-convert checkpoint=<ckpt> input=<wavs> output_dir=<dir>`: latent voice conversion.

Each input is encoded to its latent with its own mel (exact), the conditioning is changed
(formant_shift warps the mel's frequency axis; target= takes a second recording's mel, DTW-aligned)
and/or the latent is scaled (latent_scale), and the result is decoded to `<output_dir>/<name>.wav`.

Exit status: 0 on success (with on_error=skip: at least one file converted); 2 on a user error,
with nothing written.
"""

from __future__ import annotations

import logging

from waveglow.cli.common import Script, app, save_config_beside
from waveglow.cli.synthesize import input_spec, make_synthesizer, report_failures
from waveglow.config import ConvertApp
from waveglow.inference.convert import convert_files

log = logging.getLogger("waveglow.convert")

SCRIPT = Script(
    name="waveglow-convert", config="waveglow_convert",
    summary="Voice conversion in the flow's latent space: encode each recording with its own mel (exact), "
            "move the mel's spectral envelope (formant_shift: formants move, the harmonics stay), replace it "
            "with a second recording's time-aligned mel (target=), and/or scale the latent (latent_scale), then "
            "decode. Outputs have the input's sampling rate and length (another rate is resampled to the "
            "model's and back). The identity settings give the input back to float rounding.",
    usage="checkpoint=<ckpt> input=<wav | folder | glob | filelist> output_dir=<dir>",
    examples=("waveglow-convert checkpoint=run/checkpoints/best.pt input=a.wav output_dir=out formant_shift=1.15",
              "waveglow-convert checkpoint=ckpt.pt input=speaker_a.wav target=speaker_b.wav output_dir=out"),
)


@app(SCRIPT)
def main(cfg: ConvertApp) -> None:
    """Convert every input file."""
    synth = make_synthesizer(cfg, crossfade_frames=0)
    report = convert_files(synth, input_spec(cfg.input), cfg.output_dir, formant_shift=cfg.formant_shift,
                           target=cfg.target, latent_scale=cfg.latent_scale, subtype=cfg.format,
                           on_error=cfg.on_error, progress=cfg.progress)
    save_config_beside(cfg, cfg.output_dir, "convert", is_dir=True)
    report_failures(report.failed)
    print(report.summary(), flush=True)
