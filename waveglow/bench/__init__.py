"""Speed measurements that speak in kHz, real-time factor and % of this machine's peak.

Three tasks, each timed as the median (and min) of `repeats` runs after `warmup` runs:

- synthesis: `WaveGlow.infer` on a random mel after `remove_weight_norm`, under
  `torch.inference_mode` (and autocast for bf16/fp16), or `Synthesizer.from_mel`;
- train: the trainer's own step (`waveglow.train.step.Stepper`: forward, backward, clipping,
  Adam) at the training segment length and batch;
- preprocess: `MelSpectrogram` over the wavs of a corpus, in × real time.

Every case also reports the model's analytic cost (`cost.count_macs`, from the config's layer
shapes, in GMAC per audio second), the GMAC/s it achieved, and the dense matmul / conv1d
throughput this machine reaches in the same dtype in the same process
(`timing.measure_machine_peak`), so a result reads as a fraction of what the hardware can do.
Peak memory (`memory.PeakMemory`) is the resident-set high-water mark on CPU (reset per case
through /proc/self/clear_refs) and `max_memory_allocated` on CUDA.

Each case runs in a fresh subprocess by default (`python -m waveglow.bench '<case json>'`), so
one case's allocator state, thread pool or memory peak never leaks into the next.

Modules: `cost` (MAC counts), `timing` (timed runs, machine peak), `memory` (peaks),
`cases` (the case plan and runners), `report` (rows, table, machine line).
"""

from waveglow.bench.cases import (
    TASKS,
    Case,
    as_list,
    bench_preprocess,
    bench_synthesis,
    bench_train,
    check_device,
    check_model_spec,
    error_row,
    model_config_dir,
    plan_cases,
    resolve_model,
    run_case,
    run_case_isolated,
)
from waveglow.bench.cost import (
    count_macs,
    count_macs_traced,
    macs_per_sample,
    register_flop_formulas,
)
from waveglow.bench.memory import PeakMemory
from waveglow.bench.report import RESULT_KEYS, format_table, json_safe, machine_description
from waveglow.bench.timing import CLOCKS, measure_machine_peak, time_runs

__all__ = [
    "CLOCKS",
    "RESULT_KEYS",
    "TASKS",
    "Case",
    "PeakMemory",
    "as_list",
    "bench_preprocess",
    "bench_synthesis",
    "bench_train",
    "check_device",
    "check_model_spec",
    "count_macs",
    "count_macs_traced",
    "error_row",
    "format_table",
    "json_safe",
    "machine_description",
    "macs_per_sample",
    "measure_machine_peak",
    "model_config_dir",
    "plan_cases",
    "register_flop_formulas",
    "resolve_model",
    "run_case",
    "run_case_isolated",
    "time_runs",
]
