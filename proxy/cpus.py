"""How many CPUs this process may use, for `--workers auto`: its affinity mask, capped by its cgroup v2 quota.

Rules:
1. The affinity (`os.sched_getaffinity`) is the set of cores the scheduler may run the process on
   (taskset, cpusets, the Kubernetes static CPU manager).
2. The quota is `cpu.max` ("<quota> <period>" in microseconds, or "max <period>" for none); Kubernetes
   writes it from `resources.limits.cpu`. Cgroups nest, so the smallest quota from the process's own
   cgroup (`0::<path>` in /proc/self/cgroup) up to the root applies. cgroup v1 is not read.
3. The answer is the affinity count, capped by floor(quota / period), and at least 1: one worker per
   whole CPU the quota grants, so bursts of all workers do not get the pod throttled for the rest of a
   period (the latency a CFS quota adds), while a quota below one CPU still gets one worker.
The parsing functions are pure; `usable_cpus` does the reading.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def parse_cpu_max(text: str) -> float | None:
    """CPUs granted by a `cpu.max` line ("200000 100000" -> 2.0), None for "max" or anything unreadable."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_path(proc_cgroup: str) -> str | None:
    """The cgroup v2 path from /proc/self/cgroup's text (its `0::/path` line), None without one."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:].strip() or "/"
    return None


def smallest_quota(quotas: list[float | None]) -> float | None:
    found = [quota for quota in quotas if quota is not None]
    return min(found) if found else None


def cpus_for(affinity: int, quota: float | None) -> int:
    """Rule 3: affinity capped by whole CPUs of quota, at least 1."""
    if quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.floor(quota)))


def quota_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """Rule 2: the smallest cgroup v2 quota on the way from this process's cgroup to the root, in CPUs."""
    try:
        path = cgroup_path(proc_cgroup.read_text())
    except OSError:
        return None
    if path is None:
        return None
    here = root / path.lstrip("/")
    quotas = [_read_quota(directory) for directory in (here, *here.parents) if directory.is_relative_to(root)]
    return smallest_quota(quotas)


def _read_quota(directory: Path) -> float | None:
    try:
        return parse_cpu_max((directory / "cpu.max").read_text())
    except OSError:
        return None


def usable_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """CPUs this process may use (rules 1-3)."""
    return cpus_for(len(os.sched_getaffinity(0)), quota_cpus(root, proc_cgroup))
