"""The load tester's own options (``--gc-*``), parsed once per test into a frozen :class:`Settings`.

Locust builds its command-line parser from every listener of ``init_command_line_parser``; the one in
:mod:`.listeners` calls :func:`add_arguments`. The same options are settable in ``locust.conf``
(``gc-timeout = 10``), through ``LOCUST_GC_TIMEOUT``-style environment variables, and in the web UI's "Custom
parameters". Values typed in the web UI arrive unchecked, so :meth:`Settings.from_options` validates everything and
raises :class:`BadSettings`.

Nothing here imports Locust.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from geventchat.config import DEFAULT_PREFIX

from .target import BadTarget, parse_source_addresses

__all__ = ["BadSettings", "Settings", "StepSpec", "add_arguments", "options_help", "parse_step_spec"]


class BadSettings(ValueError):
    """An option has an unusable value; ``str()`` names the option and says why."""


@dataclass(frozen=True)
class StepSpec:
    """``--gc-shape STEP,EVERY,MAX[,HOLD]``: add ``step`` users every ``every`` seconds up to ``ceiling``, hold
    the ceiling for ``hold`` seconds, then stop the test."""

    step: int
    every: float
    ceiling: int
    hold: float

    def users_at(self, elapsed: float) -> int | None:
        """Target user count ``elapsed`` seconds into the test, or ``None`` once the test is over."""
        steps_to_ceiling = math.ceil(self.ceiling / self.step)
        step_index = int(elapsed // self.every)
        if step_index < steps_to_ceiling - 1:
            return self.step * (step_index + 1)
        if elapsed < (steps_to_ceiling - 1) * self.every + self.hold:
            return self.ceiling
        return None

    @property
    def spawn_rate(self) -> float:
        """Users started per second: each step's users arrive within about a second (or within the step)."""
        return max(1.0, self.step / min(1.0, self.every))


def parse_step_spec(text: str) -> StepSpec | None:
    """Parse ``--gc-shape``: ``""`` means no shape; else ``STEP,EVERY,MAX[,HOLD]`` (``100,10,1000,30``).
    Raises :class:`BadSettings`."""
    if not text.strip():
        return None
    parts = [p.strip() for p in text.split(",")]
    usage = "--gc-shape expects STEP,EVERY,MAX[,HOLD] (e.g. 100,10,1000,30: +100 users every 10 s up to 1000)"
    if len(parts) not in (3, 4):
        raise BadSettings(f"{usage}, not {text!r}")
    try:
        step, ceiling = int(parts[0]), int(parts[2])
        every = float(parts[1])
        hold = float(parts[3]) if len(parts) == 4 else every
    except ValueError:
        raise BadSettings(f"{usage}, not {text!r}") from None
    valid_times = math.isfinite(every) and every > 0 and math.isfinite(hold) and hold >= 0
    if step < 1 or ceiling < step or not valid_times:
        raise BadSettings(f"{usage}; STEP >= 1, MAX >= STEP, EVERY > 0 and HOLD >= 0, not {text!r}")
    return StepSpec(step=step, every=every, ceiling=ceiling, hold=hold)


