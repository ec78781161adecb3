"""NVIDIA/waveglow import: agreement with an independent reference, and hostile or broken files.

The fixtures are written by `tests/nvidia_reference.py` (its own implementation of the
reference network, pickled under the names `glow.*` / `glow_old.*`), in both layouts and both
torch container formats. The imported model must reproduce the reference's log-likelihood to
1e-4 relative; hostile pickles must be refused with nothing executed (a sentinel file that a
payload would create must never appear).
"""

from __future__ import annotations

import functools
import io
import math
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import run_cli
from nvidia_reference import (
    build_reference,
    log_prob_from_loss,
    reference_loss,
    save_reference,
)

from waveglow.checkpoint import load_checkpoint, load_model
from waveglow.config import AudioConfig, to_dict
from waveglow.errors import UserError
from waveglow.inference.synthesizer import Synthesizer
from waveglow.interop import InertObject, import_nvidia, read_pickle

B, T, FRAMES = 2, 2048, 9  # T = 8 frames of audio; one spare frame, cut like the reference

# name: (reference model settings, how it is saved, expected model config entries)
CASES = {
    # glow.WaveGlow with the fused cond_layer, torch's zip format.
    "reference": (dict(), dict(),
                  dict(condition_half="first", n_flows=4, n_early_every=2, n_early_size=2)),
    # glow_old.WaveGlow with per-layer cond_layers, pre-1.6 stream format, torch<1.3 attributes.
    "legacy": (dict(legacy=True, wn_style="per_layer", n_flows=6, n_mels=32),
               dict(stream_format=True, old_torch_attrs=True),
               dict(condition_half="alternate", n_flows=6, n_early_every=4, n_early_size=2)),
    # The oldest glow_old files: per-layer cond_layers and separate res_layers / skip_layers.
    "oldest": (dict(legacy=True, wn_style="split", n_flows=6, n_mels=16, n_layers=3),
               dict(), dict(condition_half="alternate", n_flows=6, n_early_every=4)),
    # A glow.WaveGlow saved before the cond layers were fused: fused on import, not alternating.
    "reference_per_layer": (dict(wn_style="per_layer", n_mels=16, n_group=4, n_early_every=3,
                                 n_flows=4), dict(stream_format=True),
                            dict(condition_half="first", n_group=4, n_early_every=3)),
}


def _reference_numbers(ref, n_mels: int, seed: int = 7) -> SimpleNamespace:
    """Inputs and the reference's float64 log_prob (per item) and zero-noise synthesis."""
    g = torch.Generator().manual_seed(seed)
    audio = torch.rand(B, T, generator=g) * 1.6 - 0.8
    mel = torch.randn(B, n_mels, FRAMES, generator=g) - 4.0
    ref.double()
    with torch.no_grad():
        # The reference's loss is a batch mean: evaluate it per item to get per-item numbers.
        log_prob = torch.stack([
            log_prob_from_loss(reference_loss(ref(mel[i:i + 1].double(), audio[i:i + 1].double())), T)
            for i in range(B)])
        batch_loss = reference_loss(ref(mel.double(), audio.double()))
        infer0 = ref.infer(mel.double(), sigma=0.0)
    return SimpleNamespace(audio=audio, mel=mel, log_prob=log_prob, batch_loss=batch_loss,
                           infer0=infer0)


def _build_case(name: str, tmp_path_factory) -> SimpleNamespace:
    """An NVIDIA-structured file, the reference's numbers for it, and its Python-API import."""
    build_kw, save_kw, expected = CASES[name]
    d = tmp_path_factory.mktemp(f"nvidia_{name}")
    ref = build_reference(seed=len(name), **build_kw)
    path = save_reference(ref, d / f"{name}.pt", iteration=4321, **save_kw)
    numbers = _reference_numbers(ref, build_kw.get("n_mels", 80))
    out = d / "imported.pt"
    state = import_nvidia(path, out)
    return SimpleNamespace(name=name, path=path, ref=ref, out=out, state=state,
                           expected=expected, **vars(numbers))


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """Builds each case once per module, on first use."""
    built: dict[str, SimpleNamespace] = {}

    def get(name: str) -> SimpleNamespace:
        if name not in built:
            built[name] = _build_case(name, tmp_path_factory)
        return built[name]

    return get


@pytest.fixture(params=list(CASES))
def case(request, cases):
    return cases(request.param)


@pytest.fixture
def legacy_case(cases):
    return cases("legacy")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs() / b.double().abs()).max().item()


