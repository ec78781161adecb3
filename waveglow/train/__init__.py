"""Maximum-likelihood training of WaveGlow: the loop, its guards, checkpoints and DDP.

One entry point, `train(cfg)`, used by `waveglow-train` (and by tests in-process). It runs
unchanged under `torchrun --nproc_per_node=N` (DistributedDataParallel: NCCL on CUDA, gloo on
CPU); rank 0 alone logs and writes files. The global batch is `train.batch_size × world size`
and the loss is the mean over it.

Run directory (`run_dir`, default `checkpoints/<data>-<model>-<YYYYmmdd-HHMMSS>`):

    .train.lock            held (flock) by the run's rank 0 while it runs: a second run on the
                           same directory is refused (see waveglow.train.lock)
    config.yaml            the resolved config of the latest start
    events.out.tfevents.*  TensorBoard (see waveglow.train.monitor for the tags)
    metrics.jsonl          one {"step": N, "val_log_likelihood": x} line per validation
    checkpoints/last.pt    newest state (resume point)
    checkpoints/best.pt    best validation log-likelihood so far
    checkpoints/step_<N>.pt  periodic, newest `train.keep_checkpoints` kept

Re-running with the same run_dir resumes from last.pt: the model, optimizer, lr schedule,
grad scaler, RNG states of every rank and the sampler position are restored, so in
deterministic mode (`train.deterministic=true`, CPU) a resumed run is bit-identical to an
uninterrupted one. Interruptions: SIGTERM/SIGINT finish the current step, write last.pt and
exit with 143/130; SIGKILL loses at most the steps since the last checkpoint (writes are atomic).

Modules: `loop` (Trainer, train: the policy), `step` (one optimizer step over its micro-batches,
also timed by the benchmark), `checkpoints` (save, resume, fine-tuning start), `guard`
(divergence), `distributed` (the process group), `lock` (one run per run directory),
`numerics` (global flags, restored on close), `compile` (`train.compile`: compiled conditioners),
`sampling` (data order and per-example seeds), `validation`, `quality` (resynthesis distances, Griffin-Lim reference), `progress` (log lines
by steps and by time, the slow-CPU warning, metrics.jsonl), `monitor` (TensorBoard), `state`.
See docs/training.md.
"""

from waveglow.train.loop import Trainer, TrainHooks, train
from waveglow.train.state import TrainingError, TrainResult, lr_at

__all__ = ["train", "Trainer", "TrainHooks", "TrainResult", "TrainingError", "lr_at"]
