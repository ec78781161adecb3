"""Every command the README shows must be one that works: the console script exists, each
`key=value` override composes against that command's config, and each make target exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from waveglow.cli.bench import rewrite_argv
from waveglow.cli.common import CONFIG_DIR, compose, parse_argv

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
    settings, config_dirs, action = parse_argv(args, name)  # raises on a non key=value argument
    if action is None and not config_dirs:
        # The script's own composition: unknown keys, bad groups, types and ranges raise.
        compose(config_name, settings)


def test_readme_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    for target in _make_targets():
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"README uses `make {target}`"
