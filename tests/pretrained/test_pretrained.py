"""Pretrained models by name, offline: files in every registry format (written by
`tests/nvidia_reference.py`) served from a loopback HTTP server, downloaded into a temporary
`WAVEGLOW_HOME`, checked, converted and run."""

from __future__ import annotations

import hashlib
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from conftest import run_cli
from loopback_http import LoopbackServer
from nvidia_reference import build_reference, save_reference

from waveglow.checkpoint import load_model
from waveglow.errors import UserError
from waveglow.interop import import_nvidia
from waveglow.pretrained import Settings, find, get, load_registry, read_registry, resolve
from waveglow.pretrained.archive import extract_model

FRAMES = 6
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    """One small reference WaveGlow saved in each layout, its weights exact in fp16 so that every
    layout holds the same numbers; plus the baseline checkpoint and its log-likelihood."""
    d = tmp_path_factory.mktemp("remote")
    ref = build_reference(wn_style="per_layer", n_flows=4, n_layers=2, n_channels=16)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(p.half().float())
    state = ref.state_dict()
    out = {"pickle": save_reference(ref, d / "nvidia_pickle.pt")}
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, d / "sd_module.pth")
    out["state_dict_module"] = d / "sd_module.pth"
    torch.save({"state_dict": dict(state)}, d / "sd_plain.pt")
    out["state_dict_plain"] = d / "sd_plain.pt"
    fp16 = d / "nvidia_waveglow256pyt_fp16.pt"
    torch.save({"state_dict": {f"module.{k}": v.half() for k, v in state.items()}}, fp16)
    out["fp16"] = fp16
    with zipfile.ZipFile(d / "release.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(fp16, "waveglow_ckpt_amp_256/nvidia_waveglow256pyt_fp16.pt")
        zf.writestr("waveglow_ckpt_amp_256/README.txt", "release notes\n")
    out["zip"] = d / "release.zip"
    baseline = d / "baseline.pt"
    import_nvidia(out["pickle"], baseline)
    out["waveglow"] = baseline
    g = torch.Generator().manual_seed(3)
    mel = torch.randn(1, 80, FRAMES, generator=g)
    audio = 0.1 * torch.randn(1, 256 * FRAMES, generator=g)
    with torch.no_grad():
        log_prob = load_model(baseline).log_prob(audio, mel)
    return {"paths": out, "mel": mel, "audio": audio, "log_prob": log_prob}


FORMAT = {"pickle": "nvidia", "state_dict_module": "nvidia", "state_dict_plain": "nvidia", "fp16": "nvidia",
          "zip": "zip", "waveglow": "waveglow"}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry(tmp_path: Path, entries: list[dict]) -> Path:
    path = tmp_path / "team.yaml"
    path.write_text(yaml.safe_dump({"models": entries}))
    return path


def _entry(name: str, url: str, fmt: str, path: Path | None = None, pin: bool = True, **extra) -> dict:
    e = {"name": name, "url": url, "format": fmt, "layout": "reference", "description": f"test {name}",
         "sha256": _sha(path) if pin and path else None, "size": path.stat().st_size if pin and path else None}
    if fmt == "waveglow":
        e.pop("layout")
    return {**e, **extra}


@pytest.fixture
def servers():
    started: list[LoopbackServer] = []

    def start(path: Path, **kwargs) -> LoopbackServer:
        started.append(LoopbackServer(path.read_bytes(), name=path.name, **kwargs))
        return started[-1]

    yield start
    for s in started:
        s.close()


def _settings(tmp_path: Path, registry: Path, **kw) -> Settings:
    return Settings(home=tmp_path / "home", registry=registry, progress=False, **kw)


def _close(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("layout", list(FORMAT))
def test_every_format_downloads_converts_and_runs(layout, files, servers, tmp_path):
    src = files["paths"][layout]
    server = servers(src)
    reg = _registry(tmp_path, [_entry("m", server.url, FORMAT[layout], src)])
    settings = _settings(tmp_path, reg)
    ckpt = get(find("m", load_registry(reg)), settings)
    assert ckpt == tmp_path / "home" / "pretrained" / "m" / "model.pt"
    model = load_model(ckpt)
    with torch.no_grad():
        got = model.log_prob(files["audio"], files["mel"])
    assert _close(got, files["log_prob"]) <= 1e-5
    assert all(t.dtype == torch.float32 for t in model.state_dict().values())
    record = json.loads((ckpt.parent / "model.json").read_text())
    assert record["sha256"] == _sha(src) and record["sha256_published"]
    assert not (ckpt.parent / "download").exists()  # the raw download is not kept
    from waveglow.inference.synthesizer import Synthesizer

    audio = Synthesizer(ckpt, device="cpu").from_mel(files["mel"][0], sigma=0.0)
    assert audio.shape == (256 * FRAMES,) and torch.isfinite(audio).all()


def test_resumes_after_a_dropped_connection(files, servers, tmp_path, monkeypatch):
    monkeypatch.setattr("waveglow.data.download.time.sleep", lambda s: None)
    src = files["paths"]["zip"]
    server = servers(src, truncate_first=True)
    reg = _registry(tmp_path, [_entry("z", server.url, "zip", src)])
    ckpt = get(find("z", load_registry(reg)), _settings(tmp_path, reg))
    assert server.ranges[0] is None and server.ranges[1] == f"bytes={src.stat().st_size // 2}-"
    with torch.no_grad():
        assert _close(load_model(ckpt).log_prob(files["audio"], files["mel"]), files["log_prob"]) <= 1e-5


@pytest.mark.parametrize("wrong", ["size", "sha256"])
def test_wrong_size_or_checksum_caches_nothing(wrong, files, servers, tmp_path):
    src = files["paths"]["pickle"]
    server = servers(src)
    e = _entry("w", server.url, "nvidia", src)
    e[wrong] = e["size"] + 1 if wrong == "size" else "0" * 64
    reg = _registry(tmp_path, [e])
    with pytest.raises(UserError, match="size" if wrong == "size" else "sha256 mismatch") as info:
        get(find("w", load_registry(reg)), _settings(tmp_path, reg))
    assert "\n" not in str(info.value)
    home = tmp_path / "home"
    assert not [p for p in home.rglob("*") if p.is_file() and p.name != ".lock"]  # no model, record or .part


def test_concurrent_first_uses_download_once(files, servers, tmp_path):
    """The ranks of a training run asking for the same model at once: one downloads, the others
    wait for it and load the same file."""
    from concurrent.futures import ThreadPoolExecutor

    src = files["paths"]["pickle"]
    server = servers(src)
    reg = _registry(tmp_path, [_entry("p", server.url, "nvidia", src)])
    settings = _settings(tmp_path, reg)
    entry = find("p", load_registry(reg))
    with ThreadPoolExecutor(3) as pool:
        paths = list(pool.map(lambda _: get(entry, settings), range(3)))
    assert len(set(paths)) == 1 and len(server.ranges) == 1


def test_unpublished_checksum_is_recorded_then_verified(files, servers, tmp_path, monkeypatch, caplog):
    src = files["paths"]["state_dict_module"]
    server = servers(src)
    reg = _registry(tmp_path, [_entry("u", server.url, "nvidia", src, pin=False)])
    settings = _settings(tmp_path, reg)
    with caplog.at_level("WARNING", logger="waveglow"):
        ckpt = get(find("u", load_registry(reg)), settings)
    assert _sha(src) in caplog.text and "no published checksum" in caplog.text
    record = json.loads((ckpt.parent / "model.json").read_text())
    assert record["sha256"] == _sha(src) and not record["sha256_published"]
    # The server now hands out other bytes: a fresh download is checked against the recorded sha256.
    ckpt.unlink()
    server.payload = files["paths"]["state_dict_plain"].read_bytes()
    with pytest.raises(UserError, match="sha256 mismatch"):
        get(find("u", load_registry(reg)), settings)
    assert not ckpt.exists()


def test_cache_reuse_with_the_server_stopped_and_tamper_check(files, servers, tmp_path, monkeypatch):
    src = files["paths"]["fp16"]
    server = servers(src)
    reg = _registry(tmp_path, [_entry("c", server.url, "nvidia", src)])
    first = get(find("c", load_registry(reg)), _settings(tmp_path, reg))
    server.close()
    monkeypatch.setenv("WAVEGLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WAVEGLOW_REGISTRY", str(reg))
    import waveglow

    model = waveglow.load_model("pretrained:c")  # the public API, settings from the environment
    with torch.no_grad():
        assert _close(model.log_prob(files["audio"], files["mel"]), files["log_prob"]) <= 1e-5
    data = bytearray(first.read_bytes())
    data[len(data) // 2] ^= 0xFF
    first.write_bytes(bytes(data))
    with pytest.raises(UserError, match="changed since it was downloaded"):
        resolve("pretrained:c", _settings(tmp_path, reg))


def test_offline_and_unreachable_are_one_line(files, tmp_path):
    src = files["paths"]["pickle"]
    reg = _registry(tmp_path, [_entry("o", "http://127.0.0.1:9/nvidia.pt", "nvidia", src)])
    env = {"WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_REGISTRY": str(reg), "WAVEGLOW_OFFLINE": "1"}
    proc = run_cli("waveglow-synthesize", "checkpoint=pretrained:o", f"input={tmp_path}/m.pt",
                   f"output_dir={tmp_path}/out", check=False, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: pretrained:o: not in the cache") and "waveglow-pretrained get o" in line
    assert "Traceback" not in proc.stderr
    # Network on, nothing listening on the port: the same advice, no traceback, no hang.
    with pytest.raises(UserError, match="cannot download .*waveglow-pretrained get o"):
        get(find("o", load_registry(reg)), _settings(tmp_path, reg, timeout=5.0))
    assert not (tmp_path / "home" / "pretrained" / "o" / "model.pt").exists()


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=method)
    return path


def _lying_zip(path: Path, real: bytes, declared: int) -> Path:
    """A stored (uncompressed) member whose headers declare `declared` bytes."""
    _zip(path, {"model.pt": real}, zipfile.ZIP_STORED)
    data = bytearray(path.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)    # local header: uncompressed size
    struct.pack_into("<I", data, central + 24, declared)  # central directory: uncompressed size
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind,message", [
    ("dotdot", "has a path with '..'"),
    ("absolute", "has an absolute path"),
    ("bomb", "likely zip bomb"),
    ("declared_short", "holds more data|Bad CRC|cannot read"),
    ("declared_long", "declares|Bad CRC"),
    ("several", "expected exactly one model file, found a.pt, b/c.pth"),
    ("none", "no .pt/.pth/.ckpt/.bin file"),
])
def test_malicious_zips_are_refused(kind, message, files, tmp_path, servers):
    good = files["paths"]["fp16"].read_bytes()
    z = tmp_path / "evil.zip"
    if kind == "dotdot":
        _zip(z, {"../../escaped.pt": good})
    elif kind == "absolute":
        _zip(z, {"/tmp/escaped.pt": good})
    elif kind == "bomb":
        _zip(z, {"model.pt": bytes(64 << 20)})  # 64 MiB of zeros: about 1000:1
    elif kind == "declared_short":
        _lying_zip(z, good, len(good) // 2)
    elif kind == "declared_long":
        _lying_zip(z, good, len(good) * 2)
    elif kind == "several":
        _zip(z, {"a.pt": good, "b/c.pth": good})
    else:
        _zip(z, {"notes.txt": b"hello"})
    server = servers(z)
    reg = _registry(tmp_path, [_entry("evil", server.url, "zip", z)])
    with pytest.raises(UserError, match=message) as info:
        get(find("evil", load_registry(reg)), _settings(tmp_path, reg))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "home" / "pretrained" / "evil" / "model.pt").exists()
    assert not list(tmp_path.parent.rglob("escaped.pt")) and not Path("/tmp/escaped.pt").exists()
    assert not (tmp_path / "home" / "pretrained" / "evil" / "download").exists()


def test_extract_model_names_the_member(files, tmp_path):
    good = files["paths"]["fp16"].read_bytes()
    z = _zip(tmp_path / "two.zip", {"a.pt": good, "b/c.pth": b"other"})
    (tmp_path / "out").mkdir()
    got = extract_model(z, tmp_path / "out", member="a.pt")
    assert got == tmp_path / "out" / "a.pt" and got.read_bytes() == good
    with pytest.raises(UserError, match="has no member 'x.pt'"):
        extract_model(z, tmp_path / "out", member="x.pt")


def test_registry_entries_are_checked(tmp_path):
    bad = _registry(tmp_path, [{"name": "x", "url": "http://h/x.pt", "format": "nvidia", "sha256": "abc"}])
    with pytest.raises(UserError, match=r"team.yaml: models\[0\] \(x\)\.sha256: expected 64 hex digits"):
        read_registry(bad)
    bad = _registry(tmp_path, [{"name": "x", "url": "http://h/x.pt", "format": "onnx"}])
    with pytest.raises(UserError, match=r"\.format: expected one of nvidia, zip, waveglow"):
        read_registry(bad)
    with pytest.raises(UserError, match="did you mean nvidia_256"):
        find("nvidia_265", load_registry())
    shipped = load_registry()
    assert {"nvidia_hub_fp32", "nvidia_256"} <= set(shipped)
    assert shipped["nvidia_256"].format == "zip" and shipped["nvidia_256"].member == "nvidia_waveglow256pyt_fp16.pt"


@pytest.mark.slow
def test_cli_list_get_then_synthesize_by_name(files, servers, tmp_path):
    src = files["paths"]["zip"]
    server = servers(src)
    reg = _registry(tmp_path, [_entry("team_vocoder", server.url, "zip", src, licence="internal use")])
    env = {"WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_REGISTRY": str(reg)}
    listing = run_cli("waveglow-pretrained", "list", env=env, timeout=120).stdout
    assert "team_vocoder" in listing and "nvidia_256" in listing and "internal use" in listing
    got = run_cli("waveglow-pretrained", "get", "team_vocoder", "progress=false", env=env, timeout=120)
    path = Path(got.stdout.strip().splitlines()[-1])
    assert path == tmp_path / "home" / "pretrained" / "team_vocoder" / "model.pt" and path.is_file()
    server.close()  # synthesis finds it in the cache
    torch.save(files["mel"][0].clone(), tmp_path / "m.pt")
    run_cli("waveglow-synthesize", "checkpoint=pretrained:team_vocoder", f"input={tmp_path}/m.pt",
            f"output_dir={tmp_path}/out", "device=cpu", env=env, timeout=180)
    assert (tmp_path / "out" / "m.wav").is_file()
    bad = run_cli("waveglow-pretrained", "get", "nope", env=env, check=False, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: pretrained:nope: no such model")


@pytest.mark.slow
def test_train_init_from_pretrained(servers, tmp_path, monkeypatch, single_thread):
    """`train.init_from=pretrained:NAME`: a team's own checkpoint (format: waveglow) served by URL
    starts a new run with exactly its weights."""
    from conftest import compose
    from speaker_corpora import make_vctk

    from waveglow.train import train

    root = make_vctk(tmp_path / "vctk", clips_per_speaker=2, seconds=0.5)

    def cfg(run: Path, *extra: str):
        return compose("waveglow_train", "data=vctk", f"data.root={root}", "data.num_workers=1",
                       "data.splits.n_val=1", "data.splits.n_test=1", "data.splits.n_val_speakers=0",
                       "model=tiny", "model.upsample_kernel=256", "data.segment_length=4096",
                       "train.batch_size=2", "train.audio_every=0", "train.logdet_every=0",
                       "train.val_segment_length=4096", "train.max_steps=0", "train.threads=1",
                       "train.device=cpu", f"run_dir={run}", *extra)

    train(cfg(tmp_path / "src"))
    source = tmp_path / "src" / "checkpoints" / "last.pt"
    server = servers(source)
    reg = _registry(tmp_path, [_entry("team_tiny", server.url, "waveglow", source)])
    monkeypatch.setenv("WAVEGLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WAVEGLOW_REGISTRY", str(reg))
    train(cfg(tmp_path / "ft", "train.init_from=pretrained:team_tiny", "model.sigma=0.9"))
    want = torch.load(source, weights_only=True)["model"]
    got = torch.load(tmp_path / "ft" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert server.ranges == [None]
