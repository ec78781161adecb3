"""waveglow-export: ONNX parity with eager decoding, dynamic shapes, refused inputs, the bench case.

Models: an untrained `tiny` model whose zero-initialized coupling end layers are given random
weights (so every coupling really shifts and scales) and non-trivial mel statistics, saved as
a checkpoint of this toolkit; and an NVIDIA-format file written by `tests/nvidia_reference.py`,
imported with `waveglow-import-nvidia`'s library function. Inputs: mels of the demo corpus.
Parity: relative max difference (max |onnx − eager| / max |eager|) <= 1e-4 against
`WaveGlow.decode(z, mel)` with the same z, at shapes other than the one traced.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from cli_forks import Job, run_forked
from conftest import DEMO_ROOT, model_config, run_cli, run_script
from nvidia_reference import build_reference, save_reference

from waveglow.bench.cases import Case, _random_mel, resolve_model
from waveglow.bench.onnx_case import bench_onnxruntime
from waveglow.checkpoint import build_checkpoint, load_model, save_checkpoint
from waveglow.cli import export as export_cli
from waveglow.cli.export import main as export_main
from waveglow.config import AudioConfig, to_dict
from waveglow.errors import UserError
from waveglow.export import (
    MIN_SNR_DB,
    PARITY_TOLERANCE,
    calibration_feeds,
    eager_decode,
    export_int8,
    export_onnx,
    onnx_model_bytes,
    relative_max_diff,
    run,
    session,
    snr_db,
    split_held_out,
)
from waveglow.export import quantize as quantize_module
from waveglow.export.onnx import TRACE_SHAPE
from waveglow.interop import import_nvidia
from waveglow.mel import MelSpectrogram, save_mel
from waveglow.model import WaveGlow

SIGMA = 0.6
AUDIO = to_dict(AudioConfig())
HOP = AUDIO["hop_length"]


def randomize_end_layers(model: WaveGlow, scale: float = 0.3, seed: int = 1) -> None:
    """Non-zero coupling outputs (an untrained model's couplings are identities)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith(".end") and isinstance(module, torch.nn.Conv1d):
                std = scale / math.sqrt(module.in_channels)
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * std)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.05)


@pytest.fixture(scope="module")
def demo_mels() -> list[torch.Tensor]:
    """Raw log-mels [80, F] of three demo clips (cut to <= 90 frames), as waveglow-mel computes them."""
    import soundfile as sf

    mel_fn = MelSpectrogram.from_config(AUDIO)
    wavs = sorted((DEMO_ROOT / "wavs").glob("*.wav"))[:3]
    mels = []
    for wav in wavs:
        audio, sr = sf.read(wav, dtype="float32")
        assert sr == AUDIO["sampling_rate"]
        with torch.inference_mode():
            mels.append(mel_fn(torch.from_numpy(audio))[:, :90].clone())
    return mels


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, demo_mels) -> Path:
    """An untrained tiny model with random end layers and the demo mels' statistics."""
    torch.manual_seed(0)
    config = {"model": model_config("tiny"), "audio": AUDIO}
    model = WaveGlow.from_config(config)
    randomize_end_layers(model)
    frames = torch.cat(demo_mels, dim=1)
    model.set_mel_stats(frames.mean(dim=1), frames.std(dim=1))
    path = tmp_path_factory.mktemp("export") / "tiny.pt"
    save_checkpoint(path, build_checkpoint(model, config))
    return path


def batch_of(mels: list[torch.Tensor], frames: int) -> torch.Tensor:
    return torch.stack([m[:, :frames] for m in mels])


def latent(batch: int, frames: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, HOP * frames, generator=gen) * SIGMA


def assert_parity(model: WaveGlow, sess, mel: torch.Tensor, z: torch.Tensor) -> float:
    reference = eager_decode(model, mel, z)
    got = run(sess, mel, z)
    assert got.shape == tuple(reference.shape) == (mel.shape[0], HOP * mel.shape[2])
    assert float(np.abs(reference.numpy()).max()) > 1e-3  # a real signal, not silence
    diff = relative_max_diff(reference, got)
    assert diff <= PARITY_TOLERANCE, f"relative max difference {diff:.3g} at {list(mel.shape)}"
    return diff


