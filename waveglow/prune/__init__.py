"""Structured pruning of WaveGlow conditioners into a genuinely smaller model.

    surgery      the kept channels of every WN stack copied into a model with a smaller
                 `model.wn.n_channels` (exact: equals zeroing the removed channels)
    importance   channel scores: weight magnitude, or a first-order Taylor estimate over batches
    run          the end-to-end `prune` and the before/after measurements (parameters, GMAC per
                 audio second, synthesis kHz, held-out log-likelihood)

`waveglow-prune checkpoint=<ckpt> keep=0.5 output=<ckpt>` is the console script
(`waveglow.cli.prune`).
"""

from waveglow.prune.importance import (
    IMPORTANCES,
    WNScores,
    magnitude_scores,
    plan_from_scores,
    taylor_scores,
)
from waveglow.prune.run import Measurement, measure, prune
from waveglow.prune.surgery import (
    ChannelPlan,
    WNPlan,
    full_plan,
    kept_channels,
    mask_model,
    prune_model,
    pruned_config,
)

__all__ = ["IMPORTANCES", "ChannelPlan", "Measurement", "WNPlan", "WNScores", "full_plan", "kept_channels",
           "magnitude_scores", "mask_model", "measure", "plan_from_scores", "prune", "prune_model",
           "pruned_config", "taylor_scores"]
