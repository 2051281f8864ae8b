"""Process per client: the tutorial's ``multiprocessing.Process`` per connection, for comparison. No gevent.

The main process accepts; each client gets a forked :class:`multiprocessing.Process` running the shared blocking
shell (:func:`~geventchat.models._blocking.serve_connection`), and the parent closes its copy of the socket.
``--max-connections`` caps the live children. On SIGTERM/SIGINT the parent stops accepting and sends SIGTERM to
every child; each child says ``bye: server shutting down`` and exits. Children still alive after ``--grace`` are
killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from ..config import ServerConfig
from ..protocol import format_peer
from ._blocking import StopSwitch, accept_until_stopped, listen_until_signalled, reject_full, serve_connection

__all__ = ["serve"]

log = logging.getLogger("geventchat.models")


def serve(config: ServerConfig, announce: Callable[[tuple[str, int]], None]) -> int:
    """Run the process-per-client server until SIGTERM/SIGINT; returns the exit status. Call from the main thread."""
    # fork, as the tutorial did on Linux: the child inherits the accepted socket instead of receiving it by pickle.
    context = multiprocessing.get_context("fork")
    listener, stop = listen_until_signalled(config)
    limit = config.connection_limit
    children: list[BaseProcess] = []

    def reap() -> None:
        alive = []
        for child in children:
            if child.is_alive():
                alive.append(child)
            else:
                child.close()  # releases the sentinel pipe now rather than at garbage collection
        children[:] = alive

    def handle(sock: socket.socket, address: tuple[str, int]) -> None:
        if len(children) >= limit:
            reap()  # only when it matters: it polls every child (the accept loop also reaps once a second)
        if len(children) >= limit:
            log.debug("%s rejected: server full (%d connections)", format_peer(address), len(children))
            reject_full(sock)
            return
        child = context.Process(
            target=_serve_in_child,
            args=(sock, address, config, listener, stop),
            name=f"geventchat-client-{format_peer(address)}",
            daemon=False,
        )
        try:
            child.start()
        finally:
            sock.close()  # the child has its own copy; ours would keep the connection open after the child closes it
        children.append(child)

    announce(listener.getsockname()[:2])
    log.info("process model: serving up to %d connections, one process each", limit)
    try:
        accept_until_stopped(listener, stop, handle, on_tick=reap)
    finally:
        listener.close()
    log.info("%s: shutting down (grace %gs)", stop.describe_trigger(), config.grace)
    reap()
    for child in children:
        child.terminate()  # SIGTERM: the child's stop switch wakes it and it says bye
    deadline = time.monotonic() + config.grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    leftovers = [child for child in children if child.is_alive()]
    if leftovers:
        log.info("grace period over; killing %d remaining client processes", len(leftovers))
        for child in leftovers:
            child.kill()
            child.join(1.0)
    log.info("stopped")
    return 0


def _serve_in_child(
    sock: socket.socket, address: tuple[str, int], config: ServerConfig, listener: socket.socket, inherited: StopSwitch
) -> None:
    # The listener and the parent's stop switch came along with fork: drop them, or the port would stay open (and
    # keep queueing handshakes) after the parent closes it, and the parent's signals would wake us twice.
    listener.close()
    signal.set_wakeup_fd(-1)
    inherited.close()
    stop = StopSwitch()
    # SIGTERM comes from the parent; SIGINT from a terminal's Ctrl-C, which reaches the whole process group. Either
    # one means "say bye and leave"; the parent decides about second signals.
    stop.install_signal_handlers(second_exits=False)
    try:
        serve_connection(sock, address, config, stop)
    finally:
        stop.close()
