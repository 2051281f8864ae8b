"""``python -m deploy.netns``: run the network-namespace proof of docker-compose.yml (as root, from the repository).

Exit codes: 0 every check passed, 1 the proof failed (after teardown), 77 this machine cannot run it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __doc__ as about
from .chat import main as chat_main
from .compose import proof_variables
from .dns import serve_dns
from .lab import ProofFailed, Unavailable
from .proof import DEADLINE, run


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["dns"]:
        serve_dns(args[1], json.loads(args[2]))
        return 0
    if args[:1] == ["chat"]:
        return chat_main(args[1:])
    parser = argparse.ArgumentParser(
        prog="python -m deploy.netns", description=about.split("\n\n")[0] if about else None
    )
    parser.add_argument("--locustfile", help="Locust file to run instead of the compose default (LOCUSTFILE)")
    parser.add_argument("--keep-logs", action="store_true", help="keep every process's log (kept anyway on failure)")
    parser.add_argument("--report", metavar="PATH", help="also write the report as JSON to PATH")
    parser.add_argument(
        "--deadline",
        type=int,
        default=DEADLINE,
        help="seconds before giving up (teardown still runs); default %(default)s",
    )
    options = parser.parse_args(args)
    extra = {"LOCUSTFILE": options.locustfile} if options.locustfile else {}
    try:
        report = run(proof_variables(extra), keep_logs=options.keep_logs, deadline=options.deadline)
    except Unavailable as exc:
        print(f"netns proof unavailable: {exc}", file=sys.stderr)
        return 77
    except ProofFailed as exc:
        print(f"PROOF FAILED: {exc}", file=sys.stderr)
        return 1
    if options.report:
        Path(options.report).write_text(json.dumps(report, indent=2))
    print(f"PROOF PASSED in {report['seconds']}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
