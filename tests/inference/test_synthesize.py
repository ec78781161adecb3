"""Synthesizer: output length, exact batching and chunking, noise determinism, bf16 on CPU,
the bias denoiser and bad inputs (in process; the CLI runs are in
test_cli_synthesize.py)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
from synth_helpers import HOP, active_model, random_mel, write_bad_inputs

from waveglow.checkpoint import FORMAT_VERSION, save_checkpoint
from waveglow.errors import UserError
from waveglow.inference import (
    Synthesizer,
    latent,
    noise_seed,
    plan_pieces,
    receptive_field_frames,
)
from waveglow.inference.metrics import snr_db

# Tiny tensors: one intra-op thread (see conftest.single_thread).
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def setup():
    model, cfg = active_model()
    reference = copy.deepcopy(model)
    reference.remove_weight_norm()
    synth = Synthesizer.from_model(model, cfg, device="cpu")
    return synth, reference, cfg


def reference_decode(reference, mel: torch.Tensor, key, seed: int = 0, sigma: float = 0.6) -> torch.Tensor:
    """The model's own decode of one mel with the noise the Synthesizer gives `key`."""
    z = latent(seed, key, 0, mel.shape[-1], HOP, sigma)
    with torch.inference_mode():
        return reference.decode(z[None], mel[None])[0]


def test_output_length_and_matches_model_decode(setup):
    synth, reference, _ = setup
    mel = random_mel(37, 1)
    out = synth.from_mel(mel, sigma=0.6, seed=3, keys=["clip"])
    assert out.shape == (HOP * 37,) and out.dtype == torch.float32
    ref = reference_decode(reference, mel, "clip", seed=3)
    assert (out - ref).abs().max().item() < 1e-5


def test_receptive_field_bounds_the_influence(setup):
    # A change of one mel frame (and of its noise) must not reach beyond the computed bound.
    synth, reference, cfg = setup
    rf = receptive_field_frames(cfg["model"], HOP)
    assert rf == synth.receptive_field
    F, f0 = 6 * rf + 1, 3 * rf
    mel, z = random_mel(F, 2), torch.randn(HOP * F)
    mel2, z2 = mel.clone(), z.clone()
    mel2[:, f0] += 3.0
    z2[f0 * HOP:(f0 + 1) * HOP] += 1.0
    with torch.inference_mode():
        a = reference.decode(z[None], mel[None])[0]
        b = reference.decode(z2[None], mel2[None])[0]
    changed = ((a - b).abs() > 0).nonzero().flatten()
    assert changed.numel() > 0
    lo, hi = changed.min().item() // HOP, changed.max().item() // HOP
    assert f0 - rf <= lo and hi <= f0 + rf, (lo, hi, rf)


def test_batched_equals_unbatched(setup):
    synth, reference, _ = setup
    rf = synth.receptive_field
    # Lengths around the repair window (2·rf), one longer than the longest in the batch, one tiny.
    lengths = [1, 5, 2 * rf - 1, 2 * rf, 2 * rf + 3, 40, 41, 77]
    mels = [random_mel(n, 10 + i) for i, n in enumerate(lengths)]
    refs = [reference_decode(reference, m, i) for i, m in enumerate(mels)]
    F = max(lengths)
    padded = torch.full((len(mels), 80, F), -11.5)
    for i, m in enumerate(mels):
        padded[i, :, : m.shape[-1]] = m
    for batch_size in (1, 3, 8):
        out = synth.from_mel(padded, lengths=lengths, batch_size=batch_size)
        for i, n in enumerate(lengths):
            assert (out[i, : HOP * n] - refs[i]).abs().max().item() < 1e-5, (batch_size, n)
            assert (out[i, HOP * n:] == 0).all()
    # Without the repair the padded items' ends differ audibly: the repair is what makes it exact.
    zs = [latent(0, i, 0, m.shape[-1], HOP, 0.6) for i, m in enumerate(mels)]
    with torch.inference_mode():
        naive = synth.decoder.decode_batch(mels, zs)
    assert max((a - r).abs().max().item() for a, r in zip(naive, refs)) > 1e-3


def test_chunked_close_to_unchunked(setup):
    synth, reference, cfg = setup
    mel = random_mel(150, 4)
    ref = reference_decode(reference, mel, "long")
    whole = synth.from_mel(mel, keys=["long"])
    model = copy.deepcopy(synth.model)
    chunked = Synthesizer.from_model(model, cfg, device="cpu", chunk_frames=24, crossfade_frames=4)
    assert len(plan_pieces(0, 150, 24, chunked.overlap, 4)) == 7
    out = chunked.from_mel(mel, keys=["long"], batch_size=3)
    assert out.shape == ref.shape
    # Context = receptive field: exact up to float rounding.
    assert (out - ref).abs().max().item() < 1e-5
    assert (whole - ref).abs().max().item() < 1e-5
    # Less context than the receptive field is an approximation, still close thanks to the fade.
    short = Synthesizer.from_model(copy.deepcopy(model), cfg, device="cpu", chunk_frames=24, overlap=2,
                                   crossfade_frames=4)
    approx = short.from_mel(mel, keys=["long"])
    assert torch.isfinite(approx).all() and snr_db(ref, approx) > 10


