"""Every command the README shows must be one that works: the console script exists, each
`key=value` override composes against that command's config, and each make target exists."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

from waveglow.cli.bench import rewrite_argv
from waveglow.cli.common import CONFIG_DIR, compose, parse_argv
from waveglow.cli.sweep import check_launcher, plan

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def _shell_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    lines: list[str] = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def _commands() -> list[tuple[str, list[str]]]:
    out = []
    for line in _shell_lines():
        tokens = shlex.split(line)
        for i, tok in enumerate(tokens):
            name = Path(tok).name
            if name.startswith("waveglow-"):
                out.append((name, tokens[i + 1:]))
                break
    return out


def _make_targets() -> list[str]:
    targets = []
    for line in _shell_lines():
        tokens = shlex.split(line)
        if tokens and tokens[0] == "make":
            targets.extend(t for t in tokens[1:] if "=" not in t)
    return targets


COMMANDS = _commands()


def test_readme_shows_the_two_setup_commands_first():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.S).group(1)
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


def test_readme_has_commands():
    names = {name for name, _ in COMMANDS}
    assert {"waveglow-train", "waveglow-synthesize", "waveglow-mel", "waveglow-import-nvidia"} <= names


@pytest.mark.parametrize("name,args", COMMANDS, ids=[f"{n} {' '.join(a)}"[:60] for n, a in COMMANDS])
def test_readme_command_composes(name, args):
    config_name = name.replace("-", "_")
    assert (CONFIG_DIR / f"{config_name}.yaml").exists(), f"README uses {name} but configs/{config_name}.yaml is missing"
    if name == "waveglow-bench":
        args = rewrite_argv(args)
    if name == "waveglow-pretrained":  # `list` / `get NAME` are words, not settings
        from waveglow.cli.pretrained import rewrite_argv as pretrained_argv

        args = pretrained_argv(args)
    if name == "waveglow-distill":  # student=X is the run's model=X
        from waveglow.cli.distill import rewrite_argv as distill_argv

        args = distill_argv(args)
    argv = parse_argv(args, name)  # raises on a non key=value argument
    if argv.action is None and not argv.dirs:
        # The script's own composition: unknown keys, bad groups, types and ranges raise.
        if argv.multirun:  # a sweep (-m): every job's settings, then the launcher's and sweeper's
            script = importlib.import_module(f"waveglow.cli.{config_name[len('waveglow_'):]}").main.script
            check_launcher(plan(script, argv.settings, argv.dirs))
        else:
            compose(config_name, argv.settings)


def test_readme_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in _make_targets():
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"README uses `make {target}`"


def _python_snippet() -> str:
    """The README's Python example (the block that builds a Synthesizer)."""
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    return next(b for b in blocks if "waveglow.Synthesizer(" in b)


def test_readme_python_snippet_runs(tmp_path, monkeypatch):
    # The paths `make demo` writes, built here: a tiny checkpoint and one held-out mel.
    import torch
    from synth_helpers import active_model, random_mel

    from waveglow.checkpoint import FORMAT_VERSION, save_checkpoint

    code = _python_snippet()
    ckpt, mel_path = re.findall(r'"(checkpoints/[^"]+\.pt)"', code)[0], re.findall(r'"(outputs/[^"]+\.pt)"', code)[0]
    model, cfg = active_model(seed=2)
    (tmp_path / ckpt).parent.mkdir(parents=True)
    save_checkpoint(tmp_path / ckpt, {"format_version": FORMAT_VERSION, "model": model.state_dict(), "config": cfg,
                                      "step": 0, "epoch": 0})
    (tmp_path / mel_path).parent.mkdir(parents=True)
    torch.save(random_mel(30, seed=3), tmp_path / mel_path)
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
    finally:
        torch.set_num_threads(before)
    audio, z, synth, mel = scope["audio"], scope["z"], scope["synth"], scope["mel"]
    assert audio.shape == z.shape == (256 * 30,)
    # The latent the snippet shows is the one from_mel decoded: z and the mel give the audio again.
    assert (synth.decode(z[None], mel[None])[0] - audio).abs().max().item() < 1e-5
