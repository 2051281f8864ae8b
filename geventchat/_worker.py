"""What one pre-forked worker runs (see :mod:`geventchat.workers`): a ChatServer on a ``SO_REUSEPORT`` listener.

Kept apart from the supervisor so the supervising parent never touches gevent; only the forked child imports and
starts a hub here.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket

import gevent
from gevent.socket import socket as GeventSocket

from .config import ServerConfig
from .server import ChatServer, create_listener

__all__ = ["serve_worker"]

log = logging.getLogger("geventchat.workers")


def serve_worker(config: ServerConfig, port: int, index: int, control: socket.socket, early_signals: list[int]) -> int:
    """Listen on ``port`` next to the other workers, report ready on ``control``, serve until told to stop.

    Stops gracefully (every client gets ``bye: server shutting down``) on SIGTERM/SIGINT, on a signal that arrived
    before the handlers were in place (``early_signals``), and when ``control`` reaches end of file (the supervisor
    is gone). Returns the exit status. Raises :class:`OSError` if the port cannot be bound.
    """
    gevent.reinit()  # harmless without a hub; required if the parent ever created one
    listener = create_listener(config.host, port, backlog=config.backlog, reuse_port=True)
    if config.metrics_port:  # one endpoint per worker, each series labelled worker="<index>" (docs/hardening.md)
        config = dataclasses.replace(config, metrics_port=config.metrics_port + index)
    server = ChatServer(config, listener=listener, metrics_labels={"worker": str(index)})
    server.start()
    if server.metrics is not None:
        log.info("worker %d: metrics on http://%s:%d/metrics", index, *server.metrics.address)

    def stop(why: str) -> None:
        if server.shutting_down:
            log.debug("worker %d: %s while already shutting down", index, why)
            return
        log.info("worker %d: %s: shutting down (grace %gs)", index, why, config.grace)
        gevent.spawn(server.shutdown)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, lambda signum=signum: stop(signal.Signals(signum).name))
    if early_signals:
        stop(signal.Signals(early_signals[0]).name)

    channel = GeventSocket(control.family, control.type, fileno=control.detach())

    def watch_supervisor() -> None:
        try:
            while channel.recv(64):
                pass
        except OSError:
            pass
        stop("the supervisor is gone")

    channel.sendall(b"ready\n")
    watcher = gevent.spawn(watch_supervisor)
    server.serve_forever()
    watcher.kill(block=False)
    channel.close()
    log.debug("worker %d: stopped", index)
    return 0
