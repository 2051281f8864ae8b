"""When a crashed worker is restarted, and when the supervisor gives up: a pure rule, no processes, no clock.

:class:`~geventchat.workers.Supervisor` tells the policy about each crash with the time it saw it; the policy
answers with a :class:`RestartVerdict`. Keeping the clock outside makes the rule testable in microseconds
(tests/test_restart_policy.py) and keeps the supervisor's loop about processes only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

__all__ = ["RestartPolicy", "RestartVerdict"]


@dataclass(frozen=True)
class RestartVerdict:
    """What to do about one crash."""

    #: Crashes counted within the window, this one included.
    crashes: int
    #: Seconds to wait before restarting the worker; ``None`` when there were too many crashes: give up.
    delay: float | None

    @property
    def give_up(self) -> bool:
        """True when the supervisor should stop every worker and exit 1."""
        return self.delay is None


class RestartPolicy:
    """Exponential back-off for crashed workers, and a limit on crashes per time window.

    A crash at time ``now`` counts together with the earlier crashes no more than ``window`` seconds before it.
    Up to ``max_crashes`` such crashes, the worker is restarted after ``first_delay * 2 ** (crashes - 1)``
    seconds (at most ``max_delay``); one more crash within the window and the verdict is to give up.
    """

    def __init__(self, *, max_crashes: int, window: float, first_delay: float, max_delay: float) -> None:
        """Raises :class:`ValueError` for a negative count or delay, or a window that is not a positive number."""
        if max_crashes < 0:
            raise ValueError(f"max_crashes must be at least 0, not {max_crashes}")
        if not (math.isfinite(window) and window > 0):
            raise ValueError(f"window must be a positive number of seconds, not {window}")
        if not (0 <= first_delay <= max_delay < math.inf):
            raise ValueError(f"need 0 <= first_delay ({first_delay}) <= max_delay ({max_delay}), both finite")
        self.max_crashes = max_crashes
        self.window = window
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._crashes: deque[float] = deque()

    def on_crash(self, now: float) -> RestartVerdict:
        """Count a crash seen at ``now`` (seconds on a monotonic clock, never earlier than the previous call's)
        and say whether and when to restart."""
        self._crashes.append(now)
        # Bounded: each crash is appended once and dropped at most once; the one just added (window > 0) stays.
        while self._crashes[0] < now - self.window:
            self._crashes.popleft()
        crashes = len(self._crashes)
        if crashes > self.max_crashes:
            return RestartVerdict(crashes, None)
        return RestartVerdict(crashes, min(self.max_delay, self.first_delay * 2 ** (crashes - 1)))
