"""geventchat.testing, the harness every other test and the benchmarks start servers with: the listening-line
parser, the server-process helper, wait_until and the /proc readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import gevent
import gevent.event
import pytest

from geventchat import ChatClient
from geventchat.testing import (
    QUIET,
    ServerExited,
    ServerProcess,
    WaitTimedOut,
    descendants,
    format_listening_line,
    open_fds,
    parse_listening_line,
    rss_bytes,
    summed,
    wait_until,
)

from .test_server_process import has_ipv6_loopback

# ------------------------------------------------------------------------------------------ the listening line


@pytest.mark.parametrize(
    ("line", "address"),
    [
        ("geventchat listening on 127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("geventchat listening on [::1]:1\n", ("::1", 1)),  # the newline a reader keeps is ignored
        ("geventchat listening on [fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
        ("geventchat listening on chat.example.com:7000", ("chat.example.com", 7000)),
        ("geventchat listening on localhost:9", ("localhost", 9)),
    ],
)
def test_listening_lines_parse_and_round_trip(line: str, address: tuple[str, int]) -> None:
    assert parse_listening_line(line) == address
    assert format_listening_line(address) == line.strip()


@pytest.mark.parametrize(
    "line",
    [
        "",
        "geventchat listening on",
        "geventchat listening on 127.0.0.1",
        "geventchat listening on ::1:8080",  # unbracketed IPv6: which colon is the port's?
        "geventchat listening on [::1]8080",
        "geventchat listening on 127.0.0.1:0",
        "geventchat listening on 127.0.0.1:70000",
        "geventchat listening on 127.0.0.1:80x",
        "geventchat listening on 127.0.0.1:8080 and more",
        "INFO geventchat listening on 127.0.0.1:8080",
        "geventchat metrics on http://127.0.0.1:9000/metrics",
        "gevent-minimal listening on 127.0.0.1:8080",  # another program's line
    ],
)
def test_anything_else_is_not_a_listening_line(line: str) -> None:
    assert parse_listening_line(line) is None


def test_another_programs_line_is_read_when_asked_for() -> None:
    line = format_listening_line(("::1", 8080), name="gevent-minimal")
    assert line == "gevent-minimal listening on [::1]:8080"
    assert parse_listening_line(line, name="gevent-minimal") == ("::1", 8080)
    assert parse_listening_line(line, name=None) == ("::1", 8080)


# ------------------------------------------------------------------------------------------ ServerProcess


def test_server_process_starts_reads_a_log_line_and_stops_with_exit_0() -> None:
    with ServerProcess(*QUIET, "--log-level", "DEBUG") as server:
        assert server.address == ("127.0.0.1", server.port) and server.port > 0
        assert server.stdout[0] == format_listening_line(server.address)
        with ChatClient.connect(*server.address, idle_timeout=5) as client:
            local_port = client.sock.getsockname()[1]
            assert client.request("hello").message == "hello"
        server.wait_for(rf"127\.0\.0\.1:{local_port} connected")
        assert server.stop() == 0
        assert "stopped" in server.stderr_text()


@pytest.mark.skipif(not has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_server_process_reads_an_ipv6_listening_line() -> None:
    with ServerProcess("--host", "::1", *QUIET) as server:
        assert server.address == ("::1", server.port) and server.port > 0


def test_a_server_that_cannot_start_is_reported_with_its_output() -> None:
    with pytest.raises(ServerExited) as exited:
        ServerProcess("--port", "not-a-port")
    assert "status 2" in str(exited.value)
    assert "'not-a-port' is not a whole number" in str(exited.value)


def test_output_written_before_the_server_looked_ready_is_there_at_once() -> None:
    # A stand-in server: a line on stderr, then the listening line on stdout, then nothing more.
    code = (
        "import sys, time; print('written first', file=sys.stderr, flush=True); "
        "print('geventchat listening on 127.0.0.1:9', flush=True); time.sleep(60)"
    )
    with ServerProcess(code=code) as server:
        assert server.address == ("127.0.0.1", 9)
        # No wait: reading the lines takes in what is already in the pipe.
        assert server.stderr == ["written first"]


def test_waiting_for_a_line_that_never_comes_times_out() -> None:
    with ServerProcess(*QUIET) as server:
        with pytest.raises(WaitTimedOut, match="never printed"):
            server.wait_for("never printed", timeout=0.1)
        assert server.proc.poll() is None  # the server was fine: only our wait gave up


def test_gevent_free_mode_in_its_own_session_is_killed_whole() -> None:
    with ServerProcess(*QUIET, "--workers", "2", use_gevent=False, new_session=True) as server:
        server.wait_for(r"2 workers ready")
        tree = descendants(server.pid)
        assert len(tree) == 3  # the supervisor and its two workers
        server.kill()
        assert server.proc.returncode == -signal.SIGKILL
        wait_until(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in tree), 10, "the workers to go")


# ------------------------------------------------------------------------------------------ wait_until


def test_wait_until_yields_to_gevent_by_default() -> None:
    done = gevent.event.Event()
    gevent.spawn_later(0.01, done.set)  # runs only if the wait lets the hub run
    wait_until(done.is_set, timeout=10, what="the greenlet")
    assert done.is_set()


def test_wait_until_uses_the_sleep_it_is_given_and_says_what_it_waited_for() -> None:
    pauses: list[float] = []
    wait_until(lambda: len(pauses) == 3, timeout=10, interval=0.25, sleep=pauses.append)
    assert pauses == [0.25, 0.25, 0.25]
    with pytest.raises(WaitTimedOut, match=r"timed out after 0\.01s waiting for pigs to fly"):
        wait_until(lambda: False, timeout=0.01, what="pigs to fly")


# ------------------------------------------------------------------------------------------ /proc


def test_proc_readers_see_this_process_and_its_children() -> None:
    fds = open_fds()
    read_end, write_end = os.pipe()
    assert open_fds() == fds + 2
    os.close(read_end)
    os.close(write_end)
    assert rss_bytes() > 1 << 20  # an interpreter with gevent loaded
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert child.pid in descendants(os.getpid())
    finally:
        child.kill()
        child.wait(10)


def test_summed_skips_processes_that_have_exited() -> None:
    def fds_of(pid: int) -> int:
        if pid == 0:
            raise FileNotFoundError("/proc/0 (a process that has exited)")
        return open_fds(pid)

    me = os.getpid()
    assert summed(fds_of, [me, 0]) == open_fds(me)
