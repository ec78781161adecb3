"""`waveglow-download data=ljspeech`: download, verify and extract a corpus, then write its splits."""

from __future__ import annotations

from waveglow.cli.common import Script, app
from waveglow.config import DownloadApp
from waveglow.data.download import download_corpus

SCRIPT = Script(
    name="waveglow-download", config="waveglow_download",
    summary="Download a corpus archive (resumable, sha256-verified), extract it safely to data.root and "
            "write its splits. Running it again on a complete corpus does nothing.",
    usage="data=ljspeech",
    examples=("waveglow-download data=ljspeech", "make ljspeech"),
)


@app(SCRIPT)
def main(cfg: DownloadApp) -> None:
    """Fetch `cfg.data.download.url` into `cfg.data.root` (idempotent, resumable).

    The resolved data config is recorded in the corpus folder's completion marker rather than a
    config file, so the corpus folder holds only the corpus, its splits and its cache.
    """
    download_corpus(cfg.data, keep_archive=cfg.keep_archive, progress=cfg.progress)