def test_import_reproduces_reference_log_prob(case):
    model = load_model(case.out)
    cfg = case.state["config"]["model"]
    for key, value in case.expected.items():
        assert cfg[key] == value, key
    assert case.state["step"] == 4321
    assert load_checkpoint(case.out)["source"]["kind"] == "nvidia-waveglow"
    with torch.no_grad():
        ours = model.log_prob(case.audio, case.mel)
    rel = _rel(ours, case.log_prob)
    print(f"{case.name}: relative log_prob difference {rel:.2e}")
    assert rel <= 1e-4
    # The documented relation between the reference's batch loss and our log_prob.
    loss_from_ours = -ours.double().mean().item() / T - 0.5 * math.log(2 * math.pi)
    assert abs(loss_from_ours - case.batch_loss.item()) <= 1e-4 * abs(case.batch_loss.item()) + 1e-6
    audio_cfg = case.state["config"]["audio"]
    assert audio_cfg["n_mels"] == case.mel.shape[1] and audio_cfg["hop_length"] == 256


def test_audio_settings_typed_or_default(legacy_case, tmp_path):
    """Default audio = AudioConfig(); a typed AudioConfig is kept; n_mels comes from the weights."""
    default = import_nvidia(legacy_case.path, tmp_path / "a.pt")["config"]["audio"]
    assert default == {**to_dict(AudioConfig()), "n_mels": legacy_case.mel.shape[1]}
    typed = import_nvidia(legacy_case.path, tmp_path / "b.pt",
                          audio=AudioConfig(sampling_rate=16000, fmax=7000.0))["config"]["audio"]
    assert typed["sampling_rate"] == 16000 and typed["fmax"] == 7000.0
    assert typed["n_mels"] == legacy_case.mel.shape[1]


def test_wrong_layout_is_detectably_wrong(legacy_case, tmp_path):
    """Control: the comparison is sharp enough to catch a layout mistake (no alternation)."""
    out = tmp_path / "wrong.pt"
    import_nvidia(legacy_case.path, out, layout="reference")
    with torch.no_grad():
        ours = load_model(out).log_prob(legacy_case.audio, legacy_case.mel)
    assert _rel(ours, legacy_case.log_prob) > 1e-2


def test_imported_model_inverts_and_matches_reference_synthesis(case):
    model = load_model(case.out)
    with torch.no_grad():
        z = model.encode(case.audio, case.mel)
        back = model.decode(z, case.mel)
        x0 = model.infer(case.mel, sigma=0.0)
    assert (back - case.audio).abs().max().item() <= 1e-4
    # sigma = 0 removes the noise: the decode path and the 768-sample upsampler cut must agree.
    assert x0.shape == (B, 256 * FRAMES)
    scale = case.infer0.abs().max().item()
    assert (x0.double() - case.infer0).abs().max().item() <= 1e-4 * scale


def test_nothing_from_nvidia_is_imported(case):
    obj, container = read_pickle(case.path)
    assert container == ("stream" if CASES[case.name][1].get("stream_format") else "zip")
    assert isinstance(obj["model"], InertObject)
    expected = "glow_old.WaveGlow" if CASES[case.name][0].get("legacy") else "glow.WaveGlow"
    assert obj["model"].global_name == expected
    assert "glow" not in sys.modules and "glow_old" not in sys.modules


def test_synthesizer_runs_on_imported_checkpoint(legacy_case):
    case = legacy_case
    synth = Synthesizer(case.out, device="cpu")
    audio = synth.from_mel(case.mel[0], sigma=0.0)
    assert audio.shape == (256 * FRAMES,)
    scale = case.infer0.abs().max().item()
    assert (audio.double() - case.infer0[0]).abs().max().item() <= 1e-4 * scale


def test_bare_state_dict_with_explicit_layout(legacy_case, tmp_path):
    case = legacy_case
    # float64 weights (the fixture's reference is float64 by now) are imported as float32.
    src = tmp_path / "state_dict.pt"
    torch.save({"state_dict": case.ref.state_dict(), "iteration": 7}, src)
    out = tmp_path / "out.pt"
    state = import_nvidia(src, out, layout="legacy")
    assert state["config"]["model"]["condition_half"] == "alternate" and state["step"] == 7
    with torch.no_grad():
        assert _rel(load_model(out).log_prob(case.audio, case.mel), case.log_prob) <= 1e-4


def test_cli_import(legacy_case, tmp_path):
    case = legacy_case
    out = tmp_path / "ckpt" / "nvidia.pt"
    run_cli("waveglow-import-nvidia", f"input={case.path}", f"output={out}")
    assert (out.parent / f"{out.stem}.import.yaml").is_file()
    model = load_model(out)
    assert model.config["model"]["condition_half"] == "alternate"
    assert load_checkpoint(out)["step"] == 4321
    with torch.no_grad():
        assert _rel(model.log_prob(case.audio, case.mel), case.log_prob) <= 1e-4


