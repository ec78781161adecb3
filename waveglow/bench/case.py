"""What one benchmark measurement is (`Case`): plain values, so that it travels to a child
process as JSON. Its own module so that every runner (`cases`, `onnx_case`) imports it without
importing the others."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Case:
    """One benchmark measurement (plain values: it travels to the child process as JSON).

    `model` is a config name (`waveglow/configs/model/<name>.yaml`, or under `config_dir`) or a
    checkpoint path.
    """

    task: str
    model: str
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    seconds: float = 1.0  # synthesis: audio length of the mel; train: ignored (segment_length)
    repeats: int = 5
    warmup: int = 2
    threads: int | None = None
    sigma: float = 0.6
    seed: int = 0
    audio: dict = field(default_factory=dict)  # the audio settings ({}: AudioConfig defaults)
    segment_length: int = 16000
    lr: float = 1e-4
    corpus: str = "data/demo"
    config_dir: str = ""  # where model configs are looked up ("": the package's configs/)
    peak: dict = field(default_factory=dict)  # measure_machine_peak kwargs; {} -> defaults
    measure_peak: bool = True
    snr: bool = True  # synthesis in bf16/fp16: SNR of the output against fp32 with the same z
    engine: str = "model"  # synthesis through `model.infer` or `Synthesizer.from_mel`
    clock: str = "wall"  # "wall" or "cpu" (process CPU time; see `time_runs`)
    memory: str = "standard"  # train: backprop memory mode (`WaveGlow.forward`'s `memory`)
