"""The chunk scheduler: cutting inputs into pieces, the batching queue, the exact repair of
padded items, and the crossfade that joins pieces back together. Pure bookkeeping over frame
indices; the decoding itself is the `Synthesizer`'s.

**Long inputs** are cut into pieces of `chunk_frames` core frames, each synthesized with
`overlap` frames of context on both sides (the synthesizer's default is the receptive field,
which makes every core sample exact) and joined with a linear crossfade of `crossfade_frames`
around each boundary (which hides the seam if a smaller overlap is chosen to save compute).
Pieces of all files share one sorted queue (each file's pieces kept together), so model memory
is bounded by batch_size × (chunk_frames + 2·overlap + crossfade) frames for any input length.

**Padding is handled exactly, not approximately.** A batch pads shorter mels (with the log-mel
floor) and their noise (with zeros) to the longest one. The WN convs of a padded item then see
padding where, alone, they would see their own zero boundary, so the last receptive-field (rf)
frames of that item differ from its unbatched synthesis (measured on `tiny` with active
couplings: 0.08 absolute for outputs peaking at 3.5 — audible). Samples farther than rf from
the item's end only ever see the item's own data, so they are already exact. For each padded
item we therefore re-synthesize its last 2·rf frames on their own (all such tails have the same
length, so they batch together without padding) and keep the last rf frames of that: the
tail's first rf frames are disturbed by its own artificial start, its last rf frames see exactly
what the unbatched synthesis sees. Padded items no longer than 2·rf skip the padded decode and
are decoded with equal-length peers only. Cost: 2·rf extra frames per padded item (rf = 7
frames for `tiny`, 101 for `waveglow_256`, 1533 for `squeeze`, whose 128-sample groups make the
bound very wide; batch_size=1 avoids the repair altogether). Measured batched vs unbatched:
≤ 1e-6 absolute (float rounding).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Piece:
    """One decode job: frames [start, end) of item `item`, of which [keep_start, keep_end) is used.

    `fade_in` / `fade_out` are the frame positions of the crossfade centres at the left / right
    of the kept region (None at the item's ends).
    """

    item: int
    start: int
    end: int
    keep_start: int
    keep_end: int
    fade_in: int | None = None
    fade_out: int | None = None

    @property
    def length(self) -> int:
        return self.end - self.start


def plan_pieces(item: int, n_frames: int, chunk_frames: int, overlap: int,
                crossfade_frames: int) -> list[Piece]:
    """Cut an item of `n_frames` frames into pieces for synthesis.

    Cores of near-equal length (ceil(F / chunk_frames) of them) tile [0, F); each piece keeps
    its core plus crossfade_frames/2 on each inner side, and synthesizes `overlap` more frames
    of context beyond that.

    Args:
        item: index of the item the pieces belong to.
        n_frames: F.
        chunk_frames: the longest core; F <= chunk_frames gives one piece.
        overlap: context frames on each side of a kept region.
        crossfade_frames: width of each crossfade (even; frames).

    Returns:
        The pieces in time order.
    """
    if n_frames <= chunk_frames:
        return [Piece(item, 0, n_frames, 0, n_frames)]
    n = math.ceil(n_frames / chunk_frames)
    bounds = [round(c * n_frames / n) for c in range(n + 1)]
    half = crossfade_frames // 2
    pieces = []
    for c in range(n):
        keep_start = max(0, bounds[c] - half) if c > 0 else 0
        keep_end = min(n_frames, bounds[c + 1] + half) if c < n - 1 else n_frames
        pieces.append(Piece(
            item, max(0, keep_start - overlap), min(n_frames, keep_end + overlap), keep_start, keep_end,
            fade_in=bounds[c] if c > 0 and half > 0 else None,
            fade_out=bounds[c + 1] if c < n - 1 and half > 0 else None,
        ))
    return pieces


def decode_order(n_frames: Sequence[int], chunk_frames: int, overlap: int,
                 crossfade_frames: int) -> list[Piece]:
    """Every piece of every item, in the order the queue decodes them.

    Items by decreasing (longest piece) length, each item's pieces together and in time order:
    the heaviest batch runs first (an out-of-memory shows at once), neighbours have similar
    lengths (little padding), and at most a batch's worth of items is in flight, which bounds
    memory.

    Args:
        n_frames: F of each item (item i is `n_frames[i]` frames long).
        chunk_frames, overlap, crossfade_frames: as `plan_pieces`.
    """
    pieces: list[Piece] = []
    for i, n in enumerate(n_frames):
        pieces += plan_pieces(i, int(n), chunk_frames, overlap, crossfade_frames)
    longest: dict[int, int] = defaultdict(int)
    for p in pieces:
        longest[p.item] = max(longest[p.item], p.length)
    return sorted(pieces, key=lambda p: (-longest[p.item], p.item, p.start))


def batches(order: Sequence[Piece], batch_size: int) -> Iterator[list[Piece]]:
    """Consecutive batches of at most `batch_size` pieces of the queue."""
    for first in range(0, len(order), batch_size):
        yield list(order[first: first + batch_size])


@dataclass
class BatchPlan:
    """How one batch of pieces is decoded so that each piece equals its unbatched decode.

    Attributes:
        main: pieces decoded together, padded to the longest of them.
        tails: sub-batches of (piece, first frame of its window), each window decoded from that
            frame to the piece's end, all windows of a sub-batch of equal length (no padding).
            A window starting at `piece.start` replaces the piece's decode (a short padded
            piece, not in `main`); any other window is a repair whose last rf frames replace
            the piece's last rf frames (`splice_tail`).
    """

    main: list[Piece]
    tails: list[list[tuple[Piece, int]]]


def plan_batch(batch: Sequence[Piece], rf: int, batch_size: int) -> BatchPlan:
    """The decode plan of one batch (see the module docstring and `BatchPlan`).

    Args:
        batch: the pieces of one batch (from `batches`).
        rf: the receptive field in frames.
        batch_size: the largest sub-batch of repair windows.
    """
    n_max = max(p.length for p in batch)
    # A padded piece whose kept region reaches into its last rf frames needs repair. If the
    # repair window (2·rf) covers the whole piece, the padded decode would be thrown away
    # entirely, so such pieces skip it and are decoded with their equal-length peers instead.
    whole = [p.length < n_max and p.keep_end > p.end - rf and p.length <= 2 * rf for p in batch]
    main = [p for p, w in zip(batch, whole) if not w]
    n_main = max((p.length for p in main), default=0)
    groups: dict[int, list[tuple[Piece, int]]] = defaultdict(list)  # by window length
    for p, w in zip(batch, whole):
        if w:
            groups[p.length].append((p, p.start))
        elif p.length < n_main and p.keep_end > p.end - rf:
            groups[2 * rf].append((p, p.end - 2 * rf))
    tails = [group[g0: g0 + batch_size] for group in groups.values() for g0 in range(0, len(group), batch_size)]
    return BatchPlan(main, tails)


def splice_tail(piece: Piece, decoded: Tensor, tail: Tensor, rf: int, hop: int) -> Tensor:
    """The piece's padded decode [hop·length] with its last rf frames taken from the repair
    window's decode `tail` [hop·2·rf] (whose first rf frames see the window's artificial start)."""
    fixed = decoded.clone()
    fixed[(piece.length - rf) * hop:] = tail[rf * hop:]
    return fixed


def crossfade_weights(piece: Piece, hop: int, half_samples: int) -> Tensor | None:
    """Weights [hop·(keep_end−keep_start)] for the kept region (None when no fade applies).

    Linear ramps centred on each boundary; the fade-out of one piece is exactly 1 minus the
    fade-in of the next, so the weights of overlapping pieces sum to one.
    """
    if piece.fade_in is None and piece.fade_out is None:
        return None
    t = torch.arange(piece.keep_start * hop, piece.keep_end * hop, dtype=torch.float64) + 0.5
    w = torch.ones_like(t)
    width = 2.0 * half_samples
    if piece.fade_in is not None:
        w = w * ((t - (piece.fade_in * hop - half_samples)) / width).clamp(0.0, 1.0)
    if piece.fade_out is not None:
        w = w * (1.0 - ((t - (piece.fade_out * hop - half_samples)) / width).clamp(0.0, 1.0))
    return w.float()


class OverlapAdd:
    """Joins each item's pieces (kept regions, crossfaded) and hands the item over when its last
    piece is in; only items in flight are held.

    Args:
        pieces: every piece that will be added (e.g. `decode_order(...)`).
        n_frames: F of each item, indexed by `Piece.item` (a list, or a mapping).
        hop: audio samples per frame.
        crossfade_frames: as `plan_pieces`.
    """

    def __init__(self, pieces: Sequence[Piece], n_frames: Sequence[int] | Mapping[int, int], hop: int, crossfade_frames: int) -> None:
        self.remaining = Counter(p.item for p in pieces)
        self.n_frames = n_frames
        self.hop = hop
        self.half = (crossfade_frames // 2) * hop
        self.outputs: dict[int, Tensor] = {}

    def add(self, piece: Piece, decoded: Tensor) -> Tensor | None:
        """Add a piece's decode [hop·piece.length].

        Returns:
            The item's audio float32 [hop·F] once this was its last piece, else None.
        """
        hop, item = self.hop, piece.item
        audio = decoded[(piece.keep_start - piece.start) * hop: (piece.keep_end - piece.start) * hop]
        w = crossfade_weights(piece, hop, self.half)
        if w is None and self.remaining[item] == 1 and item not in self.outputs:
            self.outputs[item] = audio.clone()  # the common one-piece case
        else:
            buf = self.outputs.setdefault(item, torch.zeros(hop * int(self.n_frames[item])))
            seg = buf[piece.keep_start * hop: piece.keep_end * hop]
            seg += audio if w is None else audio * w
        self.remaining[item] -= 1
        return self.outputs.pop(item) if self.remaining[item] == 0 else None