# ---------------------------------------------------------------------------------- hostile files


class _Payload:
    """Unpickling this the usual way runs `os.system(command)`."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


class _Via:
    """Unpickling this the usual way calls `fn(*args)` (fn pickled by reference)."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _touch(path: Path) -> str:
    return f"touch {path}"


def _write_hostile(kind: str, path: Path, sentinel: Path) -> Path:
    """A file that, loaded the usual way (torch.load(weights_only=False)), creates `sentinel`."""
    payload = _Payload(_touch(sentinel))
    if kind == "whole_file":
        torch.save(payload, path)
    elif kind == "in_model_entry":
        torch.save({"model": payload, "iteration": 1, "learning_rate": 1e-4}, path)
    elif kind == "in_model_entry_stream":
        torch.save({"model": payload, "iteration": 1}, path, _use_new_zipfile_serialization=False)
    elif kind == "plain_pickle_protocol4":
        path.write_bytes(pickle.dumps({"model": payload}, protocol=4))
    elif kind == "inside_waveglow_module":
        # A genuine-looking WaveGlow with the payload hidden in one submodule's attributes.
        ref = build_reference(n_mels=4, n_flows=2, n_channels=4, n_layers=1, seed=3)
        ref.WN[1].__dict__["n_channels"] = payload
        save_reference(ref, path)
    else:  # pragma: no cover
        raise ValueError(kind)
    return path


HOSTILE = ["whole_file", "in_model_entry", "in_model_entry_stream", "plain_pickle_protocol4",
           "inside_waveglow_module"]


@pytest.mark.parametrize("kind", HOSTILE)
def test_malicious_pickle_is_refused_and_nothing_runs(kind, tmp_path):
    sentinel = tmp_path / "PWNED"
    src = _write_hostile(kind, tmp_path / "evil.pt", sentinel)
    out = tmp_path / "out.pt"
    with pytest.raises(UserError) as err:
        import_nvidia(src, out)
    msg = str(err.value)
    assert str(src) in msg and f"{os.system.__module__}.system" in msg and "refused" in msg
    assert not sentinel.exists()
    assert not out.exists() and not list(tmp_path.glob(".out.pt.*"))


def test_malicious_payload_is_live(tmp_path):
    """Control: the same file loaded the usual way does run the payload."""
    sentinel = tmp_path / "RAN"
    src = _write_hostile("in_model_entry", tmp_path / "evil.pt", sentinel)
    torch.load(src, weights_only=False)
    assert sentinel.exists()


@pytest.mark.parametrize("fn,args,name", [
    (eval, ("1",), "builtins.eval"),
    (exec, ("x = 1",), "builtins.exec"),
    (getattr, ("abc", "upper"), "builtins.getattr"),
    (subprocess.Popen, (["true"],), "subprocess.Popen"),
    (functools.partial(os.system, "true"), (), "functools.partial"),
    (torch.load, ("/nonexistent",), "torch.serialization.load"),
])
def test_other_globals_are_refused(fn, args, name, tmp_path):
    src = tmp_path / "bad.pt"
    torch.save({"model": _Via(fn, *args), "iteration": 1}, src)
    with pytest.raises(UserError, match=name.replace(".", r"\.")):
        import_nvidia(src, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


class _Tensor:
    """Pickles as a tensor rebuild over a 4-element float storage, with any geometry."""

    def __init__(self, size, stride, offset=0) -> None:
        self.size, self.stride, self.offset = size, stride, offset

    def __reduce__(self):
        storage = torch.storage.TypedStorage(wrap_storage=torch.zeros(4).untyped_storage(),
                                             dtype=torch.float32, _internal=True)
        return (torch._utils._rebuild_tensor_v2,
                (storage, self.offset, self.size, self.stride, False, OrderedDict()))


@pytest.mark.parametrize("tensor,expected", [
    (_Tensor((10**6, 10**6), (0, 0)), "elements in a storage of 4"),  # a memory bomb
    (_Tensor((4,), (1,), offset=2), "past the end"),
    (_Tensor((2, 2), (-1, 1)), "invalid tensor geometry"),
])
def test_tensor_geometry_is_checked(tensor, expected, tmp_path):
    src = tmp_path / "geometry.pt"
    torch.save({"model": {"upsample.weight": tensor}}, src)
    with pytest.raises(UserError, match=expected):
        import_nvidia(src, tmp_path / "out.pt")


def test_stream_storage_larger_than_file_is_refused(tmp_path):
    """A stream-format file whose storage claims 4 TB is refused before any allocation."""
    marker = object()

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is marker:
                return ("storage", torch.FloatStorage, "0", "cpu", 10**12, None)
            return None

    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    tensor = _Via(torch._utils._rebuild_tensor_v2, marker, 0, (4,), (1,), False, OrderedDict())
    Writer(buf, protocol=2).dump({"model": {"upsample.weight": tensor}})
    pickle.dump(["0"], buf, protocol=2)
    src = tmp_path / "bomb.pt"
    src.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="more data than the file holds"):
        import_nvidia(src, tmp_path / "out.pt")


