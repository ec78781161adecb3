"""`waveglow-import-nvidia input=<NVIDIA .pt> output=<checkpoint>`: convert without running it.

Exit status: 0 when the checkpoint was written; 2 on a user error (unreadable, truncated or
hostile file, a layout that is not WaveGlow, an unwritable output), with nothing written.
"""

from __future__ import annotations

from pathlib import Path

from waveglow.cli.common import Script, app, resolved_yaml
from waveglow.config import ImportNvidiaApp, to_dict
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic
from waveglow.interop import import_nvidia

SCRIPT = Script(
    name="waveglow-import-nvidia", config="waveglow_import_nvidia",
    summary="Convert an NVIDIA/waveglow checkpoint (a pickled glow.WaveGlow or glow_old.WaveGlow) into a "
            "checkpoint of this toolkit. Nothing in the file is run: globals outside a short allowlist "
            "are refused. The model settings are inferred from the weight shapes.",
    usage="input=<NVIDIA waveglow .pt> output=<checkpoint .pt>",
    examples=("waveglow-import-nvidia input=waveglow_256channels_universal_v5.pt "
              "output=checkpoints/nvidia_v5.pt",),
)


@app(SCRIPT)
def main(cfg: ImportNvidiaApp) -> None:
    """Read `cfg.input` with the restricted unpickler and write `cfg.output`."""
    output = Path(cfg.output)
    import_nvidia(cfg.input, output, audio=to_dict(cfg.audio), layout=cfg.layout, sigma=cfg.sigma)
    # Named after the checkpoint: importing into a run folder must not replace its config.yaml.
    record = output.with_name(f"{output.stem}.import.yaml")
    try:
        write_text_atomic(record, resolved_yaml(cfg))
    except OSError as e:
        raise UserError(f"{record}: cannot write the import record ({e.strerror or e})") from None
