"""The engine plan: how many model instances run at once and how many torch threads each gets."""

from __future__ import annotations

import os

import pytest
import torch

from pipelines import numerics
from pipelines.numerics import intra_op_threads, resolve_instances

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("cores", "requested", "device", "expected"),
    [
        (2, 0, CPU, 2),
        (8, 0, CPU, 8),
        (1, 0, CPU, 1),
        (16, 0, CUDA, 1),
        (2, 3, CPU, 3),
        (16, 2, CUDA, 2),
    ],
)
def test_instances_auto_is_one_per_cpu_core_and_one_on_cuda(monkeypatch, cores, requested, device, expected) -> None:
    monkeypatch.setattr(numerics, "cpu_cores", lambda: cores)
    assert resolve_instances(requested, device) == expected


@pytest.mark.parametrize(
    ("cores", "requested", "instances", "device", "expected"),
    [
        (2, 0, 2, CPU, 1),  # the default on these machines: 2 instances x 1 thread
        (8, 0, 2, CPU, 4),  # the cores are shared out among the instances
        (2, 0, 3, CPU, 1),  # never below one thread
        (8, 0, 1, CPU, 0),  # one instance: torch's own default
        (8, 3, 2, CPU, 3),  # an explicit setting wins
        (8, 0, 2, CUDA, 0),  # GPU: the CPU threads are left alone
    ],
)
def test_threads_per_instance(monkeypatch, cores, requested, instances, device, expected) -> None:
    monkeypatch.setattr(numerics, "cpu_cores", lambda: cores)
    assert intra_op_threads(requested, instances, device) == expected


def test_cpu_cores_counts_this_process_cores(tmp_path) -> None:
    assert 1 <= numerics.cpu_cores(tmp_path) <= (os.cpu_count() or 1)  # no cgroup files: the CPU set


@pytest.mark.parametrize(
    ("files", "limit"),
    [
        ({"cpu.max": "max 100000\n"}, None),  # cgroup v2, unlimited
        ({"cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "100000 100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # cgroup v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, unlimited
    ],
)
def test_cpu_cores_respects_a_container_cpu_limit(tmp_path, files, limit) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    unlimited = numerics.cpu_cores(tmp_path / "none")
    assert numerics.cpu_cores(tmp_path) == (unlimited if limit is None else min(limit, unlimited))
