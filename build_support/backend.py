"""PEP 517 backend: setuptools, plus mypy (which carries mypyc) in the build environment when the hot-path modules
are to be compiled (TRACE_PROXY_MYPYC=1, see setup.py); a plain `pip install .` needs nothing but setuptools."""

from __future__ import annotations

import os
from typing import Any

from setuptools.build_meta import *  # noqa: F403  (the hooks not wrapped here are setuptools' own)

MYPYC_REQUIREMENT = "mypy==2.4.1"


def _compiling() -> bool:
    return os.environ.get("TRACE_PROXY_MYPYC", "") == "1"


def get_requires_for_build_wheel(config_settings: dict[str, Any] | None = None) -> list[str]:
    """setuptools' own version of this hook runs setup.py, which imports mypyc when compiling: before this hook has
    had mypy installed. trace-proxy has no setup_requires, so theirs would add nothing."""
    return [MYPYC_REQUIREMENT] if _compiling() else []


# The same for the other two builds.
get_requires_for_build_editable = get_requires_for_build_wheel
get_requires_for_build_sdist = get_requires_for_build_wheel
