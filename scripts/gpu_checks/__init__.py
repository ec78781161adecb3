"""The parts of `make gpu-check` (scripts/gpu_check.py is the command):

- `settings`: what a check runs and where (`Settings`), one planned command (`Step`), goals.
- `rows`: a result row and its failure texts.
- `parse`: reading what the commands print (pytest's summary, the trainer's log, metrics.jsonl).
- `checks`: every check: the commands it plans and the rows it reads back, in one registry
  (`CHECKS`); adding a check is adding one `Check` there.
- `report`: the table, the JSON lines and the summary line.
- `runner`: running the plan within the time budget, and `--as-train`.
"""
