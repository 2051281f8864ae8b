"""Compiles the benchmark's C programs (``benchmarks/c/NAME.c``) with the system C compiler, once per source version.

The C load generator and the C reference servers are built on the machine that runs the benchmark, so a clean clone
needs nothing but a C compiler. The binary lands in a cache directory keyed by the source's hash: an edited source
is rebuilt, an unchanged one is not. A missing compiler is one clear line (:class:`CompilerMissing`), never a
traceback.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCES = Path(__file__).parent / "c"
#: Where built programs go (outside the source tree, so a clean clone stays clean).
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "geventchat-bench"
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror")


class CompilerMissing(Exception):
    """No C compiler on PATH: the C programs cannot be built here (our machine's setup, not a bug)."""


class BuildFailed(Exception):
    """The compiler rejected one of our C sources (our bug): the message carries its first error lines."""


def compiler() -> str:
    """The C compiler to use: ``$CC`` if set, else ``cc`` or ``gcc`` from PATH."""
    for name in (os.environ.get("CC"), "cc", "gcc"):
        if name and shutil.which(name):
            return name
    raise CompilerMissing("no C compiler found (set CC or install gcc) to build the C load generator and servers")


def build(name: str, *, cache: Path = CACHE, sources: Path = SOURCES) -> Path:
    """The path of the built ``<sources>/<name>.c`` (``benchmarks/c`` unless told), compiling it first if this
    version was never built. Raises :class:`CompilerMissing` or :class:`BuildFailed`."""
    source = sources / f"{name}.c"
    digest = hashlib.sha256(source.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    binary = cache / f"{name}-{digest}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    result = subprocess.run(
        [compiler(), *CFLAGS, "-o", str(partial), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        first = "\n".join(result.stderr.strip().splitlines()[:5])
        raise BuildFailed(f"compiling {source.name} failed:\n{first}")
    partial.replace(binary)  # atomic: a concurrent build of the same source cannot leave a half-written binary
    return binary
