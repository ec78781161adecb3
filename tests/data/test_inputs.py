"""The one `input=` resolver: files, folders (recursive), globs, filelists, lists of paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from waveglow.data.audio import AUDIO_SUFFIXES
from waveglow.data.inputs import InputFile, resolve_inputs
from waveglow.errors import UserError

MELS = (".pt", ".npy")


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")


def pairs(items: list[InputFile]) -> list[tuple[str, str]]:
    return [(p.name, n.as_posix()) for p, n in items]


def test_single_file(tmp_path: Path) -> None:
    touch(tmp_path, "a.WAV")
    assert resolve_inputs(tmp_path / "a.WAV", AUDIO_SUFFIXES) == [InputFile(tmp_path / "a.WAV", Path("a"))]
    path, name = resolve_inputs(str(tmp_path / "a.WAV"), AUDIO_SUFFIXES)[0]  # unpacks like a pair
    assert path == tmp_path / "a.WAV" and name == Path("a")


def test_folder_is_recursive_sorted_skips_hidden_and_keeps_layout(tmp_path: Path) -> None:
    touch(tmp_path / "in", "b.wav", "sub/a.flac", "sub/deeper/c.wav", ".hidden/h.wav", "sub/.h.wav", "notes.txt",
          "x.mp3")
    assert pairs(resolve_inputs(tmp_path / "in", AUDIO_SUFFIXES)) == [
        ("b.wav", "b"), ("a.flac", "sub/a"), ("c.wav", "sub/deeper/c")]
    touch(tmp_path / "mels", "b.pt", "a.npy", "c.txt")
    assert pairs(resolve_inputs(tmp_path / "mels", MELS, kind="mel")) == [("a.npy", "a"), ("b.pt", "b")]


def test_folder_same_stem_in_two_formats_is_refused(tmp_path: Path) -> None:
    touch(tmp_path, "a.wav", "a.flac")
    with pytest.raises(UserError, match=r"a\.(flac|wav) and .*a\.(flac|wav) would both be written as a\.\*"):
        resolve_inputs(tmp_path, AUDIO_SUFFIXES)


def test_glob(tmp_path: Path) -> None:
    touch(tmp_path, "m/b.pt", "m/x/a.pt", "m/c.npy")
    assert pairs(resolve_inputs(str(tmp_path / "m" / "*.pt"), MELS, kind="mel")) == [("b.pt", "b")]
    assert pairs(resolve_inputs(str(tmp_path / "m" / "**" / "*.pt"), MELS, kind="mel")) == [("b.pt", "b"),
                                                                                            ("a.pt", "a")]
    with pytest.raises(UserError, match=rf"^{tmp_path}/m/\*\.wav: the pattern matches no \.wav/\.flac files"):
        resolve_inputs(str(tmp_path / "m" / "*.wav"), AUDIO_SUFFIXES)


def test_filelist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touch(tmp_path, "lists/near.wav", "cwd/here.wav", "lists/here.wav", "far/abs.flac")
    listing = tmp_path / "lists" / "list.txt"
    # comments, blank lines, `path|text`, absolute paths, relative paths (cwd first, then the list's folder)
    listing.write_text(f"# audio\n{tmp_path / 'far' / 'abs.flac'}|some text\n\nnear.wav\nhere.wav|x\nmissing.wav\n")
    monkeypatch.chdir(tmp_path / "cwd")
    got = resolve_inputs(listing, AUDIO_SUFFIXES)
    assert [str(p) for p, _ in got] == [str(tmp_path / "far" / "abs.flac"), str(listing.parent / "near.wav"),
                                        "here.wav", "missing.wav"]  # missing: the reader reports it
    assert [n.as_posix() for _, n in got] == ["abs", "near", "here", "missing"]
    (tmp_path / "dup.lst").write_text("x/a.wav\ny/a.wav\n")
    with pytest.raises(UserError, match=r"x/a\.wav and /\S+/y/a\.wav would both be written as a\.\*"):
        resolve_inputs(tmp_path / "dup.lst", AUDIO_SUFFIXES)
    (tmp_path / "twice.scp").write_text("near.wav\nnear.wav\n")  # the same file twice: kept once
    assert len(resolve_inputs(tmp_path / "twice.scp", AUDIO_SUFFIXES)) == 1
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(UserError, match=rf"^{tmp_path}/empty.txt: the filelist is empty"):
        resolve_inputs(tmp_path / "empty.txt", AUDIO_SUFFIXES)
    (tmp_path / "binary.list").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match=r"binary.list: cannot read the filelist"):
        resolve_inputs(tmp_path / "binary.list", AUDIO_SUFFIXES)


def test_filelist_of_clip_ids_finds_the_corpus_files(tmp_path: Path) -> None:
    touch(tmp_path, "wavs/clip1.wav", "cache/mels/clip1.pt")
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "test.txt").write_text("clip1\n")
    assert resolve_inputs(tmp_path / "splits" / "test.txt", AUDIO_SUFFIXES)[0].path == tmp_path / "wavs" / "clip1.wav"
    assert resolve_inputs(tmp_path / "splits" / "test.txt", MELS, kind="mel")[0].path == \
        tmp_path / "cache" / "mels" / "clip1.pt"


def test_list_of_paths(tmp_path: Path) -> None:
    got = resolve_inputs([tmp_path / "a.pt", str(tmp_path / "sub" / "b.npy")], MELS, kind="mel")
    assert pairs(got) == [("a.pt", "a"), ("b.npy", "b")]  # not checked here: the reader reports missing files
    with pytest.raises(UserError, match="would both be written as a"):
        resolve_inputs([tmp_path / "a.pt", tmp_path / "x" / "a.pt"], MELS, kind="mel")


def test_errors_name_the_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cwd = os.getcwd()
    with pytest.raises(UserError, match=rf"^{cwd}/x.wav: no such file or folder; expected input=<\.wav/\.flac file"):
        resolve_inputs("x.wav", AUDIO_SUFFIXES)
    touch(tmp_path, "song.mp3", "model.ckpt", "empty/notes.txt")
    with pytest.raises(UserError, match=rf"^{cwd}/song.mp3: unsupported audio type '.mp3'; expected .wav or .flac"):
        resolve_inputs("song.mp3", AUDIO_SUFFIXES)
    with pytest.raises(UserError, match=r"song.mp3: unexpected file type '.mp3'"):
        resolve_inputs("song.mp3", MELS, kind="mel")
    with pytest.raises(UserError, match=rf"^{cwd}/model.ckpt: unexpected file type '.ckpt'"):
        resolve_inputs("model.ckpt", AUDIO_SUFFIXES)
    with pytest.raises(UserError, match=rf"^{cwd}/empty: the folder holds no \.wav/\.flac files"):
        resolve_inputs("empty", AUDIO_SUFFIXES)
    with pytest.raises(UserError, match="input is empty"):
        resolve_inputs("", AUDIO_SUFFIXES)
