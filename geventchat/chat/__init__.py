"""Chat state the gevent shell drives: where rooms live (:class:`RoomService`: :class:`LocalRooms` in this
process, :class:`RoomsOff` when workers have no broker, ``redis_rooms.RedisRooms`` across workers and hosts) and
each member's capped send queue (:class:`Outbox`). The in-memory pieces are pure Python objects: no gevent, no
sockets, no clock; the Redis service reaches the broker through :mod:`._gevent_redis`. The lines they produce are
formatted by :mod:`geventchat.protocol.chat`; docs/protocol.md rules 11-23 say what a client sees.
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
