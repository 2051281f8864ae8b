"""The benchmark tooling in its tiniest configuration: it runs end to end and writes a report with numbers; the C
load generator and the C echo server speak the protocol; without a compiler the Python generator takes over.

Speed is not asserted here (the figures come from a shared machine); only that every phase produced results and
that the programs count replies and errors right.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks import cbuild
from geventchat.config import DEFAULT_GREETING, DEFAULT_PREFIX
from geventchat.testing import QUIET, ServerProcess, wait_until

pytest.importorskip("uvloop")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).parent.parent
PREFIX = DEFAULT_PREFIX.encode()
#: The keys every generator's echo record has (benchmarks/loadgen.py's), the ones the runner and report read.
ECHO_KEYS = {"mode", "connections", "greeted", "replies", "replies_per_s", "errors", "seconds", "loadgen_cpu"}
ECHO_KEYS |= {"server_cpu", "server_wait", "loadgen_wait", "p50", "p99", "p99.9", "max"}


def bench(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", "run", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        env=env,
    )


def records(directory: Path, stem: str) -> dict[tuple[str, str], dict[str, Any]]:
    data = json.loads((directory / f"{stem}.json").read_text())
    return {(r["server"], r["mode"]): r for r in data["results"]}


def test_tiny_run_with_the_c_generator_writes_a_report_with_numbers(tmp_path: Path) -> None:
    result = bench("--tiny", "--servers", "geventchat", "c-epoll", "--out", str(tmp_path), "--name", "smoke")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "c load generator" in result.stdout

    by_mode = records(tmp_path, "smoke")
    assert not [r for r in by_mode.values() if r["mode"] == "error"]
    for server in ("geventchat", "c-epoll"):
        echo = by_mode[(server, "echo")]
        assert echo["generator"] == "c"
        assert set(echo) >= ECHO_KEYS, ECHO_KEYS - set(echo)
        assert echo["replies_per_s"] > 0 and echo["errors"] == 0
        assert echo["loadgen_cpu"] > 0 and echo["server_cores"] == 1
        churn = by_mode[(server, "churn")]
        assert churn["cycles_per_s"] > 0 and churn["errors"] == 0 and "server_cpu" in churn
        rate = by_mode[(server, "rate")]
        assert rate["replies_per_s"] > 0 and rate["errors"] == 0
        assert rate["rate_basis"] == "geventchat"  # every server offered the same absolute rate
        hold = by_mode[(server, "hold")]
        assert hold["opened"] == hold["connections"] == hold["answered"]
    assert by_mode[("geventchat", "rate")]["offered_per_s"] == by_mode[("c-epoll", "rate")]["offered_per_s"]
    for workers in (1, 2):
        scaled = by_mode[(f"geventchat --workers {workers}", "workers")]
        assert scaled["replies_per_s"] > 0 and scaled["server_cpu"] > 0 and scaled["server_cores"] >= 1

    report = (tmp_path / "smoke.md").read_text()
    assert "C epoll load generator" in report
    assert re.search(r"\| geventchat \| 10 \| [\d,]+", report), report
    assert re.search(r"\| c-epoll \| 10 \| [\d,]+ .*\| (server|generator) saturated|neither", report), report
    assert "geventchat --workers 2" in report and "µs/reply" in report
    assert (tmp_path / "smoke-throughput.png").stat().st_size > 1000
    assert (tmp_path / "smoke-memory-churn.png").stat().st_size > 1000


def test_without_a_compiler_the_run_falls_back_to_the_python_generator(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CC"}
    env.update(PATH=str(tmp_path / "empty"), XDG_CACHE_HOME=str(tmp_path / "cache"))  # no cc, nothing cached
    args = ("--tiny", "--servers", "geventchat", "--phases", "echo", "--out", str(tmp_path), "--name", "fallback")

    result = bench(*args, env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    notices = [line for line in result.stdout.splitlines() if "falling back to the Python load generator" in line]
    assert len(notices) == 1 and notices[0].startswith("no C compiler found"), result.stdout
    echo = records(tmp_path, "fallback")[("geventchat", "echo")]
    assert echo["generator"] == "python"
    assert set(echo) >= ECHO_KEYS and echo["replies_per_s"] > 0 and echo["errors"] == 0

    forced = bench(*args, "--generator", "c", env=env)

    assert forced.returncode == 1
    assert forced.stderr.strip().splitlines() == [
        "benchmark: --generator c: no C compiler found (set CC or install gcc) to build the C load generator and"
        " servers"
    ]


# --------------------------------------------------------------------------------------------- the C programs


@pytest.fixture(scope="module")
def c_loadgen() -> Path:
    return cbuild.build("loadgen")


@pytest.fixture
def c_echo() -> Iterator[ServerProcess]:
    binary = cbuild.build("echo_server")
    with ServerProcess(command=[str(binary), "--port", "0"], name="c-epoll", use_gevent=False) as server:
        yield server


def read_lines(sock: socket.socket, count: int) -> list[bytes]:
    """``count`` newline-ended lines (their newlines kept), however the bytes arrive."""
    data = b""
    while data.count(b"\n") < count:  # bounded by the socket's timeout
        chunk = sock.recv(4096)
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data.splitlines(keepends=True)


def test_the_c_echo_server_speaks_the_conversation(c_echo: ServerProcess) -> None:
    with socket.create_connection(c_echo.address, timeout=10) as sock:
        assert read_lines(sock, 1) == [DEFAULT_GREETING.encode() + b"\n"]
        sock.sendall(b"30\nhel")  # the timeout line gets no answer; a line split over two sends
        sock.sendall(b"lo\r\nworld\n")
        assert read_lines(sock, 2) == [PREFIX + b"hello\n", PREFIX + b"world\n"]

        sock.sendall(b":q\nafter\n")

        assert read_lines(sock, 1) == [PREFIX + b":q\n"]
        assert sock.recv(4096) == b""  # closed: nothing after :q answered


def test_the_c_echo_server_says_bye_after_the_idle_timeout(c_echo: ServerProcess) -> None:
    with socket.create_connection(c_echo.address, timeout=10) as sock:
        read_lines(sock, 1)
        sock.sendall(b"0.1\n")

        assert read_lines(sock, 1) == [b"bye: idle timeout\n"]
        assert sock.recv(4096) == b""


#: A line the tests below send over and over; its echo is a little longer (the prefix).
LONG_LINE = b"x" * 999 + b"\n"


def reader_of_peer(address: tuple[str, int], idle_timeout: float = 3600) -> socket.socket:
    """A connection that has read the greeting and asked for ``idle_timeout``, with a small receive buffer
    (set before connecting, so the server's window stays small and its replies back up quickly)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.settimeout(10)
    sock.connect(address)
    read_lines(sock, 1)
    sock.sendall(f"{idle_timeout:g}\n".encode())
    return sock


def send_until_stalled(sock: socket.socket, limit: int) -> tuple[int, bytes]:
    """Send LONG_LINEs without reading until the socket stays unwritable for a second or ``limit`` bytes went;
    returns the bytes sent and the rest of the line sent last (to complete it)."""
    chunk = LONG_LINE * 64
    pending = memoryview(chunk)
    sent = 0
    sock.setblocking(False)
    while sent < limit:  # bounded: each turn sends bytes or ends the loop
        try:
            count = sock.send(pending)
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], 1.0)
            if not writable:
                break
            continue
        sent += count
        pending = pending[count:] or memoryview(chunk)
    return sent, bytes(pending[: len(pending) % len(LONG_LINE)])


