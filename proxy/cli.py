"""The `trace-proxy` command: flags, config loading, exit codes (0 ok, 2 bad usage or bad configuration)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from proxy import __version__
from proxy.config import ConfigError
from proxy.logs import configure_logging
from proxy.reload import ConfigSource

CONFIG_ENV = "TRACE_PROXY_CONFIG"
EXIT_CONFIG = 2
_LOG_LEVELS = ("debug", "info", "warning", "error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trace-proxy",
        description="Sidecar HTTP forward proxy that continues or starts Sentry traces on outbound requests.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=f"TOML configuration file (default: ${CONFIG_ENV}, else built-in defaults)",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="validate the configuration and exit: 0 if valid, 2 listing every problem on stderr",
    )
    parser.add_argument(
        "--log-level", choices=_LOG_LEVELS, help="wins over [log] level in the configuration (default: that, else info)"
    )
    parser.add_argument("--version", action="version", version=f"trace-proxy {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the proxy (blocking) or check its configuration; return the process exit code."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed what it had to
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG

    config_path: Path | None = args.config
    if config_path is None and os.environ.get(CONFIG_ENV):
        config_path = Path(os.environ[CONFIG_ENV])
    source = ConfigSource(config_path, os.environ, args.log_level)
    try:
        loaded = source.load()
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        print(f"config ok: {config_path if config_path is not None else 'defaults'}")
        return 0

    configure_logging(loaded.settings.log, args.log_level)
    from proxy.app import run  # the server stack is imported only when it is going to run

    return run(loaded, source)
