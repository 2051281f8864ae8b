"""Configuration: frozen dataclasses with documented defaults.

Nothing here reads argv or the environment; :mod:`geventchat.cli` does that once, at the entry point, and builds
these objects. Everything else receives them ready-made.
"""

from __future__ import annotations

import enum
import math
import resource
from dataclasses import dataclass, field

#: Greeting sent by the server on accept (the original tutorial's, with our name).
DEFAULT_GREETING = "你好,我是geventchat~"
#: Prefix the server puts in front of every echoed message (the original tutorial's).
DEFAULT_PREFIX = "我收到了你的信息:"
#: Port the server listens on when none is given.
DEFAULT_PORT = 8888
#: Fds kept free for the listener, logs, rejected clients and the metrics endpoint when the connection cap is
#: derived from the open-file limit.
FD_HEADROOM = 1000


class Framing(enum.Enum):
    """How messages are delimited on one connection."""

    #: Detect per connection: ``\n``-terminated lines, unless the first bytes carry no newline and none follows
    #: within the detection window, in which case the peer is an unframed (raw) client.
    AUTO = "auto"
    #: UTF-8 lines ending in ``\n`` (a ``\r`` before it is dropped).
    LINE = "line"
    #: The original tutorial's framing: each received chunk is one message; nothing is added to replies.
    RAW = "raw"


@dataclass(frozen=True)
class ProtocolConfig:
    """What both ends agree on: texts, limits and timeout bounds. Pure data, shared by every shell."""

    #: Line sent to each client on accept.
    greeting: str = DEFAULT_GREETING
    #: Text put in front of each echoed message.
    prefix: str = DEFAULT_PREFIX
    #: Idle timeout (seconds) that applies until the client negotiates one, and after an invalid request.
    default_timeout: float = 60.0
    #: Smallest idle timeout a client may negotiate; smaller requests are raised to it.
    min_timeout: float = 0.1
    #: Largest idle timeout a client may negotiate; larger requests are lowered to it.
    max_timeout: float = 3600.0
    #: Longest accepted line in bytes, excluding the line terminator. Longer lines close the connection.
    max_line: int = 65536
    #: How messages are delimited (see :class:`Framing`).
    framing: Framing = Framing.AUTO

    def __post_init__(self) -> None:
        for name in ("default_timeout", "min_timeout", "max_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number of seconds, not {value!r}")
        if self.min_timeout > self.max_timeout:
            raise ValueError(f"min_timeout ({self.min_timeout}) is larger than max_timeout ({self.max_timeout})")
        if self.max_line < 1:
            raise ValueError(f"max_line must be at least 1 byte, not {self.max_line!r}")
        for name in ("greeting", "prefix"):
            if "\n" in getattr(self, name) or "\r" in getattr(self, name):
                raise ValueError(f"{name} must be a single line")


