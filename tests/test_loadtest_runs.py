"""The Locust users against real and deliberately faulty servers.

Importing Locust monkey-patches the whole process, so every Locust run happens in a subprocess:
``loadtest/run_programmatic.py`` (an Environment with a local runner, printing a JSON summary) or the real ``locust``
command line, with ``loadtest/locustfile.py`` or a locustfile of the test's own that imports ``geventchat.loadtest``.
The servers run in this process, on gevent, and the subprocesses are waited on cooperatively.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent
import gevent.subprocess
import pytest
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket

from geventchat.config import DEFAULT_GREETING, DEFAULT_PREFIX
from geventchat.server import ChatServer
from geventchat.testing import free_loopback_port

from .test_tls import pki  # noqa: F401 - the fixture: a CA and a server certificate made for the test

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "loadtest" / "run_programmatic.py"
LOCUST = Path(sys.executable).parent / "locust"
GREETING = (DEFAULT_GREETING + "\n").encode()
PREFIX = DEFAULT_PREFIX.encode()

Handler = Callable[[GeventSocket, Any], None]


def run_users(*args: str, cwd: Path, timeout: float = 45) -> dict[str, Any]:
    """``run_programmatic.py ARGS`` in a subprocess; returns its JSON summary."""
    completed = gevent.subprocess.run(
        [sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    lines = completed.stdout.strip().splitlines()
    assert lines, f"no summary (exit {completed.returncode}); stderr:\n{completed.stderr[-3000:]}"
    summary: dict[str, Any] = json.loads(lines[-1])
    return summary


def locust_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The ``locust`` command line with ``args``, run in ``cwd`` and waited on cooperatively."""
    completed: subprocess.CompletedProcess[str] = gevent.subprocess.run(
        [str(LOCUST), *args], capture_output=True, text=True, timeout=45, cwd=cwd
    )
    return completed


