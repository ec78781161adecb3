"""`waveglow-preprocess data=<name> [data.root=...]`: fill the feature cache of a corpus."""

from __future__ import annotations

from omegaconf import DictConfig

from waveglow.cli.common import hydra_app, save_resolved_config


@hydra_app("waveglow_preprocess")
def main(cfg: DictConfig) -> None:
    """Cache mels, manifest, splits and statistics; print a one-line summary with the speed."""
    from waveglow.data import preprocess_corpus  # after argument parsing: `--help` stays fast

    report = preprocess_corpus(cfg, progress=bool(cfg.get("progress", True)))
    save_resolved_config(cfg, report.cache_dir)
    print(report.summary(), flush=True)
