"""What build of trace-proxy is running: its version, the Python it runs on, and whether the hot path is the
mypyc-compiled one (setup.py's COMPILED_MODULES), for the start-up line and the `trace_proxy_build_info` metric."""

from __future__ import annotations

import platform

from proxy import __version__

__all__ = ["compiled", "python_version", "version"]


def version() -> str:
    return __version__


def python_version() -> str:
    """``3.11.7``: the interpreter's version."""
    return platform.python_version()


def compiled() -> bool:
    """Whether the modules every request runs through are compiled extension modules (not their .py sources)."""
    import proxy.server.downstream as downstream  # the server stack, imported only when asked

    return not downstream.__file__.endswith(".py")
