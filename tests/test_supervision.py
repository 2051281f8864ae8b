"""Supervision as operators know it from gunicorn (``--workers``): SIGHUP replaces the workers with no connection
refused, SIGTTIN/SIGTTOU add and remove one, a worker silent past ``--worker-timeout`` is killed and replaced, and
``--pid-file``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gevent
import gevent.event
import pytest

from geventchat import ChatClient, ChatClientError, ClosedByServer
from geventchat.testing import QUIET, ServerProcess, wait_until

HOST = "127.0.0.1"
BASE = [*QUIET, "--log-level", "DEBUG", "--linger", "0.2", "--grace", "5"]
READY = r"(\d+) workers ready \(pids ([\d ]+)\)"
#: Connections the HUP test makes at most (the loop's bound; it normally stops far earlier).
MAX_CONNECTIONS = 5000


def worker_of(server: ServerProcess, client: ChatClient) -> int:
    local_port = client.sock.getsockname()[1]
    return int(server.wait_for(rf"geventchat\.server\[(\d+)\]: 127\.0\.0\.1:{local_port} connected").group(1))


def start(workers: int, *extra: str) -> tuple[ServerProcess, list[int]]:
    server = ServerProcess("--workers", str(workers), *BASE, *extra)  # returns once the listening line came
    try:
        pids = [int(pid) for pid in server.wait_for(READY).group(2).split()]
    except BaseException:
        server.close()
        raise
    return server, pids


def test_sighup_replaces_the_workers_without_refusing_a_connection() -> None:
    server, old = start(2, "--linger", "3")  # the held client's old worker drains until it closes (or 3 s)
    with server:
        held = ChatClient.connect(HOST, server.port, idle_timeout=30, reply_timeout=10)
        assert held.request("before").message == "before"
        made: list[float] = []  # when each connection was served
        errors: list[ChatClientError] = []
        byes: list[str | None] = []
        stop = gevent.event.Event()

        def keep_connecting() -> None:
            while not stop.is_set() and len(made) + len(errors) + len(byes) < MAX_CONNECTIONS:
                try:
                    with ChatClient.connect(HOST, server.port, idle_timeout=30, connect_timeout=5) as client:
                        assert client.request("through the reload").message == "through the reload"
                    made.append(time.monotonic())
                except ClosedByServer as closed:  # accepted by an old worker just before it began to drain
                    byes.append(closed.reason)
                except ChatClientError as exc:  # refused, reset, timed out: what a reload must never cause
                    errors.append(exc)

        connector = gevent.spawn(keep_connecting)
        wait_until(lambda: len(made) >= 20, timeout=15, what="connections before the reload")
        mark = len(server.stderr)
        hup_at = time.monotonic()
        server.send_signal(signal.SIGHUP)

        reloaded = server.wait_for(r"reload done: 2 new workers ready \(pids (\d+) (\d+)\)", start=mark)
        assert not {int(pid) for pid in reloaded.groups()} & set(old)
        with pytest.raises(ClosedByServer) as bye:  # the old worker's client: told only once the new ones serve
            held.receive(timeout=10)
        assert bye.value.reason == "server shutting down"
        # Its worker now drains: it waits up to --linger for this client to close. Connect meanwhile.
        told_at = time.monotonic()
        wait_until(lambda: sum(1 for t in made if t > told_at) >= 20, timeout=15, what="connections while draining")
        held.close()
        for pid in old:
            server.wait_for(rf"old worker \d \(pid {pid}\) exited with status 0", start=mark)
        drained_at = time.monotonic()
        wait_until(lambda: sum(1 for t in made if t > drained_at) >= 20, timeout=15, what="connections after it")
        stop.set()
        connector.join(timeout=10)

        during = sum(1 for t in made if hup_at <= t <= drained_at)
        print(
            f"SIGHUP: {len(made)} connections served, {during} while the workers were replaced "
            f"({drained_at - hup_at:.2f}s), {len(byes)} told 'bye' by a draining worker, {len(errors)} errors"
        )
        assert during >= 20  # the loop really ran through the replacement and the drain
        assert errors == []
        assert set(byes) <= {"server shutting down"}, byes
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


def test_sigttin_adds_a_worker_and_sigttou_removes_one() -> None:
    server, first = start(2)
    with server:
        mark = len(server.stderr)
        server.send_signal(signal.SIGTTIN)
        server.wait_for(r"SIGTTIN: adding worker 2 \(now 3 workers\)", start=mark)
        added = int(server.wait_for(r"worker 2 started \(pid (\d+)\)", start=mark).group(1))
        server.wait_for(rf"worker 2 \(pid {added}\) is listening", start=mark)

        clients: list[ChatClient] = []
        for _ in range(200):  # until one lands on the new worker (a miss in 200 has odds of (2/3)**200)
            clients.append(ChatClient.connect(HOST, server.port, idle_timeout=30))
            if worker_of(server, clients[-1]) == added:
                break
        on_added = clients[-1]
        assert worker_of(server, on_added) == added
        assert on_added.request("third").message == "third"

        mark = len(server.stderr)
        server.send_signal(signal.SIGTTOU)
        server.wait_for(r"SIGTTOU: removing worker 2 \(now 2 workers\)", start=mark)
        with pytest.raises(ClosedByServer) as bye:
            on_added.receive(timeout=10)
        assert bye.value.reason == "server shutting down"
        server.wait_for(rf"old worker 2 \(pid {added}\) exited with status 0", start=mark)
        for client in clients:
            client.close()

        server.send_signal(signal.SIGTTOU)
        server.wait_for(r"SIGTTOU: removing worker 1 \(now 1 workers\)", start=mark)
        server.send_signal(signal.SIGTTOU)
        server.wait_for(r"SIGTTOU ignored: one worker is the minimum", start=mark)
        server.wait_for(rf"old worker 1 \(pid {first[1]}\) exited with status 0", start=mark)
        for _ in range(10):  # the last worker serves every new connection
            with ChatClient.connect(HOST, server.port, idle_timeout=30) as client:
                assert worker_of(server, client) == first[0]
                assert client.request("still here").message == "still here"
        assert not [line for line in server.stderr if "restarting it" in line]  # removals are not crashes
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


def test_a_worker_that_stops_answering_is_killed_and_replaced() -> None:
    # 3 s: a healthy worker beats every 0.75 s, so only a really stopped one misses four beats in a row.
    server, (victim, healthy) = start(2, "--worker-timeout", "3")
    with server:
        mark = len(server.stderr)
        os.kill(victim, signal.SIGSTOP)  # a hung worker: its hub never runs again
        silent = server.wait_for(rf"worker (\d) \(pid {victim}\) sent no heartbeat for [\d.]+s", start=mark)
        index = silent.group(1)
        server.wait_for(rf"worker {index} \(pid {victim}\) was killed by SIGKILL.*restarting it in", start=mark)
        replacement = int(server.wait_for(rf"worker {index} started \(pid (\d+)\)", start=mark).group(1))
        server.wait_for(rf"worker {index} \(pid {replacement}\) is listening", start=mark)
        assert not [line for line in server.stderr[mark:] if f"pid {healthy})" in line and "heartbeat" in line]
        # The slot's socket stayed open: new connections reach the replacement (a miss in 100: odds 2**-100).
        served_by = []
        for _ in range(100):
            with ChatClient.connect(HOST, server.port, idle_timeout=30) as client:
                assert client.request("alive").message == "alive"
                served_by.append(worker_of(server, client))
            if served_by[-1] == replacement:
                break
        assert served_by[-1] == replacement
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_pid_file_holds_the_main_pid_while_running_and_is_removed_at_exit(tmp_path: Path, workers: str) -> None:
    pid_file = tmp_path / "geventchat.pid"
    server = ServerProcess(*QUIET, "--workers", workers, "--pid-file", str(pid_file))
    try:
        assert pid_file.read_text() == f"{server.pid}\n"  # the supervisor's, with workers
        code, err = server.stop(), server.stderr_text()
        assert code == 0, err
        assert not pid_file.exists()
    finally:
        server.close()


def test_an_unwritable_pid_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "geventchat", "--port", "0", "--pid-file", str(tmp_path / "missing" / "x.pid")],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"geventchat: error: cannot write --pid-file {tmp_path / 'missing' / 'x.pid'}: No such file or directory"
    ]
