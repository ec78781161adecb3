"""Streaming synthesis: mel pieces in (as a TTS produces them), audio out as soon as it is final.

Output frame f depends on the mel and the noise only within frames [f − rf, f + rf] (rf: the
receptive field, `noise.receptive_field_frames`). Once frames [0, N) have arrived, frames
[E, N − rf) (E: the first frame not yet emitted) can no longer change: they are decoded from
the window [E − rf, N), which holds everything they depend on, and emitted. When the input
ends, the rest [E, N) is decoded the same way, with the input's true end as the window's end.
The noise of a window is `noise.latent(seed, key, ...)`, the same numbers `from_mel` uses, so
the concatenated stream equals `Synthesizer.from_mel(whole mel, ..., key=key)` to float rounding.

Cost: each decode recomputes up to 2·rf frames of context, so tiny pieces cost more compute per
frame; `min_frames` trades latency for fewer decodes. Memory holds at most rf + the newest
piece's frames of mel.

Checks, consistent with `from_mel`: each piece's shape, NaN/Inf and magnitude at once; the
statistics advice (one warning line) on the frames present at the first decode; a stream whose
every value is the same is refused when it ends.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from waveglow.errors import UserError
from waveglow.inference.decoding import Decoder
from waveglow.inference.melcheck import ConventionCheck
from waveglow.inference.noise import latent
from waveglow.mel import check_mel, check_mel_values, convention_scale, to_natural

log = logging.getLogger("waveglow.synthesize")


def stream_synthesis(decoder: Decoder, frames: Iterable[Tensor], *, sigma: float, seed: int,
                     key: str | int, checker: ConventionCheck, min_frames: int = 1) -> Iterator[Tensor]:
    """`Synthesizer.stream` (see there and the module docstring).

    Args:
        decoder: the synthesizer's decoder (its model, device, precision, hop and receptive field).
        frames: mel pieces [n_mels, f_i] (or [1, n_mels, f_i]) in `checker.declared` convention.
        sigma, seed, key: the noise (as `from_mel`).
        checker: converts and checks the pieces; warns once about a likely convention mistake.
        min_frames: the fewest final frames worth a decode.

    Yields:
        float32 CPU audio [hop·n] per decode, n >= 1.
    """
    rf = decoder.receptive_field
    held = torch.zeros(decoder.n_mels, 0)  # natural-log frames [start, received)
    start = received = emitted = 0
    lo, hi = float("inf"), float("-inf")  # running range of the raw values (the constant check)
    advised = False
    for i, piece in enumerate(frames):
        name = f"stream piece {i}"
        raw = check_mel_values(check_mel(torch.as_tensor(piece).detach().float().cpu(), decoder.n_mels, name),
                               name, constant_ok=True)
        lo, hi = min(lo, float(raw.min())), max(hi, float(raw.max()))
        held = torch.cat([held, to_natural(raw, checker.declared)], dim=1)
        received += raw.shape[1]
        if received - rf - emitted < min_frames:
            continue
        if not advised:  # judged on what the first decode sees
            checker.observe(held / convention_scale(checker.declared), "the stream")
            checker.warn(log)
            advised = True
        audio, held, start, emitted = _decode(decoder, held, start, emitted, received - rf, sigma, seed, key)
        yield audio
    if received == 0:
        raise UserError("stream: no mel frames arrived; expected pieces [n_mels, frames]")
    if lo == hi and received * decoder.n_mels > 1 and not checker.is_floor(lo):  # the floor: digital silence
        raise UserError(f"stream: every value is {lo:g} (a constant, not a spectrogram); expected a log-mel "
                        "spectrogram")
    if not advised:
        checker.observe(held / convention_scale(checker.declared), "the stream")
        checker.warn(log)
    if received > emitted:
        yield _decode(decoder, held, start, emitted, received, sigma, seed, key)[0]


def _decode(decoder: Decoder, held: Tensor, start: int, emitted: int, final: int, sigma: float, seed: int,
            key: str | int) -> tuple[Tensor, Tensor, int, int]:
    """Decode frames [emitted, final) from the window [max(0, emitted − rf), received).

    Returns:
        (audio [hop·(final − emitted)], the frames still needed, their first frame, final).
    """
    rf, hop = decoder.receptive_field, decoder.hop_length
    w0 = max(0, emitted - rf)
    received = start + held.shape[1]
    mel = held[:, w0 - start:]
    z = latent(seed, key, w0, received, hop, sigma)
    with torch.inference_mode():
        out = decoder.decode_batch([mel], [z])[0]
    audio = out[(emitted - w0) * hop: (final - w0) * hop].clone()
    keep_from = max(0, final - rf)  # the next window's first frame
    return audio, held[:, keep_from - start:].clone(), keep_from, final
