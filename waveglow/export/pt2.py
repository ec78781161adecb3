"""torch.export of the synthesis graph (`format=pt2`): the same graph as the ONNX export, as a
`torch.export.ExportedProgram` saved with `torch.export.save`.

    program = torch.export.load("vocoder.pt2").module()
    audio = program(mel, z)       # mel [B, n_mels, F] raw log-mel, z [B, hop·F] latent × sigma

B and F are dynamic (B >= 2 at trace time, so that torch.export does not specialize it to 1;
any B >= 1 runs). The program is loaded back and checked against eager decoding before it is
written.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch

from waveglow.export.graph import SynthesisGraph, traceable
from waveglow.export.onnx import (
    CHECK_SHAPE,
    PARITY_TOLERANCE,
    check_output_path,
    eager_decode,
    example_inputs,
    relative_max_diff,
    write,
)
from waveglow.model import WaveGlow

TRACE_SHAPE = (2, 8)  # (batch, frames)


def pt2_bytes(model: WaveGlow) -> bytes:
    """The serialized ExportedProgram of `model`'s synthesis graph (dynamic batch and frames)."""
    graph = SynthesisGraph(model)
    mel, z = example_inputs(graph.n_mels, graph.hop_length, *TRACE_SHAPE)
    batch = torch.export.Dim("batch")
    frames = torch.export.Dim("frames", min=1)
    with warnings.catch_warnings(), traceable():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            graph, (mel, z),
            dynamic_shapes={"mel": {0: batch, 2: frames}, "z": {0: batch, 1: graph.hop_length * frames}})
        buffer = io.BytesIO()
        torch.export.save(program, buffer)  # (its notes about weight placement: all on the CPU)
    return buffer.getvalue()


def check_pt2_parity(model: WaveGlow, data: bytes, shape: tuple[int, int] = CHECK_SHAPE) -> float:
    """Relative max difference of the saved program (loaded back) against eager decoding.

    Raises:
        RuntimeError: above `PARITY_TOLERANCE` (an export bug).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the loader's notes about weight placement
        program = torch.export.load(io.BytesIO(data)).module()
    mel, z = example_inputs(model.n_mels, model.hop_length, *shape, seed=1)
    reference = eager_decode(model, mel, z)
    with torch.no_grad():
        got = program(mel, z)
    diff = relative_max_diff(reference, got)
    if tuple(got.shape) != tuple(reference.shape) or not diff <= PARITY_TOLERANCE:
        raise RuntimeError(f"pt2 export: output {list(got.shape)} differs from eager decoding "
                           f"{list(reference.shape)} by {diff:.3g} (relative max)")
    return diff


def export_pt2(model: WaveGlow, output: str | os.PathLike) -> tuple[Path, float]:
    """Export to `output` (.pt2), checked for parity first; returns (path, relative max diff).

    Raises:
        UserError: a bad output name or an unwritable output (nothing written).
    """
    out = check_output_path(output, ".pt2")
    data = pt2_bytes(model)
    diff = check_pt2_parity(model, data)
    write(out, data)
    return out, diff
