"""Options from the environment: ``GEVENTCHAT_<OPTION>`` for every long option of a parser (as gunicorn and Locust
read ``GUNICORN_*``/``LOCUST_*``).

The name is the option's, upper-cased, without the leading dashes and with ``-`` as ``_``: ``--max-connections``
is ``GEVENTCHAT_MAX_CONNECTIONS``. A value from the environment becomes the option's default, so a flag on the
command line still wins. Values go through the option's own parser and choices, so a bad one fails the same way a
bad flag does, naming the variable instead of the flag. An on/off flag takes ``1/0``, ``true/false``,
``yes/no`` or ``on/off``.

Only the entry point (:mod:`geventchat.cli`) calls this; everything else receives a frozen configuration.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

__all__ = ["ENVIRONMENT_HELP", "PREFIX", "apply_environment", "variable_name"]

#: What every variable name starts with.
PREFIX = "GEVENTCHAT_"
#: The one line ``--help`` adds about the environment.
ENVIRONMENT_HELP = (
    "Every option can also be set in the environment as GEVENTCHAT_<OPTION> (upper case, '-' as '_', e.g. "
    "GEVENTCHAT_MAX_CONNECTIONS=500; on/off flags take 1/0, true/false, yes/no or on/off); "
    "an option given on the command line wins."
)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_NOT_FROM_ENVIRONMENT = {"--help", "--version"}


def variable_name(option: str) -> str:
    """``--max-connections`` → ``GEVENTCHAT_MAX_CONNECTIONS``."""
    return PREFIX + option.lstrip("-").upper().replace("-", "_")


def apply_environment(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Make each ``GEVENTCHAT_<OPTION>`` set in ``environ`` the default of that option of ``parser``.

    A value the option's parser or choices refuse ends the process as a bad flag does: ``parser.error`` prints the
    usage and ``error: environment GEVENTCHAT_X: <why>`` and exits 2.
    """
    defaults: dict[str, object] = {}
    for action in parser._actions:  # argparse has no public iterator over its actions
        long_options = [o for o in action.option_strings if o.startswith("--")]
        if not long_options or long_options[0] in _NOT_FROM_ENVIRONMENT:
            continue
        name = variable_name(long_options[0])
        if name not in environ:
            continue
        try:
            defaults[action.dest] = _convert(action, environ[name])
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"environment {name}: {exc}")
    parser.set_defaults(**defaults)


def _convert(action: argparse.Action, text: str) -> object:
    if action.nargs == 0:  # store_true / store_false
        lowered = text.strip().lower()
        if lowered not in _TRUE | _FALSE:
            raise ValueError(f"{text!r} is not one of 1/0, true/false, yes/no, on/off")
        on = lowered in _TRUE
        return on if action.const is True else not on
    value: object = action.type(text) if callable(action.type) else text
    if action.choices is not None and value not in action.choices:
        shown = ", ".join(repr(choice) for choice in action.choices)
        raise ValueError(f"invalid choice: {text!r} (choose from {shown})")
    return value
