"""argparse value parsers (numbers with bounds, whole numbers in a range) and the help formatter that shows each
option's default once: the pieces :mod:`geventchat.options` builds its parsers from.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = ["HelpFormatter", "integer", "non_negative", "number", "positive"]


def number(minimum: float, *, inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {bound}")
        return value

    return parse


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and <= {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"{text!r} must be >= {minimum}{upper}")
        return value

    return parse


#: A number above zero, and a number zero or above.
positive = number(0, inclusive=False)
non_negative = number(0, inclusive=True)


class HelpFormatter(argparse.HelpFormatter):
    """Ends each option's help with its default, once.

    argparse's ArgumentDefaultsHelpFormatter appends ``(default: %(default)s)`` even when the help already states
    the default in words, and shows ``None`` for options that are off unless given. Here a help that states its
    own ``(default: ...)`` is left alone, a flag says ``(default: off)``, and an option whose default is None must
    say in its help what that means (tests/test_cli.py checks every option).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default:" in text or not action.option_strings or action.default in (None, argparse.SUPPRESS):
            return text
        if action.nargs == 0:  # store_true: the flag is off unless given
            return f"{text} (default: off)"
        return f"{text} (default: %(default)s)"
