"""A geventchat server in a subprocess whose stdout and stderr are read while it runs, for tests that follow its
logs (which worker serves a client, a crash and its restart) or start it through ``python -c`` with a fake.
conftest's ``ServerProcess`` reads stderr only at exit.

Nothing here sleeps: every wait is on a line arriving (a condition variable fed by reader threads) or on the
process ending, each with a deadline.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO

LISTENING = re.compile(r"geventchat listening on (?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:\s]+)):(?P<port>\d+)$")


class WatchedServer:
    """``python -m geventchat ARGS`` (or ``python -c CODE ARGS``) with stdout and stderr captured line by line."""

    def __init__(self, args: Sequence[str], *, code: str | None = None) -> None:
        command = [sys.executable, "-c", code] if code is not None else [sys.executable, "-m", "geventchat"]
        self.proc = subprocess.Popen(
            [*command, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.port = 0

    def _pump(self, stream: IO[str], lines: list[str]) -> None:
        for line in stream:
            with self._changed:
                lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, *, stream: str = "stderr", timeout: float = 10.0, start: int = 0) -> re.Match[str]:
        """The first line (from index ``start``) matching ``pattern``; AssertionError after ``timeout`` seconds or if
        the process ends first."""
        regex = re.compile(pattern)
        lines = self.stdout if stream == "stdout" else self.stderr
        deadline = time.monotonic() + timeout
        index = start
        with self._changed:
            while True:
                while index < len(lines):
                    match = regex.search(lines[index])
                    if match:
                        return match
                    index += 1
                remaining = deadline - time.monotonic()
                ended = self.proc.poll() is not None and not any(r.is_alive() for r in self._readers)
                if remaining <= 0 or ended:
                    raise AssertionError(
                        f"no {stream} line matching {pattern!r} within {timeout}s (exit status {self.proc.poll()}); "
                        f"stderr so far:\n" + "\n".join(self.stderr[-30:])
                    )
                self._changed.wait(min(remaining, 0.5))

    def wait_listening(self, timeout: float = 15.0) -> int:
        """Wait for ``geventchat listening on HOST:PORT``; returns the port."""
        match = self.wait_for(LISTENING.pattern, stream="stdout", timeout=timeout)
        self.port = int(match.group("port"))
        return self.port

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 15.0) -> int:
        """Wait for the process to end; returns its exit status."""
        status = self.proc.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status

    def close(self) -> None:
        """Stop the process if it still runs (SIGTERM, then SIGKILL) and release the pipes."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> WatchedServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
