"""``python -m geventchat``: see :mod:`geventchat.cli`."""

from .cli import main

raise SystemExit(main())
