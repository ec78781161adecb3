#!/usr/bin/env bash
# The busy-core figures of docs/performance.md ("One core busy"): `make demo` wall time, tiny
# training samples/s and tiny synthesis kHz on an otherwise idle machine, then with one core
# kept busy by `yes > /dev/null`, with the old default (threads = every core, what torch picks)
# and with threads=null (the cores free at start).
#
# Run it on an idle machine from the repository root, after `make install`:
#     bash scripts/measure_busy_core.sh            # ~15-20 min on 2 cores (estimated: two demos
#                                                  # of ~4-8 min, five short training and synthesis runs)
#     BEFORE_DEMO=1 bash scripts/measure_busy_core.sh   # also `make demo` busy with every core
#                                                       # as threads (~40 min more on 2 cores)
# Results: outputs/measure_busy_core/results.txt (and each run's log beside it).
set -euo pipefail

OUT=${OUT:-outputs/measure_busy_core}
CORES=$(.venv/bin/python -c "import os; print(len(os.sched_getaffinity(0)))")
BIN=.venv/bin
rm -rf "$OUT"
mkdir -p "$OUT"
RESULTS=$OUT/results.txt
BUSY_PID=""

busy_on() { yes > /dev/null & BUSY_PID=$!; sleep 2; }
busy_off() { if [ -n "$BUSY_PID" ]; then kill "$BUSY_PID" 2>/dev/null || true; wait "$BUSY_PID" 2>/dev/null || true; BUSY_PID=""; fi; }
trap busy_off EXIT

note() { echo "$*" | tee -a "$RESULTS"; }

# `make demo` in its own run dir and output folder; prints the wall seconds.
demo() {  # name [THREADS]
  local name=$1 threads=${2:-}
  local t0=$SECONDS
  DEMO_RUN_DIR=$OUT/$name/run DEMO_OUT=$OUT/$name/demo make demo THREADS="$threads" > "$OUT/$name.log" 2>&1
  note "make demo ($name${threads:+, THREADS=$threads}): $((SECONDS - t0)) s wall"
  grep -o "[0-9]* threads\? ([^)]*)" "$OUT/$name.log" | sed 's/^/  /' >> "$RESULTS" || true
}

# Tiny training on the demo corpus, 60 steps; prints the samples/s of the last log line.
train() {  # name threads-setting
  local name=$1 setting=$2
  $BIN/waveglow-train data=demo model=tiny train=demo data.segment_length=8192 train.max_steps=60 \
    train.log_every=20 train.progress_seconds=0 train.val_every=100000 train.audio_every=0 \
    train.checkpoint_every=100000 train.device=cpu "train.threads=$setting" "run_dir=$OUT/$name" \
    > "$OUT/$name.log" 2>&1
  note "tiny training ($name, train.threads=$setting): $(grep '^step 60/' "$OUT/$name.log" | sed 's/.*| \([0-9,]*\) samples\/s.*/\1/') samples/s"
  grep -o "[0-9]* threads\? ([^)]*)" "$OUT/$name.log" | sed 's/^/  /' >> "$RESULTS" || true
  grep "ran at" "$OUT/$name.log" >> "$RESULTS" || true
}

# Tiny synthesis of the demo's held-out mels with the idle demo's checkpoint; prints its kHz.
synth() {  # name threads-setting
  local name=$1 setting=$2
  $BIN/waveglow-synthesize "checkpoint=$OUT/idle/run/checkpoints/best.pt" "input=$OUT/idle/demo/mels" \
    "output_dir=$OUT/$name" "threads=$setting" > "$OUT/$name.log" 2>&1
  note "tiny synthesis ($name, threads=$setting): $(grep -o '[0-9.]* kHz' "$OUT/$name.log" | tail -1)"
  grep -o "[0-9]* threads\? ([^)]*)" "$OUT/$name.log" | sed "s/^/  /" >> "$RESULTS" || true
  grep "ran at" "$OUT/$name.log" >> "$RESULTS" || true
}

note "machine: $CORES usable cores, $(nproc) online; load average $(cut -d' ' -f1-3 /proc/loadavg); $(date -u)"
note "== idle"
demo idle
train train-idle null
synth synth-idle null

note "== one core busy (yes > /dev/null)"
busy_on
train train-busy-all "$CORES"
train train-busy-auto null
synth synth-busy-all "$CORES"
synth synth-busy-auto null
demo busy-auto
if [ "${BEFORE_DEMO:-0}" = 1 ]; then
  demo busy-all "$CORES"
fi
busy_off
note "done $(date -u)"
