"""The bench's table and its usage line: each speed in its own unit, one name for the model list."""

from __future__ import annotations

from waveglow.bench.report import empty_row, format_table
from waveglow.cli.bench import SCRIPT, rewrite_argv
from waveglow.cli.common import help_text


def test_training_rows_have_their_own_samples_per_second_column():
    rows = [empty_row(task="synthesis", model="tiny", device="cpu", precision="fp32", batch=1, khz=449.0,
                      samples_per_sec=449_000.0, rtf=20.4),
            empty_row(task="train", model="tiny", device="cpu", precision="fp32", batch=2, khz=186.6,
                      samples_per_sec=186_600.0, rtf=8.5)]
    header, _, synthesis, train = format_table(rows).splitlines()
    names = header.split()
    assert "kHz" in names and "samples/s" in names

    def cell(line: str, name: str) -> str:
        # Columns are right-aligned under their header: the cell ends where the header does.
        end = header.index(name) + len(name)
        return line[:end].split()[-1]

    assert cell(synthesis, "kHz") == "449.00" and cell(synthesis, "samples/s") == "-"
    assert cell(train, "kHz") == "-" and cell(train, "samples/s") == "186600"


def test_usage_and_settings_name_the_model_list_alike():
    page = help_text(SCRIPT)
    usage = next(line for line in page.splitlines() if line.startswith("usage:"))
    assert "[models=" in usage and "model= is the same as models=" in usage
    assert any(line.strip().startswith("models=") for line in page.splitlines())
    assert all(" model=" not in e for e in SCRIPT.examples)
    assert rewrite_argv(["model=tiny,squeeze"]) == rewrite_argv(["models=tiny,squeeze"]) == ["models=[tiny,squeeze]"]
