"""`--workers auto`: the affinity mask capped by the cgroup v2 quota, read from a fake /sys/fs/cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy import cpus


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2.0),
        ("150000 100000", 1.5),
        ("", None),
        ("x y", None),
        ("0 1", None),
    ],
)
def test_cpu_max_lines(text: str, found: float | None) -> None:
    assert cpus.parse_cpu_max(text) == found


def test_the_cgroup_v2_line_of_proc_self_cgroup() -> None:
    assert cpus.cgroup_path("12:cpu,cpuacct:/kubepods\n0::/kubepods/pod1/c1\n") == "/kubepods/pod1/c1"
    assert cpus.cgroup_path("0::/\n") == "/"
    assert cpus.cgroup_path("4:memory:/x\n") is None  # cgroup v1 only: no quota is read


@pytest.mark.parametrize(
    ("affinity", "quota", "workers"),
    [(8, None, 8), (8, 2.0, 2), (8, 2.5, 2), (8, 0.5, 1), (2, 16.0, 2), (1, None, 1)],
)
def test_whole_cpus_of_the_quota_cap_the_affinity(affinity: int, quota: float | None, workers: int) -> None:
    assert cpus.cpus_for(affinity, quota) == workers


def test_the_smallest_quota_on_the_way_to_the_root_applies(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    leaf = root / "kubepods" / "pod1" / "c1"
    leaf.mkdir(parents=True)
    (root / "cpu.max").write_text("max 100000\n")
    (root / "kubepods" / "pod1" / "cpu.max").write_text("150000 100000\n")  # the pod's limit: 1.5 CPUs
    (leaf / "cpu.max").write_text("400000 100000\n")
    proc = tmp_path / "cgroup-of-self"
    proc.write_text("0::/kubepods/pod1/c1\n")
    assert cpus.quota_cpus(root, proc) == 1.5
    assert cpus.usable_cpus(root, proc) == 1


def test_no_cgroup_v2_means_the_affinity_alone(tmp_path: Path) -> None:
    assert cpus.quota_cpus(tmp_path, tmp_path / "missing") is None
    assert cpus.usable_cpus(tmp_path, tmp_path / "missing") >= 1
