"""How much RAM this process may still fill: the machine's available memory, or less where the process runs
in a control group with a memory limit (a SLURM job's allocation, a container's `--memory`), whose
kernel kills the job at its limit however much the machine has free.

The limit is read from the process's own cgroup and every cgroup above it (a SLURM job sets it on the
job, its steps inherit it): cgroup v2's `memory.max` or v1's `memory.limit_in_bytes`, less what the
group uses now without its inactive file cache (the kernel reclaims that before killing): v2's
`memory.current` less `inactive_file` of `memory.stat`, v1's `memory.usage_in_bytes` less
`total_inactive_file`. A group without a limit ("max", or v1's page-rounded 2**63) does not count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED_V1 = 2**62  # v1 writes "no limit" as 2**63 rounded down to a page; anything this large is none


@dataclass(frozen=True)
class FreeRam:
    """Bytes of RAM this process may still use, and whether a cgroup memory limit is what sets them."""

    bytes: int
    under_limit: bool


def free_ram(proc_cgroup: Path | None = None, root: Path | None = None) -> FreeRam:
    """The least of the machine's available memory and the room left under every memory limit of this
    process's cgroups (read from PROC_CGROUP and CGROUP_ROOT unless given)."""
    room = cgroup_room(proc_cgroup, root)
    machine = psutil.virtual_memory().available
    if room is not None and room < machine:
        return FreeRam(room, True)
    return FreeRam(machine, False)


def cgroup_room(proc_cgroup: Path | None = None, root: Path | None = None) -> int | None:
    """The least room left under a memory limit of the process's cgroups (v2 or v1), None where none is set
    or the cgroup files cannot be read (not Linux, no cgroup file system mounted)."""
    root = CGROUP_ROOT if root is None else root
    try:
        lines = (PROC_CGROUP if proc_cgroup is None else proc_cgroup).read_text().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: the unified hierarchy, mounted at the root (or at root/unified beside v1)
            for base in (root, root / "unified"):
                rooms += _rooms(base, path, "memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            rooms += _rooms(root / "memory", path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                            "total_inactive_file")
    return min(rooms) if rooms else None


def _rooms(base: Path, path: str, limit_file: str, usage_file: str, inactive_key: str) -> list[int]:
    """Room under the limit of each group from the process's own up to the hierarchy's root. In a container
    whose cgroup namespace hides the path, the group is the mount's root itself."""
    rooms = []
    folder = base / path.strip("/")
    while True:
        room = _room(folder, limit_file, usage_file, inactive_key)
        if room is not None:
            rooms.append(room)
        if folder == base or base not in folder.parents:
            break
        folder = folder.parent
    return rooms


def _room(folder: Path, limit_file: str, usage_file: str, inactive_key: str) -> int | None:
    try:
        limit_text = (folder / limit_file).read_text().strip()
        if limit_text == "max" or int(limit_text) >= UNLIMITED_V1:
            return None
        usage = int((folder / usage_file).read_text().strip())
    except (OSError, ValueError):
        return None
    inactive = 0
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == inactive_key:
                inactive = int(value)
                break
    except (OSError, ValueError):
        pass
    return max(0, int(limit_text) - max(0, usage - inactive))
