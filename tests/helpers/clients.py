"""Real HTTP clients driven the way a service behind the proxy would drive them: curl and requests."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import requests

from tests.helpers.proxy_process import clean_env

TIMEOUT = 30.0


@dataclass
class CurlResult:
    returncode: int
    stdout: bytes
    stderr: str


async def curl(*args: str, proxy: str | None, timeout: float = TIMEOUT, stdin: bytes | None = None) -> CurlResult:
    """Run curl with `-x proxy` (or no proxy at all), in an environment without any *_proxy variables."""
    argv = ["curl", "-sS", "--max-time", str(int(timeout)), "--noproxy", ""]
    if proxy is not None:
        argv += ["-x", proxy]
    process = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=clean_env(),
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout + 5)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return CurlResult(process.returncode, out, err.decode("utf-8", "replace"))


def requests_session(proxy: str) -> requests.Session:
    """A requests session that uses exactly `proxy` for http:// and ignores the environment."""
    session = requests.Session()
    session.trust_env = False
    session.proxies = {"http": proxy}
    return session
