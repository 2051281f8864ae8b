"""Log output for the server: human text lines or one JSON object per line, to stderr or a file.

The JSON form has ``time`` (UTC, ISO 8601 with microseconds), ``level``, ``logger``, ``pid``, ``event`` (the
message as the text form shows it) and, where the record has them, ``peer`` and ``reason``. A record states them
with ``extra={"peer": ..., "reason": ...}``; failing that they are read from the server's own message shapes,
``"%s ..."`` whose first argument is a peer address, and ``"%s disconnected: %s"`` / ``"%s rejected: %s"`` whose
second is the reason. Peer-controlled text is already escaped by the server (``quote_peer_text``); ``json.dumps``
then escapes it again for JSON, so no byte a client sends can break a line.

Only the entry point (:mod:`geventchat.cli`) calls :func:`configure_logging`.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import sys

__all__ = ["JsonFormatter", "configure_logging"]

# format_peer's shapes: 1.2.3.4:5, [::1]:5, and what a PROXY header said (same shapes).
_PEER = re.compile(r"^(?:\[[0-9A-Fa-f:.%\w]+\]|[0-9.]+):\d+$")
_WITH_REASON = re.compile(r"^%s (?:disconnected|rejected): %s$")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring for the keys)."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "event": record.getMessage(),
        }
        peer, reason = _peer_and_reason(record)
        if peer is not None:
            fields["peer"] = peer
        if reason is not None:
            fields["reason"] = reason
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        # ensure_ascii: control characters, line breaks and non-ASCII all become escapes, so a line stays a line.
        return json.dumps(fields, ensure_ascii=True)


def _peer_and_reason(record: logging.LogRecord) -> tuple[str | None, str | None]:
    peer = getattr(record, "peer", None)
    reason = getattr(record, "reason", None)
    args = record.args if isinstance(record.args, tuple) else ()
    template = record.msg if isinstance(record.msg, str) else ""
    if peer is None and args and template.startswith("%s") and isinstance(args[0], str) and _PEER.match(args[0]):
        peer = args[0]
    if reason is None and len(args) == 2 and _WITH_REASON.match(template):
        reason = args[1]
    return (None if peer is None else str(peer)), (None if reason is None else str(reason))


def configure_logging(level: str, log_format: str, log_file: str | None, *, with_pid: bool) -> None:
    """Send the root logger's records at ``level`` and above to ``log_file`` (appended; stderr when None) as
    ``log_format`` (``text`` or ``json``). ``with_pid`` puts ``[pid]`` after the logger name in text lines, for
    runs with several processes. Raises :class:`OSError` if the file cannot be opened.

    Like :func:`logging.basicConfig`, it leaves a root logger that already has handlers alone: whoever called
    :func:`geventchat.cli.main` in-process (a program embedding it, a test under pytest) configured logging already.
    """
    root = logging.getLogger()
    if root.handlers:
        return
    handler: logging.Handler
    if log_file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        # Append mode is O_APPEND: forked workers share the file and each record is one write, so lines from
        # different processes do not interleave.
        handler = logging.FileHandler(log_file, mode="a", encoding="utf-8")
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        name = "%(name)s[%(process)d]" if with_pid else "%(name)s"
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {name}: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
