"""`waveglow-import-nvidia input=<NVIDIA .pt> output=<checkpoint>`: convert without running it.

Exit status: 0 when the checkpoint was written; 2 on a user error (unreadable, truncated or
hostile file, a layout that is not WaveGlow, an unwritable output), with nothing written.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from waveglow.cli.common import hydra_app, number, save_resolved_config, to_container
from waveglow.errors import UserError

USAGE = "waveglow-import-nvidia input=<NVIDIA waveglow .pt> output=<checkpoint .pt>"


@hydra_app("waveglow_import_nvidia")
def main(cfg: DictConfig) -> None:
    """Read `cfg.input` with the restricted unpickler and write `cfg.output`."""
    from waveglow.nvidia import import_nvidia

    for key in ("input", "output"):
        value = cfg.get(key)
        if value is None or not str(value).strip():
            raise UserError(f"{key}=... is required: {USAGE}")
    output = Path(str(cfg.output))
    import_nvidia(str(cfg.input), output, audio=to_container(cfg.audio),
                          layout=str(cfg.layout), sigma=number(cfg, "sigma", float))
    try:
        # Named after the checkpoint: importing into a run folder must not replace its config.yaml.
        save_resolved_config(cfg, output.parent, name=f"{output.stem}.import.yaml")
    except OSError as e:
        raise UserError(f"{output.parent}: cannot write {output.stem}.import.yaml ({e.strerror or e})") from None


if __name__ == "__main__":
    main()
