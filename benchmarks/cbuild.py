"""Compiles the benchmark's C programs (``benchmarks/c/NAME.c``) with the system C compiler, once per source version.

The C load generator and the C reference servers are built on the machine that runs the benchmark, so a clean clone
needs nothing but a C compiler. The binary lands in a cache directory keyed by the hash of the source, the flags,
the compiler's path and the first line of its ``--version``: an edited source, or another compiler (``CC``) or
compiler version, is rebuilt; an unchanged one is not. A missing compiler is one clear line
(:class:`CompilerMissing`), never a traceback.
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
#: No -Werror: a warning a newer compiler adds must not stop a benchmark run (tests/test_cbuild.py compiles every
#: source with -Werror, so our own sources stay warning-free).
CFLAGS = ("-O2", "-std=gnu11", "-Wall", "-Wextra")


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


def compiler_identity(cc: str) -> str:
    """``cc``'s full path and the first line of ``cc --version`` (empty if it does not answer): what the cache key
    needs so that another compiler, or an upgraded one, builds afresh."""
    path = shutil.which(cc) or cc
    try:
        result = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return path  # it may still compile; the build below reports it if not
    lines = result.stdout.splitlines()
    return f"{path}\n{lines[0] if lines else ''}"


def build(name: str, *, cache: Path = CACHE, sources: Path = SOURCES) -> Path:
    """The path of the built ``<sources>/<name>.c`` (``benchmarks/c`` unless told), compiling it first if this
    version was never built. Raises :class:`CompilerMissing` or :class:`BuildFailed`."""
    source = sources / f"{name}.c"
    cc = compiler()
    key = source.read_bytes() + "\n".join((*CFLAGS, compiler_identity(cc))).encode()
    digest = hashlib.sha256(key).hexdigest()[:16]
    binary = cache / f"{name}-{digest}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_name(f"{binary.name}.{os.getpid()}.tmp")
    result = subprocess.run(
        [cc, *CFLAGS, "-o", str(partial), str(source)],
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
