"""``--workers N``: pre-forked gevent workers sharing one port under a supervising parent.

Observable: with several processes every log line carries ``name[pid]``, and each worker's DEBUG log says
``HOST:PORT connected`` for its clients, so a client's local port tells which worker serves it.
"""

from __future__ import annotations

import os
import re
import signal

import pytest

from geventchat import ChatClient, ClosedByServer, ConnectionReset
from geventchat.testing import ServerProcess
from geventchat.workers import resolve_worker_count

HOST = "127.0.0.1"
ARGS = ["--workers", "2", "--port", "0", "--log-level", "DEBUG", "--stats-interval", "0", "--linger", "0.5"]
ARGS += ["--grace", "2"]
READY = r"2 workers ready \(pids (\d+) (\d+)\)"


def connect(port: int) -> ChatClient:
    return ChatClient.connect(HOST, port, idle_timeout=30, connect_timeout=5, reply_timeout=5)


def worker_of(server: ServerProcess, client: ChatClient) -> int:
    """The pid of the worker serving ``client`` (from its 'connected' debug line)."""
    local_port = client.sock.getsockname()[1]
    match = server.wait_for(rf"geventchat\.server\[(\d+)\]: 127\.0\.0\.1:{local_port} connected")
    return int(match.group(1))


def start_workers(*extra: str, code: str | None = None) -> ServerProcess:
    return ServerProcess(*ARGS, *extra, code=code)


def test_worker_count_zero_means_one_per_cpu() -> None:
    assert resolve_worker_count(0) == len(os.sched_getaffinity(0))
    assert resolve_worker_count(3) == 3


def test_two_workers_share_the_port_and_shut_down_gracefully() -> None:
    with start_workers() as server:
        workers = {int(pid) for pid in server.wait_for(READY).groups()}
        clients = [connect(server.port) for _ in range(50)]
        for index, client in enumerate(clients):
            assert client.request(f"m{index}").message == f"m{index}"
        serving = {worker_of(server, client) for client in clients}
        assert serving == workers  # the kernel spread 50 connections over both (a miss has odds of 2**-49)

        server.send_signal(signal.SIGTERM)
        for client in clients:
            with pytest.raises(ClosedByServer) as closed:
                client.receive(timeout=5)
            assert closed.value.reason == "server shutting down"
            client.close()
        assert server.wait(15) == 0
        assert [line for line in server.stdout if "listening on" in line] == [
            f"geventchat listening on {HOST}:{server.port}"
        ]


def test_a_killed_worker_is_restarted_and_the_other_keeps_serving() -> None:
    with start_workers() as server:
        workers = {int(pid) for pid in server.wait_for(READY).groups()}
        clients: dict[int, list[ChatClient]] = {pid: [] for pid in workers}
        for _ in range(100):  # until each worker serves at least one client
            client = connect(server.port)
            clients[worker_of(server, client)].append(client)
            if all(clients.values()):
                break
        assert all(clients.values()), "100 connections never reached both workers"
        victim, survivor = sorted(workers, key=lambda pid: len(clients[pid]))
        mark = len(server.stderr)
        os.kill(victim, signal.SIGKILL)

        crash = server.wait_for(rf"worker (\d) \(pid {victim}\) was killed by SIGKILL.*restarting it in", start=mark)
        index = crash.group(1)
        replacement = int(server.wait_for(rf"worker {index} started \(pid (\d+)\)", start=mark).group(1))
        server.wait_for(rf"worker {index} \(pid {replacement}\) is listening", start=mark)

        for client in clients[victim]:
            with pytest.raises((ConnectionReset, ClosedByServer)):
                client.request("anyone there?")
            client.close()
        for client in clients[survivor]:
            assert client.request("unaffected").message == "unaffected"
        # New connections reach the replacement too (a miss in 100 has odds of 2**-100).
        fresh = []
        for _ in range(100):
            fresh.append(connect(server.port))
            if worker_of(server, fresh[-1]) == replacement:
                break
        assert worker_of(server, fresh[-1]) == replacement
        assert fresh[-1].request("new worker").message == "new worker"
        for client in fresh + clients[survivor]:
            client.close()

        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


# Workers that fail as they start: the parent never calls ChatServer.start itself, so only workers crash.
CRASH_AT_START = """
import sys
from geventchat import cli, server, workers

def start(self):
    raise RuntimeError("simulated start-up failure")

server.ChatServer.start = start
workers.Supervisor.restart_delay = 0.01
raise SystemExit(cli.main(sys.argv[1:]))
"""


def test_workers_that_keep_crashing_make_the_supervisor_exit_non_zero() -> None:
    with ServerProcess(*ARGS, code=CRASH_AT_START, wait=False) as server:
        assert server.wait(30) != 0
        assert not any("listening on" in line for line in server.stdout)
        assert any(re.search(r"worker crashes within .*giving up", line) for line in server.stderr)
        restarts = [line for line in server.stderr if "restarting it in" in line]
        assert len(restarts) == 5  # max_crashes, each followed by a restart; the sixth crash ends it


def test_workers_refused_for_other_models() -> None:
    with ServerProcess("--model", "thread", "--workers", "2", "--port", "0", wait=False) as server:
        assert server.wait(15) == 2
        assert any("--workers applies to the gevent model only" in line for line in server.stderr)


def test_workers_leave_gracefully_when_the_supervisor_dies() -> None:
    psutil = pytest.importorskip("psutil")
    with start_workers() as server:
        workers = [psutil.Process(int(pid)) for pid in server.wait_for(READY).groups()]
        clients = [connect(server.port) for _ in range(4)]
        server.proc.kill()  # SIGKILL: no forwarding, no cleanup; only the control sockets reaching EOF tell them
        for client in clients:
            with pytest.raises(ClosedByServer) as closed:
                client.receive(timeout=5)
            assert closed.value.reason == "server shutting down"
            client.close()
        _gone, alive = psutil.wait_procs(workers, timeout=10)  # not our children: no exit status to check
        assert not alive


def test_a_second_signal_kills_the_workers_and_exits_1() -> None:
    with start_workers() as server:
        server.wait_for(READY)
        client = connect(server.port)  # stays connected: the graceful shutdown waits for it
        server.send_signal(signal.SIGTERM)
        with pytest.raises(ClosedByServer) as bye:
            client.receive(timeout=5)
        assert bye.value.reason == "server shutting down"
        server.send_signal(signal.SIGTERM)
        assert server.wait(10) == 1
        assert any("second signal" in line for line in server.stderr)
        client.close()
