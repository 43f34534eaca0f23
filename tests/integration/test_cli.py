"""The real command line, as a subprocess: `python -m proxy ...` from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from proxy import __version__

REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRACE_PROXY_", "SENTRY_"))}
    env.update(extra)
    return env


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=REPO,
        env=clean_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"trace-proxy {__version__}"


def test_example_config_checks_ok() -> None:
    result = cli("--check-config", "--config", "config.example.toml")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config ok: config.example.toml\n"
    assert result.stderr == ""


def test_defaults_check_ok() -> None:
    result = cli("--check-config")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config ok: defaults\n"


def test_bad_config_lists_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[forward]\nlisten = "nonsense"\n[sentry]\ntraces_sample_rate = 2.0\n')
    result = cli("--check-config", "--config", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2, result.stderr
    assert any(line.startswith("sentry.traces_sample_rate: ") for line in lines), result.stderr
    assert any(line.startswith("forward.listen: ") for line in lines), result.stderr


def test_env_override_is_checked_too() -> None:
    result = cli("--check-config", env=clean_env(TRACE_PROXY_FORWARD__WORKERS="0", SENTRY_DSN="not a dsn"))
    assert result.returncode == 2
    fields = sorted(line.split(": ", 1)[0] for line in result.stderr.splitlines())
    assert fields == ["forward.workers", "sentry.dsn"], result.stderr


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "run"])
def test_missing_file(tmp_path: Path, check: bool) -> None:
    missing = tmp_path / "absent.toml"
    result = cli(*(["--check-config"] if check else []), "--config", str(missing))
    assert result.returncode == 2
    assert result.stderr.startswith("config: "), result.stderr
    assert str(missing) in result.stderr


@pytest.mark.parametrize("check", [True, False], ids=["check-config", "run"])
def test_invalid_toml(tmp_path: Path, check: bool) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[forward\nlisten = \n")
    result = cli(*(["--check-config"] if check else []), "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.startswith(f"config: {path} is not valid TOML"), result.stderr


def test_config_env_picks_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text("[forward]\nworkers = 2\n")
    result = cli("--check-config", env=clean_env(TRACE_PROXY_CONFIG=str(good)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"config ok: {good}\n"

    bad = tmp_path / "bad.toml"
    bad.write_text("[forward]\nworkers = 0\n")
    result = cli("--check-config", env=clean_env(TRACE_PROXY_CONFIG=str(bad)))
    assert result.returncode == 2
    assert result.stderr.startswith("forward.workers: "), result.stderr


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[forward]\nworkers = 0\n")
    result = cli("--check-config", "--config", "config.example.toml", env=clean_env(TRACE_PROXY_CONFIG=str(bad)))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "config ok: config.example.toml\n"


@pytest.mark.parametrize("args", [["--bogus"], ["--log-level", "loud"]])
def test_usage_error_exits_2(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2
    assert "usage: trace-proxy" in result.stderr