def test_noise_is_deterministic_per_seed_and_key(setup):
    synth, _, _ = setup
    mel = random_mel(20, 5)
    a = synth.from_mel(mel, seed=7, keys=["x"])
    b = synth.from_mel(mel, seed=7, keys=["x"])
    c = synth.from_mel(mel, seed=8, keys=["x"])
    d = synth.from_mel(mel, seed=7, keys=["y"])
    assert torch.equal(a, b)
    assert not torch.allclose(a, c) and not torch.allclose(a, d)
    assert noise_seed(0, "LJ001-0001") == noise_seed(0, "LJ001-0001") != noise_seed(1, "LJ001-0001")
    # sigma 0 does not depend on the seed at all.
    assert torch.equal(synth.from_mel(mel, sigma=0.0, seed=1), synth.from_mel(mel, sigma=0.0, seed=2))


def test_bf16_on_cpu_is_finite_and_close_to_fp32(setup):
    synth, _, cfg = setup
    mel = random_mel(60, 6)
    ref = synth.from_mel(mel, keys=["k"])
    bf16 = Synthesizer.from_model(copy.deepcopy(synth.model), cfg, device="cpu", precision="bf16")
    out = bf16.from_mel(mel, keys=["k"])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    snr = snr_db(ref, out)
    print(f"bf16 vs fp32 on CPU (tiny, active couplings): SNR {snr:.1f} dB")
    assert snr > 20.0


def test_denoiser_lowers_the_bias_tone(setup):
    synth, _, _ = setup
    denoiser = synth.denoiser("mean")
    assert denoiser is synth.denoiser("mean")  # computed once
    assert denoiser.bias_spec.shape == (513, 1) and denoiser.bias_spec.sum() > 0
    # A zero-level mel at sigma 0 is the bias tone itself (decoded directly: from_mel refuses a
    # constant mel as an input mistake).
    mel = synth.model.mel_mean.detach().reshape(80, 1).expand(80, 80).clone()
    tone = synth.decode(torch.zeros(1, HOP * 80), mel[None])[0]
    cleaned = synth.denoise(tone, 1.0)
    assert cleaned.shape == tone.shape
    mid = slice(HOP * 20, HOP * 60)  # away from the edges, where the tone is stationary
    ratio = (cleaned[mid].pow(2).mean() / tone[mid].pow(2).mean()).item()
    print(f"denoiser strength 1.0: bias-tone energy x{ratio:.4f} ({10 * math.log10(ratio):.1f} dB)")
    assert ratio < 0.05
    # Strength 0 leaves audio untouched; the silence variant also builds.
    x = torch.randn(3000)
    assert torch.equal(synth.denoise(x, 0.0), x)
    assert synth.denoiser("silence").bias_spec.shape == (513, 1)
    with pytest.raises(UserError):
        synth.denoiser("loud")


def test_from_mel_rejects_bad_tensors(setup):
    synth, _, _ = setup
    for bad in (torch.randn(80), torch.randn(40, 10), torch.full((80, 5), float("nan")),
                torch.randn(80, 0), torch.randn(1, 1, 80, 4)):
        with pytest.raises(UserError):
            synth.from_mel(bad)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, cfg = active_model(seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": cfg,
                           "step": 0, "epoch": 0})
    return path


def test_to_files_bad_inputs_fail_or_skip(checkpoint, tmp_path):
    synth = Synthesizer(checkpoint, device="cpu")
    files = write_bad_inputs(tmp_path / "mels")
    for name, path in files.items():
        if name == "good":
            continue
        out = tmp_path / f"out_{name}"
        with pytest.raises(UserError) as err:
            synth.to_files([files["good"], path], out, progress=False)
        msg = str(err.value)
        assert str(path) in msg and "\n" not in msg, msg
        assert not list(out.glob("*.wav")), "no WAV may be written when a bad input stops the run"
        assert not [p for p in out.glob(".*")], "no temporary file may be left behind"
    listing = tmp_path / "all.txt"
    listing.write_text("\n".join(str(p) for p in files.values()))
    report = synth.to_files(listing, tmp_path / "skip", on_error="skip", progress=False)
    assert [p.name for p in report.written] == ["good.wav"]
    assert {Path(f).stem for f, _ in report.failed} == set(files) - {"good"}
    audio, sr = sf.read(tmp_path / "skip" / "good.wav")
    assert sr == 22050 and audio.shape == (HOP * 12,)
    assert "real-time factor" in report.summary() and "kHz" in report.summary()
    with pytest.raises(UserError):  # nothing usable at all
        synth.to_files([files["inf"]], tmp_path / "none", on_error="skip", progress=False)


