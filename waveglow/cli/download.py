"""`waveglow-download data=ljspeech`: download, verify and extract a corpus, then write its splits."""

from __future__ import annotations

from omegaconf import DictConfig

from waveglow.cli.common import hydra_app
from waveglow.download import download_corpus


@hydra_app("waveglow_download")
def main(cfg: DictConfig) -> None:
    """Fetch `cfg.data.download.url` into `cfg.data.root` (idempotent, resumable).

    The resolved data config is recorded in the corpus folder's completion marker rather than a
    config.yaml, so the corpus folder holds only the corpus, its splits and its cache.
    """
    download_corpus(cfg.data, keep_archive=bool(cfg.keep_archive), progress=bool(cfg.progress))


if __name__ == "__main__":
    main()
