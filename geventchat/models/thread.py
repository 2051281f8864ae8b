"""Thread per client: the classic blocking server, for comparison. Stdlib threads, no gevent, no monkey-patching.

The main thread accepts; each client gets a daemon thread running the shared blocking shell
(:func:`~geventchat.models._blocking.serve_connection`). ``--max-connections`` caps the live threads.
On SIGTERM/SIGINT every thread wakes from ``poll()`` through the stop switch and says
``bye: server shutting down``; the main thread waits up to ``--grace`` for them, then cuts off the rest.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable

from ..config import ServerConfig
from ..protocol import format_peer
from ._blocking import accept_until_stopped, cut_off, listen_until_signalled, reject_full, serve_connection

__all__ = ["serve"]

log = logging.getLogger("geventchat.models")


def serve(config: ServerConfig, announce: Callable[[tuple[str, int]], None]) -> int:
    """Run the thread-per-client server until SIGTERM/SIGINT; returns the exit status. Call from the main thread."""
    listener, stop = listen_until_signalled(config)
    limit = config.connection_limit
    clients: dict[socket.socket, threading.Thread] = {}
    lock = threading.Lock()

    def run_client(sock: socket.socket, address: tuple[str, int]) -> None:
        try:
            serve_connection(sock, address, config, stop)
        finally:
            with lock:
                clients.pop(sock, None)

    def handle(sock: socket.socket, address: tuple[str, int]) -> None:
        if len(clients) >= limit:
            log.debug("%s rejected: server full (%d connections)", format_peer(address), len(clients))
            reject_full(sock)
            return
        thread = threading.Thread(target=run_client, args=(sock, address), daemon=True)
        with lock:
            clients[sock] = thread
        thread.start()

    announce(listener.getsockname()[:2])
    log.info("thread model: serving up to %d connections, one thread each", limit)
    try:
        accept_until_stopped(listener, stop, handle)
    finally:
        listener.close()
    log.info("%s: shutting down (grace %gs)", stop.describe_trigger(), config.grace)
    _join_all(clients, lock, config.grace)
    log.info("stopped")
    return 0


def _join_all(clients: dict[socket.socket, threading.Thread], lock: threading.Lock, grace: float) -> None:
    deadline = time.monotonic() + grace
    with lock:
        threads = list(clients.values())
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    with lock:
        remaining = dict(clients)
    if remaining:
        log.info("grace period over; closing %d remaining connections", len(remaining))
        cut_off(remaining)
        for thread in remaining.values():
            thread.join(1.0)
