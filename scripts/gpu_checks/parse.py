"""Reading what the checked commands print: pytest's summary line, the trainer's log and its
run's metrics.jsonl."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from gpu_checks.settings import PEAK_MARK


def parse_pytest(text: str) -> dict[str, int]:
    """Counts from pytest's summary line ("3 passed, 1 skipped, 9 deselected in 4.2s")."""
    counts = {k: 0 for k in ("passed", "failed", "errors", "skipped", "deselected")}
    summary = [ln for ln in text.splitlines() if re.search(r"\b(passed|failed|error|skipped|deselected|no tests ran)\b", ln)
               and re.search(r"\bin [\d.]+s\b", ln)]
    for n, word in re.findall(r"(\d+) (passed|failed|errors?|skipped|deselected)", summary[-1] if summary else ""):
        counts["errors" if word.startswith("error") else word] = int(n)
    return counts


def read_metrics(run_dir: Path) -> dict[int, float]:
    """step -> val log-likelihood from a run's metrics.jsonl (torn lines skipped)."""
    out: dict[int, float] = {}
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                out[int(rec["step"])] = float(rec["val_log_likelihood"])
            except (ValueError, KeyError, TypeError):
                continue
    return out


def parse_train_log(text: str) -> dict[str, Any]:
    """What `waveglow-train` logs: precision and device, processes, the memory mode, compile, samples/s
    per logging window, skipped steps, whether it finished, and the peak memory line of
    `--as-train`."""
    info: dict[str, Any] = {"rates": [], "finished": False}
    for line in text.splitlines():
        if m := re.search(r"data \S+, (\w+) on (cpu|cuda(?::\d+)?)(?: \([^)]*\))?(?: × (\d+) processes)?, ", line):
            info.update(precision=m.group(1), device=m.group(2), processes=int(m.group(3) or 1))
            memory = re.search(r"train\.memory=(\w+)", line)
            info["memory"] = memory.group(1) if memory else "standard"
            info["compile"] = ", compile on " in line  # train.compile (the line says compile on/off)
        elif m := re.match(r"step (\d+)/\d+ \|.*?\| ([\d,.]+) samples/s", line):
            info["rates"].append((int(m.group(1)), float(m.group(2).replace(",", ""))))
        elif m := re.match(r"done: step (\d+),.*skipped steps (\d+)", line):
            info.update(finished=True, final_step=int(m.group(1)), skipped_steps=int(m.group(2)))
        elif line.startswith(PEAK_MARK):
            info["peak_mem_mib"] = float(line[len(PEAK_MARK):])
    # Each line's rate covers the steps since the previous line (every log_every steps, or
    # sooner after a pause): the run's rate is steps over time, not the mean of the rates. The
    # first window holds cuDNN autotuning and the allocator's warm-up and is left out.
    windows = [(step - prev, rate) for (prev, _), (step, rate) in zip([(0, 0.0), *info["rates"]], info["rates"])]
    steady = [(n, r) for n, r in (windows[1:] or windows) if n > 0 and r > 0]
    info["samples_per_sec"] = (sum(n for n, _ in steady) / sum(n / r for n, r in steady)) if steady else None
    return info
