"""waveglow.runtime: the bf16-on-CPU warning of the precision resolver."""

from __future__ import annotations

import logging

import pytest
import torch

from waveglow import runtime


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(runtime, "_WARNED", set())


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_bf16_on_a_cpu_without_bf16_instructions_warns_once(monkeypatch, caplog, fresh_warnings):
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: False)
    cpu = torch.device("cpu")
    with caplog.at_level(logging.WARNING, logger="waveglow.runtime"):
        assert runtime.resolve_precision("bf16", cpu, key="train.precision") is torch.bfloat16
        runtime.resolve_precision("bf16", cpu, key="train.precision")
        assert runtime.resolve_precision("fp32", cpu, key="train.precision") is None
    (message,) = _warnings(caplog)
    assert message.startswith("train.precision=bf16 on a CPU without bfloat16 instructions")
    assert message.endswith("use fp32")


def test_bf16_on_a_cpu_with_bf16_instructions_is_silent(monkeypatch, caplog, fresh_warnings):
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: True)
    with caplog.at_level(logging.WARNING, logger="waveglow.runtime"):
        assert runtime.resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert _warnings(caplog) == []