def test_cli_export_matches_eager_on_demo_mels(tmp_path, tiny_checkpoint, demo_mels, single_thread):
    out = tmp_path / "models" / "tiny.onnx"
    proc = run_cli("waveglow-export", f"checkpoint={tiny_checkpoint}", f"output={out}")
    assert "relative max difference" in proc.stdout
    proto = onnx.load(out)
    assert [i.name for i in proto.graph.input] == ["mel", "z"]
    assert [o.name for o in proto.graph.output] == ["audio"]
    # B and F are symbolic in the graph's signature, n_mels is fixed.
    mel_dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert mel_dims[0].dim_param and mel_dims[2].dim_param and mel_dims[1].dim_value == 80
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["sampling_rate"] == "22050" and meta["hop_length"] == "256"
    # No weight-norm parameters survive: every conditioner weight is folded.
    assert not [i.name for i in proto.graph.initializer if "weight_g" in i.name or "weight_v" in i.name]

    model = load_model(tiny_checkpoint)
    sess = session(out, threads=1)
    assert TRACE_SHAPE[1] not in (70, 41, 30)  # every check runs at a length other than the traced one
    assert_parity(model, sess, batch_of(demo_mels[1:], 70), latent(2, 70, seed=3))
    assert_parity(model, sess, demo_mels[0][None, :, :41], latent(1, 41, seed=4))
    # z is the latent already multiplied by sigma: the same numbers as model.infer's draw.
    mel = demo_mels[0][None, :, :30]
    gen = torch.Generator().manual_seed(7)
    with torch.inference_mode():
        infer = model.infer(mel, sigma=SIGMA, generator=gen)
    z = torch.randn(1, HOP * 30, generator=torch.Generator().manual_seed(7)) * SIGMA
    assert relative_max_diff(infer, run(sess, mel, z)) <= PARITY_TOLERANCE
    # The mel statistics are inside the graph: other statistics give other audio.
    changed = load_model(tiny_checkpoint)
    changed.set_mel_stats(torch.zeros(80), torch.ones(80))
    assert relative_max_diff(eager_decode(changed, mel, z), run(sess, mel, z)) > 1e-2


def test_imported_nvidia_checkpoint_exports_with_parity(tmp_path, demo_mels, single_thread):
    ref = build_reference(n_flows=4, n_group=8, n_early_every=2, n_early_size=2, n_layers=2,
                          n_channels=16, seed=3)
    src = save_reference(ref, tmp_path / "waveglow_nvidia.pt")
    import_nvidia(src, tmp_path / "imported.pt", sigma=1.0)
    model = load_model(tmp_path / "imported.pt")
    out, diff = export_onnx(model, tmp_path / "imported.onnx")
    assert diff <= PARITY_TOLERANCE
    sess = session(out, threads=1)
    assert_parity(model, sess, batch_of(demo_mels, 45), latent(3, 45, seed=5))
    assert_parity(model, sess, demo_mels[1][None, :, :17], latent(1, 17, seed=6))


def assert_one_error_line(stderr: str, expected: str) -> None:
    """The error is the last line, alone of its kind (progress lines may precede it), no traceback."""
    lines = stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and expected in lines[-1], stderr
    assert sum(line.startswith("error") for line in lines) == 1 and "Traceback" not in stderr, stderr


