"""Fixtures of the integration tests: backend threads that answer with their name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .procs import NameServer


@pytest.fixture
def name_servers() -> Iterator[list[NameServer]]:
    servers = [NameServer(f"b{i}") for i in (1, 2, 3)]
    yield servers
    for s in servers:
        s.close()
