"""What one pre-forked worker runs (see :mod:`geventchat.workers`): a ChatServer on its slot's ``SO_REUSEPORT``
listener, inherited from the supervisor.

Kept apart from the supervisor so the supervising parent never touches gevent; only the forked child imports and
starts a hub here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import socket
from collections.abc import Callable

import gevent
from gevent.socket import socket as GeventSocket

from ._forking import ALIVE, READY, RELEASE_METRICS, RELEASED
from .config import ServerConfig
from .server import ChatServer

__all__ = ["serve_worker"]

log = logging.getLogger("geventchat.workers")


def serve_worker(
    config: ServerConfig,
    listener: socket.socket,
    index: int,
    control: socket.socket,
    early_signals: list[int],
    *,
    heartbeat: float | None = None,
) -> int:
    """Serve on the listening socket ``listener``, report ready on ``control``, serve until told to stop.

    Writes ``alive`` on ``control`` every ``heartbeat`` seconds (None: never), from a greenlet, so a blocked hub
    goes silent. Answers ``release-metrics`` by closing its metrics endpoint and writing ``released``.

    Stops gracefully (every client gets ``bye: server shutting down``) on SIGTERM/SIGINT, on a signal that arrived
    before the handlers were in place (``early_signals``), and when ``control`` reaches end of file (the supervisor
    is gone). Returns the exit status. Raises :class:`OSError` if the metrics port cannot be bound.
    """
    gevent.reinit()  # harmless without a hub; required if the parent ever created one
    server = _start_server(config, listener, index)
    stop = _stopper(server, index)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, lambda signum=signum: stop(signal.Signals(signum).name))
    if early_signals:
        stop(signal.Signals(early_signals[0]).name)
    channel = GeventSocket(control.family, control.type, fileno=control.detach())
    channel.sendall(READY + b"\n")
    helpers = [gevent.spawn(_watch_supervisor, channel, server, stop)]
    if heartbeat is not None:
        helpers.append(gevent.spawn(_beat, channel, heartbeat))
    server.serve_forever()
    gevent.killall(helpers, block=False)
    channel.close()
    log.debug("worker %d: stopped", index)
    return 0


def _start_server(config: ServerConfig, listener: socket.socket, index: int) -> ChatServer:
    accepting = GeventSocket(listener.family, listener.type, fileno=listener.detach())
    if config.metrics_port:  # one endpoint per worker, each series labelled worker="<index>" (docs/hardening.md)
        config = dataclasses.replace(config, metrics_port=config.metrics_port + index)
    server = ChatServer(config, listener=accepting, metrics_labels={"worker": str(index)})
    server.start()
    if server.metrics is not None:
        log.info("worker %d: metrics on http://%s:%d/metrics", index, *server.metrics.address)
    return server


def _stopper(server: ChatServer, index: int) -> Callable[[str], None]:
    """``stop(why)``: begin the graceful shutdown once, however many reasons arrive."""

    stopping: list[gevent.Greenlet] = []  # set at once: the shutdown greenlet sets server.shutting_down only later

    def stop(why: str) -> None:
        if stopping or server.shutting_down:
            log.debug("worker %d: %s while already shutting down", index, why)
            return
        log.info("worker %d: %s: shutting down (grace %gs)", index, why, server.config.grace)
        stopping.append(gevent.spawn(server.shutdown))

    return stop


def _watch_supervisor(channel: GeventSocket, server: ChatServer, stop: Callable[[str], None]) -> None:
    """Answer the supervisor's requests until it is gone (end of file), then stop."""
    try:
        while data := channel.recv(64):
            if RELEASE_METRICS in data and server.metrics is not None:
                server.metrics.stop()  # a replacement is about to bind its port (SIGHUP)
                server.metrics = None
            if RELEASE_METRICS in data:
                channel.sendall(RELEASED + b"\n")
    except OSError:
        pass
    stop("the supervisor is gone")


def _beat(channel: GeventSocket, interval: float) -> None:
    with contextlib.suppress(OSError):  # the supervisor is gone: _watch_supervisor sees it
        while True:  # ends when killed after serve_forever, or when the supervisor is gone
            gevent.sleep(interval)
            channel.sendall(ALIVE + b"\n")