def test_the_c_echo_server_stops_reading_a_peer_that_does_not_read_and_resumes_when_it_does(
    c_echo: ServerProcess,
) -> None:
    rss_before = c_echo.rss()
    limit = 256 * 1024 * 1024  # far more than the kernel's buffers hold (tcp_rmem's 32 MiB max and more)
    with reader_of_peer(c_echo.address) as sock:
        sent, rest = send_until_stalled(sock, limit)
        assert sent < limit, "the server kept reading a peer that reads nothing"
        grown = c_echo.rss() - rss_before
        assert grown < 8 * 1024 * 1024, f"the server's RSS grew {grown} bytes for one peer that does not read"

        # Now read everything: the server must read again as its output drains, and answer every line.
        sock.setblocking(True)
        sock.settimeout(30)
        total, tail = [0], bytearray()

        def read_all() -> None:
            while chunk := sock.recv(1 << 20):  # bounded by the socket's timeout and the server's close
                total[0] += len(chunk)
                tail[:] = (tail + chunk)[-2048:]

        reader = threading.Thread(target=read_all)
        reader.start()
        sock.sendall(rest + b":q\n")
        reader.join(60)
        assert not reader.is_alive()
    lines = (sent + len(rest)) // len(LONG_LINE)
    assert total[0] == lines * len(PREFIX + LONG_LINE) + len(PREFIX + b":q\n")
    assert tail.endswith(PREFIX + LONG_LINE + PREFIX + b":q\n")


