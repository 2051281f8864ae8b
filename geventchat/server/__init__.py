"""The gevent shell: accept, one greenlet per client, read → feed → write, idle timeouts, graceful shutdown.

The conversation itself lives in :mod:`geventchat.protocol`; this package only moves bytes and keeps time.
Nothing here monkey-patches: it uses gevent's own socket API, ``gevent.Timeout`` for every wait that has a
deadline (the idle and handshake timeouts, the PROXY header, the last line's flush), and, where the public API
was measurably too slow or too big, :mod:`geventchat._gevent_fast` (the one module that touches gevent internals).

By concern:

- :mod:`.lifecycle`: :class:`ChatServer`: start, serve, graceful shutdown, stop, the periodic statistics line;
- :mod:`.acceptor`: :func:`create_listener`, and the accept loop with its back-off;
- :mod:`.admission`: the connection limit (``bye: server full``), the PROXY header, the per-address limit, rejects;
- :mod:`.connection`: one client: open, converse, close, and the table from exception to close reason.

The counters are :class:`~geventchat.stats.ServerStats` (re-exported here), which :mod:`geventchat.metrics` reads.
"""

from __future__ import annotations

from ..stats import ServerStats
from .acceptor import create_listener
from .lifecycle import ChatServer

__all__ = ["ChatServer", "ServerStats", "create_listener"]
