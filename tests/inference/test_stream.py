"""Streaming synthesis and the block noise it rests on: a mel cut into pieces of any sizes gives
the same audio as the whole mel, batched or chunked, and the noise of a frame never depends on
how it was reached."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from synth_helpers import HOP, active_model, random_mel

from waveglow.errors import UserError
from waveglow.inference import NOISE_BLOCK_FRAMES, Synthesizer, latent

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def synth():
    model, cfg = active_model(seed=3)
    return Synthesizer.from_model(model, cfg, device="cpu")


def cut(mel: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """`mel` in consecutive pieces of `sizes` frames (the last piece takes the rest)."""
    pieces, f = [], 0
    for n in sizes:
        if f >= mel.shape[1]:
            break
        pieces.append(mel[:, f: f + n])
        f += n
    if f < mel.shape[1]:
        pieces.append(mel[:, f:])
    return pieces


def test_latent_windows_are_slices_of_one_latent():
    F = 3 * NOISE_BLOCK_FRAMES + 5
    whole = latent(4, "clip", 0, F, HOP, 0.6)
    assert whole.shape == (HOP * F,)
    for a, b in ((0, 1), (NOISE_BLOCK_FRAMES - 1, NOISE_BLOCK_FRAMES + 1), (7, F), (40, 41), (F - 1, F)):
        assert torch.equal(latent(4, "clip", a, b, HOP, 0.6), whole[a * HOP: b * HOP]), (a, b)
    assert not torch.equal(latent(5, "clip", 0, F, HOP, 0.6), whole)
    assert not torch.equal(latent(4, "other", 0, F, HOP, 0.6), whole)
    # Blocks are independent draws: consecutive blocks differ.
    assert not torch.equal(whole[: HOP * NOISE_BLOCK_FRAMES], whole[HOP * NOISE_BLOCK_FRAMES: 2 * HOP * NOISE_BLOCK_FRAMES])
    assert abs(float(whole.std()) - 0.6) < 0.01


@pytest.mark.parametrize("pattern", ["ones", "random", "one_piece", "rf_sized"])
def test_stream_equals_from_mel(synth, pattern):
    rf = synth.receptive_field
    F = 4 * rf + 23
    mel = random_mel(F, 11)
    offline = synth.from_mel(mel, sigma=0.6, seed=9, key="utt")
    g = torch.Generator().manual_seed(5)
    sizes = {"ones": [1] * F, "random": torch.randint(1, 2 * rf, (F,), generator=g).tolist(),
             "one_piece": [F], "rf_sized": [rf] * F}[pattern]
    chunks = list(synth.stream(iter(cut(mel, sizes)), sigma=0.6, seed=9, key="utt"))
    assert all(c.dtype == torch.float32 and c.numel() % HOP == 0 and c.numel() > 0 for c in chunks)
    streamed = torch.cat(chunks)
    assert streamed.shape == offline.shape
    assert (streamed - offline).abs().max().item() <= 1e-5
    if pattern == "ones":
        # Audio comes as soon as it is final: after frame rf + k has arrived, frame k is out.
        assert len(chunks) == F - rf + 1


def test_stream_is_final_early_and_bounded(synth):
    # Frames arrive one by one; count how many had arrived when each chunk came out.
    rf = synth.receptive_field
    mel = random_mel(3 * rf, 12)
    arrived = 0

    def source():
        nonlocal arrived
        for f in range(mel.shape[1]):
            arrived += 1
            yield mel[:, f: f + 1]

    seen = []
    for chunk in synth.stream(source(), min_frames=4):
        seen.append((arrived, chunk.numel() // HOP))
    out_frames = 0
    for got, n in seen[:-1]:
        out_frames += n
        assert n >= 4 and out_frames == got - rf  # exactly the frames that are final
    assert out_frames + seen[-1][1] == mel.shape[1]


def test_stream_matches_chunked_and_batched_offline(synth):
    # The same key in a batch, in a chunked synthesizer and in a stream: one signal.
    mel = random_mel(150, 13)
    chunked = Synthesizer.from_model(copy.deepcopy(synth.model), synth.config, device="cpu", chunk_frames=24)
    batch = torch.stack([random_mel(150, 14), mel])
    a = synth.from_mel(batch, keys=["x", "y"], batch_size=2)[1]
    b = chunked.from_mel(mel, key="y", batch_size=3)
    c = torch.cat(list(synth.stream(cut(mel, [5, 1, 40, 2, 60]), key="y")))
    assert (a - b).abs().max().item() <= 1e-5 and (a - c).abs().max().item() <= 1e-5


def test_stream_checks(synth, caplog):
    with pytest.raises(UserError, match="beyond any log-mel convention"):
        list(synth.stream([random_mel(10, 0), torch.full((80, 3), 1e30)]))
    with pytest.raises(UserError, match="constant"):
        list(synth.stream([torch.zeros(80, 5)] * 4))
    with pytest.raises(UserError, match="no mel frames"):
        list(synth.stream([]))
    with pytest.raises(UserError, match="80 mel channels"):
        list(synth.stream([torch.randn(40, 5)]))
    with pytest.raises(UserError, match="min_frames"):
        synth.stream([random_mel(4, 0)], min_frames=0)
    # A log10 stream declared as natural: one warning line, and the audio still comes.
    caplog.set_level(logging.WARNING, logger="waveglow.synthesize")
    log10 = random_mel(40, 1) / 2.302585
    out = list(synth.stream(cut(log10, [3] * 20)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "log10" in warnings[0] and "input_convention=log10" in warnings[0], warnings
    assert sum(c.numel() for c in out) == HOP * 40
    caplog.clear()
    converted = torch.cat(list(synth.stream(cut(log10, [3] * 20), input_convention="log10")))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (converted - synth.from_mel(random_mel(40, 1))).abs().max().item() <= 1e-4