def test_bad_inputs_exit_2_and_write_nothing(tmp_path, tiny_checkpoint, capsys):
    not_ckpt = tmp_path / "notes.pt"
    not_ckpt.write_text("not a checkpoint")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    before = sorted(p.name for p in tmp_path.iterdir())
    # The script's entry point in a process of its own: exit status 2 and one line.
    scripted = {
        "missing": ([f"checkpoint={tmp_path / 'nope.pt'}", f"output={tmp_path / 'a.onnx'}"], "checkpoint not found"),
        "invalid": ([f"checkpoint={not_ckpt}", f"output={tmp_path / 'b.onnx'}"], "notes.pt"),
    }
    procs = dict(zip(scripted, run_forked([Job("waveglow-export", a) for a, _ in scripted.values()], parallel=2)))
    for name, proc in procs.items():
        assert proc.returncode == 2, (name, proc.stderr)
        assert_one_error_line(proc.stderr, scripted[name][1])
    # The same entry point in this process (no interpreter start per case).
    ckpt = f"checkpoint={tiny_checkpoint}"
    in_process = {
        "suffix": ([ckpt, f"output={tmp_path / 'c.pt'}"], "ending in .onnx"),
        "under a file": ([ckpt, f"output={blocker / 'd.onnx'}"], "not a folder"),
        "int8 as pt2": ([ckpt, f"output={tmp_path / 'e.pt2'}", "format=pt2", "quantize=int8"], "only with format=onnx"),
        "no calibration": ([ckpt, f"output={tmp_path / 'f.onnx'}", "quantize=int8",
                            f"calibration={tmp_path / 'no_mels'}"], "no such file or folder"),
        # Found only when writing, after the export: still one line and nothing left behind.
        "unwritable": ([ckpt, "output=/proc/waveglow-export-test.onnx"], "cannot write the model"),
    }
    for name, (args, expected) in in_process.items():
        with pytest.raises(SystemExit) as exit_info:
            export_main(args)
        assert exit_info.value.code == 2, name
        assert_one_error_line(capsys.readouterr().err, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temp files


def test_library_refuses_a_wrong_suffix_before_tracing(tmp_path):
    model = WaveGlow(model_config("tiny"))
    with pytest.raises(UserError, match="ending in .onnx"):
        export_onnx(model, tmp_path / "model.txt")
    assert not list(tmp_path.iterdir())


def test_bench_onnxruntime_case_row(tiny_checkpoint, single_thread):
    case = Case(task="synthesis", model=str(tiny_checkpoint), seconds=0.25, repeats=1, warmup=1,
                engine="onnxruntime", measure_peak=False)
    model, _, audio, weights = resolve_model(case.model, AudioConfig())
    frames = round(case.seconds * audio.sampling_rate / audio.hop_length)
    mel = _random_mel(1, audio.n_mels, frames, case.seed)
    row = bench_onnxruntime(case, None, model, {"task": "synthesis", "weights": weights}, mel)
    assert row["engine"] == "onnxruntime" and row["khz"] > 0 and row["rtf"] > 0
    assert row["audio_seconds"] == pytest.approx(frames * HOP / audio.sampling_rate)
    assert row["snr_db_vs_fp32"] > 80  # fp32 ONNX against fp32 eager, same z
    with pytest.raises(UserError, match="precision=fp32"):
        bench_onnxruntime(Case(task="synthesis", model="tiny", precision="bf16", engine="onnxruntime"),
                          None, model, {}, mel)



def test_int8_export_is_quantized_and_close_to_fp32(tmp_path, tiny_checkpoint, demo_mels, single_thread):
    calib = tmp_path / "calibration"
    for i, mel in enumerate(demo_mels[1:]):
        save_mel(calib / f"clip{i}.pt", mel[:, :40])
    out = tmp_path / "tiny-int8.onnx"
    proc = run_script("waveglow-export", f"checkpoint={tiny_checkpoint}", f"output={out}",
                   "quantize=int8", f"calibration={calib}")
    # Two mels: one calibrates, the other (not seen by the calibration) measures the fidelity.
    assert "int8, calibrated on 1 mel of" in proc.stdout and "dB on 1 held-out mel" in proc.stdout, proc.stdout
    proto = onnx.load(out)
    quantized = {n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    weights = {name for name in quantized if name.endswith("_quantized")}
    # The conditioners' convs are int8; the invertible 1x1 convs and the upsampler stay fp32.
    assert any(".wn.start." in w for w in weights) and any(".wn.in_layers." in w for w in weights)
    assert not any("convinv" in w or "upsample" in w for w in weights)
    model = load_model(tiny_checkpoint)
    mel, z = demo_mels[0][None, :, :45], latent(1, 45, seed=11)
    snr = snr_db(eager_decode(model, mel, z), run(session(out, threads=1), mel, z))
    assert MIN_SNR_DB <= snr < 80, snr  # close to fp32, and really quantized


def test_int8_below_the_threshold_on_held_out_mels_is_refused(tmp_path, tiny_checkpoint, demo_mels,
                                                              single_thread, monkeypatch):
    """A model whose activations quantize badly: couplings that scale strongly (end layers of
    std 2/sqrt(fan-in) instead of 0.3), so exp(log s) amplifies the int8 error (measured
    ~15 dB against fp32, on calibration and held-out mels alike). It is refused at the default
    20 dB, on the figure of the held-out mel: the quantizer saw only the first two mels, and the
    refused figure is the held-out mel's SNR, computed here independently."""
    model = load_model(tiny_checkpoint)
    randomize_end_layers(model, scale=2.0)
    mels = [demo_mels[1][:, :30], demo_mels[2][:, :31], demo_mels[0][:, :32]]  # told apart by length
    seen: list[list[int]] = []
    real_quantize = quantize_module.quantize_int8
    monkeypatch.setattr(quantize_module, "quantize_int8",
                        lambda fp32, feeds, **kw: (seen.append([f["mel"].shape[2] for f in feeds]),
                                                   real_quantize(fp32, feeds, **kw))[1])
    refused = tmp_path / "refused.onnx"
    with pytest.raises(UserError, match=r"quantize=int8: refused: .* SNR against fp32 is [\d.]+ dB "
                                        r"\(< 20 dB\) on 1 held-out calibration mel") as info:
        export_int8(model, refused, mels, threads=1)
    assert seen == [[30, 31]]
    assert not refused.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    reported = float(str(info.value).split("SNR against fp32 is ")[1].split(" dB")[0])
    fp32 = onnx_model_bytes(model)
    s32 = session(fp32, threads=1)
    s8 = session(real_quantize(fp32, calibration_feeds(mels[:2], HOP)), threads=1)
    held = calibration_feeds(mels[2:], HOP, seed=1)[0]
    expected = snr_db(run(s32, held["mel"], held["z"]), run(s8, held["mel"], held["z"]))
    assert reported == pytest.approx(expected, abs=0.05) and expected < MIN_SNR_DB - 3


def test_calibration_split_holds_out_one_mel_in_five():
    mels = [torch.zeros(80, 20 + i) for i in range(10)]
    calibrate, held = split_held_out(mels)
    assert [m.shape[1] for m in calibrate] == list(range(20, 28)) and [m.shape[1] for m in held] == [28, 29]
    calibrate, held = split_held_out(mels[:2])
    assert [m.shape[1] for m in calibrate] == [20] and [m.shape[1] for m in held] == [21]
    calibrate, held = split_held_out([torch.arange(33.0).expand(80, 33)])  # one mel: split in time
    assert calibrate[0].shape[1] == 16 and held[0].shape[1] == 17 and held[0][0, 0] == 16
    with pytest.raises(UserError, match="one mel of 15 frames"):
        split_held_out([torch.zeros(80, 15)])


def test_export_settings_are_checked_before_any_work(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    """Every setting is checked before the checkpoint is loaded (and so before any tracing):
    int8 without a calibration corpus (no data/demo/wavs here), a calibration folder without
    mels or audio, an opset this torch does not export. A single mel too short to hold part of
    it out is found after loading (its frames need the model's mel settings), before tracing."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("no mels here")
    save_mel(tmp_path / "short" / "one.pt", torch.randn(80, 10, generator=torch.Generator().manual_seed(0)) - 5.0)
    ckpt, out = f"checkpoint={tiny_checkpoint}", f"output={tmp_path / 'model.onnx'}"
    before = sorted(p.name for p in tmp_path.iterdir())
    # The real console script: exit status 2, one line, nothing traced.
    proc = run_script("waveglow-export", ckpt, out, "quantize=int8", check=False, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert_one_error_line(proc.stderr, "calibration=null: the demo corpus")
    assert "tracing" not in proc.stderr
    # A fresh console handler on this test's captured stderr (an earlier in-process run left one
    # on its own, now closed, capture stream).
    monkeypatch.setattr(logging.getLogger("waveglow"), "handlers", [])
    loaded: list[str] = []
    real_load = export_cli.load_model
    monkeypatch.setattr(export_cli, "load_model", lambda path, **kw: (loaded.append(str(path)), real_load(path, **kw))[1])
    cases = {
        "no corpus": (["quantize=int8"], "calibration=null: the demo corpus", False),
        "no mels": (["quantize=int8", "calibration=notes"], "calibration=notes: ", False),
        "opset": (["opset=99"], "opset=99: this torch exports ONNX opsets 13 to", False),
        "one short mel": (["quantize=int8", "calibration=short"], "one mel of 10 frames", True),
    }
    for name, (args, expected, loads) in cases.items():
        loaded.clear()
        with pytest.raises(SystemExit) as exit_info:
            export_main([ckpt, out, *args])
        assert exit_info.value.code == 2, name
        err = capsys.readouterr().err
        assert_one_error_line(err, expected)
        assert "tracing" not in err and loaded == ([str(tiny_checkpoint)] if loads else []), name
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow  # torch.export traces for about 20 s even for the tiny model
def test_pt2_export_matches_eager(tmp_path, tiny_checkpoint, demo_mels, single_thread):
    out = tmp_path / "tiny.pt2"
    run_script("waveglow-export", f"checkpoint={tiny_checkpoint}", f"output={out}", "format=pt2")
    program = torch.export.load(out).module()
    model = load_model(tiny_checkpoint)
    for mel, z in ((batch_of(demo_mels, 45), latent(3, 45, seed=8)),
                   (demo_mels[1][None, :, :23], latent(1, 23, seed=9))):
        with torch.no_grad():
            got = program(mel, z)
        assert relative_max_diff(eager_decode(model, mel, z), got) <= PARITY_TOLERANCE
