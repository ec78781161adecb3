"""Audio presets (`audio=16k|22k|24k|44k|48k`): consistent settings, every model builds at every rate."""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from waveglow.config import to_dict
from waveglow.errors import UserError
from waveglow.mel import MelSpectrogram
from waveglow.model import WaveGlow

RATES = {"16k": 16000, "22k": 22050, "24k": 24000, "44k": 44100, "48k": 48000}
MODELS = ("tiny", "squeeze", "waveglow_256", "waveglow_512")


@pytest.fixture(scope="module")
def presets() -> dict[str, dict]:
    return {name: to_dict(compose("waveglow_preprocess", f"audio={name}").audio) for name in ("default", *RATES)}


def test_presets_are_consistent(presets: dict[str, dict]) -> None:
    assert presets["22k"] == presets["default"]  # 22k is today's default, which stays the default
    assert to_dict(compose("waveglow_preprocess").audio) == presets["default"]
    for name, rate in RATES.items():
        a = presets[name]
        assert a["sampling_rate"] == rate and a["n_mels"] == 80 and a["fmin"] == 0.0
        assert a["win_length"] == a["n_fft"] == 4 * a["hop_length"]  # 75% overlap, as the reference
        assert 10 <= 1000 * a["hop_length"] / rate <= 16  # frames of 10-16 ms
        assert a["fmax"] <= rate / 2 and a["fmax"] >= 8000.0
        mel = MelSpectrogram.from_config(a)  # builds (librosa would warn about empty filters)
        assert (mel.mel_basis.sum(1) > 0).all()


@pytest.mark.parametrize("model", MODELS)
def test_every_model_builds_at_every_rate(model: str, presets: dict[str, dict], single_thread: None) -> None:
    cfg = to_dict(compose("waveglow_train", f"model={model}", "data=demo").model)
    if model.startswith("waveglow_"):
        # The rate-dependent parts (upsampler, squeeze) do not depend on the conditioner's width.
        cfg["wn"]["n_channels"] = 16
    for name, a in presets.items():
        m = WaveGlow(cfg, n_mels=a["n_mels"], hop_length=a["hop_length"])
        T = 2 * a["hop_length"] * 4
        mel = torch.randn(1, a["n_mels"], T // a["hop_length"] + 1)
        with torch.no_grad():
            assert m.infer(mel[:, :, :-1], sigma=0.5).shape == (1, T), name


def test_refused_combinations_name_the_setting() -> None:
    squeeze = to_dict(compose("waveglow_train", "model=squeeze", "data=demo").model)
    with pytest.raises(UserError, match=r"upsample=repeat needs hop_length \(300\) to be a multiple of n_group \(128\)"):
        WaveGlow(squeeze, n_mels=80, hop_length=300)
    tiny = to_dict(compose("waveglow_train", "model=tiny", "model.upsample_kernel=256", "data=demo").model)
    with pytest.raises(UserError, match=r"upsample_kernel \(256\) must be >= hop_length \(512\)"):
        WaveGlow(tiny, n_mels=80, hop_length=512)
