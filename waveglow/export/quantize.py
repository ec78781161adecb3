"""Static int8 quantization of an exported model (onnxruntime.quantization.quantize_static).

Only the conditioners' convolutions (`WN`: start, conditioning projection, dilated and 1×1
layers, optionally the end layer) are quantized, with per-channel int8 weights and int8
activations calibrated (min/max) on a few mels: they hold nearly all of the multiply-adds. The
invertible 1×1 convolutions, the mel upsampler and the coupling arithmetic stay float32: an
error there is not a small perturbation of a shift or scale but a wrong inverse.

The calibration inputs are pairs (mel, z) with z ~ N(0, sigma²), like synthesis. Fidelity is
measured on mels the calibration did not see (`split_held_out`): min/max calibration fits the
activation ranges of its own mels, so an SNR measured on them says nothing about a louder or
otherwise different mel, whose activations are clipped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from waveglow.data.audio import load_audio
from waveglow.data.inputs import InputFile, Spec, resolve_inputs
from waveglow.errors import UserError
from waveglow.export.onnx import (
    check_opset,
    check_output_path,
    check_parity,
    onnx_model_bytes,
    require_onnx,
    run,
    session,
    snr_db,
    write,
)
from waveglow.mel import MelSpectrogram, load_mel
from waveglow.model import WaveGlow

try:  # the `export` extra
    import onnx
    from onnxruntime import quantization as ortq
except ImportError:  # pragma: no cover - depends on the installation
    onnx = None  # type: ignore[assignment]
    ortq = None  # type: ignore[assignment]

MEL_SUFFIXES = (".pt", ".npy")
AUDIO_SUFFIXES = (".wav", ".flac")
# Calibration: a few mels, each cut to at most this many frames (about 2.3 s at hop 256); one
# in five (at least one) is held out to measure fidelity: 8 calibrate and 2 check by default.
CALIBRATION_FILES = 10
CALIBRATION_FRAMES = 200
HELD_OUT_EVERY = 5
# A single calibration mel is split in time: each half needs at least this many frames.
MIN_SPLIT_FRAMES = 8
# Where calibration mels come from when none are given: the demo corpus (run from the repository).
DEMO_WAVS = Path("data/demo/wavs")
# The int8 model must stay this close to the fp32 export (SNR with the same z), or it is refused.
MIN_SNR_DB = 20.0


@dataclass(frozen=True)
class CalibrationSource:
    """The calibration files of a `calibration=` setting, found (not read) before any work.

    Attributes:
        spec: the setting as given.
        inputs: the files, sorted.
        is_mel: mel files (`.pt`/`.npy`) rather than audio.
    """

    spec: Spec
    inputs: list[InputFile]
    is_mel: bool


def resolve_calibration(spec: Spec) -> CalibrationSource:
    """Find the calibration files of `spec` (mels first, else audio) without reading them.

    Raises:
        UserError: nothing usable there (one line naming `calibration=`).
    """
    try:
        return CalibrationSource(spec, resolve_inputs(spec, MEL_SUFFIXES, kind="mel"), True)
    except UserError as mel_error:
        try:
            return CalibrationSource(spec, resolve_inputs(spec, AUDIO_SUFFIXES, kind="audio"), False)
        except UserError:
            raise UserError(f"calibration={spec}: {mel_error}; or .wav/.flac audio") from None


def calibration_mels(spec: Spec | CalibrationSource, audio_cfg: dict[str, Any], n_mels: int,
                     files: int = CALIBRATION_FILES, frames: int = CALIBRATION_FRAMES) -> list[Tensor]:
    """Raw log-mels [n_mels, f] (f <= frames) for calibration, from mel files or audio.

    Args:
        spec: mel files (`.pt`/`.npy`: file, folder, glob or filelist, as `input=`), or audio
            (`.wav`/`.flac`, e.g. a corpus folder), whose mels are computed with `audio_cfg`;
            or what `resolve_calibration` found for such a setting.
        audio_cfg: the checkpoint's audio settings (for audio inputs).
        n_mels: the model's mel channels.
        files: use at most this many files (the first ones, sorted).
        frames: cut each mel to at most this many frames.

    Raises:
        UserError: no usable file, or a bad one (named).
    """
    source = spec if isinstance(spec, CalibrationSource) else resolve_calibration(spec)
    is_mel = source.is_mel
    mels = []
    mel_fn = None if is_mel else MelSpectrogram.from_config(audio_cfg)
    for item in source.inputs[:files]:
        if is_mel:
            mel = load_mel(item.path, n_mels)
        else:
            assert mel_fn is not None
            wav = torch.from_numpy(load_audio(item.path, int(audio_cfg["sampling_rate"])))
            with torch.inference_mode():
                mel = mel_fn(wav[: frames * int(audio_cfg["hop_length"])]).float()
        mels.append(mel[:, :frames].clone())
    return mels


def split_held_out(mels: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """(calibration mels, held-out mels): the last one in HELD_OUT_EVERY (at least one) is
    held out; a single mel is split in time, its first half calibrating, its second checking.

    Args:
        mels: raw log-mels [n_mels, f] (`calibration_mels`).

    Raises:
        UserError: no mel, or one mel too short to split (2·MIN_SPLIT_FRAMES frames).
    """
    if not mels:
        raise UserError("calibration: no mels to calibrate on")
    if len(mels) == 1:
        frames = mels[0].shape[-1]
        if frames < 2 * MIN_SPLIT_FRAMES:
            raise UserError(f"calibration: one mel of {frames} frames; the int8 model's fidelity is "
                            "measured on mels the calibration did not see: give at least 2 mels, "
                            f"or one of at least {2 * MIN_SPLIT_FRAMES} frames")
        half = frames // 2
        return [mels[0][:, :half]], [mels[0][:, half:]]
    held = max(1, len(mels) // HELD_OUT_EVERY)
    return list(mels[:-held]), list(mels[-held:])


class _Feeds(ortq.CalibrationDataReader if ortq is not None else object):  # type: ignore[misc]
    """The calibration inputs as onnxruntime asks for them: one {"mel", "z"} dict at a time."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def calibration_feeds(mels: Sequence[Tensor], hop: int, sigma: float = 0.6, seed: int = 0
                      ) -> list[dict[str, np.ndarray]]:
    """One batch-1 feed per mel: {"mel": [1, n_mels, f], "z": [1, hop·f] ~ N(0, sigma²)}."""
    gen = torch.Generator().manual_seed(seed)
    feeds = []
    for mel in mels:
        z = torch.randn(1, hop * mel.shape[-1], generator=gen) * sigma
        feeds.append({"mel": mel[None].numpy().astype(np.float32), "z": z.numpy()})
    return feeds


