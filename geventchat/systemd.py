"""systemd's readiness protocol (``sd_notify``) without libsystemd: one datagram to ``$NOTIFY_SOCKET``.

systemd starts a ``Type=notify`` service with ``NOTIFY_SOCKET`` set to an ``AF_UNIX`` datagram socket: a path, or
an abstract-namespace name written with a leading ``@``. The service sends newline-separated ``KEY=VALUE``
assignments: ``READY=1`` once it serves, ``RELOADING=1`` when a reload starts (then ``READY=1`` again when it
ends), ``STOPPING=1`` when it begins to shut down. Without the variable (not under systemd) nothing is sent.

Standard library only and no gevent: the supervisor, which runs no hub, calls it too. One ``sendto`` on a datagram
socket never blocks for long (the receiver is systemd, or a test).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["notify", "notify_reloading"]

log = logging.getLogger("geventchat.systemd")


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``$NOTIFY_SOCKET``. Returns True if sent, False if the variable is
    unset or the send failed (logged: systemd's side, or a wrong variable, not a reason to stop serving)."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # the abstract namespace: a leading NUL byte instead of the '@'
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract name; not notifying systemd", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.sendto(state.encode("utf-8"), address)
    except OSError as exc:
        log.warning("cannot notify systemd (%s) of %s: %s", address.replace("\0", "@"), state, exc.strerror or exc)
        return False
    return True


def notify_reloading(environ: Mapping[str, str] | None = None) -> bool:
    """``RELOADING=1`` with the ``MONOTONIC_USEC`` that systemd 253+ wants (``Type=notify-reload``) and older
    versions ignore."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", environ)
