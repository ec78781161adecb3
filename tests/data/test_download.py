"""`make ljspeech` offline: a tiny LJSpeech-like tar.bz2 served from file:// and a loopback server."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli, run_script
from loopback_http import LoopbackServer

from waveglow.data.download import MARKER, download, download_and_extract, safe_extract
from waveglow.errors import UserError

TOP = "LJSpeech-1.1"
N_CLIPS = 6
SR = 22050


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:bz2") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info, data


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny LJSpeech-1.1.tar.bz2 (N_CLIPS short noisy tones + metadata.csv) and its sha256."""
    rng = np.random.default_rng(0)
    members = []
    lines = []
    for i in range(N_CLIPS):
        clip_id = f"LJ001-{i + 1:04d}"
        t = np.arange(int(0.3 * SR)) / SR
        audio = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.01 * rng.standard_normal(t.size)
        wav = io.BytesIO()
        sf.write(wav, audio.astype(np.float32), SR, subtype="PCM_16", format="WAV")
        members.append(_file(f"{TOP}/wavs/{clip_id}.wav", wav.getvalue()))
        lines.append(f"{clip_id}|Clip {i + 1}.|Clip {i + 1}.")
    members.insert(0, _file(f"{TOP}/metadata.csv", ("\n".join(lines) + "\n").encode()))
    members.append(_file(f"{TOP}/README", b"tiny test corpus\n"))
    data = _tar_bytes(members)
    path = tmp_path_factory.mktemp("remote") / f"{TOP}.tar.bz2"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def serve(archive: tuple[Path, str]) -> Iterator:
    servers: list[LoopbackServer] = []

    def start(**kwargs: bool) -> LoopbackServer:
        servers.append(LoopbackServer(archive[0].read_bytes(), name=f"{TOP}.tar.bz2", **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture
def serve_file() -> Iterator:
    """Loopback servers for any file: serve_file(path, **LoopbackServer options)."""
    servers: list[LoopbackServer] = []

    def start(path: Path, **kwargs: bool) -> LoopbackServer:
        servers.append(LoopbackServer(path.read_bytes(), name=path.name, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _check_corpus(root: Path) -> None:
    assert (root / "metadata.csv").read_text().count("\n") == N_CLIPS
    assert len(list((root / "wavs").glob("*.wav"))) == N_CLIPS
    assert json.loads((root / MARKER).read_text())["sha256"]
    assert not list(root.parent.glob(".*extracting*"))


def test_file_url_success_then_idempotent(archive, tmp_path, caplog):
    src, sha = archive
    root, arc = tmp_path / "data" / TOP, tmp_path / "data" / "lj.tar.bz2"
    download_and_extract(src.as_uri(), sha, arc, root, TOP, progress=False)
    _check_corpus(root)
    assert arc.is_file() and not arc.with_name(arc.name + ".part").exists()
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    src_missing = tmp_path / "gone.tar.bz2"  # a second run must not even look at the URL
    with caplog.at_level("INFO", logger="waveglow"):
        download_and_extract(src_missing.as_uri(), sha, arc, root, TOP, progress=False)
    assert "already there" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_http_resume_uses_range(archive, serve, tmp_path):
    src, sha = archive
    server = serve()
    arc = tmp_path / "lj.tar.bz2"
    part = tmp_path / "lj.tar.bz2.part"
    half = src.stat().st_size // 2
    part.write_bytes(src.read_bytes()[:half])
    download(server.url, arc, sha, progress=False)
    assert server.ranges == [f"bytes={half}-"]
    assert arc.read_bytes() == src.read_bytes() and not part.exists()


def test_http_restarts_when_range_ignored(archive, serve, tmp_path):
    src, sha = archive
    server = serve(honour_range=False)
    arc = tmp_path / "lj.tar.bz2"
    (tmp_path / "lj.tar.bz2.part").write_bytes(b"stale bytes from another file")
    download(server.url, arc, sha, progress=False)
    assert server.ranges == ["bytes=29-"]
    assert arc.read_bytes() == src.read_bytes()


def test_http_interrupted_transfer_resumes(archive, serve, tmp_path, monkeypatch):
    monkeypatch.setattr("waveglow.data.download.time.sleep", lambda s: None)
    src, sha = archive
    server = serve(truncate_first=True)
    root = tmp_path / TOP
    download_and_extract(server.url, sha, tmp_path / "lj.tar.bz2", root, progress=False)
    assert server.ranges[0] is None and server.ranges[1].startswith("bytes=")
    _check_corpus(root)


def test_file_url_resume(archive, tmp_path):
    src, sha = archive
    arc = tmp_path / "lj.tar.bz2"
    (tmp_path / "lj.tar.bz2.part").write_bytes(src.read_bytes()[:100])
    download(src.as_uri(), arc, sha, progress=False)
    assert arc.read_bytes() == src.read_bytes()


def test_wrong_checksum_deletes_and_says_so(archive, serve, tmp_path):
    src, sha = archive
    server = serve()
    wrong = "0" * 64
    root, arc = tmp_path / TOP, tmp_path / "lj.tar.bz2"
    part = tmp_path / "lj.tar.bz2.part"
    part.write_bytes(src.read_bytes()[:50])  # a resumed download is checked as a whole too
    with pytest.raises(UserError, match=f"sha256 mismatch: expected {wrong}, got {sha}.*deleted"):
        download_and_extract(server.url, wrong, arc, root, TOP, progress=False)
    assert not part.exists() and not arc.exists() and not root.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(archive, tmp_path, monkeypatch):
    src, sha = archive
    with pytest.raises(UserError, match="64 hex digits"):
        download(src.as_uri(), tmp_path / "a", "abc", progress=False)
    with pytest.raises(UserError, match="expected an http"):
        download("ftp://example.invalid/x.tar.bz2", tmp_path / "a", sha, progress=False)
    with pytest.raises(UserError, match="cannot read"):
        download((tmp_path / "missing.tar.bz2").as_uri(), tmp_path / "a", sha, progress=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "metadata.csv").write_text("x|y|z\n")
    with pytest.raises(UserError, match="not made by waveglow-download"):
        download_and_extract(src.as_uri(), sha, tmp_path / "a.tar.bz2", tmp_path / "mine", progress=False)
    # relative paths are relative to the working directory, and the errors show the absolute path
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=rf"^{tmp_path}/mine: exists but was not made by waveglow-download"):
        download_and_extract(src.as_uri(), sha, Path("a.tar.bz2"), Path("mine"), progress=False)
    with pytest.raises(UserError, match=rf"^file://{tmp_path}/absent.tar.bz2: cannot read the archive"):
        download("absent.tar.bz2", Path("a"), sha, progress=False)
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=rf"^data.download.archive: cannot create the folder {tmp_path}/file/sub"):
        download(src.as_uri(), Path("file/sub/a.tar.bz2"), sha, progress=False)
    with pytest.raises(UserError, match="top-level folder 'nope'"):
        download_and_extract(src.as_uri(), sha, tmp_path / "a.tar.bz2", tmp_path / "c", "nope", progress=False)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("evil", ["../evil", "/tmp/evil-abs", "link-out", "hardlink-out", "LJSpeech-1.1/../../evil"])
def test_malicious_members_refused(tmp_path, evil):
    members = [_file(f"{TOP}/metadata.csv", b"a|b|c\n")]
    if evil == "link-out":
        info = tarfile.TarInfo(f"{TOP}/wavs")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc"
        members.append((info, None))
    elif evil == "hardlink-out":
        info = tarfile.TarInfo(f"{TOP}/passwd")
        info.type, info.linkname = tarfile.LNKTYPE, "../../etc/passwd"
        members.append((info, None))
    else:
        members.append(_file(evil, b"pwned\n"))
    data = _tar_bytes(members, mode="w:gz")
    src = tmp_path / "remote" / "evil.tar.gz"
    src.parent.mkdir()
    src.write_bytes(data)
    dest = tmp_path / "data" / "inner"
    with pytest.raises(UserError, match="refusing to extract"):
        download_and_extract(src.as_uri(), hashlib.sha256(data).hexdigest(), tmp_path / "data" / "evil.tar.gz",
                             dest / TOP, TOP, progress=False)
    assert not (dest / TOP).exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "data" / "evil").exists()
    assert not Path("/tmp/evil-abs").exists()
    assert not dest.exists() or not list(dest.iterdir())  # the temporary extraction folder is gone
    # safe_extract on its own refuses it too, before writing the bad member.
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(UserError, match="refusing"):
        safe_extract(src, into, progress=False)


def test_cli_downloads_extracts_and_writes_splits(archive, tmp_path):
    src, sha = archive
    root = tmp_path / "data" / TOP
    args = ["data=ljspeech", f"data.root={root}", f"data.download.url={src.as_uri()}",
            f"data.download.sha256={sha}", f"data.download.archive={tmp_path / 'data' / 'lj.tar.bz2'}",
            "data.splits.n_val=1", "data.splits.n_test=1", "progress=false"]
    run_cli("waveglow-download", *args)
    _check_corpus(root)
    ids = []
    for split in ("train", "val", "test"):
        ids += (root / "splits" / f"{split}.txt").read_text().split()
    assert sorted(ids) == [f"LJ001-{i + 1:04d}" for i in range(N_CLIPS)]
    second = run_script("waveglow-download", *args)  # the first run is the installed console script
    assert "already there" in second.stderr + second.stdout


def test_cli_errors(archive, tmp_path):
    proc = run_script("waveglow-download", "data=demo", check=False)
    assert proc.returncode == 2 and "data=demo has no download section" in proc.stderr
    src, _ = archive
    proc = run_script("waveglow-download", f"data.root={tmp_path / TOP}", f"data.download.url={src.as_uri()}",
                   f"data.download.sha256={'f' * 64}", f"data.download.archive={tmp_path / 'a.tar.bz2'}",
                   "progress=false", check=False)
    assert proc.returncode == 2 and "sha256 mismatch" in proc.stderr
    assert proc.stderr.count("\n") <= 2 and "Traceback" not in proc.stderr
    assert not (tmp_path / "a.tar.bz2.part").exists() and not (tmp_path / TOP).exists()


# ------------------------------------------------------------------ multi-speaker corpora

def _zip_tree(src: Path, dest: Path, prefix: str = "") -> Path:
    import zipfile

    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, prefix + p.relative_to(src).as_posix())
    return dest


