"""Scraping a running proxy's `/metrics` and reading samples out of it, with prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.proxy_process import ProxyProcess

TIMEOUT = 10.0


class Scrape:
    """One scrape: every sample by name and labels (`scrape["trace_proxy_requests_total", {"kind": "http"}]`),
    and the metric families' types."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def __getitem__(self, key: tuple[str, Mapping[str, str]]) -> float:
        name, labels = key
        return self.samples[name, frozenset(labels.items())]

    def get(self, name: str, **labels: str) -> float:
        """The sample `name{labels}`; KeyError when the proxy does not expose it."""
        return self[name, labels]

    def requests(self, kind: str, outcome: str) -> float:
        return self.get("trace_proxy_requests_total", kind=kind, outcome=outcome)

    def total(self, name: str) -> float:
        """The sum of every sample of `name`, whatever its labels."""
        return sum(value for (sample, _), value in self.samples.items() if sample == name)


async def scrape(proxy: ProxyProcess) -> Scrape:
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + "/metrics") as resp:
        assert resp.status == 200, await resp.text()
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return Scrape(await resp.text())


async def scrape_until(proxy: ProxyProcess, condition: Callable[[Scrape], bool], timeout: float = TIMEOUT) -> Scrape:
    """Scrape until `condition` holds (a gauge that follows a close, a counter moved by the end of an exchange the
    client saw finish first), failing with the last scrape after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await scrape(proxy)
        if condition(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"no scrape met the condition within {timeout}s; the last:\n{result.text}")
        await asyncio.sleep(0.05)