@dataclass(frozen=True)
class Settings:
    """Everything the users need besides the host. Defaults are the options' defaults."""

    #: Idle timeout (s) ChatUser, ChurnUser and IdleUser negotiate.
    timeout: float = 30.0
    #: Bytes per echoed message (ASCII; each carries a sequence number so a stale echo is caught).
    message_size: int = 32
    #: Seconds a user waits between tasks (ChatUser echoes, ChurnUser cycles, TimeoutUser rounds).
    think_time: float = 0.0
    #: Seconds for the TCP handshake, and again for the greeting.
    connect_timeout: float = 5.0
    #: Seconds to wait for each reply.
    reply_timeout: float = 5.0
    #: IdleUser speaks this many seconds before its idle timeout would run out.
    idle_margin: float = 5.0
    #: Idle timeout (s) TimeoutUser negotiates before going silent.
    short_timeout: float = 1.0
    #: How late (s) after its timeout TimeoutUser still accepts the server's ``bye:``.
    tolerance: float = 0.5
    #: Seconds a user pauses after a failed connect before trying again (keeps a dead server from a busy loop).
    reconnect_delay: float = 0.1
    #: Local addresses connections are bound to, in turn (empty: the kernel chooses).
    source_addresses: tuple[str, ...] = ()
    #: Prefix the server puts before each echo.
    prefix: str = DEFAULT_PREFIX
    #: Stepped ramp, if any.
    shape: StepSpec | None = None
    #: Base path for the µs latency CSV/JSON (``""``: next to ``--csv`` if given, else none).
    latency_file: str = ""
    #: HdrHistogram log (``.hlog``) of the µs histograms, one tag per scenario and step (``""``: none).
    hlog_file: str = ""
    #: Talk TLS to the server (a server started with ``--tls-cert``), verifying its certificate.
    tls: bool = False
    #: PEM file of the CA that signed the server's certificate (``""``: the system's trusted CAs).
    tls_ca: str = ""
    #: Members per room for RoomUser (rooms are filled in order).
    room_size: int = 10
    #: Messages per second a RoomUser stays under (the server's ``--room-rate``, 20 by default; 0: no pacing):
    #: past it the server answers ``error: too fast`` and drops the line, which RoomUser counts as lost.
    room_rate: float = 20.0

    def __post_init__(self) -> None:
        positive = {
            "gc-timeout": self.timeout,
            "gc-connect-timeout": self.connect_timeout,
            "gc-reply-timeout": self.reply_timeout,
            "gc-short-timeout": self.short_timeout,
        }
        for name, value in positive.items():
            if not (math.isfinite(value) and value > 0):
                raise BadSettings(f"--{name} must be a positive number of seconds, not {value!r}")
        not_negative = {
            "gc-think-time": self.think_time,
            "gc-idle-margin": self.idle_margin,
            "gc-timeout-tolerance": self.tolerance,
            "gc-reconnect-delay": self.reconnect_delay,
        }
        for name, value in not_negative.items():
            if not (math.isfinite(value) and value >= 0):
                raise BadSettings(f"--{name} must be a number of seconds >= 0, not {value!r}")
        if self.message_size < 1:
            raise BadSettings(f"--gc-message-size must be at least 1 byte, not {self.message_size!r}")
        if self.room_size < 1:
            raise BadSettings(f"--gc-room-size must be at least 1, not {self.room_size!r}")
        if not (math.isfinite(self.room_rate) and self.room_rate >= 0):
            raise BadSettings(f"--gc-room-rate must be a number of messages per second >= 0, not {self.room_rate!r}")
        if "\n" in self.prefix or "\r" in self.prefix:
            raise BadSettings("--gc-prefix must be a single line")

    @property
    def idle_hold(self) -> float:
        """Seconds IdleUser stays silent between messages: its timeout minus the margin (at least half of it)."""
        return max(self.timeout - self.idle_margin, self.timeout / 2)

    @classmethod
    def from_options(cls, options: Any) -> Settings:
        """Settings from Locust's parsed options (an ``argparse.Namespace``; ``None`` gives the defaults).
        Raises :class:`BadSettings`."""
        if options is None:
            return cls()
        try:
            return cls(
                timeout=float(options.gc_timeout),
                message_size=int(options.gc_message_size),
                think_time=float(options.gc_think_time),
                connect_timeout=float(options.gc_connect_timeout),
                reply_timeout=float(options.gc_reply_timeout),
                idle_margin=float(options.gc_idle_margin),
                short_timeout=float(options.gc_short_timeout),
                tolerance=float(options.gc_timeout_tolerance),
                reconnect_delay=float(options.gc_reconnect_delay),
                source_addresses=parse_source_addresses(options.gc_source_addresses),
                prefix=str(options.gc_prefix),
                shape=parse_step_spec(str(options.gc_shape)),
                latency_file=str(options.gc_latency_file),
                hlog_file=str(getattr(options, "gc_hlog", "") or ""),
                tls=_flag(options.gc_tls),
                tls_ca=str(options.gc_tls_ca),
                room_size=int(getattr(options, "gc_room_size", _ROOM_SIZE)),
                room_rate=float(getattr(options, "gc_room_rate", _DEFAULTS.room_rate)),
            )
        except BadTarget as exc:
            raise BadSettings(f"--gc-source-addresses: {exc}") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, BadSettings):
                raise
            raise BadSettings(f"bad --gc-* option value: {exc}") from None


