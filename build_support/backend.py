"""PEP 517 backend: setuptools, plus mypy (which carries mypyc) in the build environment when the hot-path modules
are to be compiled (TRACE_PROXY_MYPYC=1, see setup.py); a plain `pip install .` needs nothing but setuptools."""

from __future__ import annotations

import os
from typing import Any

from setuptools.build_meta import *  # noqa: F403  (the hooks not wrapped here are setuptools' own)

MYPYC_REQUIREMENT = "mypy==2.4.1"


def _compiling() -> bool:
    return os.environ.get("TRACE_PROXY_MYPYC", "") == "1"


# setuptools' own versions of these hooks run setup.py, which imports mypyc when compiling: before this hook
# has had mypy installed. trace-proxy has no setup_requires, so theirs would add nothing.


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [MYPYC_REQUIREMENT] if _compiling() else []


def get_requires_for_build_editable(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [MYPYC_REQUIREMENT] if _compiling() else []


def get_requires_for_build_sdist(config_settings: dict[str, Any] | None = None) -> list[str]:
    return [MYPYC_REQUIREMENT] if _compiling() else []
