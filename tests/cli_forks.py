"""Console-script runs without the interpreter start: a helper process that has imported torch,
Hydra and the toolkit once forks one child per run, and the child calls the script's entry
point the way the console-script wrapper does (`sys.exit(main())`).

A console script spends about 3 s of CPU importing torch before it reads its first setting,
which is most of the cost of a test that checks how a script refuses bad input. A forked child
is still a process of its own: its own exit status, its own stdout and stderr (files, as with a
redirected console script), its own working directory, no state shared with the test or with
the other runs. What it does not exercise is the wrapper script itself: tests that are about the
installed console script (its `--help`, a wheel install) keep using `conftest.run_cli`.

Run this file as a script to get the helper process (`serve`); tests use `run_forked`.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BIN = Path(sys.executable).parent


@dataclass
class Job:
    """One run of console script `name` with arguments `args` in folder `cwd`.

    Attributes:
        name: the console script (e.g. "waveglow-mel").
        args: its command-line arguments.
        cwd: its working directory (default: the repository).
        env: variables set in the child before the script runs (read at run time only: torch
            and the toolkit are already imported, so a variable read at import is not re-read).
        timeout: seconds before the child is killed (the result then raises TimeoutExpired).
    """

    name: str
    args: list[str]
    cwd: str | os.PathLike | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 300.0


# ------------------------------------------------------------------------------ test side


class _Server:
    """The helper process of this test process, started on first use, ended at exit."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            env = {**os.environ, "PYTHONUNBUFFERED": "1",
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "serve"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         env=env, cwd=REPO)
            atexit.register(self.stop)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def request(self, jobs: list[dict], parallel: int) -> list[dict]:
        with self.lock:
            proc = self.start()
            proc.stdin.write(json.dumps({"jobs": jobs, "parallel": parallel}) + "\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the forked-run helper ended (exit {proc.wait()})")
        return json.loads(line)


_SERVER = _Server()


def run_forked(jobs: list[Job], parallel: int = 1) -> list[subprocess.CompletedProcess]:
    """Run `jobs`, at most `parallel` at a time, each in a forked child of the helper process.

    Returns:
        One CompletedProcess per job, in order (text stdout and stderr, returncode; args is the
        command line the console script would have had).

    Raises:
        subprocess.TimeoutExpired: for the first job that ran past its timeout.
    """
    with tempfile.TemporaryDirectory(prefix="forked-cli-") as tmp:
        requests = []
        for i, job in enumerate(jobs):
            requests.append({"name": job.name, "args": [str(a) for a in job.args],
                             "cwd": str(job.cwd or REPO), "env": dict(job.env), "timeout": job.timeout,
                             "stdout": f"{tmp}/{i}.out", "stderr": f"{tmp}/{i}.err"})
        results = _SERVER.request(requests, parallel)
        out = []
        for job, req, res in zip(jobs, requests, results):
            argv = [str(BIN / job.name), *req["args"]]
            stdout = Path(req["stdout"]).read_text(errors="replace")
            stderr = Path(req["stderr"]).read_text(errors="replace")
            if res["timed_out"]:
                raise subprocess.TimeoutExpired(argv, job.timeout, stdout, stderr)
            out.append(subprocess.CompletedProcess(argv, res["returncode"], stdout, stderr))
        return out


# ------------------------------------------------------------------------------ helper side


def _entry_point(name: str):
    """The function console script `name` calls (its entry point in the installed metadata)."""
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="console_scripts", name=name)
    return ep.load()


def _child(req: dict) -> None:
    """In the forked child: become the console script of `req` and exit as it would."""
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
        f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(f, fd)
        os.close(f)
    os.chdir(req["cwd"])
    os.environ.update(req["env"])
    sys.stdout = sys.__stdout__  # the helper points sys.stdout at stderr; fd 1 is now the file
    sys.argv = [str(BIN / req["name"]), *req["args"]]
    code = 0
    try:
        sys.exit(_entry_point(req["name"])())
    except SystemExit as e:  # what the interpreter does with the exit of the wrapper script
        if e.code is None:
            code = 0
        elif isinstance(e.code, int):
            code = e.code
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except BaseException:  # an uncaught exception: the interpreter's traceback and exit 1
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def _run_batch(jobs: list[dict], parallel: int) -> list[dict]:
    """Fork a child per job, at most `parallel` alive at once; wait for all (killing overdue ones)."""
    results: list[dict] = [{} for _ in jobs]
    pending = list(range(len(jobs)))
    alive: dict[int, tuple[int, float]] = {}  # pid -> (job index, deadline)
    while pending or alive:
        while pending and len(alive) < max(1, parallel):
            i = pending.pop(0)
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                try:
                    _child(jobs[i])  # ends with os._exit
                except BaseException:  # before the script started (e.g. a cwd that is not there)
                    import traceback

                    traceback.print_exc()
                finally:
                    os._exit(120)  # never back into the helper's loop
            alive[pid] = (i, time.monotonic() + float(jobs[i]["timeout"]))
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            now = time.monotonic()
            for p, (i, deadline) in list(alive.items()):
                if now > deadline and not results[i]:
                    results[i] = {"timed_out": True, "returncode": -9}
                    os.kill(p, 9)
            time.sleep(0.01)
            continue
        i, _ = alive.pop(pid)
        if not results[i]:
            results[i] = {"timed_out": False, "returncode": os.waitstatus_to_exitcode(status)}
    return results


def serve() -> None:
    """Import once, then answer one JSON request per stdin line with one JSON line on stdout."""
    from importlib.metadata import entry_points

    import torch  # noqa: F401  - the import every console script pays

    for ep in entry_points(group="console_scripts"):
        if ep.name.startswith("waveglow-"):
            try:
                ep.load()  # each script's own imports, once
            except Exception:  # noqa: BLE001 - a child running that script meets (and reports) it
                pass
    try:  # Hydra and OmegaConf load most of their own modules on the first compose (~0.3 s)
        from waveglow.cli.common import compose

        compose("waveglow_mel", ["input=a.wav", "output_dir=o"])
    except Exception:  # noqa: BLE001 - only a warm-up
        pass

    reply = sys.stdout
    sys.stdout = sys.stderr  # nothing but replies on the pipe
    for line in sys.stdin:
        req = json.loads(line)
        reply.write(json.dumps(_run_batch(req["jobs"], int(req["parallel"]))) + "\n")
        reply.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        sys.exit("usage: cli_forks.py serve")