def _flag(value: Any) -> bool:
    """A boolean option: a real bool from argparse, or text from the web UI / locust.conf."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise BadSettings(f"--gc-tls expects true or false, not {value!r}")


_DEFAULTS = Settings()
_ROOM_SIZE = _DEFAULTS.room_size
#: The ``--gc-*`` options as ``(flag, add_argument keywords)``; the defaults are :class:`Settings`' own.
_OPTIONS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "--gc-timeout",
        {
            "type": float,
            "default": _DEFAULTS.timeout,
            "help": "Idle timeout in seconds that ChatUser, ChurnUser and IdleUser negotiate. Default: %(default)s",
        },
    ),
    (
        "--gc-message-size",
        {"type": int, "default": _DEFAULTS.message_size, "help": "Bytes per echoed message. Default: %(default)s"},
    ),
    (
        "--gc-think-time",
        {
            "type": float,
            "default": _DEFAULTS.think_time,
            "help": "Seconds between a user's tasks (0: back to back). Default: %(default)s",
        },
    ),
    (
        "--gc-room-size",
        {
            "type": int,
            "default": _DEFAULTS.room_size,
            "help": "RoomUser: members per room; rooms are filled in order. Default: %(default)s",
        },
    ),
    (
        "--gc-room-rate",
        {
            "type": float,
            "default": _DEFAULTS.room_rate,
            "help": "RoomUser: messages per second each user stays under, as the server's --room-rate (0: no "
            "pacing). Default: %(default)s",
        },
    ),
    (
        "--gc-connect-timeout",
        {
            "type": float,
            "default": _DEFAULTS.connect_timeout,
            "help": "Seconds for the TCP handshake, and again for the greeting. Default: %(default)s",
        },
    ),
    (
        "--gc-reply-timeout",
        {
            "type": float,
            "default": _DEFAULTS.reply_timeout,
            "help": "Seconds to wait for each reply. Default: %(default)s",
        },
    ),
    (
        "--gc-idle-margin",
        {
            "type": float,
            "default": _DEFAULTS.idle_margin,
            "help": "IdleUser sends its keep-alive this many seconds before its idle timeout. Default: %(default)s",
        },
    ),
    (
        "--gc-short-timeout",
        {
            "type": float,
            "default": _DEFAULTS.short_timeout,
            "help": "Idle timeout TimeoutUser negotiates before going silent. Default: %(default)s",
        },
    ),
    (
        "--gc-timeout-tolerance",
        {
            "type": float,
            "default": _DEFAULTS.tolerance,
            "help": "How late after its timeout TimeoutUser still accepts the bye. Default: %(default)s",
        },
    ),
    (
        "--gc-reconnect-delay",
        {
            "type": float,
            "default": _DEFAULTS.reconnect_delay,
            "help": "Seconds a user pauses after a failed connect. Default: %(default)s",
        },
    ),
    (
        "--gc-source-addresses",
        {
            "default": "",
            "help": "Local addresses to connect from, in turn: 127.0.0.1-127.0.0.8 or a comma list "
            "(spreads 10k+ connections over several loopback addresses). Default: the kernel chooses",
        },
    ),
    (
        "--gc-prefix",
        {"default": _DEFAULTS.prefix, "help": "Prefix the server puts before each echo. Default: %(default)s"},
    ),
    (
        "--gc-shape",
        {
            "default": "",
            "help": "Stepped ramp STEP,EVERY,MAX[,HOLD]: +STEP users every EVERY s up to MAX, hold HOLD s "
            "(default EVERY), then stop. Replaces -u/-r/-t. Default: none",
        },
    ),
    (
        "--gc-latency-file",
        {
            "default": "",
            "help": "Write the µs latency summary to PATH.csv and PATH.json (default: PREFIX_latency_us.* with --csv)",
            "include_in_web_ui": False,
        },
    ),
    (
        "--gc-hlog",
        {
            "default": "",
            "metavar": "PATH",
            "help": "Write the µs histograms as an HdrHistogram log (.hlog) to PATH, tagged SCENARIO.STEP. "
            "Default: none",
            "include_in_web_ui": False,
        },
    ),
    (
        "--gc-tls",
        {
            "action": "store_true",
            "default": _DEFAULTS.tls,
            "help": "Talk TLS to the server (one started with --tls-cert), verifying its certificate",
        },
    ),
    (
        "--gc-tls-ca",
        {
            "default": _DEFAULTS.tls_ca,
            "help": "With --gc-tls: PEM file of the CA that signed the server's certificate. Default: the system's CAs",
        },
    ),
)


def options_help(prog: str = "geventchat loadtest") -> str:
    """The ``--gc-*`` options with their defaults, formatted as an argparse help section (Locust prints its own
    help before it loads a locustfile, so these are not in ``locust --help``)."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, add_help=False, usage=argparse.SUPPRESS)
    group = parser.add_argument_group("geventchat options (also gc-timeout = 10 in locust.conf, LOCUST_GC_TIMEOUT=10)")
    for flag, keywords in _OPTIONS:
        group.add_argument(flag, **{k: v for k, v in keywords.items() if k != "include_in_web_ui"})
    return parser.format_help()


def add_arguments(parser: Any) -> None:
    """Add the ``--gc-*`` options to Locust's parser (a ``LocustArgumentParser``; ``include_in_web_ui`` is one of
    its own keywords)."""
    # On the parser itself, not an argument group: only Locust's own add_argument makes an option show in the web UI.
    for flag, keywords in _OPTIONS:
        parser.add_argument(flag, **keywords)
