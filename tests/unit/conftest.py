"""Fixtures of the unit tests: `pb`, a playbook of the connection layer (tests/helpers/playbook.py) with the default
options, and `make_pb` for one with other options; each is closed at the end of its test, which fails if the proxy
logged an error during it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

pytest.register_assert_rewrite("tests.helpers")

from tests.helpers.playbook import Playbook, playbooks  # noqa: E402


@pytest.fixture
def make_pb() -> Iterator[Callable[..., Playbook]]:
    yield from playbooks()


@pytest.fixture
def pb(make_pb: Callable[..., Playbook]) -> Playbook:
    return make_pb()
