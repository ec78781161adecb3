"""The exact batched decode behind every synthesis path: (mel, z) pairs of any lengths in one
model call, batch plans of the chunk scheduler (`chunks`) decoded piece by piece, and the item
loop that yields each item's audio as soon as its last piece is done.

`Decoder` holds a loaded, weight-norm-folded WaveGlow and where it runs; `Synthesizer` (the
public API) and the stream (`stream`) decode through it. Nothing here checks user input: the
callers have done that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from waveglow.inference.chunks import (
    BatchPlan,
    OverlapAdd,
    Piece,
    batches,
    decode_order,
    plan_batch,
    splice_tail,
)
from waveglow.inference.melcheck import is_silence
from waveglow.inference.noise import latent
from waveglow.runtime import autocast


class Decoder:
    """Exact batched decoding of a folded WaveGlow (eval mode, no gradients).

    Args:
        model: the WaveGlow (weight norm folded, on `device`).
        device, amp_dtype: where it runs and its autocast dtype (None: fp32).
        n_mels, hop_length: its features.
        mel_floor: the log-mel floor shorter items are padded with.
        receptive_field: frames on each side that can influence a frame (`noise.receptive_field_frames`).
        chunk_frames, overlap, crossfade_frames: the chunk scheduler's settings (`chunks`).
    """

    def __init__(self, model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None, *, n_mels: int,
                 hop_length: int, mel_floor: float, receptive_field: int, chunk_frames: int, overlap: int,
                 crossfade_frames: int) -> None:
        self.model, self.device, self.amp_dtype = model, device, amp_dtype
        self.n_mels, self.hop_length, self.mel_floor = n_mels, hop_length, mel_floor
        self.receptive_field = receptive_field
        self.chunk_frames, self.overlap, self.crossfade_frames = chunk_frames, overlap, crossfade_frames
        # Host -> GPU copies from pinned memory run asynchronously (no sync per batch).
        self.pin = device.type == "cuda"

    def decode_batch(self, mels: Sequence[Tensor], zs: Sequence[Tensor], to_cpu: bool = True) -> list[Tensor]:
        """Decode equal- or unequal-length (mel [n_mels, L], z [hop·L]) pairs in one batch.

        Shorter items are padded at the end (mel with the log-mel floor, z with zeros) and their
        outputs cut back; the caller repairs the padded items' last receptive-field frames.
        Returns float32 [hop·L] per item: on the CPU, or on the device with to_cpu=False (the
        caller then moves a whole batch plan at once: one host sync instead of one per decode).
        Call it under `torch.inference_mode()`.
        """
        hop = self.hop_length
        lengths = [m.shape[-1] for m in mels]
        n = max(lengths)
        # Pinned host buffers on CUDA: the copies below are then truly asynchronous.
        mel = torch.empty((len(mels), self.n_mels, n), dtype=torch.float32, pin_memory=self.pin)
        mel.fill_(self.mel_floor)
        z = torch.zeros(len(mels), hop * n, dtype=torch.float32, pin_memory=self.pin)
        for b, (m, zz) in enumerate(zip(mels, zs)):
            mel[b, :, : m.shape[-1]] = m
            z[b, : zz.shape[-1]] = zz
        mel, z = mel.to(self.device, non_blocking=True), z.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            out = self.model.decode(z, mel).float()
        if to_cpu:
            out = out.cpu()
        return [out[b, : hop * L] for b, L in enumerate(lengths)]

    def decode_plan(self, plan: BatchPlan, window: Callable[[Piece, int], tuple[Tensor, Tensor]]
                    ) -> dict[Piece, Tensor]:
        """Each piece of a batch decoded exactly: [hop·piece.length] per piece.

        Args:
            plan: from `plan_batch`.
            window: (piece, first frame) -> (mel [n_mels, L], z [hop·L]) up to the piece's end.
        """
        results: dict[Piece, Tensor] = {}
        if plan.main:
            outs = self.decode_batch(*zip(*(window(p, p.start) for p in plan.main)), to_cpu=False)
            results.update(zip(plan.main, outs))
        for sub in plan.tails:
            outs = self.decode_batch(*zip(*(window(p, s) for p, s in sub)), to_cpu=False)
            for (p, s), o in zip(sub, outs):
                results[p] = o if s == p.start else splice_tail(p, results[p], o, self.receptive_field,
                                                                 self.hop_length)
        if self.device.type == "cpu":
            return results
        # One device -> host copy (and sync) for the whole plan.
        pieces = list(results)
        flat = torch.cat([results[p] for p in pieces]).cpu()
        return dict(zip(pieces, flat.split([results[p].numel() for p in pieces])))

    def run(self, n_frames: Sequence[int], get_mel: Callable[[int], Tensor], keys: Sequence[str | int],
            seed: int, sigma: float, batch_size: int) -> Iterator[tuple[int, Tensor]]:
        """Synthesize items; yields (index, audio float32 [hop·F]) as each item completes.

        Args:
            n_frames: F of each item.
            get_mel: index -> natural-log mel [n_mels, F] (called while the item is being
                synthesized; the result is held until the item completes, so inputs can be
                loaded lazily).
            keys: per-item noise keys; seed: the noise seed (see `noise.latent`).
            sigma: latent std.
            batch_size: pieces per decode call.
        """
        hop = self.hop_length
        order = decode_order(n_frames, self.chunk_frames, self.overlap, self.crossfade_frames)
        joiner = OverlapAdd(order, n_frames, hop, self.crossfade_frames)
        mels: dict[int, Tensor] = {}  # items in flight only

        def window(p: Piece, start: int) -> tuple[Tensor, Tensor]:
            if p.item not in mels:
                mels[p.item] = get_mel(p.item)
            # The window's own blocks of the item's noise: the same numbers however it is cut.
            return mels[p.item][:, start: p.end], latent(seed, keys[p.item], start, p.end, hop, sigma)

        for batch in batches(order, batch_size):
            # Inference mode per batch, not around the `yield`: the caller's code between two
            # batches must not run inside it.
            with torch.inference_mode():
                results = self.decode_plan(plan_batch(batch, self.receptive_field, batch_size), window)
                finished = []
                for p in batch:
                    audio = joiner.add(p, results[p])
                    if audio is not None:
                        if is_silence(mels[p.item], self.mel_floor):  # digital silence in, digital silence out
                            audio = torch.zeros_like(audio)
                        finished.append((p.item, audio))
                        mels.pop(p.item, None)
            yield from finished
