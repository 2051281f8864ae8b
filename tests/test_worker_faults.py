"""Worker faults under load (``--workers``): SIGKILL one worker while every client is mid-conversation; the
supervisor restarts it, and the other worker's clients never notice. And per-worker metrics endpoints whose
``worker`` label lets the series be summed correctly."""

from __future__ import annotations

import os
import re
import signal
import time

import gevent
import gevent.event

from geventchat import ChatClient, ChatClientError
from geventchat.testing import ServerProcess, wait_until

from .faultkit import metric, scrape

HOST = "127.0.0.1"
ARGS = ["--workers", "2", "--port", "0", "--log-level", "DEBUG", "--stats-interval", "0", "--linger", "0.5"]
READY = re.compile(r"2 workers ready \(pids (\d+) (\d+)\)")
#: Clients kept busy (one request in flight each) across the kill.
LOAD_CLIENTS = 40
#: Requests every surviving client must complete after the replacement is listening.
AFTER_RESTART = 20


def worker_of(server: ServerProcess, client: ChatClient) -> int:
    local_port = client.sock.getsockname()[1]
    return int(server.wait_for(rf"geventchat\.server\[(\d+)\]: 127\.0\.0\.1:{local_port} connected").group(1))


def test_sigkill_one_worker_under_load() -> None:
    with ServerProcess(*ARGS) as server:
        workers = {int(pid) for pid in server.wait_for(READY.pattern).groups()}
        clients = [ChatClient.connect(HOST, server.port, idle_timeout=30, reply_timeout=5) for _ in range(LOAD_CLIENTS)]
        served_by = {id(client): worker_of(server, client) for client in clients}
        assert set(served_by.values()) == workers  # 40 connections over 2 workers (a miss has odds of 2**-39)
        done: dict[int, int] = {id(client): 0 for client in clients}
        failures: dict[int, ChatClientError] = {}
        stop = gevent.event.Event()

        def keep_busy(client: ChatClient) -> None:
            while not stop.is_set() and done[id(client)] < 1_000_000:
                try:
                    sent = f"m{done[id(client)]}"
                    assert client.request(sent).message == sent
                except ChatClientError as exc:
                    failures[id(client)] = exc
                    return
                done[id(client)] += 1

        load = [gevent.spawn(keep_busy, client) for client in clients]
        wait_until(lambda: min(done.values()) >= 20, timeout=20)  # everyone is mid-conversation

        victim = min(workers, key=lambda pid: sum(1 for w in served_by.values() if w == pid))
        mark = len(server.stderr)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        crash = server.wait_for(rf"worker (\d) \(pid {victim}\) was killed by SIGKILL.*restarting it in", start=mark)
        index = crash.group(1)
        replacement = int(server.wait_for(rf"worker {index} started \(pid (\d+)\)", start=mark).group(1))
        server.wait_for(rf"worker {index} \(pid {replacement}\) is listening", start=mark)
        restarted_after = time.monotonic() - killed_at

        survivors = [c for c in clients if served_by[id(c)] != victim]
        at_restart = {id(c): done[id(c)] for c in survivors}
        wait_until(lambda: all(done[id(c)] >= at_restart[id(c)] + AFTER_RESTART for c in survivors), timeout=20)
        stop.set()
        gevent.joinall(load, timeout=10, raise_error=True)

        lost = [c for c in clients if served_by[id(c)] == victim]
        print(
            f"worker kill: {len(clients)} busy clients, {len(lost)} on the killed worker; replacement listening "
            f"{restarted_after:.2f}s after SIGKILL; {sum(done[id(c)] for c in survivors)} requests by the "
            f"{len(survivors)} others, {sum(1 for c in survivors if id(c) in failures)} failed"
        )
        assert not [c for c in survivors if id(c) in failures]  # the other worker's clients never noticed
        assert all(id(c) in failures for c in lost)  # the killed worker's clients saw an error, not a hang
        # New connections reach the replacement and are served (a miss in 100 has odds of 2**-100).
        fresh: list[ChatClient] = []
        for _ in range(100):
            fresh.append(ChatClient.connect(HOST, server.port, idle_timeout=30))
            if worker_of(server, fresh[-1]) == replacement:
                break
        assert worker_of(server, fresh[-1]) == replacement
        assert fresh[-1].request("new worker").message == "new worker"
        for client in clients + fresh:
            client.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


def test_each_worker_serves_its_own_labelled_metrics() -> None:
    with ServerProcess(*ARGS, "--metrics-port", "0") as server:
        endpoints = {}
        for index in ("0", "1"):
            found = server.wait_for(rf"worker {index}: metrics on http://([\d.]+):(\d+)/metrics")
            endpoints[index] = (found.group(1), int(found.group(2)))
        clients = [ChatClient.connect(HOST, server.port, idle_timeout=30) for _ in range(20)]
        for client in clients:
            client.request("counted")
        per_worker = {index: scrape(address) for index, address in endpoints.items()}
        accepted = {i: metric(s, "geventchat_connections_accepted_total", worker=i) for i, s in per_worker.items()}
        messages = {i: metric(s, "geventchat_messages_total", worker=i, direction="in") for i, s in per_worker.items()}
        # Each endpoint reports only its own worker; the sum over the worker label is the whole server.
        assert sum(accepted.values()) == 20 and all(accepted.values())
        assert sum(messages.values()) == 20
        for client in clients:
            client.close()
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0