def _cfg(*overrides: str):
    from conftest import compose

    return compose("waveglow_download", *overrides).data


def test_vctk_zip_over_http_md5_then_splits(tmp_path, serve_file):
    from speaker_corpora import make_vctk

    from waveglow.data import discover_corpus
    from waveglow.data.download import download_corpus

    corpus = make_vctk(tmp_path / "src", clips_per_speaker=2)
    z = _zip_tree(corpus, tmp_path / "VCTK-Corpus-0.92.zip")  # files at the zip's top level, as published
    md5 = hashlib.md5(z.read_bytes()).hexdigest()
    server = serve_file(z, truncate_first=True)
    root = tmp_path / "data" / "VCTK-Corpus-0.92"
    over = ["data=vctk", f"data.root={root}", f"data.download.url={server.url}", f"data.download.md5={md5}",
            f"data.download.archive={tmp_path / 'data' / 'vctk.zip'}", "data.splits.n_val_speakers=1",
            "data.splits.n_val=1", "data.splits.n_test=1"]
    download_corpus(_cfg(*over), progress=False)
    assert server.ranges[1] is not None  # resumed after the dropped connection
    found = discover_corpus(_cfg(*over))
    assert len(found.clips) == 10 and len(found.speakers()) == 5
    assert (root / "speaker-info.txt").is_file() and (root / "splits" / "val_unseen.txt").is_file()
    marker = json.loads((root / MARKER).read_text())
    assert marker["md5"] == md5 and marker["sha256"] == hashlib.sha256(z.read_bytes()).hexdigest()
    assert not marker["sha256_published"]
    # A wrong md5: one line, nothing kept.
    bad_root = tmp_path / "data" / "other"
    bad = [o for o in over if not o.startswith(("data.root", "data.download.md5", "data.download.archive"))]
    with pytest.raises(UserError, match="md5 mismatch"):
        download_corpus(_cfg(*bad, f"data.root={bad_root}", f"data.download.md5={'0' * 32}",
                             f"data.download.archive={tmp_path / 'bad.zip'}"), progress=False)
    assert not bad_root.exists() and not (tmp_path / "bad.zip").exists()


