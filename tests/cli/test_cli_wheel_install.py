"""The package installs like any other: a built wheel, not the editable checkout, runs the
console scripts from an unrelated folder (configs found through the package)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import soundfile as sf
from conftest import REPO

pytestmark = pytest.mark.filterwarnings("ignore")


def _run(exe: Path, *args: str, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(exe), *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)
    assert proc.returncode == 0, f"{exe.name} {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The project built as a wheel and installed (without its dependencies, which this
    interpreter already has) into a folder of its own that shadows the editable checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what a source distribution holds: setuptools builds in the source
    # folder, and the checkout must not collect a build/ folder.
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "waveglow", src / "waveglow", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp / "dist").glob("waveglow-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "waveglow/configs/waveglow_train.yaml" in names and "waveglow/configs/model/tiny.yaml" in names
    assert "waveglow/configs/hydra/launcher/submitit_slurm.yaml" in names  # three levels down
    assert not any(n.startswith(("tests/", "configs/")) for n in names)
    target = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "2"}
    return target, env


def test_console_scripts_from_a_wheel_in_another_folder(wheel_install, demo_root: Path, tmp_path: Path) -> None:
    target, env = wheel_install
    where = subprocess.run([sys.executable, "-c", "import waveglow; print(waveglow.__file__)"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(target)), where  # the wheel, not the checkout
    bin_dir = target / "bin"
    # An LJSpeech-layout corpus of 8 demo clips, somewhere unrelated to the checkout.
    corpus = tmp_path / "corpus"
    (corpus / "wavs").mkdir(parents=True)
    lines = (demo_root / "metadata.csv").read_text().splitlines()[:8]
    (corpus / "metadata.csv").write_text("\n".join(lines) + "\n")
    for line in lines:
        clip = line.split("|")[0]
        (corpus / "wavs" / f"{clip}.wav").write_bytes((demo_root / "wavs" / f"{clip}.wav").read_bytes())
    work = tmp_path / "elsewhere"
    work.mkdir()

    _run(bin_dir / "waveglow-mel", f"input={corpus / 'wavs'}", "output_dir=mels", env=env, cwd=work)
    assert len(list((work / "mels").glob("*.pt"))) == 8
    _run(bin_dir / "waveglow-train", "data=folder", f"data.root={corpus}", "data.splits.n_val=2",
         "data.splits.n_test=0", "model=tiny", "train=demo", "train.max_steps=2", "train.batch_size=2",
         "train.val_every=2", "train.audio_every=0", "data.segment_length=4096", "run_dir=run",
         env=env, cwd=work)
    assert (work / "run" / "checkpoints" / "last.pt").is_file()
    _run(bin_dir / "waveglow-synthesize", "checkpoint=run/checkpoints/last.pt", "input=mels",
         "output_dir=wavs", "device=cpu", env=env, cwd=work)
    wavs = sorted((work / "wavs").glob("*.wav"))
    assert len(wavs) == 8 and sf.info(wavs[0]).samplerate == 22050
