"""waveglow-bench baseline=<results.jsonl>: cases matched by identity, the ratio per case, and a
bad baseline file stopping the run with a one-line error before any case runs."""

from __future__ import annotations

import json

import pytest
from conftest import run_script

from waveglow.bench.baseline import case_identity, compare, format_comparison, load_baseline
from waveglow.errors import UserError

# The smallest real training case: tiny model, one 2048-sample item, one timed step.
TINY_TRAIN = ("model=tiny", "tasks=train", "precision=fp32", "batch=1", "segment_length=2048", "repeats=1",
              "warmup=0", "isolate=false", "threads=1", "peak.matmul_n=64", "peak.conv_length=256",
              "peak.repeats=1")


def _row(**kw):
    base = {"task": "train", "model": "tiny", "device": "cpu", "precision": "fp32", "memory": "standard",
            "batch": 1, "threads": 1, "audio_seconds": 2048 / 22050, "samples_per_sec": 1000.0,
            "peak_mem_mib": 500.0}
    return {**base, **kw}


def test_rows_are_matched_by_identity_and_compared_as_ratios(tmp_path):
    path = tmp_path / "base.jsonl"
    lines = [json.dumps(_row()), "a table line", json.dumps(_row(precision="bf16", samples_per_sec=4000.0)),
             json.dumps(_row(precision="fp16", error="RuntimeError: x"))]
    path.write_text("\n".join(lines) + "\n")
    base = load_baseline(path)
    assert len(base) == 2  # the failed row and the non-JSON line are not cases
    new = [_row(samples_per_sec=1500.0, peak_mem_mib=250.0), _row(precision="bf16", samples_per_sec=2000.0),
           _row(memory="invertible"), {**_row(task="synthesis", khz=30.0, samples_per_sec=None, memory=None)}]
    out = compare(new, base)
    assert [c["matched"] for c in out] == [True, True, False, False]
    assert out[0]["speed_ratio"] == pytest.approx(1.5) and out[0]["mem_ratio"] == pytest.approx(0.5)
    assert out[1]["speed_ratio"] == pytest.approx(0.5)
    table = format_comparison(out)
    assert "1.500" in table and "0.500" in table and table.count("no match in the baseline") == 2
    # A synthesis row's memory field never splits its identity (only training has memory modes).
    assert case_identity({"task": "synthesis", "memory": "standard"}) == case_identity({"task": "synthesis"})


@pytest.mark.parametrize("content, says", [
    (None, "cannot read"),
    ("", "no result rows"),
    ('{"task": "train", "model": "tiny"\n', "line 1 is not valid JSON"),
    ('{"model": "tiny"}\n', "line 1 is not a waveglow-bench result row"),
])
def test_bad_baseline_files_are_user_errors(tmp_path, content, says):
    path = tmp_path / "base.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=says):
        load_baseline(path)


@pytest.mark.slow  # a real (tiny) training case with its machine-peak measurement
def test_cli_prints_the_ratio_per_case(tmp_path):
    good = tmp_path / "good.jsonl"
    # The same case at 1 sample/s, and a case this run does not have.
    good.write_text(json.dumps(_row(samples_per_sec=1.0, peak_mem_mib=1.0)) + "\n"
                    + json.dumps(_row(model="squeeze")) + "\n")
    out_dir = tmp_path / "out"
    proc = run_script("waveglow-bench", *TINY_TRAIN, f"baseline={good}", f"output_dir={out_dir}", timeout=240)
    (row,) = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert f"against baseline {good}" in proc.stderr
    # Against 1 sample/s and 1 MiB the ratios are the new figures themselves.
    written = (out_dir / "baseline.txt").read_text()
    assert f"{row['samples_per_sec']:.3f}" in written and f"{row['peak_mem_mib']:.3f}" in written
    assert f"{row['samples_per_sec']:.3f}" in proc.stderr


def test_cli_rejects_a_bad_baseline_before_any_case_runs(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    out_bad = tmp_path / "out_bad"
    proc = run_script("waveglow-bench", *TINY_TRAIN, f"baseline={bad}", f"output_dir={out_bad}", check=False)
    assert proc.returncode == 2
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: baseline={bad}: line 1 is not valid JSON"), proc.stderr
    assert "Traceback" not in proc.stderr and "[1/1]" not in proc.stderr  # no case started
    assert proc.stdout == "" and not out_bad.exists()
