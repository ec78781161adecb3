"""A run's checkpoints: writing them (rank 0, atomic, hard-linked names), pruning the periodic
ones, and bringing a run back from one (resume, fine-tuning start, the guard's reload).

Files, under `<run_dir>/checkpoints/`: last.pt (resume point), best.pt (best validation so
far), step_<N>.pt (periodic, newest `train.keep_checkpoints` kept). Every rank's RNG state and
the sampler position are saved, so a resumed deterministic run is bit-identical.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

from waveglow.checkpoint import build_checkpoint, load_checkpoint, save_checkpoint
from waveglow.config import TrainConfig
from waveglow.errors import UserError
from waveglow.fileio import remove_stale_temps
from waveglow.model import resolve_model_config
from waveglow.runtime import seed_everything
from waveglow.train.distributed import DistContext
from waveglow.train.state import LoopState, TrainingError, lr_at, rng_state, set_rng_state

log = logging.getLogger("waveglow")

WriteFn = Callable[[IO[bytes], dict], None]


class Checkpointer:
    """Saves and restores one run's state.

    Args:
        ckpt_dir: `<run_dir>/checkpoints`.
        ctx: the process group (rank 0 writes; every rank takes part in the RNG gather).
        model, optimizer, scaler: what is saved besides the loop state.
        state: the loop state (shared with the trainer, updated in place on resume).
        config: the resolved run config as plain dicts (stored in every checkpoint).
        train_cfg: the `train` settings (seed, Adam settings, keep_checkpoints).
        batch_size: per-process examples per step, micro-batches included (stored with the
            sampler position).
        write: optional `write(f, state)` replacing torch.save (tests: a slow write to kill).
    """

    def __init__(self, ckpt_dir: Path, ctx: DistContext, *, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, state: LoopState,
                 config: Mapping[str, Any], train_cfg: TrainConfig, batch_size: int,
                 write: WriteFn | None = None) -> None:
        self.dir = ckpt_dir
        self.ctx = ctx
        self.model = model
        self.optimizer = optimizer
        self.scaler = scaler
        self.state = state
        self.config = config
        self.tcfg = train_cfg
        self.batch_size = batch_size
        self.write = write

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    def prepare_dir(self) -> None:
        """Create the checkpoints directory (once data and model are known to work)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # Temp files of writes that a crash interrupted: never checkpoints, safe to remove.
            remove_stale_temps(self.dir)
        except OSError as e:
            raise UserError(f"{self.dir}: cannot create the run directory ({e.strerror})") from None

    # ---------------------------------------------------------------- writing
    def build(self) -> dict[str, Any] | None:
        """The checkpoint dict (on rank 0; None elsewhere). Every rank must call it (RNG gather)."""
        gathered = self.ctx.gather_object(rng_state(self.ctx.device))
        if not self.ctx.is_main:
            return None
        s = self.state
        return build_checkpoint(
            self.model, self.config, step=s.step, epoch=s.epoch,
            optimizer=_to_cpu(self.optimizer.state_dict()),
            scheduler={"lr_mult": s.lr_mult, "recoveries": s.recoveries,
                       "lr": lr_at(s.step, self.tcfg, s.lr_mult)},
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng={**gathered[0], "per_rank": gathered},
            sampler={"epoch": s.epoch, "position": s.position, "seed": int(self.tcfg.seed),
                     "world_size": self.ctx.world, "batch_size": self.batch_size},
            metrics={"val_log_likelihood": s.val_log_likelihood,
                     "best_val_log_likelihood": s.best_val_log_likelihood,
                     "best_step": s.best_step, "skipped_steps": s.skipped_steps,
                     "bad_streak": s.bad_streak})

    def save(self, names: list[str]) -> None:
        """Write the current state as each of `names` (e.g. ["last.pt", "best.pt", "step_100.pt"]).

        The first is serialized once; the others are atomic hard links to it (copies where links
        are not supported).

        Raises:
            TrainingError: on every rank, if rank 0 could not write.
        """
        state = self.build()
        error = ""
        if self.ctx.is_main:
            # One host sync for all parameters, not one per tensor.
            if not bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()):
                log.warning(f"step {self.state.step}: parameters are not finite; checkpoint not written")
                names = []
            try:
                first = save_checkpoint(self.dir / names[0], state, write=self.write) if names else None
                for name in names[1:]:
                    self._link_or_save(first, self.dir / name, state)
                self._prune_step_checkpoints()
            except (OSError, RuntimeError) as e:
                # torch.save reports a failed write (disk full) as a RuntimeError whose context
                # is the OSError; any other RuntimeError is a bug and keeps its traceback.
                cause = e if isinstance(e, OSError) else e.__context__
                if not isinstance(cause, OSError):
                    raise
                kept = f"{self.last} still holds the previous state" if self.last.is_file() else "no checkpoint was kept"
                error = (f"could not write checkpoint {self.dir / names[0]}: "
                         f"{cause.strerror or cause}{_free_space(self.dir)} ({kept}); "
                         f"training stopped at step {self.state.step}")
        error = self.ctx.broadcast_object(error)
        if error:
            if not self.ctx.is_main:
                error = "rank 0 could not write a checkpoint; training stopped"
            raise TrainingError(error)

    def _link_or_save(self, src: Path, dst: Path, state: Mapping[str, Any]) -> None:
        """Make `dst` hold the checkpoint `src` holds, atomically (hard link + rename, or a copy)."""
        # Named like fileio's temp files, so a crash's leftover is removed by remove_stale_temps.
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.link.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:
            save_checkpoint(dst, state, write=self.write)
            return
        os.replace(tmp, dst)

    def _prune_step_checkpoints(self) -> None:
        keep = int(self.tcfg.keep_checkpoints)
        found = sorted((int(m.group(1)), p) for p in self.dir.glob("step_*.pt")
                       if (m := re.fullmatch(r"step_(\d+)\.pt", p.name)))
        for _, path in found[:-keep] if keep > 0 else found:
            path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- reading
    def load_weights(self, path: Path) -> dict[str, Any]:
        """Load model, optimizer and fp16 loss-scaler state from `path` (this run's settings
        kept); returns the dict. The guard's way back to a good state."""
        ckpt = load_checkpoint(path, map_location="cpu")
        self._load_weights(ckpt)
        return ckpt

    def _load_weights(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler"):
            # The scale too: a run of overflowing steps may have shrunk it far below the
            # checkpoint's, and fp16 would then learn nothing after the reload.
            self.scaler.load_state_dict(ckpt["scaler"])
        # Adam's settings come from this run's config, not from the loaded optimizer state.
        t = self.tcfg
        for group in self.optimizer.param_groups:
            group.update(betas=tuple(float(b) for b in t.betas), eps=float(t.eps),
                         weight_decay=float(t.weight_decay))

    def resume(self, path: Path, batches_per_epoch: int) -> None:
        """Continue the run saved in `path`: weights, optimizer, scaler, loop state, RNGs."""
        ckpt = load_checkpoint(path, map_location="cpu")
        self._check_same_model(ckpt["config"], path)
        self._load_weights(ckpt)
        sched = ckpt.get("scheduler") or {}
        metrics = ckpt.get("metrics") or {}
        sampler = ckpt.get("sampler") or {}
        s = self.state
        s.step = int(ckpt["step"])
        s.epoch = int(ckpt.get("epoch", 0))
        s.lr_mult = float(sched.get("lr_mult", 1.0))
        s.recoveries = int(sched.get("recoveries", 0))
        s.skipped_steps = int(metrics.get("skipped_steps", 0))
        s.bad_streak = int(metrics.get("bad_streak", 0))
        s.val_log_likelihood = metrics.get("val_log_likelihood")
        s.best_val_log_likelihood = metrics.get("best_val_log_likelihood")
        s.best_step = metrics.get("best_step")
        world, batch = self.ctx.world, self.batch_size
        old_world = int(sampler.get("world_size", world))
        old_batch = int(sampler.get("batch_size", batch))
        position = int(sampler.get("position", 0))
        if (old_world, old_batch) != (world, batch):
            # Keep the number of examples of this epoch already seen; exactness is lost anyway.
            position = position * old_world * old_batch // (world * batch)
            log.warning(f"resuming with {world} process(es) × batch {batch} instead of "
                        f"{old_world} × {old_batch}: the data order continues approximately")
        s.epoch += position // batches_per_epoch
        s.position = position % batches_per_epoch
        per_rank = (ckpt.get("rng") or {}).get("per_rank") or []
        if len(per_rank) == world:
            set_rng_state(per_rank[self.ctx.rank], self.ctx.device)
        else:
            seed_everything(int(self.tcfg.seed) + 1 + self.ctx.rank + s.step)
        if self.ctx.is_main:
            log.info(f"resuming {path} at step {s.step} (epoch {s.epoch})")

    def _check_same_model(self, ckpt_cfg: Mapping[str, Any], path: Path) -> None:
        diff = _diff_keys(resolve_model_config(ckpt_cfg["model"]), resolve_model_config(self.config["model"]),
                          "model")
        diff += _diff_keys(ckpt_cfg.get("audio") or {}, self.config["audio"], "audio")
        if diff:
            raise UserError(
                f"{path}: this run directory holds a run with other model/audio settings "
                f"({'; '.join(diff[:4])}); use another run_dir or the run's own settings")

    def init_from(self, path: Path) -> None:
        """Start a new run from the weights (and mel statistics) of checkpoint `path`."""
        ckpt = load_checkpoint(path, map_location="cpu")
        src = dict(ckpt["model"])
        own = self.model.state_dict()
        _unfold_weight_norm(src, own)
        problems = [f"{k} missing" for k in own if k not in src]
        problems += [f"{k} unexpected" for k in src if k not in own]
        problems += [f"{k} has shape {list(src[k].shape)}, the model needs {list(own[k].shape)}"
                     for k in own if k in src and src[k].shape != own[k].shape]
        diff = _diff_keys(resolve_model_config(ckpt["config"]["model"]),
                          resolve_model_config(self.config["model"]), "model")
        if problems:
            # A pruned or otherwise resized checkpoint: name its settings, which the run must repeat.
            hint = (f"; the checkpoint's model differs in {', '.join(diff[:4])} (checkpoint -> this run): "
                    "set those on the command line (e.g. model.wn.n_channels=...)" if diff else "")
            raise UserError(f"{path}: train.init_from weights do not fit model {self.config['model']['name']} "
                            f"({'; '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}){hint}")
        self.model.load_state_dict(src)
        audio_diff = _diff_keys(ckpt["config"].get("audio") or {}, self.config["audio"], "audio")
        if self.ctx.is_main:
            log.info(f"init_from {path}: weights loaded (step {ckpt.get('step', '?')} of its run); "
                     "its mel statistics are kept (the conditioner was trained with them)")
            if diff:
                log.info(f"init_from: model settings that differ from the checkpoint's (this run's "
                         f"apply): {'; '.join(diff)}")
            if audio_diff:
                log.warning(f"init_from: the checkpoint was trained with other audio features "
                            f"({'; '.join(audio_diff)}); fine-tuning starts from a mismatched frontend")


def _free_space(directory: Path) -> str:
    """", 1.2 GB free" for the disk holding `directory` (empty if unknown)."""
    try:
        return f", {shutil.disk_usage(directory).free / 1e9:.1f} GB free"
    except OSError:
        return ""


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _diff_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff_keys(a, b, f"{prefix}.{key}")
        elif a != b:
            out.append(f"{prefix}.{key}: {a!r} -> {b!r}")
    return out


def _unfold_weight_norm(src: dict[str, Tensor], own: Mapping[str, Tensor]) -> None:
    """Let folded conv weights (`weight`, after remove_weight_norm) initialize weight-normed ones."""
    for key in list(src):
        if not key.endswith(".weight") or key in own:
            continue
        base = key[: -len("weight")]
        if base + "weight_g" in own and base + "weight_v" in own:
            w = src.pop(key)
            src[base + "weight_v"] = w.clone()
            src[base + "weight_g"] = torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)
