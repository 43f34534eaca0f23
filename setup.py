"""Build script. The metadata is in pyproject.toml; this only adds the optional compiled hot path.

With TRACE_PROXY_MYPYC=1, the modules every request runs through are compiled to C extensions by mypyc (from the
same, fully typed Python source; a C compiler and the Python headers are needed). They cost about half the
instructions per request of the interpreted modules. Without it, the package is pure Python and behaves the same.
"""

from __future__ import annotations

import os

from setuptools import setup

# The per-request path: parsing and planning, the two protocols, the propagation core and the counters.
COMPILED_MODULES = [
    "proxy/server/grammar.py",
    "proxy/server/http1.py",
    "proxy/server/downstream.py",
    "proxy/server/exchange.py",
    "proxy/server/routing.py",
    "proxy/server/tunnel.py",
    "proxy/server/connection_state.py",
    "proxy/server/upstream.py",
    "proxy/server/splice.py",
    "proxy/stats.py",
    "proxy/tracing/baggage.py",
    "proxy/tracing/context.py",
    "proxy/tracing/propagator.py",
    "proxy/tracing/sentry_trace.py",
    "proxy/tracing/targets.py",
]

ext_modules = []
if os.environ.get("TRACE_PROXY_MYPYC", "") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(["--config-file", "build_support/mypyc.ini", *COMPILED_MODULES], opt_level="3")

setup(ext_modules=ext_modules)
