"""Chat state the gevent shell drives: where rooms live (:class:`RoomService`, :class:`LocalRooms`,
:class:`RoomsOff`) and each member's capped send queue (:class:`Outbox`). Pure Python objects: no gevent, no
sockets, no clock. The lines they produce are formatted by :mod:`geventchat.protocol.chat`.

Not served yet: the connection does not use this package (``docs/protocol.md``, "Planned: chat").
"""

from .outbox import DEFAULT_SEND_QUEUE, Outbox
from .rooms import DEFAULT_MAX_ROOMS, LocalRooms, Member, RoomService, RoomsOff, answer

__all__ = [
    "DEFAULT_MAX_ROOMS",
    "DEFAULT_SEND_QUEUE",
    "LocalRooms",
    "Member",
    "Outbox",
    "RoomService",
    "RoomsOff",
    "answer",
]
