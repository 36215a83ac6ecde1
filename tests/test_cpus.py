"""usable_cpus: the affinity mask where the OS has one, the machine's count otherwise."""

from __future__ import annotations

import os

from robocache import _cpus


def test_counts_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert _cpus.usable_cpus() == 3


def test_falls_back_to_the_machine_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 12)
    assert _cpus.usable_cpus() == 12
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # undeterminable
    assert _cpus.usable_cpus() == 1


def test_an_empty_or_failing_mask_still_gives_one(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(), raising=False)
    assert _cpus.usable_cpus() == 1

    def refused(pid):
        raise OSError("no access")

    monkeypatch.setattr(os, "sched_getaffinity", refused, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert _cpus.usable_cpus() == 6