def test_pickle_cannot_modify_allowed_functions(tmp_path):
    """BUILD aimed at an allowed callable (to set e.g. its __defaults__) is refused."""
    import waveglow.interop.pickle_reader as nv

    key = b"__defaults__"
    evil = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n"  # GLOBAL (allowed)
            b"N}X" + len(key).to_bytes(4, "little") + key + b")s\x86b.")  # BUILD (None, {...})
    src = tmp_path / "build.pt"
    src.write_bytes(evil)
    before = nv._rebuild_tensor_v2.__defaults__
    with pytest.raises(UserError, match="unexpected state"):
        import_nvidia(src, tmp_path / "out.pt")
    assert nv._rebuild_tensor_v2.__defaults__ == before


def test_cli_refuses_malicious_file(tmp_path):
    sentinel = tmp_path / "PWNED"
    src = _write_hostile("in_model_entry_stream", tmp_path / "evil.pt", sentinel)
    out = tmp_path / "out" / "imported.pt"
    proc = run_cli("waveglow-import-nvidia", f"input={src}", f"output={out}", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    assert "system" in lines[0] and str(src) in lines[0]
    assert not sentinel.exists() and not out.exists() and not out.parent.exists()


# ---------------------------------------------------------------------------------- broken files


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    """A small valid NVIDIA-structured file in each container format."""
    d = tmp_path_factory.mktemp("small")
    ref = build_reference(n_mels=4, n_flows=2, n_channels=4, n_layers=1, seed=5)
    return {"zip": save_reference(ref, d / "zip.pt"),
            "stream": save_reference(ref, d / "stream.pt", stream_format=True)}


def _broken(kind: str, d: Path, small: dict[str, Path]) -> tuple[Path, str]:
    """(file, expected text in the error)."""
    p = d / f"{kind}.pt"
    if kind == "text":
        p.write_text("this is not a checkpoint\n")
        return p, "not a readable PyTorch checkpoint"
    if kind == "empty":
        p.write_bytes(b"")
        return p, "empty"
    if kind.startswith("truncated"):
        fmt, frac = kind.split("_")[1], float(kind.split("_")[2]) / 100
        data = small[fmt].read_bytes()
        p.write_bytes(data[: int(len(data) * frac)])
        return p, "truncated"
    if kind == "zip_missing_storage":
        with zipfile.ZipFile(small["zip"]) as zin, zipfile.ZipFile(p, "w") as zout:
            for info in zin.infolist():
                if not info.filename.endswith("/data/0"):
                    zout.writestr(info, zin.read(info.filename))
        return p, "corrupt"
    if kind == "no_model":
        torch.save({"iteration": 3, "weights": [1, 2, 3]}, p)
        return p, "holds no WaveGlow"
    if kind == "missing_weight":
        ref = build_reference(n_mels=4, n_flows=2, n_channels=4, n_layers=1, seed=5)
        sd = ref.state_dict()
        del sd["WN.1.in_layers.0.weight_v"]
        torch.save({"state_dict": sd}, p)
        return p, "WN.1.in_layers.0"
    if kind == "our_checkpoint":
        torch.save({"format_version": 1, "model": {}, "config": {"model": {}}}, p)
        return p, "already a checkpoint"
    raise ValueError(kind)  # pragma: no cover


BROKEN = ["text", "empty", "truncated_zip_50", "truncated_zip_97", "truncated_stream_30",
          "truncated_stream_90", "zip_missing_storage", "no_model", "missing_weight",
          "our_checkpoint"]


@pytest.mark.parametrize("kind", BROKEN)
def test_broken_input_is_a_user_error(kind, tmp_path, small_files):
    src, expected = _broken(kind, tmp_path, small_files)
    out = tmp_path / "out.pt"
    with pytest.raises(UserError) as err:
        import_nvidia(src, out)
    msg = str(err.value)
    assert "\n" not in msg and str(src) in msg and expected in msg, msg
    assert not out.exists()


def test_small_files_import(small_files, tmp_path):
    """The sources of the broken-file cases are themselves fine (so the cases test the damage)."""
    for fmt, src in small_files.items():
        import_nvidia(src, tmp_path / f"{fmt}.pt")
        assert load_model(tmp_path / f"{fmt}.pt").n_flows == 2
