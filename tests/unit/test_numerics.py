"""The engine plan: how many model instances run at once and how many torch threads each gets."""
from __future__ import annotations

import pytest
import torch

from pipelines import numerics
from pipelines.numerics import intra_op_threads, resolve_instances

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("cores", "requested", "device", "expected"), [
    (2, 0, CPU, 2), (8, 0, CPU, 8), (1, 0, CPU, 1), (16, 0, CUDA, 1), (2, 3, CPU, 3), (16, 2, CUDA, 2),
])
def test_instances_auto_is_one_per_cpu_core_and_one_on_cuda(monkeypatch, cores, requested, device, expected) -> None:
    monkeypatch.setattr(numerics, "cpu_cores", lambda: cores)
    assert resolve_instances(requested, device) == expected


@pytest.mark.parametrize(("cores", "requested", "instances", "device", "expected"), [
    (2, 0, 2, CPU, 1),  # the default on these machines: 2 instances x 1 thread
    (8, 0, 2, CPU, 4),  # the cores are shared out among the instances
    (2, 0, 3, CPU, 1),  # never below one thread
    (8, 0, 1, CPU, 0),  # one instance: torch's own default
    (8, 3, 2, CPU, 3),  # an explicit setting wins
    (8, 0, 2, CUDA, 0),  # GPU: the CPU threads are left alone
])
def test_threads_per_instance(monkeypatch, cores, requested, instances, device, expected) -> None:
    monkeypatch.setattr(numerics, "cpu_cores", lambda: cores)
    assert intra_op_threads(requested, instances, device) == expected


def test_cpu_cores_counts_this_process_cores() -> None:
    import os

    assert 1 <= numerics.cpu_cores() <= (os.cpu_count() or 1)