@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_matches_cpu(setup, precision):
    synth, reference, cfg = setup
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    gpu = Synthesizer.from_model(copy.deepcopy(synth.model), cfg, device="auto", precision=precision)
    assert gpu.device.type == "cuda"
    lengths = [9, 30, 64]
    mels = torch.stack([torch.nn.functional.pad(random_mel(n, 20 + i), (0, 64 - n), value=-11.5)
                        for i, n in enumerate(lengths)])
    out = gpu.from_mel(mels, lengths=lengths, batch_size=3)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    for i, n in enumerate(lengths):
        ref = reference_decode(reference, mels[i, :, :n], i)
        snr = snr_db(ref, out[i, : HOP * n])
        assert snr > (60.0 if precision == "fp32" else 20.0), (precision, n, snr)


def test_python_api_rejects_settings_that_would_give_garbage(setup, tmp_path):
    synth, _, cfg = setup
    model = copy.deepcopy(synth.model)
    for kwargs, key in (({"crossfade_frames": 3}, "crossfade_frames="), ({"chunk_frames": 0}, "chunk_frames="),
                        ({"overlap": -1}, "chunk_overlap="), ({"device": "tpu"}, "device="),
                        ({"precision": "fp8"}, "precision=")):
        with pytest.raises(UserError, match=key):
            Synthesizer.from_model(model, cfg, **{"device": "cpu", **kwargs})
    with pytest.raises(UserError, match="sigma="):
        synth.from_mel(random_mel(4, 0), sigma=float("nan"))
    mel = tmp_path / "m.pt"
    torch.save(random_mel(4, 0), mel)
    for kwargs, key in (({"on_error": "skp"}, "on_error="), ({"subtype": "PCM_8"}, "format="),
                        ({"batch_size": 0}, "batch_size="), ({"denoiser_mel": "loud"}, "denoiser_mel=")):
        with pytest.raises(UserError, match=key):
            synth.to_files(mel, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_to_files_keeps_the_folder_layout(checkpoint, tmp_path):
    # Outputs are named by the shared input resolver: the path below an input folder, which is
    # also the noise key.
    synth = Synthesizer(checkpoint, device="cpu")
    (tmp_path / "mels" / "sub").mkdir(parents=True)
    mel = random_mel(6, 7)
    torch.save(mel, tmp_path / "mels" / "sub" / "a.pt")
    torch.save(mel, tmp_path / "mels" / "b.pt")
    report = synth.to_files(tmp_path / "mels", tmp_path / "out", sigma=0.5, subtype="FLOAT", progress=False)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in report.written) == ["b.wav", "sub/a.wav"]
    audio, _ = sf.read(tmp_path / "out" / "sub" / "a.wav", dtype="float32")
    alone = synth.from_mel(mel, sigma=0.5, keys=["sub/a"])  # FLOAT files keep samples beyond full scale
    assert (torch.from_numpy(audio) - alone).abs().max().item() < 1e-6


def test_latent_is_what_a_synthesized_file_was_decoded_from(checkpoint, tmp_path):
    # `latent(mel, seed, key=<output name>, sigma)` and the mel decode to the written file: what
    # an ONNX export (inputs mel and z) is compared with.
    synth = Synthesizer(checkpoint, device="cpu")
    mel = random_mel(20, 9)
    (tmp_path / "mels").mkdir()
    torch.save(mel, tmp_path / "mels" / "clip.pt")
    synth.to_files(tmp_path / "mels", tmp_path / "out", sigma=0.7, seed=5, subtype="FLOAT", progress=False)
    written, _ = sf.read(tmp_path / "out" / "clip.wav", dtype="float32")
    z = synth.latent(mel, seed=5, key="clip", sigma=0.7)
    assert z.shape == (HOP * 20,) and torch.equal(z, synth.latent(20, seed=5, key="clip", sigma=0.7))
    assert (synth.decode(z[None], mel[None])[0] - torch.from_numpy(written)).abs().max().item() < 1e-5
    assert not torch.equal(z, synth.latent(mel, seed=6, key="clip", sigma=0.7))
    with pytest.raises(UserError, match="sigma="):
        synth.latent(mel, sigma=-1.0)
