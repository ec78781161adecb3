"""`waveglow-pretrained list` / `waveglow-pretrained get NAME`: pretrained models by name.

`list` prints the registry (name, model, sample rate, training data, source, file size, licence);
`get NAME` downloads, checks and converts NAME into the cache and prints the checkpoint's path,
which `checkpoint=pretrained:NAME` then uses without downloading again.

Exit status: 0 on success; 2 on a user error (unknown name, offline without a cached copy, a size
or checksum mismatch, a hostile archive), with nothing cached.
"""

from __future__ import annotations

import sys

from waveglow.cli.common import Script, app, fail
from waveglow.config.apps import PretrainedApp

SCRIPT = Script(
    name="waveglow-pretrained", config="waveglow_pretrained",
    summary="Pretrained models by name. `list` shows the registry (shipped entries plus your own YAML, "
            "WAVEGLOW_REGISTRY or registry=); `get NAME` downloads (resumable, size and sha256 checked), "
            "converts without running anything in the file, caches under $WAVEGLOW_HOME "
            "(~/.cache/waveglow) and prints the checkpoint's path. checkpoint=pretrained:NAME works "
            "in every script that takes a checkpoint.",
    usage="list | get NAME",
    examples=("waveglow-pretrained list", "waveglow-pretrained get nvidia_256",
              "WAVEGLOW_REGISTRY=team.yaml waveglow-pretrained get our_vocoder"),
)


def _size(n: int | None) -> str:
    return "size not published" if n is None else f"{n / 2**20:.1f} MiB"


@app(SCRIPT)
def _run(cfg: PretrainedApp) -> None:
    from waveglow.errors import UserError
    from waveglow.pretrained import find, from_environment, get, is_cached, load_registry

    settings = from_environment(home=cfg.home, registry=cfg.registry, offline=cfg.offline,
                                timeout=cfg.timeout, progress=cfg.progress)
    registry = load_registry(settings.registry)
    if cfg.action == "list":
        for e in registry.values():
            where = is_cached(e, settings)  # verified when it is loaded
            rate = f"{e.sample_rate / 1000:g} kHz" if e.sample_rate else "rate not stated"
            print(f"{e.name}{'  [cached]' if where else ''}")
            if e.description:
                print(f"    {e.description}")
            print(f"    model: {e.model or 'not stated'}; {rate}; trained on {e.training_data or 'not stated'}")
            print(f"    source: {e.source or e.url}")
            print(f"    file: {e.format}, {_size(e.size)}, sha256 {e.sha256 or 'not published'}")
            print(f"    licence: {e.licence or 'not stated'}")
        return
    if not cfg.name:
        raise UserError("get: expected a model name: waveglow-pretrained get NAME "
                        f"(known: {', '.join(registry)})")
    print(get(find(cfg.name, registry), settings))


def rewrite_argv(argv: list[str]) -> list[str]:
    """`list` -> `action=list`, `get NAME` -> `action=get name=NAME`; key=value settings unchanged.

    Raises:
        UserError: other leading words.
    """
    from waveglow.errors import UserError

    args = list(argv)
    words = []
    while args and "=" not in args[0] and not args[0].startswith("-"):
        words.append(args.pop(0))
    if not words:
        return args
    if len(words) > 2 or words[0] not in ("list", "get") or (words[0] == "list" and len(words) > 1):
        raise UserError(f"{' '.join(words)!r}: expected `list` or `get NAME`, then key=value settings; "
                        "see waveglow-pretrained --help")
    return [f"action={words[0]}", *(f"name={w}" for w in words[1:]), *args]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: `list` / `get NAME` as the first words, then key=value settings."""
    from waveglow.errors import UserError

    try:
        args = rewrite_argv(list(sys.argv[1:] if argv is None else argv))
    except UserError as e:
        fail(str(e))
    _run(args)


main.script = SCRIPT  # type: ignore[attr-defined]
__all__ = ["main", "rewrite_argv"]
