"""`waveglow-preprocess data=<name> [data.root=...]`: fill the feature cache of a corpus."""

from __future__ import annotations

from waveglow.cli.common import Script, app, save_config_beside
from waveglow.config import PreprocessApp
from waveglow.data import preprocess_corpus

SCRIPT = Script(
    name="waveglow-preprocess", config="waveglow_preprocess",
    summary="Cache the log-mels of a corpus, with its manifest, splits, training-split mel statistics "
            "and a report of unusable files (bad_files.tsv). Training does this itself when the "
            "cache is missing; running it first shows problems early and uses every core.",
    usage="data=<demo | ljspeech | folder> [data.root=<corpus folder>]",
    examples=("waveglow-preprocess data=demo",
              "waveglow-preprocess data=folder data.root=/data/my_voice data.num_workers=8"),
)


@app(SCRIPT)
def main(cfg: PreprocessApp) -> None:
    """Cache mels, manifest, splits and statistics; print a one-line summary with the speed."""
    report = preprocess_corpus(cfg, progress=cfg.progress)
    save_config_beside(cfg, report.cache_dir, "preprocess", is_dir=True)
    print(report.summary(), flush=True)
