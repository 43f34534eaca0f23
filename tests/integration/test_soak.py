"""CI's short soak: 30 s of bench/soak.py, after which the proxy must be back at its idle level.

The soak runs as a subprocess with this interpreter, the way it is run by hand, and writes its JSON summary into the
test's temporary directory; the assertions read that summary, so a failure names what went wrong (which requests
failed and how, which descriptors or connections stayed open). It is marked `slow` (`pytest -m "not slow"` leaves it
out); CI runs it, like every other test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.proxy_process import clean_env

REPO = Path(__file__).resolve().parents[2]
SOAK = REPO / "bench" / "soak.py"
SECONDS = 30


def _errors(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """The outcomes by kind that are neither `ok` nor one the injected faults explain."""
    expected = {"ok", *report["fault_outcomes"]}
    by_kind = report["requests"]["by_kind"]
    return {
        kind: {o: n for o, n in outcomes.items() if o not in expected}
        for kind, outcomes in by_kind.items()
        if set(outcomes) - expected
    }


@pytest.mark.slow
@pytest.mark.timeout(SECONDS + 60)
def test_soak_returns_to_idle_without_unexpected_errors(tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    argv = [sys.executable, str(SOAK), "--seconds", str(SECONDS), "--interval", "5", "--output", str(output)]
    done = subprocess.run(
        argv, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=SECONDS + 50, check=False
    )
    log = f"soak stdout:\n{done.stdout[-6000:]}\nsoak stderr:\n{done.stderr[-4000:]}"
    assert output.exists(), log
    report = json.loads(output.read_text())

    # The load really ran, every kind of request and every fault included (else nothing below would mean much).
    by_kind = report["requests"]["by_kind"]
    ran = {kind: sum(outcomes.values()) for kind, outcomes in by_kind.items()}
    assert set(ran) == set(report["kinds"]) and all(n >= 10 for n in ran.values()), ran
    assert report["requests"]["by_class"]["fault"] >= 100, report["requests"]
    assert len(report["samples"]) >= SECONDS // 5, report["samples"]

    assert not _errors(report), f"unexpected errors: {_errors(report)}\n{report['unexpected_examples'][:10]}\n{log}"
    idle, base = report["idle"], report["baseline"]
    assert idle.get("reached"), f"not back to the idle level {base} after the load: {idle}\n{log}"
    assert idle["final"]["fds"] <= base["fds"] and idle["final"]["clients"] == idle["final"]["upstream"] == 0, idle
    assert not any("Traceback" in line for line in report["proxy_log"]), "\n".join(report["proxy_log"])
    assert report["proxy_exit"] == 0, "\n".join(report["proxy_log"])
    assert report["passed"] and done.returncode == 0, f"{report['failures']}\n{log}"
