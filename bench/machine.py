"""What ran the benchmark: the machine, the programs' versions, the trace-proxy build, and the baseline's venv.

Recorded in the JSON file beside the figures, because a figure is only comparable with another taken on the same
kernel, CPUs, interpreter and build; an A/B run also asks the baseline's venv what it holds, so that a difference in
dependencies or build mode shows up as a warning rather than as a speed-up.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from options import Baseline
from procfs import CLK_TCK

REPO = Path(__file__).resolve().parent.parent


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (done.stdout.strip() or done.stderr.strip()).splitlines()
    return text[0] if text else "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "clk_tck": CLK_TCK,
        "loadavg_at_start": os.getloadavg(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["mem_total_kib"] = int(line.split()[1])
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                info["os"] = line.split("=", 1)[1].strip('"')
    return info


def trace_proxy_build() -> str:
    """Whether the installed trace-proxy runs its hot path compiled (mypyc, TRACE_PROXY_MYPYC=1) or interpreted."""
    spec = importlib.util.find_spec("proxy.server.http1")
    origin = spec.origin if spec is not None else None
    if origin is None:
        return "not installed"
    return "compiled (mypyc)" if not origin.endswith(".py") else "interpreted"


# Run by the baseline's interpreter: trace_proxy_build() and the package versions of its venv.
_BASELINE_PROBE = """
import importlib.metadata as metadata, importlib.util as util, json
spec = util.find_spec("proxy.server.http1")
origin = spec.origin if spec is not None else None
build = "not installed" if origin is None else "interpreted" if origin.endswith(".py") else "compiled (mypyc)"
out = {"trace_proxy_build": build}
for package in ("trace-proxy", "uvloop", "httptools", "aiohttp", "pydantic"):
    try:
        out[package] = metadata.version(package)
    except metadata.PackageNotFoundError:
        out[package] = None
print(json.dumps(out))
"""


def baseline_info(baseline: Baseline) -> dict[str, Any]:
    """The baseline's commit and what its venv holds, so that an A/B shows it compared like with like.

    Asked of the baseline's own interpreter in isolated mode (``-I``): with the checkout's directory on its path, the
    checkout's ``proxy`` sources would answer instead of the baseline's install.
    """
    python = Path(baseline.program).parent / "python"
    info: dict[str, Any] = {"ref": baseline.ref, "commit": baseline.commit, "program": baseline.program}
    info["python_executable"] = os.path.realpath(python)
    try:
        done = subprocess.run(
            [str(python), "-I", "-c", _BASELINE_PROBE], capture_output=True, text=True, timeout=30, check=False
        )
        info.update(json.loads(done.stdout))
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        info["trace_proxy_build"] = f"unknown ({type(exc).__name__}: {exc})"
    return info


def versions(bins: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "nginx": _first_line([bins["nginx"], "-v"]),
        "squid": _first_line([bins["squid"], "-v"]),
        "tinyproxy": _first_line([bins["tinyproxy"], "-v"]),
        "wrk": _first_line([bins["wrk"], "-v"]),
        "curl": _first_line([bins["curl"], "-V"]),
        "python": sys.version.split()[0],
        "python_executable": os.path.realpath(sys.executable),
        "trace_proxy_build": trace_proxy_build(),
    }
    for package in ("trace-proxy", "uvloop", "httptools", "aiohttp", "pydantic"):
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    git_env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain"], capture_output=True, text=True, timeout=10, env=git_env
        )
        if head.returncode == 0:
            out["git_commit"] = head.stdout.strip()
            out["git_dirty"] = bool(status.stdout.strip())
    return out


def find_bins() -> dict[str, str]:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
    bins: dict[str, str] = {}
    missing = []
    for name in ("nginx", "squid", "tinyproxy", "wrk", "curl", "taskset"):
        found = shutil.which(name, path=path)
        if found is None:
            missing.append(name)
        else:
            bins[name] = found
    script = Path(sys.executable).parent / "trace-proxy"
    if script.exists():
        bins["trace-proxy"] = str(script)
    else:
        missing.append("trace-proxy (in this Python's environment)")
    if missing:
        raise SystemExit(f"bench: missing {', '.join(missing)}: run bench/run.sh, which installs them")
    return bins
