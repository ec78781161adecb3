"""Exact PCM output: `save_audio` quantizes integer PCM itself (round half to even, clipped at
full scale), so a signal on a subtype's grid is written bit for bit, rounding has no bias, and
FLOAT/DOUBLE files keep every sample, beyond full scale too. The console scripts write through
it: the identity `waveglow-convert` gives a PCM_16 file back sample for sample, and
`waveglow-synthesize` writes the Python API's audio rounded to the nearest step; `waveglow-enhance`
keeps a FLOAT file's samples beyond full scale outside what it repairs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_script
from synth_helpers import active_model, random_mel

from waveglow.checkpoint import build_checkpoint, save_checkpoint
from waveglow.data.audio import PCM_BITS, quantize_pcm, read_audio, save_audio
from waveglow.errors import UserError
from waveglow.inference import Synthesizer

SR = 22050
# Every integer subtype libsndfile writes in the formats the toolkit writes.
CASES = [("wav", "PCM_U8"), ("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "PCM_32"),
         ("flac", "PCM_S8"), ("flac", "PCM_16"), ("flac", "PCM_24")]

pytestmark = pytest.mark.usefixtures("single_thread")


def codes_in(path: Path, bits: int) -> np.ndarray:
    """The integer codes a PCM file holds (libsndfile left-aligns narrower codes in its int containers)."""
    if bits > 16:
        return sf.read(path, dtype="int32")[0].astype(np.int64) >> (32 - bits)
    return sf.read(path, dtype="int16")[0].astype(np.int64) >> (16 - bits)


@pytest.mark.parametrize(("fmt", "subtype"), CASES)
def test_grid_signal_round_trips_bit_exactly(tmp_path: Path, fmt: str, subtype: str) -> None:
    bits = PCM_BITS[subtype]
    scale = 2 ** (bits - 1)
    k = np.random.default_rng(bits).integers(-scale, scale, 20_000)
    k[:4] = [-scale, scale - 1, 0, -1]  # both ends of the range and the codes around zero
    path = tmp_path / f"a.{fmt}"
    # float64 input: exact on every grid (PCM_32 needs more than float32's 24 bits).
    assert save_audio(path, k / scale, SR, subtype=subtype) == 0
    assert sf.info(str(path)).subtype == subtype
    np.testing.assert_array_equal(codes_in(path, bits), k)
    if bits <= 24:
        # float32 (what the models produce) holds these grids exactly; a tensor goes the same way,
        # and the toolkit's reader gives back the very floats that were written.
        x = torch.from_numpy((k / scale).astype(np.float32))
        save_audio(path, x, SR, subtype=subtype)
        np.testing.assert_array_equal(codes_in(path, bits), k)
        back, rate = read_audio(path)
        assert rate == SR and np.array_equal(back, x.numpy())


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24"])
def test_rounding_has_no_bias(tmp_path: Path, subtype: str) -> None:
    """Mean error over 1M random samples within 0.01 LSB of 0 (libsndfile's own conversion of
    float32 is about -0.5 LSB here), and no sample more than half a step off."""
    scale = 2.0 ** (PCM_BITS[subtype] - 1)
    x = np.random.default_rng(1).uniform(-0.99, 0.99, 1_000_000).astype(np.float32)
    save_audio(tmp_path / "r.wav", x, SR, subtype=subtype)
    err = codes_in(tmp_path / "r.wav", PCM_BITS[subtype]) - x.astype(np.float64) * scale
    assert abs(err.mean()) < 0.01, err.mean()
    assert np.abs(err).max() <= 0.5


def test_ties_round_to_even_and_full_scale_clips() -> None:
    ties = (np.arange(-4, 4) + 0.5) / 32768  # exactly half-way between two codes
    codes, clipped = quantize_pcm(ties, "PCM_16")
    np.testing.assert_array_equal(codes, [-4, -2, -2, 0, 0, 2, 2, 4])
    assert clipped == 0
    codes, clipped = quantize_pcm(np.array([1.5, 1.0, -1.0, -2.0, 32767.4 / 32768]), "PCM_16")
    np.testing.assert_array_equal(codes, [32767, 32767, -32768, -32768, 32767])
    assert clipped == 2  # 1.5 and -2.0 lie beyond full scale; +1.0 is the top code, not a clip


def test_integer_file_clips_and_counts(tmp_path: Path) -> None:
    x = np.array([0.0, 0.5, 1.5, -2.0, -0.25, np.nan, np.inf], dtype=np.float32)
    # 1.5 and -2.0 clip; NaN is written as 0 and +Inf as full scale (not counted: it is no sample value)
    assert save_audio(tmp_path / "c.wav", x, SR, subtype="PCM_24") == 2
    np.testing.assert_array_equal(codes_in(tmp_path / "c.wav", 24),
                                  [0, 2**22, 2**23 - 1, -(2**23), -(2**21), 0, 2**23 - 1])


@pytest.mark.parametrize(("subtype", "dtype"), [("FLOAT", np.float32), ("DOUBLE", np.float64)])
def test_float_files_keep_samples_beyond_full_scale(tmp_path: Path, subtype: str, dtype) -> None:
    x = np.array([1.5, -3.25, 0.1, 1.0000001, -1e-9, 7.0], dtype=dtype)
    assert save_audio(tmp_path / "f.wav", x, SR, subtype=subtype) == 0  # nothing clipped
    back = sf.read(tmp_path / "f.wav", dtype=dtype)[0]
    assert back.dtype == dtype and np.array_equal(back, x)


def test_a_subtype_the_format_cannot_hold_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"a FLAC file cannot hold subtype=FLOAT"):
        save_audio(tmp_path / "x.flac", np.zeros(10, np.float32), SR, subtype="FLOAT")
    with pytest.raises(UserError, match=r"a WAV file cannot hold subtype=PCM_S8"):
        save_audio(tmp_path / "x.wav", np.zeros(10, np.float32), SR, subtype="PCM_S8")
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model with random (not identity) couplings: no training needed for exact inverses."""
    model, cfg = active_model(seed=3)
    path = tmp_path_factory.mktemp("pcm") / "tiny.pt"
    save_checkpoint(path, build_checkpoint(model, cfg))
    return path


