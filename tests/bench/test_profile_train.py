"""waveglow.bench.profile_train: the operator classes and a real profile of a tiny step."""

from __future__ import annotations

import pytest

from waveglow.bench.profile_train import KINDS, PHASES, format_profile, kind_of, profile_step

pytestmark = pytest.mark.usefixtures("single_thread")


def test_operator_classes():
    assert kind_of("aten::convolution_backward") == "conv" and kind_of("aten::mkldnn_convolution") == "conv"
    assert kind_of("aten::baddbmm") == "matmul" and kind_of("aten::bmm") == "matmul"
    assert kind_of("aten::sigmoid_backward") == "element-wise" and kind_of("aten::fill_") == "element-wise"
    assert kind_of("aten::linalg_slogdet") == "other"


@pytest.mark.slow  # a profiled training step: ~30 s on the loaded 2-core machine
def test_a_tiny_step_has_forward_backward_and_optimizer_time():
    times = profile_step("tiny", "fp32", segment_length=1024, batch=1)
    assert set(times) <= {(p, k) for p in PHASES for k in KINDS}
    for phase in PHASES:
        assert sum(v for (p, _), v in times.items() if p == phase) > 0, phase
    assert times[("forward", "conv")] > 0 and times[("backward", "conv")] > 0
    table = format_profile(times)
    assert table.splitlines()[0] == "| phase | conv | matmul | element-wise | other | total |"
    assert len(table.splitlines()) == 2 + len(PHASES)
