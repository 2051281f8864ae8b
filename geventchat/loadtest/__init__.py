"""Locust users for geventchat: ``pip install 'geventchat[loadtest]'``, then in your locustfile::

    from geventchat.loadtest import ChatUser, IdleUser   # the scenarios, or GeventChatUser to write your own

and run ``locust -f your_locustfile.py --host tcp://HOST:PORT``. The repository's ``loadtest/locustfile.py`` is
exactly that, with all five scenarios.

- :mod:`.users`: :class:`GeventChatUser` (abstract base) and the scenarios :class:`ChatUser`, :class:`IdleUser`,
  :class:`ChurnUser`, :class:`TimeoutUser`, :class:`RoomUser`; importing it installs the listeners (:mod:`.listeners`).
- :mod:`.session`: :class:`ChatSession`, the client wrapper each user drives step by step.
- :mod:`.settings` (the ``--gc-*`` options), :mod:`.target` (``--host``), :mod:`.latency` (µs histograms),
  :mod:`.failures` (failure causes), :mod:`.report` (the µs table, its files, the web UI page).

Importing this package does not import Locust, whose import monkey-patches the whole process: the names below are
loaded when first used, so tests and tools can use the Locust-free modules (settings, target, latency, failures,
report) in a process that must stay unpatched. Using a User class imports Locust.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .session import ChatSession
    from .settings import Settings
    from .users import ChatUser, ChurnUser, GeventChatUser, IdleUser, RoomUser, TimeoutUser

__all__ = [
    "ChatSession",
    "ChatUser",
    "ChurnUser",
    "GeventChatUser",
    "IdleUser",
    "RoomUser",
    "Settings",
    "TimeoutUser",
]

# Where each public name lives (the module is imported on first use).
_HOMES = {
    "ChatSession": "session",
    "ChatUser": "users",
    "ChurnUser": "users",
    "GeventChatUser": "users",
    "IdleUser": "users",
    "RoomUser": "users",
    "Settings": "settings",
    "TimeoutUser": "users",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