def default_max_connections() -> int:
    """Connection cap derived from this process's open-file limit, keeping :data:`FD_HEADROOM` fds spare."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1_048_576
    return max(1, soft - FD_HEADROOM) if soft > 2 * FD_HEADROOM else max(1, soft // 2)


@dataclass(frozen=True)
class ChatConfig:
    """Nicknames, rooms and private messages (``docs/protocol.md``, "Chat"). Line-framed clients only."""

    #: ``--chat``: serve the chat commands; off, every line is a plain message (the pure tutorial protocol).
    enabled: bool = True
    #: ``--room-rate``: messages per second one client may send into rooms and as private messages (token bucket,
    #: burst twice as many); past it ``error: too fast, not delivered``. 0 = unlimited.
    room_rate: float = 20.0
    #: ``--send-queue``: bytes of room and private lines one member may have waiting; past it ``bye: too slow``.
    send_queue: int = 1 << 20
    #: ``--max-rooms``: rooms that may exist at once; past it ``:join`` of a new room gets ``error: too many rooms``.
    max_rooms: int = 10_000
    #: Processes serving the same port (``--workers``). Above 1 every worker would have rooms of its own, so the
    #: room commands answer ``error: rooms are off: --workers without --redis``.
    workers: int = 1
    #: ``--redis redis://HOST:PORT/DB``: rooms, nicks and private messages shared by every worker and host using
    #: that Redis. ``None``: rooms live in this process's memory.
    redis: str | None = None
    #: ``--presence-ttl``: seconds after which the other servers announce a dead server's members as left
    #: ``(server lost)`` and free their nicks (with ``redis``).
    presence_ttl: float = 10.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.presence_ttl) and self.presence_ttl > 0):
            raise ValueError(f"presence_ttl must be a positive finite number of seconds, not {self.presence_ttl!r}")
        if not (math.isfinite(self.room_rate) and self.room_rate >= 0):
            raise ValueError(f"room_rate must be a finite number >= 0, not {self.room_rate!r}")
        if self.send_queue < 1 or self.max_rooms < 1 or self.workers < 1:
            raise ValueError("send_queue, max_rooms and workers must be at least 1")


@dataclass(frozen=True)
class ServerConfig:
    """Everything the server shell needs. Defaults are what ``python -m geventchat`` uses."""

    #: Address to bind. Loopback by default: exposing the server is an explicit choice.
    host: str = "127.0.0.1"
    #: TCP port; 0 picks a free one (the listening line reports it).
    port: int = DEFAULT_PORT
    #: Protocol texts and limits.
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    #: Most clients served at once; the next one gets ``bye: server full``. ``None``: derived from the
    #: open-file limit (see :func:`default_max_connections`).
    max_connections: int | None = None
    #: Seconds to wait, after ``bye: server shutting down``, for clients to leave before closing them.
    grace: float = 5.0
    #: Seconds a closing connection keeps discarding input after a ``bye:`` line so the client can read it
    #: (a lingering close) instead of receiving a reset.
    linger: float = 2.0
    #: Seconds to wait for a newline before deciding, in ``auto`` framing, that the client is unframed.
    raw_detect_window: float = 0.1
    #: Seconds between INFO statistics lines; 0 turns them off.
    stats_interval: float = 10.0
    #: Listen backlog: how many finished handshakes the kernel queues before we accept them.
    backlog: int = 1024
    #: Bytes asked of each ``recv``.
    recv_size: int = 65536
    # -- hardening (docs: README "Limits and hardening")
    #: Most connections one client address may hold at once; the next gets
    #: ``bye: too many connections from your address``. ``None``: no per-address cap.
    max_per_ip: int | None = None
    #: Seconds a new client has to send its idle-timeout line (and, with TLS, finish the TLS handshake) before
    #: ``bye: handshake timeout``. Shorter than the default idle timeout so idle sockets cannot pile up cheaply.
    handshake_timeout: float = 10.0
    #: PEM certificate chain for TLS; ``None`` serves plain TCP.
    tls_cert: str | None = None
    #: PEM private key for ``tls_cert`` (``None``: the key is in the certificate file).
    tls_key: str | None = None
    #: Port for the Prometheus metrics endpoint (``/metrics``); ``None`` serves no metrics, 0 picks a free port.
    metrics_port: int | None = None
    #: Address the metrics endpoint binds (loopback unless you say otherwise).
    metrics_host: str = "127.0.0.1"
    #: Expect a PROXY protocol header (v1 or v2, as HAProxy's ``send-proxy``) before each conversation, and log the
    #: client address it names. Only behind a load balancer that sends one: a connection without it is closed.
    proxy_protocol: bool = False
    #: Chat rooms (see :class:`ChatConfig`).
    chat: ChatConfig = field(default_factory=ChatConfig)

    def __post_init__(self) -> None:
        self._check_hardening()
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections}")
        for name in ("grace", "linger", "raw_detect_window", "stats_interval"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, not {value!r}")
        if self.backlog < 1 or self.recv_size < 1:
            raise ValueError("backlog and recv_size must be positive")

    def _check_hardening(self) -> None:
        if self.max_per_ip is not None and self.max_per_ip < 1:
            raise ValueError(f"max_per_ip must be at least 1, not {self.max_per_ip}")
        if not (math.isfinite(self.handshake_timeout) and self.handshake_timeout > 0):
            raise ValueError(f"handshake_timeout must be a positive finite number, not {self.handshake_timeout!r}")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"metrics_port must be between 0 and 65535, not {self.metrics_port}")

    @property
    def connection_limit(self) -> int:
        """The effective cap on concurrent clients."""
        return self.max_connections if self.max_connections is not None else default_max_connections()
