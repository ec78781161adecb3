"""The mel frontend against an independent reference, mel files, and MelStats."""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch

from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram, MelStats, load_mel, save_mel

SR, N_FFT, HOP, WIN, N_MELS = 22050, 1024, 256, 1024, 80


def reference_mel(x: np.ndarray, win_length: int = WIN) -> np.ndarray:
    """The Tacotron 2 STFT written out in float64 numpy.

    A windowed Fourier basis (cos and -sin rows, the periodic Hann window zero-padded to n_fft
    in the middle) applied as a strided convolution over the signal reflect-padded by n_fft/2;
    magnitude; Slaney mel filterbank; natural log of the magnitude clamped at 1e-5.
    """
    n = np.arange(win_length)
    window = np.zeros(N_FFT)
    offset = (N_FFT - win_length) // 2
    window[offset:offset + win_length] = 0.5 - 0.5 * np.cos(2 * np.pi * n / win_length)
    k = np.arange(N_FFT // 2 + 1)[:, None]
    t = np.arange(N_FFT)[None, :]
    real = np.cos(2 * np.pi * k * t / N_FFT) * window
    imag = -np.sin(2 * np.pi * k * t / N_FFT) * window
    padded = np.pad(np.asarray(x, np.float64), N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP].T  # [n_fft, F]
    magnitude = np.sqrt((real @ frames) ** 2 + (imag @ frames) ** 2)
    basis = librosa.filters.mel(sr=SR, n_fft=N_FFT, n_mels=N_MELS, fmin=0.0, fmax=8000.0, dtype=np.float64)
    return np.log(np.maximum(basis @ magnitude, 1e-5))


@pytest.fixture(scope="module")
def mel_fn() -> MelSpectrogram:
    return MelSpectrogram()


def synthetic_speechlike(seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Harmonic bursts with a vibrato, a noise floor, and a stretch of digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 120 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(h * phase) / h for h in range(1, 30)) * (np.sin(2 * np.pi * 2 * t) > -0.3)
    x = 0.2 * voiced + 3e-3 * rng.standard_normal(t.size)
    x[len(x) // 2:len(x) // 2 + 3000] = 0.0
    return x.astype(np.float32)


def test_parity_with_reference_on_synthetic_signal(mel_fn: MelSpectrogram) -> None:
    x = synthetic_speechlike()
    ours = mel_fn(torch.from_numpy(x)).numpy()
    ref = reference_mel(x)
    assert ours.shape == ref.shape == (N_MELS, 1 + x.size // HOP)
    assert np.abs(ours - ref).max() <= 1e-3


def test_parity_with_reference_on_speech(mel_fn: MelSpectrogram, demo_root: Path) -> None:
    wavs = sorted((demo_root / "wavs").glob("*.wav"))[:6]
    assert wavs
    worst = 0.0
    for wav in wavs:
        x, rate = sf.read(wav, dtype="float32")
        assert rate == SR
        worst = max(worst, float(np.abs(mel_fn(torch.from_numpy(x)).numpy() - reference_mel(x)).max()))
    assert worst <= 1e-3


def test_short_window_parity() -> None:
    x = synthetic_speechlike(0.5, seed=1)
    ours = MelSpectrogram(win_length=800)(torch.from_numpy(x)).numpy()
    assert np.abs(ours - reference_mel(x, win_length=800)).max() <= 1e-3


@pytest.mark.parametrize("n", [513, 1000, 16000, 16001, 22050])
def test_frame_count(mel_fn: MelSpectrogram, n: int) -> None:
    x = torch.randn(n) * 0.1
    assert mel_fn(x).shape == (N_MELS, 1 + n // HOP) and mel_fn.n_frames(n) == 1 + n // HOP
    assert mel_fn(x.repeat(3, 1)).shape == (3, N_MELS, 1 + n // HOP)


def test_batch_equals_single(mel_fn: MelSpectrogram) -> None:
    x = torch.randn(2, 4000) * 0.1
    batch = mel_fn(x)
    assert torch.allclose(batch[1], mel_fn(x[1]), atol=1e-5)


def test_dtypes_and_too_short(mel_fn: MelSpectrogram) -> None:
    x = torch.randn(3000) * 0.1
    assert mel_fn(x.double()).dtype == torch.float64
    half = mel_fn(x.half())
    assert half.dtype == torch.float32 and torch.allclose(half, mel_fn(x.half().float()))
    assert mel_fn(x).min() >= np.log(1e-5) - 1e-6
    with pytest.raises(UserError, match="too short"):
        mel_fn(torch.zeros(512))
    with pytest.raises(UserError, match=r"\[B, T\]"):
        mel_fn(torch.zeros(1, 2, 3000))


def test_autocast_does_not_lower_precision(mel_fn: MelSpectrogram) -> None:
    x = torch.randn(4000) * 0.1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mel_fn(x)
    assert out.dtype == torch.float32 and torch.equal(out, mel_fn(x))


@pytest.mark.cuda
def test_cuda_matches_cpu(mel_fn: MelSpectrogram) -> None:
    x = torch.from_numpy(synthetic_speechlike(1.0))
    gpu = MelSpectrogram().cuda()
    out = gpu(x.cuda())
    assert out.device.type == "cuda" and gpu.mel_basis.device.type == "cuda"
    assert (out.cpu() - mel_fn(x)).abs().max() <= 1e-3
    with torch.autocast("cuda", dtype=torch.float16):
        assert gpu(x.cuda()).dtype == torch.float32


def test_buffers_not_parameters(mel_fn: MelSpectrogram) -> None:
    assert list(mel_fn.parameters()) == []
    assert {name for name, _ in mel_fn.named_buffers()} == {"window", "mel_basis"}
    assert mel_fn.mel_basis.shape == (N_MELS, N_FFT // 2 + 1)
    assert mel_fn.state_dict() == {}  # derived from the settings, so not stored in checkpoints
    moved = MelSpectrogram().to(torch.float64)
    assert moved.window.dtype == torch.float64
    x = torch.randn(2000) * 0.1
    assert torch.allclose(moved(x), mel_fn(x), atol=1e-5)


def test_uncentred_frames_equal_slices(mel_fn: MelSpectrogram) -> None:
    x = torch.randn(8000) * 0.1
    full = mel_fn(x)
    padded = torch.nn.functional.pad(x[None, None], (N_FFT // 2, N_FFT // 2), mode="reflect")[0, 0]
    part = mel_fn(padded[5 * HOP:5 * HOP + 9 * HOP + N_FFT], center=False)
    assert torch.allclose(part, full[:, 5:15], atol=1e-6)


def test_from_config_and_bad_settings() -> None:
    from hydra import compose, initialize_config_dir

    from waveglow.cli.common import CONFIG_DIR
    from waveglow.cli.compose import register_schemas

    register_schemas()  # what every console script does first; the YAMLs' defaults name them
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("waveglow_mel", overrides=["input=x", "output_dir=y"])
    m = MelSpectrogram.from_config(cfg.audio)
    assert (m.sampling_rate, m.n_fft, m.hop_length, m.win_length, m.n_mels, m.fmin, m.fmax, m.log_clamp) == (
        22050, 1024, 256, 1024, 80, 0.0, 8000.0, 1e-5)
    assert MelSpectrogram.from_config({**cfg.audio, "fmax": None}).fmax is None
    with pytest.raises(UserError, match="fmax"):
        MelSpectrogram(fmax=20000)
    with pytest.raises(UserError, match="win_length"):
        MelSpectrogram(win_length=2048)


# ------------------------------------------------------------------ mel files

@pytest.mark.parametrize("suffix", [".pt", ".npy"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    mel = torch.randn(N_MELS, 37)
    path = save_mel(tmp_path / "sub" / f"m{suffix}", mel)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # atomic: no temp left
    back = load_mel(path, N_MELS)
    assert back.dtype == torch.float32 and torch.equal(back, mel)


def test_pt_is_a_plain_tensor_and_views_are_not_bloated(tmp_path: Path) -> None:
    big = torch.randn(N_MELS, 10_000)
    save_mel(tmp_path / "v.pt", big[:, :10])
    assert os.path.getsize(tmp_path / "v.pt") < 20_000
    obj = torch.load(tmp_path / "v.pt", weights_only=True)
    assert type(obj) is torch.Tensor and obj.shape == (N_MELS, 10) and obj.dtype == torch.float32


def test_load_accepts_batch_axis_and_float64(tmp_path: Path) -> None:
    torch.save(torch.randn(1, N_MELS, 5, dtype=torch.float64), tmp_path / "b.pt")
    mel = load_mel(tmp_path / "b.pt", N_MELS)
    assert mel.shape == (N_MELS, 5) and mel.dtype == torch.float32


class _Exploit:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_errors(tmp_path: Path) -> None:
    def expect(name: str, obj, match: str, writer=torch.save) -> None:
        path = tmp_path / name
        writer(obj, path)
        with pytest.raises(UserError, match=match) as e:
            load_mel(path, N_MELS)
        assert str(path) in str(e.value)

    expect("wrong.pt", torch.randn(40, 10), "expected 80 mel channels")
    expect("transposed.pt", torch.randn(10, N_MELS), "transposed")
    expect("flat.pt", torch.randn(80), r"\[n_mels=80, frames\]")
    expect("empty.pt", torch.randn(N_MELS, 0), "empty")
    expect("nan.pt", torch.full((N_MELS, 3), float("nan")), "NaN or Inf")
    expect("inf.pt", torch.full((N_MELS, 3), float("inf")), "NaN or Inf")
    expect("int.pt", torch.ones(N_MELS, 3, dtype=torch.int64), "float")
    expect("dict.pt", {"mel": torch.randn(N_MELS, 3)}, "holds a dict, not a tensor")
    expect("obj.npy", np.array([{"a": 1}], dtype=object), "float array.*dtype object",
           writer=lambda o, p: np.save(p, o, allow_pickle=True))

    truncated = tmp_path / "truncated.pt"
    save_mel(truncated, torch.randn(N_MELS, 100))
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_mel(truncated, N_MELS)
    half_npy = tmp_path / "truncated.npy"
    save_mel(half_npy, torch.randn(N_MELS, 100))
    half_npy.write_bytes(half_npy.read_bytes()[:300])
    with pytest.raises(UserError, match="truncated"):
        load_mel(half_npy, N_MELS)

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Exploit(str(marker)), evil)  # torch.save pickles arbitrary objects
    with pytest.raises(UserError, match="not a tensor file"):
        load_mel(evil, N_MELS)
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit(str(marker)), protocol=2))  # legacy (non-zip) format
    with pytest.raises(UserError, match="not a tensor file|truncated or corrupt"):
        load_mel(raw, N_MELS)
    assert not marker.exists()

    with pytest.raises(UserError, match="no such mel file"):
        load_mel(tmp_path / "missing.pt", N_MELS)
    (tmp_path / "m.txt").write_text("1 2 3")
    with pytest.raises(UserError, match="expected .pt or .npy"):
        load_mel(tmp_path / "m.txt", N_MELS)
    with pytest.raises(UserError, match="expected .pt or .npy"):
        save_mel(tmp_path / "m.txt", torch.randn(N_MELS, 2))


# ------------------------------------------------------------------ statistics

def test_mel_stats_match_numpy() -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.normal(loc=rng.uniform(-8, 2, (N_MELS, 1)), scale=2.0, size=(N_MELS, n)).astype(np.float32)
              for n in (1, 50, 300, 7)]
    stats = MelStats(N_MELS)
    for c in chunks[:2]:
        stats.update(torch.from_numpy(c))
    other = MelStats(N_MELS)
    for c in chunks[2:]:
        other.update(c)
    other.update(np.zeros((N_MELS, 0)))
    stats.merge(other)
    everything = np.concatenate(chunks, axis=1).astype(np.float64)
    assert stats.count == everything.shape[1]
    np.testing.assert_allclose(stats.mean, everything.mean(axis=1), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.std(), everything.std(axis=1), rtol=1e-10)
    out = stats.to_dict()
    assert set(out) == {"mean", "std"} and out["mean"].dtype == torch.float32 and out["std"].shape == (N_MELS,)


def test_mel_stats_precision_with_large_offset() -> None:
    # float32 running sums would lose the variance here; the float64 pairwise update does not.
    stats = MelStats(2)
    rng = np.random.default_rng(1)
    data = 1e4 + rng.standard_normal((2, 20_000))
    for i in range(0, data.shape[1], 1000):
        stats.update(data[:, i:i + 1000])
    np.testing.assert_allclose(stats.std(), data.std(axis=1), rtol=1e-9)


def test_mel_stats_floor_and_errors() -> None:
    stats = MelStats(3)
    with pytest.raises(ValueError):
        stats.std()
    stats.update(np.full((3, 10), np.log(1e-5)))  # a channel that is always clamped
    assert (stats.std() == 1e-5).all()
    with pytest.raises(ValueError):
        stats.update(np.zeros((4, 2)))


def test_load_distrusts_the_file(tmp_path: Path) -> None:
    # Files that lie: each is one UserError naming the file, and nothing is allocated from a header.
    def refused(path: Path, match: str) -> None:
        with pytest.raises(UserError, match=match) as e:
            load_mel(path, N_MELS)
        assert str(path) in str(e.value) and "\n" not in str(e.value)

    (tmp_path / "zero.pt").write_bytes(b"")
    refused(tmp_path / "zero.pt", "empty file")
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": (N_MELS, 2**40)})
    (tmp_path / "huge.npy").write_bytes(buf.getvalue() + b"\0" * 4096)
    refused(tmp_path / "huge.npy", r"header promises shape \[80, 1099511627776\]")
    torch.save(torch.randn(N_MELS, 4).to_sparse(), tmp_path / "sparse.pt")
    refused(tmp_path / "sparse.pt", "sparse")
    torch.save(torch.full((N_MELS, 4), 1e30), tmp_path / "absurd.pt")
    refused(tmp_path / "absurd.pt", "beyond any log-mel convention")
    torch.save(torch.zeros(N_MELS, 4), tmp_path / "const.pt")
    refused(tmp_path / "const.pt", "constant")
    # Valid but unusual layouts load as they are.
    mel = torch.randn(N_MELS, 9)
    np.save(tmp_path / "f.npy", np.asfortranarray(mel.numpy().astype(">f8")))
    assert torch.allclose(load_mel(tmp_path / "f.npy", N_MELS), mel)
