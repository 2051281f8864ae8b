"""A real ``redis-server`` for tests (:class:`geventchat.testing.RedisServer`: a free loopback port, persistence
off, in the test's temporary directory), stopped at teardown. Never skipped: CI installs the Debian package
(``.ci/run``), and a missing binary is a failure that says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from geventchat.testing import RedisServer, RedisServerMissing

__all__ = ["RedisServer", "RedisServerMissing", "redis_server"]


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
