"""The RAM a process may fill: a cgroup memory limit (a SLURM job's, a container's) counts, on cgroup v2
and v1, at the process's group and every group above it; the inactive file cache counts as free; no
limit (or unreadable cgroup files) leaves the machine's available memory. Built on fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
import torch

import fpt.stages.core.memory as memory
from fpt.cache.errors import UserError
from fpt.stages.core.memory import cgroup_room, free_ram
from fpt.stages.train.resident import CopySize, resolve_residency

GB = 10**9


def _group(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)


def test_a_v2_job_limit_above_the_process_s_group_caps_the_room(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/job_42/step_0/user/task_0\n")
    root = tmp_path / "sys"
    # the job's limit: 8 GB, 5 GB used of which 1 GB is inactive file cache: 4 GB of room
    _group(root / "system.slice/job_42", {"memory.max": str(8 * GB), "memory.current": str(5 * GB),
                                          "memory.stat": f"anon 1\nfile 3\ninactive_file {GB}\nactive_file 7\n"})
    _group(root / "system.slice/job_42/step_0", {"memory.max": "max", "memory.current": str(5 * GB)})
    _group(root / "system.slice/job_42/step_0/user/task_0", {"memory.max": "max", "memory.current": str(GB)})
    assert cgroup_room(proc, root) == 4 * GB
    # a tighter limit lower down wins: 2 GB, 1.5 GB used
    _group(root / "system.slice/job_42/step_0", {"memory.max": str(2 * GB), "memory.current": str(GB + GB // 2)})
    assert cgroup_room(proc, root) == GB // 2


def test_a_v1_memory_limit_counts_and_its_unlimited_value_does_not(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("9:cpu,cpuacct:/slurm/uid_1/job_7\n4:memory:/slurm/uid_1/job_7\n0::/\n")
    root = tmp_path / "sys"
    unlimited = str(9223372036854771712)
    _group(root / "memory", {"memory.limit_in_bytes": unlimited, "memory.usage_in_bytes": str(20 * GB)})
    _group(root / "memory/slurm/uid_1", {"memory.limit_in_bytes": unlimited, "memory.usage_in_bytes": str(GB)})
    _group(root / "memory/slurm/uid_1/job_7", {"memory.limit_in_bytes": unlimited,
                                                "memory.usage_in_bytes": str(GB)})
    assert cgroup_room(proc, root) is None
    _group(root / "memory/slurm/uid_1/job_7", {"memory.limit_in_bytes": str(16 * GB),
                                                "memory.usage_in_bytes": str(6 * GB),
                                                "memory.stat": f"cache 5\ntotal_inactive_file {2 * GB}\n"})
    assert cgroup_room(proc, root) == 12 * GB


def test_a_container_s_own_group_is_the_mount_root(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    root = tmp_path / "sys"
    _group(root, {"memory.max": str(3 * GB), "memory.current": str(GB)})
    assert cgroup_room(proc, root) == 2 * GB


def test_no_cgroup_files_leave_the_machine_s_available_memory(tmp_path: Path) -> None:
    assert cgroup_room(tmp_path / "missing", tmp_path) is None
    unlimited = free_ram(tmp_path / "missing", tmp_path)
    assert unlimited.bytes == pytest.approx(psutil.virtual_memory().available, rel=0.05) and not unlimited.under_limit
    proc = tmp_path / "cgroup"
    proc.write_text("0::/a\n")
    _group(tmp_path / "sys/a", {"memory.max": str(GB), "memory.current": str(GB // 4)})
    assert free_ram(proc, tmp_path / "sys") == memory.FreeRam(3 * GB // 4, True)  # below any machine's free memory


def test_residency_auto_streams_under_a_job_limit_the_machine_would_have_held(monkeypatch: pytest.MonkeyPatch,
                                                                              tmp_path: Path) -> None:

    proc = tmp_path / "cgroup"
    proc.write_text("0::/job\n")
    _group(tmp_path / "sys/job", {"memory.max": str(GB), "memory.current": str(GB // 2)})
    monkeypatch.setattr(memory, "PROC_CGROUP", proc)
    monkeypatch.setattr(memory, "CGROUP_ROOT", tmp_path / "sys")
    size = CopySize(samples=100, features=GB // 2, rest=0)
    chosen = resolve_residency("auto", size, torch.device("cpu"))
    assert chosen.where == "off" and "0.50 GB of RAM available under this process's memory limit" in chosen.why
    with pytest.raises(UserError, match="only 0.50 GB of RAM is available under this process's memory limit"):
        resolve_residency("ram", CopySize(samples=100, features=GB, rest=0), torch.device("cpu"))
