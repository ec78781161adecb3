"""`waveglow-prune checkpoint=<ckpt> keep=0.5 output=<ckpt>`: a genuinely smaller model.

Removes whole residual, skip and gated channels of every coupling's WN conditioner (the same
count everywhere, so the result is the checkpoint's model with `model.wn.n_channels` = C'),
ranked by `importance` (taylor: first-order loss change over a few training batches; magnitude:
weight norms). Prints and writes (`<output stem>.prune.json`) parameters, GMAC per audio second,
synthesis kHz and held-out log-likelihood before and after, and the fine-tuning command.

Exit status: 0 when the pruned checkpoint was written; 2 on a user error (keep outside (0, 1],
a file that is not a checkpoint, an output equal to the input or in a folder that cannot be
created), with nothing written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from waveglow.checkpoint import build_checkpoint, load_checkpoint, load_model, save_checkpoint
from waveglow.cli.common import Script, app, save_config_beside
from waveglow.config.apps import PruneApp
from waveglow.errors import UserError
from waveglow.fileio import write_text_atomic
from waveglow.prune.run import (
    as_row,
    choose_plan,
    corpus_settings,
    held_out_clips,
    measure,
    speed_mel,
    training_batches,
)
from waveglow.prune.surgery import conditioners, kept_channels, prune_model
from waveglow.runtime import resolve_device

log = logging.getLogger("waveglow.prune")

SCRIPT = Script(
    name="waveglow-prune", config="waveglow_prune",
    summary="Structured pruning: keep a fraction of the residual, skip and gated channels of every "
            "conditioner (WN stack), chosen by importance (taylor: first-order change of the training "
            "loss over a few batches; magnitude: weight norms), and write an ordinary, smaller checkpoint "
            "(model.wn.n_channels shrinks). Prints parameters, GMAC per audio second, synthesis kHz and "
            "held-out log-likelihood before and after (also <output stem>.prune.json) and the "
            "waveglow-train command that fine-tunes the pruned model. See docs/distillation.md.",
    usage="checkpoint=<ckpt> keep=<fraction in (0, 1]> output=<pruned.pt>",
    examples=("waveglow-prune checkpoint=run/checkpoints/best.pt keep=0.5 output=run/pruned-50.pt",
              "waveglow-prune checkpoint=run/checkpoints/best.pt keep=0.25 importance=magnitude "
              "output=run/pruned-25.pt"),
)


def check_output(output: str, checkpoint: str) -> Path:
    """The output file, checked before any work: not the input, not a folder, and a folder that
    exists or can be created (nothing is created here).

    Raises:
        UserError: naming `output=` and what is wrong.
    """
    out = Path(output)
    if out.is_dir():
        raise UserError(f"output={out}: is a folder; expected a checkpoint file name (e.g. pruned.pt)")
    src = Path(checkpoint)
    same = out.absolute() == src.absolute()
    if not same and out.exists() and src.exists():
        same = os.path.samefile(out, src)
    if same:
        raise UserError(f"output={out}: is the input checkpoint; write the pruned model to another file")
    for parent in out.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"output={out}: cannot create its folder ({parent} is a file)")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UserError(f"output={out}: cannot create or write its folder ({parent} is not writable)")
            break
    return out


def finetune_command(config: dict[str, Any], output: Path, n_channels: int) -> str:
    """The waveglow-train command that fine-tunes the pruned checkpoint (its run config must
    describe the pruned model: the original model config with model.wn.n_channels = C')."""
    data = (config.get("data") or {}).get("name") or "<data>"
    model = config["model"].get("name") or "<model>"
    return (f"waveglow-train data={data} model={model} model.wn.n_channels={n_channels} "
            f"train.init_from={output}")


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'model':<10} {'C':>4} {'params':>9} {'WN params':>10} {'GMAC/s':>8} {'kHz':>8} "
            f"{'held-out LL (nats/sample)':>26}")
    lines = [head]
    for r in rows:
        lines.append(f"{r['model']:<10} {r['n_channels']:>4} {r['params'] / 1e6:>8.3f}M {r['wn_params'] / 1e6:>9.3f}M "
                     f"{r['gmac_per_second']:>8.3f} {r['khz']:>8.1f} {r['log_likelihood']:>26.4f}")
    return "\n".join(lines)


@app(SCRIPT)
def main(cfg: PruneApp) -> dict[str, Any]:
    """Check the paths, score the channels, cut, measure both models, write."""
    output = check_output(cfg.output, cfg.checkpoint)
    t0 = time.perf_counter()
    state = load_checkpoint(cfg.checkpoint)  # one error line for a file that is not a checkpoint
    device = resolve_device(cfg.device)
    model = load_model(cfg.checkpoint, device=device)
    corpus = corpus_settings(model.config, cfg.corpus)
    wns = conditioners(model)
    C = wns[0].n_channels
    n_keep = kept_channels(C, cfg.keep)
    clips = held_out_clips(corpus, cfg.split, cfg.max_clips, cfg.eval_segment_length, model.n_group)
    frames = max(1, round(cfg.speed_seconds * corpus.audio.sampling_rate / model.hop_length))
    mel = speed_mel(clips, frames)
    batches = None
    if cfg.importance == "taylor":
        seg = cfg.segment_length or int(corpus.data.segment_length)
        batches = training_batches(corpus, cfg.batches, cfg.batch_size, seg, model.n_group, cfg.seed)
        log.info("taylor importance over %d batches of %d x %d samples", cfg.batches, cfg.batch_size, seg)
    plan = choose_plan(model, cfg.keep, cfg.importance, batches)
    small = prune_model(model, plan)
    log.info("%s: %d of %d channels kept per kind, layer and coupling (keep=%g, importance=%s); measuring",
             cfg.checkpoint, n_keep, C, cfg.keep, cfg.importance)
    rows = [as_row("original", measure(model, clips, mel, repeats=cfg.repeats, clock=cfg.clock)),
            as_row("pruned", measure(small, clips, mel, repeats=cfg.repeats, clock=cfg.clock))]
    command = finetune_command(small.config, output, n_keep)
    report = {
        "checkpoint": str(cfg.checkpoint), "output": str(output), "keep": cfg.keep,
        "importance": cfg.importance, "n_channels": {"before": C, "after": n_keep},
        "held_out": {"split": cfg.split, "clips": len(clips), "samples": sum(a.numel() for a, _ in clips),
                     "segment_length": cfg.eval_segment_length},
        "speed": {"seconds": cfg.speed_seconds, "clock": cfg.clock, "repeats": cfg.repeats, "precision": "fp32",
                  "device": str(device)},
        "rows": rows, "finetune": command,
    }
    metrics = {"held_out_log_likelihood": rows[1]["log_likelihood"]}
    ckpt = build_checkpoint(small, small.config, step=int(state.get("step", 0)), epoch=int(state.get("epoch", 0)),
                            metrics=metrics,
                            source={"pruned_from": str(cfg.checkpoint), "keep": cfg.keep,
                                    "importance": cfg.importance, "n_channels_before": C})
    try:
        save_checkpoint(output, ckpt)
    except OSError as e:
        raise UserError(f"output={output}: cannot write ({e.strerror or e})") from None
    report_path = write_text_atomic(output.with_name(f"{output.stem}.prune.json"), json.dumps(report, indent=2) + "\n")
    save_config_beside(cfg, output, "prune", is_dir=False)
    print(_table(rows))
    print(f"wrote {output} and {report_path} ({time.perf_counter() - t0:.1f} s); fine-tune with:\n  {command}",
          flush=True)
    return report
