"""build_info tells the build that is running: the CI runs the suite interpreted and compiled."""

from __future__ import annotations

import platform

import proxy.server.downstream as downstream
from proxy import __version__, build_info


def test_build_info_describes_this_process() -> None:
    assert build_info.version() == __version__
    assert build_info.python_version() == platform.python_version()
    assert build_info.compiled() == downstream.__file__.endswith(".so")
