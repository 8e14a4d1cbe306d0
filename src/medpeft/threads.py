"""How many CPU threads torch uses: ``--threads N``, ``MEDPEFT_THREADS``, ``OMP_NUM_THREADS``,
else the cores this process may run on (affinity mask and cgroup CPU quota).

Idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``, ``KMP_BLOCKTIME=0``) instead of
spinning, which on a shared machine takes cores from the other processes and, through
them, from torch's own threads. The environment part only takes effect when it is set
before torch is imported, which is what `configure_threads` does from the command line.
DataLoader worker processes run one torch thread each (torch sets this in every worker).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from medpeft.errors import ConfigError

THREADS_ENV = "MEDPEFT_THREADS"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SLEEPING_THREADS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


def available_cores(cgroup_root: Path = CGROUP_ROOT) -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(affinity, quota) if quota is not None else affinity)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> int | None:
    """Whole cores allowed by the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``),
    at least 1; ``None`` without a quota."""
    for quota_file, period_file in (("cpu.max", None), ("cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us")):
        try:
            fields = (root / quota_file).read_text().split()
            if period_file is not None:
                fields.append((root / period_file).read_text().strip())
            quota, period = fields[0], int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
        if quota in ("max", "-1") or period <= 0:
            return None
        return max(1, math.floor(int(quota) / period))
    return None


def resolve_threads(requested: int | None = None, environ: Mapping[str, str] = os.environ,
                    command_default: int | None = None) -> int:
    """Torch's intra-op threads: ``requested`` (``--threads``), else ``$MEDPEFT_THREADS``, else
    ``$OMP_NUM_THREADS``, else the command's own default (the demo's tiny model is fastest on
    one thread), else `available_cores` shared among the processes of one ``accelerate
    launch`` (``LOCAL_WORLD_SIZE``)."""
    if requested is not None:
        return _positive(requested, "--threads")
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        if environ.get(name, "").strip():
            return _positive(environ[name], name)
    if command_default is not None:
        return command_default
    processes = int(environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cores() // max(1, processes))


def _positive(value: int | str, where: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"{where}: expected a whole number of threads >= 1, got {value!r}")
    return number


def configure_threads(threads: int, environ: MutableMapping[str, str] = os.environ) -> None:
    """Run torch on ``threads`` intra-op threads, idle threads asleep.

    Sets the environment torch's OpenMP/MKL read when torch is imported; when torch is
    already imported, also ``torch.set_num_threads`` and one inter-op thread (unless that
    pool has already started, when it can no longer be resized).
    """
    for name, value in SLEEPING_THREADS.items():
        environ.setdefault(name, value)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        environ[name] = str(threads)
    torch = sys.modules.get("torch")
    if torch is None:
        return
    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # inter-op pool already started: too late
        torch.set_num_interop_threads(1)


def set_thread_threads(threads: int) -> None:
    """Run torch ops of the calling thread on ``threads`` intra-op threads (a pool initializer).

    With OpenMP the count is per calling thread: the server's decode threads take one each
    while its forward thread sets its own. Torch's own first-use set-up of this thread runs
    first, so it cannot undo the count later; threads that first use torch after this call
    start from the same count unless they set theirs.
    """
    import torch

    torch.get_num_threads()  # torch's per-thread set-up, which would reset the count
    torch.set_num_threads(threads)
