"""Iterative: one client at a time, the tutorial's first server, for comparison. No threads, no gevent.

The main thread accepts one client and serves it to the end of its conversation; everyone else waits in the
listen backlog (their handshake completes, but no greeting comes until the clients before them have left).
``--max-connections`` does not apply: the answer is always one. On SIGTERM/SIGINT the current client gets
``bye: server shutting down``; clients still in the backlog are reset when the listener closes.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from ..config import ServerConfig
from ._blocking import accept_until_stopped, listen_until_signalled, serve_connection

__all__ = ["serve"]

log = logging.getLogger("geventchat.models")


def serve(config: ServerConfig, announce: Callable[[tuple[str, int]], None]) -> int:
    """Run the iterative server until SIGTERM/SIGINT; returns the exit status. Call from the main thread."""
    listener, stop = listen_until_signalled(config)

    def handle(sock: socket.socket, address: tuple[str, int]) -> None:
        serve_connection(sock, address, config, stop)

    announce(listener.getsockname()[:2])
    log.info("iterative model: serving one connection at a time")
    try:
        # One accept per wake-up: a client accepted but not yet served would only wait outside the backlog.
        accept_until_stopped(listener, stop, handle, max_accept=1)
    finally:
        listener.close()
    log.info("%s: stopped", stop.describe_trigger())
    return 0