def test_the_c_echo_server_closes_a_closing_peer_that_never_reads_its_replies(c_echo: ServerProcess) -> None:
    fds_before = c_echo.fds()
    with reader_of_peer(c_echo.address, idle_timeout=0.5) as sock:
        try:
            sent, _ = send_until_stalled(sock, 64 * 1024 * 1024)
        except ConnectionError:  # the server closed us already (a slow machine): what the test waits for below
            sent = 0
        assert sent < 64 * 1024 * 1024  # the situation: the server stopped reading, replies wait for us
        # Idle, the server says bye and is closing with its output unsent; after its grace period it closes anyway.
        wait_until(lambda: c_echo.fds() == fds_before, timeout=30, what="the server to close the connection")


def run_loadgen(binary: Path, *args: str, timeout: float = 60) -> dict[str, Any]:
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr
    record: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return record


def test_the_c_generator_echo_against_geventchat_has_the_python_generators_keys(c_loadgen: Path) -> None:
    with ServerProcess(*QUIET, use_gevent=False) as server:
        timing = ("--connections", "20", "--duration", "0.5", "--warmup", "0.2", "--server-pid", str(server.pid))
        record = run_loadgen(c_loadgen, "echo", "--port", str(server.port), *timing)
        python = subprocess.run(
            [sys.executable, "-m", "benchmarks.loadgen", "echo", "--port", str(server.port), *timing],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=ROOT,
        )

    assert record["greeted"] == 20
    assert record["replies"] > 0 and record["errors"] == 0
    assert record["server_cpu"] > 0 and record["loadgen_cpu"] > 0
    assert 0 < record["p50"] <= record["p99"] <= record["p99.9"] <= record["max"]
    python_record = json.loads(python.stdout.strip().splitlines()[-1])
    assert set(python_record) <= set(record)


def test_the_c_generator_counts_replies_that_are_not_the_echo_as_errors(c_loadgen: Path, c_echo: ServerProcess) -> None:
    record = run_loadgen(
        c_loadgen, "echo", "--port", str(c_echo.port), "--connections", "5", "--duration", "0.3", "--warmup", "0.1",
        "--prefix", "not the prefix: ",
    )  # fmt: skip

    assert record["greeted"] == 5
    assert record["errors"] > 0
    assert record["replies"] == 0


