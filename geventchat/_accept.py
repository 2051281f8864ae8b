"""Accept errors handled the same way by every gevent server geventchat runs (the chat acceptor and the metrics
endpoint): :class:`QuietAcceptServer`.

gevent's own servers print a traceback for every failed ``accept()`` and retry after a back-off that
:meth:`do_read` resets on each call. When the process runs out of files (EMFILE) a listener stays readable, so
that is one traceback per retry for as long as the exhaustion lasts. Here it is one warning per episode and a
back-off that really backs off, until accepts succeed again.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, ClassVar

from gevent.server import StreamServer

from ._gevent_fast import pause_accepting
from ._net import ACCEPT_PEER_ERRORS, ACCEPT_RESOURCE_ERRORS

__all__ = ["QuietAcceptServer"]


class QuietAcceptServer(StreamServer):
    """A StreamServer (or subclass: mix it in first) whose accept errors are logged once per episode (and at most
    once per :attr:`log_interval`) instead of printed per accept, with a doubling back-off. Errors the peer caused
    (a reset before accept) are ignored; errors other than running out of a resource propagate as in gevent."""

    #: First pause (s) after a failed accept; doubled per consecutive failure up to gevent's ``max_delay`` (1 s).
    first_delay = 0.05
    #: Least seconds between two "accept failed" (or two "accepting again") lines: when the open-file limit
    #: flaps (fds freed, the backlog accepted, exhausted again), the log must not flap with it.
    log_interval = 10.0
    #: Where the two lines go, and what they start with (a subclass names its listener there).
    accept_log: ClassVar[logging.Logger] = logging.getLogger("geventchat.server")
    log_prefix: ClassVar[str] = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._failed_accepts = 0
        # gevent resets self.delay after every do_read() that returns, so the back-off needs its own state.
        self._backoff = self.first_delay
        self._failure_logged = -math.inf
        self._recovery_logged = -math.inf

    def do_read(self):  # type: ignore[no-untyped-def]
        try:
            accepted = super().do_read()
        except OSError as exc:
            if exc.errno in ACCEPT_PEER_ERRORS:
                return None
            if exc.errno not in ACCEPT_RESOURCE_ERRORS:
                raise
            self._accept_failed(exc)
            return None
        if self._failed_accepts and accepted:
            self._accepting_again()
        return accepted

    def _accept_failed(self, exc: OSError) -> None:
        self._failed_accepts += 1
        now = time.monotonic()
        if now - self._failure_logged >= self.log_interval:
            self._failure_logged = now
            self.accept_log.warning(
                "%saccept failed (ours: %s); pausing accepts until resources free up", self.log_prefix, exc.strerror
            )
        # The back-off gevent applies to unexpected accept errors, without its traceback per failure.
        pause_accepting(self, self._backoff)
        self._backoff = min(float(self.max_delay), self._backoff * 2)

    def _accepting_again(self) -> None:
        self._backoff = self.first_delay
        now = time.monotonic()
        if now - self._recovery_logged >= self.log_interval:
            self._recovery_logged = now
            self.accept_log.warning("%saccepting again after %d failed accepts", self.log_prefix, self._failed_accepts)
            self._failed_accepts = 0
