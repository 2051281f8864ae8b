"""Which Locust the load tester needs, checked before any figure could be silently coarse.

Locust keeps response times in milliseconds and rounds them into buckets; below 100 ms its default bucket is a
whole millisecond, so every loopback echo would read 0 or 1 ms. The load tester replaces that rounding through
``locust.stats.bucket_response_time``, a hook Locust 2.43.4 introduced (locustio/locust#3373). An older Locust has
no such hook: assigning it would change nothing and Locust's own tables, CSV and charts would quietly fall back to
whole milliseconds. So an older Locust is refused with one line, not tolerated.

Nothing here imports Locust (its import monkey-patches the process): the version comes as an argument, or from the
installed distribution's metadata.
"""

from __future__ import annotations

import re
from importlib import metadata

__all__ = ["MINIMUM_LOCUST", "LocustTooOld", "check_locust", "installed_locust_version"]

#: First Locust release with ``locust.stats.bucket_response_time`` (keep pyproject.toml's ``locust>=`` in step).
MINIMUM_LOCUST = (2, 43, 4)
_MINIMUM_TEXT = ".".join(map(str, MINIMUM_LOCUST))
_LEADING_NUMBERS = re.compile(r"\d+(?:\.\d+)*")


class LocustTooOld(ImportError):
    """The installed Locust lacks the response-time bucketing hook; ``str()`` is the one line to show (the
    environment's fault, not the user's options)."""


def _release(version: str) -> tuple[int, ...] | None:
    """``"2.43.4.dev3"`` → ``(2, 43, 4)``; ``None`` when the text does not start with a number."""
    match = _LEADING_NUMBERS.match(version.strip())
    return tuple(int(part) for part in match.group().split(".")) if match else None


def check_locust(version: str, has_bucket_hook: bool = True) -> None:
    """Raise :class:`LocustTooOld` unless ``version`` is at least :data:`MINIMUM_LOCUST` and Locust has the hook.

    ``has_bucket_hook`` is ``hasattr(locust.stats, "bucket_response_time")`` where Locust is imported. A version
    text that does not start with a number is judged by the hook alone.
    """
    release = _release(version)
    if (release is not None and release < MINIMUM_LOCUST) or not has_bucket_hook:
        raise LocustTooOld(
            f"geventchat load test needs Locust >= {_MINIMUM_TEXT} (its response-time bucketing hook keeps "
            f"sub-millisecond figures), found {version or 'an unknown version'}: "
            f"pip install 'locust>={_MINIMUM_TEXT}'"
        )


def installed_locust_version() -> str | None:
    """The installed Locust's version from its metadata (without importing it), or ``None`` if not installed."""
    try:
        return metadata.version("locust")
    except metadata.PackageNotFoundError:
        return None
