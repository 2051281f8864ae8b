"""``python -m geventchat.healthcheck``: the Dockerfile's HEALTHCHECK, against real server processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

from geventchat.client import ChatClient
from geventchat.testing import ServerProcess, free_loopback_port


def healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geventchat.healthcheck", *args], capture_output=True, text=True, timeout=20, check=False
    )


def test_healthy_with_and_without_the_proxy_protocol(server_process: Callable[..., ServerProcess]) -> None:
    for args in [(), ("--proxy-protocol",)]:
        server = server_process(*args)
        result = healthcheck(server.host, str(server.port))
        assert result.returncode == 0, (args, result.stderr)
        # The check left nothing behind that the server counts as a misconfigured load balancer.
        code, err = server.stop(), server.stderr_text()
        assert code == 0 and "invalid PROXY protocol header" not in err


def test_a_full_server_is_unhealthy(server_process: Callable[..., ServerProcess]) -> None:
    server = server_process("--max-connections", "1")
    with ChatClient.connect(server.host, server.port, idle_timeout=30) as holder:
        holder.request("holding the only slot")
        result = healthcheck(server.host, str(server.port))
    assert result.returncode == 1
    assert "unhealthy: no greeting: 'bye: server full'" in result.stderr


def test_nothing_listening_is_unhealthy_and_bad_arguments_are_usage_errors() -> None:
    refused = healthcheck("127.0.0.1", str(free_loopback_port()))
    assert refused.returncode == 1 and "unhealthy: 127.0.0.1:" in refused.stderr
    assert healthcheck("127.0.0.1", "http").returncode == 2
    assert healthcheck("--help").returncode == 2