class TrickleServer:
    """Greets, then answers every line with its echo sent one byte per send() (TCP_NODELAY): replies arrive split
    over many reads, or several in one read, as the kernel pleases."""

    def __init__(self, connections: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.threads = [threading.Thread(target=self.serve, daemon=True) for _ in range(connections)]
        for thread in self.threads:
            thread.start()

    def serve(self) -> None:
        try:
            conn, _ = self.listener.accept()
            with conn:
                self.answer(conn)
        except OSError:  # the generator closed (or reset) its connections when its run ended
            return

    def answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = conn.makefile("rb")
        conn.sendall(DEFAULT_GREETING.encode() + b"\n")
        reader.readline(100)  # the timeout line
        for _ in range(1000):  # bounded; the generator stops first
            line = reader.readline(100)
            if not line:
                return
            for byte in PREFIX + line:
                conn.sendall(bytes([byte]))

    def close(self) -> None:
        self.listener.close()
        for thread in self.threads:
            thread.join(15)


@pytest.mark.parametrize(
    ("program", "option", "value"),
    [
        ("loadgen", "--connections", "3000000000"),  # over INT_MAX: once cast to int unchecked (undefined)
        ("loadgen", "--port", "1e300"),
        ("fanout_gen", "--rooms", "3000000000"),  # atoi() out of range: undefined
        ("fanout_gen", "--port", "-99999999999"),
    ],
)
def test_the_c_generators_refuse_a_number_out_of_range_in_one_line(program: str, option: str, value: str) -> None:
    result = subprocess.run(
        [str(cbuild.build(program)), option, value], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and option in result.stderr and value in result.stderr
    assert "range" in result.stderr  # it says what is wrong with the number
    assert result.stdout == ""


def test_the_c_generator_frames_replies_split_across_reads(c_loadgen: Path) -> None:
    server = TrickleServer(connections=3)
    try:
        record = run_loadgen(
            c_loadgen, "echo", "--port", str(server.port), "--connections", "3", "--duration", "0.5",
            "--warmup", "0.1",
        )  # fmt: skip
    finally:
        server.close()

    assert record["greeted"] == 3
    assert record["replies"] > 0
    assert record["errors"] == 0


def test_the_c_generator_churn_rate_and_hold_modes(c_loadgen: Path, c_echo: ServerProcess) -> None:
    port = ("--port", str(c_echo.port))
    timing = ("--duration", "0.5", "--warmup", "0.1")

    churn = run_loadgen(c_loadgen, "churn", *port, "--connections", "10", *timing, "--sources", "8")
    rate = run_loadgen(c_loadgen, "rate", *port, "--connections", "10", *timing, "--rate", "2000")

    assert churn["cycles"] > 0 and churn["errors"] == 0 and churn["concurrency"] == 10
    assert rate["greeted"] == 10 and rate["errors"] == 0 and rate["offered_per_s"] == 2000
    assert rate["replies_per_s"] > 0 and rate["issued"] > 0 and "backlog" in rate

    with subprocess.Popen(
        [str(c_loadgen), "hold", *port, "--connections", "30", "--opening", "5", "--hold-max", "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as hold:
        assert hold.stdin is not None and hold.stdout is not None
        try:
            opened = json.loads(hold.stdout.readline())
            hold.stdin.write("check\n")
            hold.stdin.flush()
            checked = json.loads(hold.stdout.readline())
            hold.stdin.write("close\n")
            hold.stdin.flush()
            closed = json.loads(hold.stdout.readline())
            assert hold.wait(30) == 0
        finally:
            hold.kill()

    assert opened["phase"] == "opened" and opened["opened"] == 30 and opened["failed"] == 0
    assert 0 < opened["handshake_p50"] <= opened["handshake_max"]
    assert checked == {"generator": "c", "mode": "hold", "phase": "checked", "answered": 30, "held": 30}
    assert closed["phase"] == "closed"


@pytest.mark.parametrize(
    ("server_cpu", "cores", "generator_cpu", "server_wait", "generator_wait", "label"),
    [
        (0.97, 1, 0.40, 0.0, 0.0, "server saturated"),
        (0.50, 1, 0.95, 0.0, 0.0, "generator saturated"),
        (0.90, 1, 0.95, 0.0, 0.0, "generator saturated"),  # both: the larger share
        (0.96, 1, 0.90, 0.0, 0.0, "server saturated"),
        (1.80, 2, 0.50, 0.0, 0.0, "server saturated"),  # a share of the server's cores
        (0.90, 2, 0.50, 0.0, 0.0, "neither (latency-bound)"),
        (0.50, 1, 0.40, 0.30, 0.0, "neither (waited for a core)"),
        (0.50, 1, 0.40, 0.0, 0.20, "neither (waited for a core)"),
        (0.50, 1, 0.40, 0.02, 0.01, "neither (latency-bound)"),
        (None, 1, None, None, None, "neither (latency-bound)"),
    ],
)
def test_the_report_names_the_side_that_saturated(
    server_cpu: float | None,
    cores: int,
    generator_cpu: float | None,
    server_wait: float | None,
    generator_wait: float | None,
    label: str,
) -> None:
    from benchmarks.saturation import saturation

    assert saturation(server_cpu, cores, generator_cpu, server_wait, generator_wait) == label
