"""The chunk scheduler alone (no model): piece planning, the decode queue, the padded-item repair
plan, the crossfade weights and the overlap-add that joins pieces back into items."""

from __future__ import annotations

import pytest
import torch

from waveglow.inference.chunks import (
    OverlapAdd,
    Piece,
    batches,
    crossfade_weights,
    decode_order,
    plan_batch,
    plan_pieces,
    splice_tail,
)

HOP = 4
CASES = ((10, 20, 3, 4), (100, 24, 5, 4), (1000, 64, 0, 0), (65, 64, 9, 2), (97, 10, 0, 6))


@pytest.mark.parametrize(("F", "chunk", "overlap", "fade"), CASES)
def test_plan_pieces_tiles_the_input(F, chunk, overlap, fade):
    pieces = plan_pieces(0, F, chunk, overlap, fade)
    cover = torch.zeros(F)
    for p in pieces:
        assert 0 <= p.start <= p.keep_start < p.keep_end <= p.end <= F
        assert p.keep_start - p.start == min(overlap, p.keep_start)
        assert p.end - p.keep_end == min(overlap, F - p.keep_end)
        cover[p.keep_start:p.keep_end] += 1
    assert (cover >= 1).all() and pieces[0].start == 0 and pieces[-1].end == F
    assert max(p.keep_end - p.keep_start for p in pieces) <= chunk + fade
    assert len(pieces) == -(-F // chunk)
    # Fades only at inner boundaries, and only with a crossfade.
    assert pieces[0].fade_in is None and pieces[-1].fade_out is None
    assert all((p.fade_in is None and p.fade_out is None) for p in pieces) == (fade == 0 or len(pieces) == 1)


@pytest.mark.parametrize(("F", "chunk", "overlap", "fade"), CASES)
def test_crossfade_weights_sum_to_one(F, chunk, overlap, fade):
    total = torch.zeros(HOP * F)
    for p in plan_pieces(0, F, chunk, overlap, fade):
        w = crossfade_weights(p, HOP, (fade // 2) * HOP)
        seg = total[p.keep_start * HOP: p.keep_end * HOP]
        seg += 1.0 if w is None else w
        if w is not None:
            assert w.shape == (HOP * (p.keep_end - p.keep_start),) and w.min() >= 0 and w.max() <= 1
    assert torch.allclose(total, torch.ones_like(total), atol=1e-6)


@pytest.mark.parametrize(("F", "chunk", "overlap", "fade"), CASES)
def test_overlap_add_rebuilds_the_signal(F, chunk, overlap, fade):
    # Pieces that decode to the true signal join back into exactly that signal.
    signal = torch.randn(HOP * F, generator=torch.Generator().manual_seed(F))
    pieces = plan_pieces(3, F, chunk, overlap, fade)
    joiner = OverlapAdd(pieces, {3: F}, HOP, fade)
    outs = [joiner.add(p, signal[p.start * HOP: p.end * HOP]) for p in pieces]
    assert all(o is None for o in outs[:-1]), "an item is handed over only with its last piece"
    assert torch.allclose(outs[-1], signal, atol=1e-6)
    assert not joiner.outputs, "nothing is held once the item is out"


def test_decode_order_groups_items_longest_first():
    n_frames = [30, 120, 5, 64]
    order = decode_order(n_frames, chunk_frames=50, overlap=4, crossfade_frames=2)
    items = [p.item for p in order]
    assert sorted(items) == sorted(p.item for i, n in enumerate(n_frames) for p in plan_pieces(i, n, 50, 4, 2))
    # Each item's pieces are contiguous and in time order; items by decreasing longest piece.
    firsts = list(dict.fromkeys(items))
    assert items == [i for i in firsts for _ in range(items.count(i))]
    longest = {i: max(p.length for p in order if p.item == i) for i in firsts}
    assert [longest[i] for i in firsts] == sorted(longest.values(), reverse=True)
    for i in firsts:
        starts = [p.start for p in order if p.item == i]
        assert starts == sorted(starts)
    assert [len(b) for b in batches(order, 3)] == [3] * (len(order) // 3) + ([len(order) % 3] if len(order) % 3 else [])


def whole(item: int, n: int) -> Piece:
    return Piece(item, 0, n, 0, n)


def test_plan_batch_equal_lengths_need_no_repair():
    plan = plan_batch([whole(0, 40), whole(1, 40)], rf=5, batch_size=8)
    assert [p.item for p in plan.main] == [0, 1] and plan.tails == []


def test_plan_batch_repairs_padded_items():
    rf = 5
    long, padded, short, tiny = whole(0, 40), whole(1, 25), whole(2, 2 * rf), whole(3, 3)
    plan = plan_batch([long, padded, short, tiny], rf=rf, batch_size=8)
    # Items of at most 2·rf frames skip the padded decode; longer padded ones get a tail window.
    assert plan.main == [long, padded]
    windows = {p.item: (s, p.end - s) for sub in plan.tails for p, s in sub}
    assert windows == {1: (25 - 2 * rf, 2 * rf), 2: (0, 2 * rf), 3: (0, 3)}
    for sub in plan.tails:  # every sub-batch decodes without padding
        assert len({p.end - s for p, s in sub}) == 1


def test_plan_batch_skips_pieces_whose_kept_end_is_far_from_the_padding():
    # A chunk with rf frames of right context keeps nothing that padding can reach.
    rf = 4
    inner = Piece(0, 0, 30, 0, 30 - rf)
    plan = plan_batch([inner, whole(1, 50)], rf=rf, batch_size=8)
    assert plan.main == [inner, whole(1, 50)] and plan.tails == []


def test_plan_batch_splits_tails_into_batches():
    rf = 3
    batch = [whole(0, 100)] + [whole(i, 20 + i) for i in range(1, 6)]
    plan = plan_batch(batch, rf=rf, batch_size=2)
    assert [len(sub) for sub in plan.tails] == [2, 2, 1]
    assert all(p.end - s == 2 * rf for sub in plan.tails for p, s in sub)


def test_splice_tail_replaces_the_last_rf_frames():
    rf, p = 2, whole(0, 10)
    decoded = torch.zeros(HOP * 10)
    tail = torch.arange(HOP * 2 * rf, dtype=torch.float32)
    fixed = splice_tail(p, decoded, tail, rf, HOP)
    assert torch.equal(fixed[: HOP * (10 - rf)], decoded[: HOP * (10 - rf)])
    assert torch.equal(fixed[HOP * (10 - rf):], tail[HOP * rf:])
    assert decoded.abs().sum() == 0, "the padded decode itself is left untouched"
