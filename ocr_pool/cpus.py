"""How many CPUs this process may keep busy: its affinity mask and its cgroup CPU quota.

os.cpu_count() counts the host's cores: a container limited to 2 CPUs on a 64-core host
would give every worker 32 threads, and the quota would throttle them all. The pure
usable_cpus() takes the files' contents; read_usable_cpus() reads them for this process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

CGROUP_MOUNT = Path("/sys/fs/cgroup")
CGROUP_V1_CPU_MOUNT = CGROUP_MOUNT / "cpu"
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CgroupFiles:
    """CPU quota files, one entry per level from the process's cgroup up to the mount."""

    # cgroup v2 cpu.max: "200000 100000" is 2 CPUs, "max 100000" no limit.
    cpu_max: list[str] = field(default_factory=list)
    # cgroup v1 (cpu.cfs_quota_us, cpu.cfs_period_us): a quota of -1 is no limit.
    cfs: list[tuple[str, str]] = field(default_factory=list)


def quota_cpus(quota: str, period: str) -> int | None:
    """Whole CPUs a quota allows (at least 1), or None for no limit or an unreadable value.

    Rounded down: 1.5 CPUs run one thread flat out, while two would be throttled every period.
    """
    try:
        quota_us, period_us = int(quota), int(period)
    except ValueError:  # "max", or garbage
        return None
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, quota_us // period_us)


def usable_cpus(affinity: int, cgroup: CgroupFiles) -> int:
    """The tighter of the affinity mask and every cgroup quota on the way up, at least 1."""
    limits = [affinity] if affinity > 0 else []
    for text in cgroup.cpu_max:
        parts = text.split()
        limits.append(quota_cpus(*parts) if len(parts) == 2 else None)
    limits.extend(quota_cpus(quota, period) for quota, period in cgroup.cfs)
    known = [limit for limit in limits if limit is not None]
    return max(1, min(known)) if known else 1


def cgroup_paths(proc_self_cgroup: str) -> dict[str, str]:
    """/proc/self/cgroup as {"v2": path, "cpu": v1 path of the cpu controller}."""
    paths: dict[str, str] = {}
    for line in proc_self_cgroup.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            paths["v2"] = path
        elif "cpu" in controllers.split(","):
            paths["cpu"] = path
    return paths


def levels(mount: Path, path: str) -> list[Path]:
    """The cgroup's folder and its parents up to the mount. In a container the mount is the
    container's own cgroup and the deeper folders do not exist: only the mount is read then."""
    leaf = mount / path.lstrip("/")
    return [leaf, *list(leaf.parents)[: len(leaf.relative_to(mount).parts)]]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_cgroup_files() -> CgroupFiles:
    """This process's quota files: cgroup v2, or v1 when there is no v2 cpu.max."""
    paths = cgroup_paths(_read(PROC_SELF_CGROUP) or "")
    cpu_max = [text for level in levels(CGROUP_MOUNT, paths.get("v2", "/")) if (text := _read(level / "cpu.max"))]
    if cpu_max:
        return CgroupFiles(cpu_max=cpu_max)
    cfs = []
    for level in levels(CGROUP_V1_CPU_MOUNT, paths.get("cpu", "/")):
        quota, period = _read(level / "cpu.cfs_quota_us"), _read(level / "cpu.cfs_period_us")
        if quota and period:
            cfs.append((quota, period))
    return CgroupFiles(cfs=cfs)


def read_usable_cpus() -> int:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no affinity mask, no cgroups
        return os.cpu_count() or 1
    return usable_cpus(affinity, read_cgroup_files())
