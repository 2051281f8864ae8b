"""Server models: the gevent server and, for comparison, the designs it replaces.

``geventchat --model gevent|thread|process|iterative`` picks one. Every model drives the same sans-IO
:class:`~geventchat.protocol.ServerConversation` and passes the same protocol tests; only the concurrency differs:

- ``gevent`` (default, :mod:`geventchat.server`): a greenlet per client. The production server.
- ``thread`` (:mod:`.thread`): an OS thread per client.
- ``process`` (:mod:`.process`): a forked ``multiprocessing.Process`` per client, as in the original tutorial.
- ``iterative`` (:mod:`.iterative`): one client at a time; the rest wait in the listen backlog.

The last three are comparison backends, there to turn the tutorial's claims into benchmark numbers, not production
modes: they keep no statistics, do not linger after ``bye: server full``, and run in one process only.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..config import ServerConfig

__all__ = ["COMPARISON_MODELS", "MODELS", "serve_model"]

#: Every model name, the default first.
MODELS = ("gevent", "thread", "process", "iterative")
#: The models that exist for comparison only (implemented in this package).
COMPARISON_MODELS = MODELS[1:]


def serve_model(name: str, config: ServerConfig, announce: Callable[[tuple[str, int]], None]) -> int:
    """Run comparison model ``name`` until SIGTERM/SIGINT and return the exit status. ``announce`` is called with
    the bound ``(host, port)`` once the server accepts. Raises :class:`OSError` if the address is unusable and
    :class:`ValueError` for an unknown model."""
    if name not in COMPARISON_MODELS:
        raise ValueError(f"unknown comparison model {name!r}; choose from {', '.join(COMPARISON_MODELS)}")
    module = importlib.import_module(f".{name}", __name__)
    serve: Callable[[ServerConfig, Callable[[tuple[str, int]], None]], int] = module.serve
    return serve(config, announce)
