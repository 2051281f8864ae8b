"""``geventchat loadtest [locust options]``: Locust with the packaged locustfile, so a wheel install can load test.

    geventchat loadtest --headless -u 100 -r 50 -t 30s --host tcp://127.0.0.1:8888 ChatUser
    python -m geventchat.loadtest ...                      # the same, without the console script

Locust runs in place of this process (``exec``), with ``-f`` set to :data:`LOCUSTFILE`: it gets the signals,
the terminal and the exit code exactly as ``locust`` itself would, and imports (and monkey-patches) a fresh
interpreter instead of one that has already imported ``ssl`` and ``threading``. A ``-f`` of your own, later on the
command line, replaces the packaged locustfile as Locust's parser keeps the last one.

``--help`` prints Locust's help followed by the ``--gc-*`` options with their defaults: Locust prints its help
before it loads a locustfile, so its own ``--help`` never shows them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .compat import LocustTooOld, check_locust, installed_locust_version
from .settings import options_help

__all__ = ["LOCUSTFILE", "locust_command", "main"]

#: The locustfile inside the installed package (a wheel carries it).
LOCUSTFILE = Path(__file__).resolve().with_name("locustfile.py")
_PROG = "geventchat loadtest"


def locust_command(argv: list[str]) -> list[str]:
    """The command line that runs Locust with the packaged locustfile and ``argv``."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *argv]


def main(argv: list[str]) -> int:
    """Run Locust with ``argv``; returns only for ``--help`` (0) or when Locust cannot run here (2, with one line
    on stderr saying what to install). Otherwise this process becomes Locust and exits with its code."""
    version = installed_locust_version()
    if version is None:
        print(f"{_PROG}: Locust is not installed: pip install 'geventchat[loadtest]'", file=sys.stderr)
        return 2
    try:
        # From the distribution's metadata: importing Locust here would monkey-patch a process about to exec.
        check_locust(version)
    except LocustTooOld as exc:
        print(exc, file=sys.stderr)  # the line names the load tester already
        return 2
    if "-h" in argv or "--help" in argv:
        return _print_help()
    command = locust_command(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(command[0], command)


def _print_help() -> int:
    """Locust's help for the packaged locustfile, then the ``--gc-*`` options."""
    completed = subprocess.run(locust_command(["--help"]), capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr)
        return completed.returncode
    print(f"{_PROG}: Locust with geventchat's packaged locustfile ({LOCUSTFILE}).")
    print("Locust's options come first, geventchat's (--gc-*) at the end.\n")
    print(completed.stdout.rstrip("\n"))
    print()
    print(options_help(_PROG).rstrip("\n"))
    return 0
