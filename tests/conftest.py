"""Shared fixtures: the demo corpus, typed configs, and running the real console scripts.

`--device` (default `cpu`) says where the tests run. With `cpu`, CUDA is hidden from this
process and from every console script a test starts, so `device=auto` means the CPU on a GPU
host too and `make test` means the same everywhere; tests marked `cuda` are skipped. With
`--device cuda` the `cuda` tests run (and fail without a GPU) while the others stay on the CPU.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO_ROOT = REPO / "data" / "demo"
BIN = Path(sys.executable).parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="cpu (default): everything on the CPU, cuda tests skipped; cuda: run the cuda tests too")


# Test files that share a session-cached fixture run on one xdist worker (see
# `pytest_xdist_make_scheduler`):
# test_enhance.tiny_checkpoint, a minute of training, is built once per worker that needs it.
SHARED_FIXTURE_GROUPS = {
    "tests/inference/test_enhance.py": "enhance-tiny",
    "tests/inference/test_convert.py": "enhance-tiny",
}


def _parallel_workers() -> int:
    """How many xdist workers this run has (1 in a plain run)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--device") == "cpu":
        # Before torch initializes CUDA: in-process tests and every child process see no GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if _parallel_workers() > 1:
        # Each worker (and every script it starts) computes on one core: two intra-op threads
        # next to another busy worker wait at OpenMP barriers for a descheduled thread (tiny
        # training 15x slower). OMP_NUM_THREADS is torch's default at import (this runs before
        # the test modules import it) and caps the scripts' automatic `threads=` choice.
        os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook: unknown (and unused) without it
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, with the files that share a session-cached fixture as one unit.

    Each test file runs on one worker (its module fixtures are built once), and so do the files
    of one SHARED_FIXTURE_GROUPS group. (xdist's own `loadgroup` marks do not group under
    pytest 9, where a test's id no longer follows the `_nodeid` xdist rewrites.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedFixtureScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return SHARED_FIXTURE_GROUPS.get(path, path)

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--device") == "cuda":
        return
    skip = pytest.mark.skip(reason="a CUDA test: run with --device cuda (make gpu-check)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def compose(app: str, *overrides: str):
    """The typed, validated config of console script config `app` (e.g. "waveglow_train"), as
    the script itself would build it from `overrides` (`key=value` strings)."""
    from waveglow.cli.common import compose as compose_config

    return compose_config(app, list(overrides))


def model_config(name: str) -> dict:
    """The shipped model config `name` (waveglow/configs/model/<name>.yaml) as a plain dict."""
    from waveglow.config import to_dict

    return to_dict(compose("waveglow_train", f"model={name}", "data=demo").model)


def fit_on_clips(model, mel_fn, clips: list, *, steps: int, segment: int, lr: float, seed: int = 0) -> None:
    """A few Adam steps of `model` (a WaveGlow) on random dithered segments of `clips` (float
    tensors [T]), two per step, with mels from `mel_fn`: a small trained model for tests that need
    likelihoods that mean something, without a training run."""
    import torch

    hop = mel_fn.hop_length
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        xs = []
        for _ in range(2):
            clip = clips[int(torch.randint(len(clips), (1,), generator=gen))]
            start = int(torch.randint((clip.numel() - segment) // hop, (1,), generator=gen)) * hop
            xs.append(clip[start: start + segment])
        x = torch.stack(xs)
        x = x + (torch.rand(x.shape, generator=gen) - 0.5) / 32768  # 1-LSB dither, as training
        with torch.no_grad():
            mel = mel_fn(x)
        loss = -model.log_prob(x, mel).mean() / segment
        opt.zero_grad()
        loss.backward()
        opt.step()


def run_cli(name: str, *args: str, check: bool = True, timeout: float = 300, env: dict | None = None,
            cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run console script `name` (e.g. "waveglow-mel") with Hydra overrides `args`.

    Returns the CompletedProcess (text mode). With check=True a non-zero exit fails the test and
    shows stdout/stderr.
    """
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"console script {name} is not installed in {BIN}")
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    if env:
        full_env.update(env)
    proc = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=timeout,
                          env=full_env, cwd=cwd or REPO)
    if check and proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def run_script(name: str, *args: str, check: bool = True, timeout: float = 300, env: dict | None = None,
               cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """`run_cli` without the ~3 s interpreter start: the script's entry point runs in a process
    forked from a helper that imported torch and the toolkit once (tests/cli_forks.py). Its own
    process, exit status, stdout/stderr and working directory; `env` is applied when the script
    starts (not re-read by modules imported before). For checks of what a script does with its
    settings and inputs; `run_cli` for checks of the installed console script itself."""
    from cli_forks import Job, run_forked

    (proc,) = run_forked([Job(name, list(args), cwd=cwd, env=dict(env or {}), timeout=timeout)])
    if check and proc.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny in-process tensors: a second OpenMP thread only
    adds barrier waits, which on a busy 2-core machine cost far more than the work."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def copy_demo_corpus(src: Path, dst: Path) -> Path:
    """The demo corpus (LJSpeech layout) copied to `dst`, so splits and cache land there."""
    (dst / "wavs").mkdir(parents=True)
    shutil.copy(src / "metadata.csv", dst / "metadata.csv")
    for wav in (src / "wavs").glob("*.wav"):
        shutil.copy(wav, dst / "wavs" / wav.name)
    return dst


def load_state(path: str | os.PathLike) -> dict:
    """A checkpoint as saved (weights_only, CPU), for exact state comparisons."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def flat(obj) -> list:
    """Every leaf of nested dicts/lists in a fixed order (for exact state comparisons)."""
    if isinstance(obj, dict):
        return [x for k in sorted(obj, key=str) for x in [k, *flat(obj[k])]]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in flat(v)]
    return [obj]


def assert_same_state(a: dict, b: dict, context: str = "") -> None:
    """Two training checkpoints' parameters, optimizer state, step, RNG, sampler position and
    schedule identical to the bit (`context` is added to each failure message)."""
    import torch

    assert a["step"] == b["step"], context
    assert a["model"].keys() == b["model"].keys(), context
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{k} {context}"
    for key in ("optimizer", "rng", "sampler", "scheduler"):
        fa, fb = flat(a[key]), flat(b[key])
        assert len(fa) == len(fb), f"{key} {context}"
        for x, y in zip(fa, fb):
            assert (torch.equal(x, y) if torch.is_tensor(x) else x == y), f"{key} {context}"


@pytest.fixture(scope="session")
def demo_root() -> Path:
    """The committed demo corpus (LJSpeech layout)."""
    if not (DEMO_ROOT / "metadata.csv").exists():
        pytest.fail(f"demo corpus missing at {DEMO_ROOT}")
    return DEMO_ROOT


@pytest.fixture
def corpus_copy(tmp_path: Path, demo_root: Path):
    """Factory: copy the first `n` clips of the demo corpus (LJSpeech layout) into tmp_path."""

    def make(n: int = 8, name: str = "corpus") -> Path:
        dst = tmp_path / name
        (dst / "wavs").mkdir(parents=True)
        lines = (demo_root / "metadata.csv").read_text().strip().splitlines()[:n]
        for line in lines:
            clip_id = line.split("|", 1)[0]
            shutil.copy(demo_root / "wavs" / f"{clip_id}.wav", dst / "wavs" / f"{clip_id}.wav")
        (dst / "metadata.csv").write_text("\n".join(lines) + "\n")
        return dst

    return make