def locust_on_two_processes(host: str, port: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``locust -f loadtest/locustfile.py --headless --processes 2 ... ARGS`` against ``host:port``: a master and
    two workers, the master on a free loopback port (Locust's default binds 5557 on every interface, so parallel
    runs would collide)."""
    master_port = str(free_loopback_port())
    return locust_cli(
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--headless",
        "--processes",
        "2",
        "--master-bind-host",
        "127.0.0.1",
        "--master-bind-port",
        master_port,
        "--master-port",
        master_port,
        "--host",
        f"{host}:{port}",
        *args,
        cwd=cwd,
    )


def latency(summary: dict[str, Any], scenario: str, step: str) -> dict[str, Any]:
    rows = [r for r in summary["latency_us"] if (r["scenario"], r["step"]) == (scenario, step)]
    assert rows, f"no latency row for {scenario} {step}: {summary['latency_us']}"
    row: dict[str, Any] = rows[0]
    return row


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], str]]:
    """``serve(handler)``: a gevent StreamServer on 127.0.0.1, port 0; returns ``HOST:PORT``."""
    servers: list[StreamServer] = []

    def start(handler: Handler) -> str:
        server = StreamServer(("127.0.0.1", 0), handler)
        server.start()
        servers.append(server)
        return f"127.0.0.1:{server.address[1]}"

    yield start
    for server in servers:
        server.stop(timeout=1)


def read_lines(sock: GeventSocket, count: int) -> list[bytes]:
    """Read ``count`` lines (the test's own servers: bounded buffer, stops at end of input)."""
    buffer = b""
    while buffer.count(b"\n") < count and len(buffer) < 65536:
        data = sock.recv(4096)
        if not data:
            break
        buffer += data
    return buffer.split(b"\n")[:count]


def refused_address() -> str:
    """A loopback port nothing listens on."""
    return f"127.0.0.1:{free_loopback_port()}"


# --------------------------------------------------------------------------------------------------- faulty servers


def wrong_prefix(sock: GeventSocket, _address: Any) -> None:
    sock.sendall(GREETING)
    read_lines(sock, 1)  # the timeout
    while True:
        lines = read_lines(sock, 1)
        if not lines or not lines[0]:
            return
        sock.sendall(b"you said: " + lines[0] + b"\n")


def closes_silently(sock: GeventSocket, _address: Any) -> None:
    sock.sendall(GREETING)
    read_lines(sock, 2)  # the timeout and the first message, unanswered


def says_bye(sock: GeventSocket, _address: Any) -> None:
    sock.sendall(GREETING)
    read_lines(sock, 2)
    sock.sendall(b"bye: go away\n")
    sock.shutdown(socket.SHUT_WR)
    read_lines(sock, 100)  # a lingering close: the client reads the bye before we go


def never_answers(sock: GeventSocket, _address: Any) -> None:
    sock.sendall(GREETING)
    read_lines(sock, 10_000)


def resets(sock: GeventSocket, _address: Any) -> None:
    sock.sendall(GREETING)
    read_lines(sock, 2)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close() sends RST


def never_greets(sock: GeventSocket, _address: Any) -> None:
    read_lines(sock, 10_000)


def echo_then(after_echo: Callable[[GeventSocket], None]) -> Handler:
    """A correct server up to the first echo, then ``after_echo`` (for TimeoutUser)."""

    def handle(sock: GeventSocket, _address: Any) -> None:
        sock.sendall(GREETING)
        lines = read_lines(sock, 2)
        if len(lines) == 2:
            sock.sendall(PREFIX + lines[1] + b"\n")
            after_echo(sock)

    return handle


def bye_at_once(sock: GeventSocket) -> None:
    sock.sendall(b"bye: idle timeout (0.4s)\n")
    sock.shutdown(socket.SHUT_WR)
    read_lines(sock, 100)


def never_closes(sock: GeventSocket) -> None:
    read_lines(sock, 100)


# --------------------------------------------------------------------------------------------------- tests


def test_every_scenario_against_a_live_server_counts_requests_without_failures(
    start_server: Callable[..., ChatServer], tmp_path: Path
) -> None:
    host, port = start_server(linger=0.5).address
    summary = run_users(
        "--host",
        f"tcp://{host}:{port}",
        "--users",
        "8",
        "--seconds",
        "2.5",
        "ChatUser",
        "IdleUser",
        "ChurnUser",
        "TimeoutUser",
        "--gc-think-time",
        "0.01",
        "--gc-timeout",
        "1",
        "--gc-idle-margin",
        "0.5",
        "--gc-short-timeout",
        "0.3",
        "--gc-timeout-tolerance",
        "0.5",
        cwd=tmp_path,
    )
    assert summary["causes"] == {}, summary["causes"]
    assert summary["exceptions"] == []
    assert summary["exit_code"] == 0
    for step in ("connect", "greeting", "timeout", "echo", "idle", "quit", "bye"):
        assert summary["requests"].get(step, 0) > 0, (step, summary["requests"])
        assert summary["failures"][step] == 0
    # The scenario is Locust's request type: each scenario's connect is a row of its own in Locust's statistics.
    by_scenario = summary["by_scenario"]
    assert {s for s, steps in by_scenario.items() if steps.get("connect", {}).get("requests")} == {
        "ChatUser",
        "IdleUser",
        "ChurnUser",
        "TimeoutUser",
    }, by_scenario
    assert summary["requests"]["connect"] == sum(steps["connect"]["requests"] for steps in by_scenario.values())
    assert "bye" in by_scenario["TimeoutUser"] and "bye" not in by_scenario["ChatUser"]
    echo = latency(summary, "ChatUser", "echo")
    # Microseconds, not whole milliseconds: a loopback echo takes well under one.
    assert echo["count"] > 0 and 0 < echo["min"] < 1000
    assert echo["min"] <= echo["p50"] <= echo["p99"] <= echo["max"]
    assert 0 < summary["locust_median_ms"]["echo"] < 100
    # TimeoutUser's bye came after its 0.3 s timeout (else a failure), and within the 0.5 s tolerance.
    bye = latency(summary, "TimeoutUser", "bye")
    assert bye["count"] > 0 and bye["max"] < 500_000


def test_each_fault_is_its_own_failure_cause(serve: Callable[[Handler], str], tmp_path: Path) -> None:
    faulty = {
        "wrong reply": serve(wrong_prefix),
        "closed by server: no bye": serve(closes_silently),
        "closed by server: go away": serve(says_bye),
        "reply timeout": serve(never_answers),
        "reset by peer": serve(resets),
        "connect timeout": serve(never_greets),
        "connection refused": refused_address(),
    }
    # One user per faulty server: --host lists them and users take them in turn.
    summary = run_users(
        "--host",
        ",".join(faulty.values()),
        "--users",
        str(len(faulty)),
        "--seconds",
        "2",
        "ChatUser",
        "--gc-reply-timeout",
        "0.4",
        "--gc-connect-timeout",
        "0.4",
        "--gc-think-time",
        "0.05",
        cwd=tmp_path,
    )
    causes = {cause for by_cause in summary["causes"].values() for cause in by_cause}
    assert causes == set(faulty), summary["causes"]
    assert summary["causes"]["echo"].keys() >= {"wrong reply", "reply timeout", "reset by peer"}
    assert "connection refused" in summary["causes"]["connect"]
    assert "connect timeout" in summary["causes"]["greeting"]
    assert summary["exit_code"] == 1


def test_timeout_user_fails_a_server_that_closes_early_late_or_silently(
    serve: Callable[[Handler], str], tmp_path: Path
) -> None:
    faulty = {
        "bye too early": serve(echo_then(bye_at_once)),
        "bye too late": serve(echo_then(never_closes)),
        "closed by server: no bye": serve(echo_then(lambda sock: gevent.sleep(0.45))),
    }
    summary = run_users(
        "--host",
        ",".join(faulty.values()),
        "--users",
        str(len(faulty)),
        "--seconds",
        "1.8",
        "TimeoutUser",
        "--gc-short-timeout",
        "0.4",
        "--gc-timeout-tolerance",
        "0.3",
        cwd=tmp_path,
    )
    assert set(summary["causes"].get("bye", {})) == set(faulty), summary["causes"]
    assert summary["requests"]["echo"] > 0 and summary["failures"]["echo"] == 0


def test_a_bad_host_stops_the_run_before_any_user_starts(tmp_path: Path) -> None:
    summary = run_users("--host", "http://127.0.0.1:8888", "ChatUser", cwd=tmp_path)
    assert summary == {"exit_code": 2}


def test_locust_command_line_smoke_with_two_worker_processes(
    start_server: Callable[..., ChatServer], tmp_path: Path
) -> None:
    host, port = start_server(linger=0.5).address
    completed = locust_on_two_processes(  # the µs histograms of both workers must be merged
        host,
        port,
        "-u",
        "4",
        "-r",
        "4",
        "-t",
        "2s",
        "--csv",
        str(tmp_path / "out" / "run"),
        "ChatUser",
        cwd=tmp_path,
    )
    output = completed.stdout + completed.stderr  # Locust logs its tables (and ours) to stderr
    assert completed.returncode == 0, output[-3000:]
    assert "Latency in µs" in output
    assert any(line.split()[:2] == ["ChatUser", "echo"] for line in output.splitlines())
    # Locust's own table (the lines with "|"): request type = the scenario, name = the step.
    assert any(line.split()[:2] == ["ChatUser", "echo"] and "|" in line for line in output.splitlines())
    data = json.loads((tmp_path / "out" / "run_latency_us.json").read_text(encoding="utf-8"))
    echo = next(r for r in data["rows"] if r["step"] == "echo")
    assert echo["count"] > 0 and echo["failures"] == 0
    # Every echo the workers reported to Locust is in the master's merged µs histogram.
    stats = (tmp_path / "out" / "run_stats.csv").read_text(encoding="utf-8").splitlines()
    locust_echo = next(line.split(",") for line in stats if line.startswith("ChatUser,echo,"))
    assert int(locust_echo[2]) == echo["count"]


def test_locust_command_line_refuses_a_missing_host(tmp_path: Path) -> None:
    completed = locust_cli(
        "-f", str(ROOT / "loadtest" / "locustfile.py"), "--headless", "-t", "1s", "ChatUser", cwd=tmp_path
    )
    assert completed.returncode == 2
    assert "no host given" in completed.stderr
    assert "tcp://HOST:PORT" in completed.stderr


# A locustfile of a user's own, outside this repository: a scenario built on the installed package's base User.
OWN_LOCUSTFILE = """
from locust import task

from geventchat.loadtest import GeventChatUser


class HelloUser(GeventChatUser):
    @task
    def hello(self) -> None:
        session = self.session
        if session is not None and (session.connected or session.connect(self.settings.timeout)):
            session.echo("hello")
"""


def test_a_locustfile_of_ones_own_builds_on_the_installed_users(
    start_server: Callable[..., ChatServer], tmp_path: Path
) -> None:
    host, port = start_server(linger=0.5).address
    (tmp_path / "my_locustfile.py").write_text(OWN_LOCUSTFILE, encoding="utf-8")
    completed = locust_cli(
        "-f",
        "my_locustfile.py",
        "--headless",
        "-u",
        "2",
        "-r",
        "2",
        "-t",
        "2s",
        "--host",
        f"{host}:{port}",
        # Options of the package's own: its listeners came with the import, and write the µs file at the end.
        "--gc-think-time",
        "0.01",
        "--gc-latency-file",
        str(tmp_path / "out" / "latency"),
        cwd=tmp_path,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    # Locust's own table: the scenario (the user's own class) as request type, the step as name.
    assert any(line.split()[:2] == ["HelloUser", "hello"] and "|" in line for line in output.splitlines())
    data = json.loads((tmp_path / "out" / "latency.json").read_text(encoding="utf-8"))
    hello = next(r for r in data["rows"] if (r["scenario"], r["step"]) == ("HelloUser", "hello"))
    assert hello["count"] > 0 and hello["failures"] == 0


def test_gc_shape_ramps_in_steps_then_ends_the_test(start_server: Callable[..., ChatServer], tmp_path: Path) -> None:
    host, port = start_server(linger=0.5).address
    completed = locust_cli(
        "-f",
        str(ROOT / "loadtest" / "locustfile.py"),
        "--headless",
        "--only-summary",
        "--host",
        f"{host}:{port}",
        "--gc-shape",
        "2,0.5,4,1",
        "--gc-think-time",
        "0.01",
        "ChatUser",
        cwd=tmp_path,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-3000:]
    steps = [line for line in output.splitlines() if "Shape test updating to" in line]
    assert [line.split("updating to ")[1].split()[0] for line in steps] == ["2", "4"]
    assert "Shape test completed" in output


def test_users_talk_tls_to_a_tls_server(pki: dict[str, str], tmp_path: Path) -> None:  # noqa: F811 - the fixture
    from .faultkit import quiet, serving

    with serving(quiet(tls_cert=pki["cert"], tls_key=pki["key"])) as server:
        host, port = server.address
        common = ("--host", f"{host}:{port}", "--users", "2", "--seconds", "1.5", "ChatUser", "--gc-think-time", "0.01")
        trusted = run_users(*common, "--gc-tls", "--gc-tls-ca", pki["ca"], cwd=tmp_path)
        untrusted = run_users(*common, "--gc-tls", "--gc-tls-ca", pki["other_ca"], cwd=tmp_path)
    assert trusted["causes"] == {} and trusted["requests"]["echo"] > 0, trusted["causes"]
    # A certificate our CA did not sign fails at connect, under its own cause.
    connect_causes = untrusted["causes"].get("connect", {})
    assert connect_causes and all(c.startswith("tls handshake failed: ") for c in connect_causes), untrusted["causes"]
    assert untrusted["requests"].get("echo", 0) == 0
