"""RestartPolicy: the supervisor's crash back-off and give-up rule, with times passed in (no processes, no clock).

tests/test_workers.py checks the same rule end to end with real crashing workers; here each boundary is exact.
"""

from __future__ import annotations

from typing import Any

import pytest

from geventchat.restart_policy import RestartPolicy, RestartVerdict
from geventchat.workers import Supervisor


def supervisor_policy() -> RestartPolicy:
    """The policy with the supervisor's documented defaults."""
    return RestartPolicy(
        max_crashes=Supervisor.max_crashes,
        window=Supervisor.crash_window,
        first_delay=Supervisor.restart_delay,
        max_delay=Supervisor.max_restart_delay,
    )


def test_the_supervisor_defaults_are_five_crashes_in_sixty_seconds() -> None:
    policy = supervisor_policy()
    assert (policy.max_crashes, policy.window, policy.first_delay, policy.max_delay) == (5, 60.0, 0.1, 5.0)


def test_delays_double_per_crash_and_the_sixth_crash_within_the_window_gives_up() -> None:
    policy = supervisor_policy()
    verdicts = [policy.on_crash(100.0 + second) for second in range(6)]
    assert [v.crashes for v in verdicts] == [1, 2, 3, 4, 5, 6]
    assert [v.delay for v in verdicts[:5]] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])
    assert not any(v.give_up for v in verdicts[:5])
    assert verdicts[5] == RestartVerdict(crashes=6, delay=None)
    assert verdicts[5].give_up


def test_the_delay_is_capped() -> None:
    policy = RestartPolicy(max_crashes=20, window=60.0, first_delay=0.1, max_delay=5.0)
    delays = [policy.on_crash(float(second)) for second in range(10)]
    assert delays[5].delay == pytest.approx(3.2)
    assert [v.delay for v in delays[6:]] == [5.0, 5.0, 5.0, 5.0]


def test_crashes_older_than_the_window_are_forgotten() -> None:
    policy = supervisor_policy()
    for second in range(5):
        assert not policy.on_crash(float(second)).give_up
    # 60.5 s after the first crash: the first has left the window, so this is the fifth within it, not the sixth.
    late = policy.on_crash(60.5)
    assert late.crashes == 5
    assert late.delay == pytest.approx(1.6)


def test_a_crash_exactly_one_window_old_still_counts() -> None:
    policy = supervisor_policy()
    for second in range(5):
        policy.on_crash(float(second))
    assert policy.on_crash(60.0) == RestartVerdict(crashes=6, delay=None)


def test_after_a_quiet_window_the_back_off_starts_over() -> None:
    policy = supervisor_policy()
    for second in range(4):
        policy.on_crash(float(second))
    assert policy.on_crash(1000.0) == RestartVerdict(crashes=1, delay=0.1)


def test_zero_crashes_allowed_gives_up_at_the_first() -> None:
    policy = RestartPolicy(max_crashes=0, window=60.0, first_delay=0.1, max_delay=5.0)
    assert policy.on_crash(0.0).give_up


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_crashes": -1}, "max_crashes must be at least 0"),
        ({"window": 0.0}, "window must be a positive number"),
        ({"window": float("inf")}, "window must be a positive number"),
        ({"first_delay": -0.1}, "need 0 <= first_delay"),
        ({"first_delay": 6.0}, "need 0 <= first_delay"),
        ({"max_delay": float("inf")}, "need 0 <= first_delay"),
    ],
)
def test_nonsense_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {"max_crashes": 5, "window": 60.0, "first_delay": 0.1, "max_delay": 5.0, **settings}
    with pytest.raises(ValueError, match=message):
        RestartPolicy(**arguments)
