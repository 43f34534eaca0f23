"""What a run was asked to do: the settings that ``bench.py``'s command line resolves and every part reads.

Kept out of the command-line module so that the rig, the measurements and the report can take them without
importing the entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Baseline:
    """The build an A/B run compares this checkout's trace-proxy with: bench/run.sh installs it (``--baseline``)."""

    program: str  # its trace-proxy console script, in its own venv on the same interpreter
    commit: str
    ref: str

    @property
    def short(self) -> str:
        return self.commit[:7]

    @property
    def label(self) -> str:
        return f"trace-proxy (baseline {self.short})"


@dataclass
class Options:
    quick: bool
    rounds: int
    warmup: int
    window: int
    idle_count: int
    big_mib: int
    transfers: int
    rss_seconds: int
    output: Path
    core_bench: bool
    wait_quiet: int
    only_trace_proxy: bool = False
    baseline: Baseline | None = None
    # "text" or "json": this checkout's trace-proxy runs with `[log] access = true` in that format (the baseline
    # never does), its log going to /dev/null; None: no access log, as deployed by default.
    access_log: str | None = None
