"""``python -m geventchat.loadtest [locust options]``: the same as ``geventchat loadtest``."""

import sys

from .command import main

sys.exit(main(sys.argv[1:]))