def conditioner_convs(model: Any, include_end: bool = True) -> list[str]:
    """Names of the Conv nodes of the conditioners (their weights are `*.wn.*` initializers)."""
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        weight = node.input[1]
        if ".wn." in weight and (include_end or ".wn.end." not in weight):
            names.append(node.name)
    return names


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Silence onnxruntime's root-logger advice ("consider pre-processing before quantization",
    printed on every call) while quantizing; errors still show."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_int8(fp32_model: bytes, feeds: Sequence[dict[str, np.ndarray]],
                  include_end: bool = True, activations: str = "uint8") -> bytes:
    """Statically quantize an exported model's conditioner convolutions to int8 (QDQ format).

    Args:
        fp32_model: the fp32 export's bytes (`onnx_model_bytes`).
        feeds: calibration inputs (`calibration_feeds`).
        include_end: quantize the conditioners' end layers (shift and log-scale) too.
        activations: "uint8" (asymmetric; onnxruntime's recommended U8S8 on x86) or "int8"
            (symmetric S8S8).

    Returns:
        The int8 model's bytes.
    """
    require_onnx()
    if not feeds:
        raise UserError("calibration: no mels to calibrate on")
    proto = onnx.load_from_string(fp32_model)
    nodes = conditioner_convs(proto, include_end)
    with tempfile.TemporaryDirectory(prefix="waveglow-int8-") as tmp, _quiet_root_logger():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_model)
        ortq.quantize_static(
            str(src), str(dst), _Feeds(feeds), quant_format=ortq.QuantFormat.QDQ,
            op_types_to_quantize=["Conv"], nodes_to_quantize=nodes, per_channel=True,
            activation_type=ortq.QuantType.QUInt8 if activations == "uint8" else ortq.QuantType.QInt8,
            weight_type=ortq.QuantType.QInt8, calibrate_method=ortq.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": activations != "uint8"})
        return dst.read_bytes()



def default_calibration() -> Path:
    """The demo corpus' audio (`data/demo/wavs` under the working directory).

    Raises:
        UserError: not there (then `calibration=` must name mels or audio).
    """
    if not DEMO_WAVS.is_dir():
        raise UserError(f"calibration=null: the demo corpus ({DEMO_WAVS.absolute()}) is not here; "
                        "pass calibration=<mel files or audio of the training corpus>")
    return DEMO_WAVS


@dataclass(frozen=True)
class Int8Export:
    """What `export_int8` wrote and measured.

    Attributes:
        path: the written model.
        snr_db: the lowest SNR (dB) of the int8 model against the fp32 export, same z, over the
            held-out mels.
        calibration_mels: how many mels (or halves of one) calibrated.
        held_out_mels: how many the SNR was measured on.
    """

    path: Path
    snr_db: float
    calibration_mels: int
    held_out_mels: int


def export_int8(model: WaveGlow, output: str | os.PathLike, mels: Sequence[Tensor], opset: int = 17,
                min_snr_db: float = MIN_SNR_DB, threads: int | None = None) -> Int8Export:
    """Export `model`, quantize it to int8 calibrated on part of `mels`, check it on the rest,
    write it.

    The check: the int8 model against the fp32 export, same z, on every held-out mel
    (`split_held_out`); the lowest SNR must reach `min_snr_db` (the fp32 export itself is
    checked against eager decoding first, as `export_onnx` does).

    Args:
        model: the WaveGlow (not modified).
        output: the .onnx file to write atomically (nothing is written on any failure).
        mels: raw log-mels [n_mels, f] (`calibration_mels`), split into calibration and
            held-out mels.
        opset: ONNX opset.
        min_snr_db: the fidelity the int8 model must keep on the held-out mels.
        threads: onnxruntime threads for the checks (None: the available cores).

    Returns:
        The written path, the held-out SNR and the split's sizes.

    Raises:
        UserError: a bad output or opset, too few calibration mels, or an int8 model below
            `min_snr_db` on the held-out mels.
    """
    out = check_output_path(output)
    check_opset(opset)
    calibrate, held_out = split_held_out(mels)
    fp32 = onnx_model_bytes(model, opset)
    check_parity(model, session(fp32, threads))
    int8 = quantize_int8(fp32, calibration_feeds(calibrate, model.hop_length))
    s32, s8 = session(fp32, threads), session(int8, threads)
    checks = calibration_feeds(held_out, model.hop_length, seed=1)  # other z than calibration's
    snr = min(snr_db(run(s32, f["mel"], f["z"]), run(s8, f["mel"], f["z"])) for f in checks)
    if not snr >= min_snr_db:
        n = len(held_out)
        raise UserError(f"quantize=int8: refused: the int8 model's SNR against fp32 is {snr:.1f} dB "
                        f"(< {min_snr_db:g} dB) on {n} held-out calibration {'mel' if n == 1 else 'mels'} "
                        "(not used to calibrate); export fp32 instead")
    write(out, int8)
    return Int8Export(out, snr, len(calibrate), len(held_out))