def test_zip_with_escaping_member_is_refused(tmp_path):
    import zipfile

    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("wav48_silence_trimmed/p225/p225_001_mic1.flac", b"x")
        zf.writestr("../escaped.txt", b"owned")
    into = tmp_path / "into"
    into.mkdir()
    with pytest.raises(UserError, match=r"refusing to extract member '../escaped.txt' \(path with '..'\)"):
        safe_extract(z, into, progress=False)
    assert not (tmp_path / "escaped.txt").exists()


def test_libritts_subsets_each_verified_and_extracted(tmp_path):
    from speaker_corpora import make_libritts

    from waveglow.data import discover_corpus
    from waveglow.data.download import download_corpus

    src = make_libritts(tmp_path / "src" / "LibriTTS")
    remote = tmp_path / "remote"
    remote.mkdir()
    sums = {}
    for subset in ("train-clean-100", "dev-clean"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(src / subset, arcname=f"LibriTTS/{subset}")
        (remote / f"{subset}.tar.gz").write_bytes(buf.getvalue())
        sums[f"{subset}.tar.gz"] = hashlib.sha256(buf.getvalue()).hexdigest()
    root = tmp_path / "data" / "LibriTTS"
    over = ["data=libritts", f"data.root={root}", f"data.download.url={remote.as_uri()}/{{subset}}.tar.gz",
            f"data.download.archive={tmp_path / 'data'}/LibriTTS-{{subset}}.tar.gz",
            "data.subsets=[train-clean-100,dev-clean]", "data.splits.n_val_speakers=1",
            "data.splits.n_val=1", "data.splits.n_test=1"]
    cfg = _cfg(*over)
    cfg.download.checksums = sums  # the shipped table pins the published archives; here the test's own
    download_corpus(cfg, progress=False)
    found = discover_corpus(cfg)
    assert len(found.clips) == 10 and set(found.speakers()) == {"19", "26", "32", "84"}
    assert (root / "train-clean-100" / "19" / "198").is_dir() and (root / "dev-clean" / MARKER).is_file()
    # A subset whose archive does not match its checksum: refused, the other subsets stay.
    cfg.download.checksums = {**sums, "dev-clean.tar.gz": "0" * 64}
    import shutil

    shutil.rmtree(root / "dev-clean")
    (tmp_path / "data" / "LibriTTS-dev-clean.tar.gz").unlink()
    with pytest.raises(UserError, match="sha256 mismatch"):
        download_corpus(cfg, progress=False)
    assert not (root / "dev-clean").exists() and (root / "train-clean-100" / MARKER).is_file()