def test_identity_convert_is_identical_at_pcm16(checkpoint: Path, demo_root: Path, tmp_path: Path) -> None:
    """`waveglow-convert` with its identity settings: encode then decode is exact to float
    rounding (far below half a step), so every PCM_16 sample comes back as it was. Truncating
    writers give ~40% of the samples 1 LSB low."""
    src = demo_root / "wavs" / "DEMO001-0002.wav"
    run_script("waveglow-convert", f"checkpoint={checkpoint}", f"input={src}", f"output_dir={tmp_path}",
            "device=cpu", "format=PCM_16")
    a, b = sf.read(src, dtype="int16")[0], sf.read(tmp_path / src.name, dtype="int16")[0]
    assert sf.info(str(tmp_path / src.name)).subtype == "PCM_16"
    assert a.shape == b.shape and np.array_equal(a, b), int(np.count_nonzero(a != b))


def test_synthesize_writes_its_audio_rounded(checkpoint: Path, tmp_path: Path) -> None:
    """`waveglow-synthesize` writes the same audio at every format: the PCM_16 file is the FLOAT
    file's samples rounded to the nearest step, and the FLOAT file is the Python API's
    audio (to float rounding: the CLI runs on its own thread count)."""
    mel = random_mel(40, seed=5)
    torch.save(mel, tmp_path / "m.pt")
    out = {}
    for fmt in ("FLOAT", "PCM_16"):
        run_script("waveglow-synthesize", f"checkpoint={checkpoint}", f"input={tmp_path / 'm.pt'}",
                f"output_dir={tmp_path / fmt}", "device=cpu", "sigma=0.6", "seed=7", f"format={fmt}")
        out[fmt] = tmp_path / fmt / "m.wav"
        assert sf.info(str(out[fmt])).subtype == fmt
    audio = sf.read(out["FLOAT"], dtype="float32")[0]
    api = Synthesizer(checkpoint, device="cpu").from_mel(mel, sigma=0.6, seed=7, key="m").numpy()
    assert audio.shape == api.shape and np.abs(audio - api).max() < 1e-5
    want = np.clip(np.rint(audio.astype(np.float64) * 32768), -32768, 32767)
    np.testing.assert_array_equal(codes_in(out["PCM_16"], 16), want)


def test_enhance_keeps_float_samples_beyond_full_scale(checkpoint: Path, tmp_path: Path) -> None:
    """A FLOAT recording louder than full scale (a 1.2-amplitude tone) with one loud noise burst:
    `waveglow-enhance` repairs the burst and writes every other sample as it was, the thousands
    beyond ±1 included (a writer that clips FLOAT files changes them)."""
    sr = SR
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * sr)) / sr
    audio = (1.2 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    at = int(0.7 * sr)
    audio[at: at + 441] += 3.0 * rng.standard_normal(441).astype(np.float32)
    src = tmp_path / "in" / "loud.wav"
    src.parent.mkdir()
    sf.write(src, audio, sr, subtype="FLOAT")
    out = tmp_path / "out"
    # A high threshold: only the burst stands out (the tone is what the rest of the file is).
    run_script("waveglow-enhance", f"checkpoint={checkpoint}", f"input={src}", f"output_dir={out}", "device=cpu",
            "threshold=30", "report=report.json")
    doc = json.loads((out / "report.json").read_text())
    regions = [r for f in doc["files"] for r in f["regions"]]
    assert any(r["start_s"] - 0.03 <= 0.7 <= r["end_s"] for r in regions), regions
    written = sf.read(out / "loud.wav", dtype="float32")[0]
    assert sf.info(str(out / "loud.wav")).subtype == "FLOAT" and written.shape == audio.shape
    margin = round(doc["margin_ms"] * sr / 1000)
    repaired = np.zeros(audio.size, dtype=bool)
    for r in regions:
        repaired[max(0, round(r["start_s"] * sr) - margin): round(r["end_s"] * sr) + margin + 1] = True
    assert (written != audio)[repaired].any()
    assert ((np.abs(audio) > 1) & ~repaired).sum() > 5000
    assert np.array_equal(written[~repaired], audio[~repaired])


def test_public_api_writes_the_same_way(tmp_path: Path) -> None:
    import waveglow

    x = (np.arange(-50, 50) + 0.5).astype(np.float64) / 32768  # ties: rounded to even codes
    assert waveglow.save_audio(tmp_path / "p.wav", x, SR) == 0
    np.testing.assert_array_equal(codes_in(tmp_path / "p.wav", 16), np.rint(x * 32768))
