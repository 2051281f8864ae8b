"""systemd: the readiness datagrams a real server sends to a socket the test binds, and deploy/geventchat.service
checked by systemd's own tools."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from geventchat import systemd
from geventchat.client import ChatClient
from geventchat.config import ServerConfig
from geventchat.testing import QUIET, ServerProcess
from geventchat.workers import Supervisor

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "geventchat.service"


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket standing in for systemd, and the NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(15)  # each receive waits for an event the server sends; the bound is for a broken server
        yield sock, str(path)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notify_sends_one_datagram_to_a_path_and_to_an_abstract_name(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": path})
    assert received(sock) == "READY=1"
    name = f"geventchat-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as abstract:
        abstract.bind("\0" + name)
        abstract.settimeout(5)
        assert systemd.notify_reloading({"NOTIFY_SOCKET": "@" + name})
        assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", abstract.recv(4096).decode())


def test_without_the_variable_or_with_nobody_listening_nothing_is_sent(tmp_path: Path) -> None:
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "nobody")})  # logged, not raised
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "relative/path"})


def test_a_server_says_ready_once_listening_and_stopping_on_sigterm(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    with ServerProcess(*QUIET, env={"NOTIFY_SOCKET": path}) as server:
        assert received(sock) == "READY=1"  # the listening line was read before: READY follows it
        with ChatClient.connect(server.host, server.port, idle_timeout=30) as client:
            assert client.request("ready means serving").message == "ready means serving"
        server.send_signal(signal.SIGTERM)
        assert received(sock) == "STOPPING=1"
        code = server.wait()
        assert code == 0, server.stderr_text()


def test_workers_say_ready_reloading_ready_stopping(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    args = ["--workers", "2", *QUIET, "--grace", "1", "--linger", "0.2"]
    with ServerProcess(*args, env={"NOTIFY_SOCKET": path}) as server:  # returns once the listening line came
        assert received(sock) == "READY=1"
        server.send_signal(signal.SIGHUP)
        assert received(sock).startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert received(sock) == "READY=1"
        server.wait_for(r"reload done")
        server.send_signal(signal.SIGTERM)
        assert received(sock) == "STOPPING=1"
        assert server.wait(15) == 0


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read(UNIT, encoding="utf-8")
    return parser


def test_the_unit_file_is_type_notify_hardened_and_outlasts_the_drain() -> None:
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID" and service["KillSignal"] == "SIGTERM"
    hardening = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "DynamicUser": "yes",
    }
    assert {key: service.get(key) for key in hardening} == hardening
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert int(service["LimitNOFILE"]) >= 65536
    assignments = [line.removeprefix("Environment=") for line in UNIT.read_text().splitlines()]
    options = dict(a.removeprefix("GEVENTCHAT_").split("=", 1) for a in assignments if a.startswith("GEVENTCHAT_"))
    drain = float(options["GRACE"]) + 2 * float(options["LINGER"]) + Supervisor.exit_margin
    assert float(service["TimeoutStopSec"]) > drain > ServerConfig().grace


def test_the_unit_file_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package 'systemd'; .ci/run installs it)")
    # verify checks that ExecStart exists: point it at this environment's geventchat.
    installed = Path(sys.executable).parent / "geventchat"
    assert installed.exists()
    copy = tmp_path / "geventchat.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/geventchat", str(installed)))
    verify = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60, check=False)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=true", str(copy)], capture_output=True, text=True, timeout=60, check=False
    )
    exposure = re.search(r"Overall exposure level for geventchat\.service: ([\d.]+) (\w+)", security.stdout)
    assert exposure is not None, security.stdout + security.stderr
    assert float(exposure.group(1)) < 2.0 and exposure.group(2) == "OK", exposure.group(0)
