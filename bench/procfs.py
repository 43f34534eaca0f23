"""What the processes under test cost and how busy the CPUs were, read from /proc.

The benchmark's CPU figure is utime+stime of a server's whole process tree (``/proc/PID/stat``: trace-proxy's
workers, nginx's worker, squid's helpers), read just before and after a measured window; ``/proc/stat`` tells how
much of each pinned CPU other processes used meanwhile, i.e. how far the machine was from quiet. These readers sit
apart from the rig and the measurements because ``slowloris.py`` counts with them too, the same way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")  # = `getconf CLK_TCK`


def _proc_stat(pid: int) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (index 0 = field 3, the state), or None if the process is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _proc_stat(int(entry))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if _proc_stat(pid) is not None:
            tree.append(pid)
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_ticks(root: int) -> int:
    """utime + stime (fields 14 and 15 of /proc/PID/stat, clock ticks) summed over the process tree."""
    total = 0
    for pid in process_tree(root):
        fields = _proc_stat(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total


def tree_rss_kib(root: int) -> int:
    """VmRSS summed over the process tree, in KiB."""
    total = 0
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


def listen_sockets(port: int) -> int:
    """How many IPv4 sockets listen on 127.0.0.1:`port` (one per SO_REUSEPORT worker)."""
    wanted = f"0100007F:{port:04X}"
    count = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if len(parts) > 3 and parts[1] == wanted and parts[3] == "0A":
                count += 1
    return count


def cpu_stat() -> dict[str, list[int]]:
    """/proc/stat's per-CPU lines: "cpu0" -> [user, nice, system, idle, iowait, irq, softirq, steal], in ticks."""
    out: dict[str, list[int]] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu"):
                name, *values = line.split()
                out[name] = [int(v) for v in values[:8]]
    return out


def cpu_usage(
    before: dict[str, list[int]], after: dict[str, list[int]], cpu: str | None, own_ticks: int | None
) -> dict[str, float] | None:
    """How busy one CPU was between two `cpu_stat` readings, in % of the interval.

    `other_pct` is user+nice+system time not spent by the process tree that `own_ticks` belongs to (the proxy,
    pinned there, or wrk and the origin on the load CPU): other processes, which disturb the measurement.
    """
    key = "cpu" if cpu is None or "," in cpu else f"cpu{cpu}"
    if key not in before or key not in after:
        return None
    d = [b - a for a, b in zip(before[key], after[key], strict=True)]
    total = sum(d) or 1
    user_sys = d[0] + d[1] + d[2]
    usage = {
        "busy_pct": round((total - d[3] - d[4]) * 100 / total, 1),
        "softirq_pct": round(d[6] * 100 / total, 1),
        "steal_pct": round(d[7] * 100 / total, 1),
    }
    if own_ticks is not None:
        usage["other_pct"] = round(max(0, user_sys - own_ticks) * 100 / total, 1)
    return usage


def wait_quiet(limit: float, cpus: Sequence[str | None]) -> float:
    """Wait up to `limit` seconds until `cpus` were each under 10 % busy for 2 s in a row; return the wait."""
    started = time.monotonic()
    quiet = 0
    keys = [f"cpu{c}" if c is not None else "cpu" for c in cpus]
    while time.monotonic() - started < limit:
        before = cpu_stat()
        time.sleep(1.0)
        after = cpu_stat()
        busy = [cpu_usage(before, after, key.removeprefix("cpu") or None, None) for key in keys]
        quiet = quiet + 1 if all(b is not None and b["busy_pct"] < 10 for b in busy) else 0
        if quiet >= 2:
            break
    return round(time.monotonic() - started, 1)
