"""benchmarks.cbuild: the C programs build once per source version; a missing compiler or a rejected source is
one clear exception, not a traceback from deep inside subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import cbuild

pytestmark = pytest.mark.skipif(shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler")

HELLO = '#include <stdio.h>\nint main(void) { puts("%s"); return 0; }\n'


def test_the_benchmark_programs_build_once_and_are_reused(tmp_path: Path) -> None:
    for name in ("loadgen", "echo_server"):
        binary = cbuild.build(name, cache=tmp_path)
        assert binary.is_file() and os.access(binary, os.X_OK), binary
        built_at = binary.stat().st_mtime_ns

        again = cbuild.build(name, cache=tmp_path)

        assert again == binary
        assert again.stat().st_mtime_ns == built_at  # not compiled a second time
    assert not list(tmp_path.glob("*.tmp"))  # no half-written binary left behind


def test_an_edited_source_is_rebuilt_under_a_new_name(tmp_path: Path) -> None:
    sources, cache = tmp_path / "src", tmp_path / "cache"
    sources.mkdir()
    (sources / "hello.c").write_text(HELLO % "one")
    first = cbuild.build("hello", cache=cache, sources=sources)

    (sources / "hello.c").write_text(HELLO % "two")
    second = cbuild.build("hello", cache=cache, sources=sources)

    assert first.exists() and second.exists()
    assert second != first


@pytest.mark.parametrize("source", sorted(cbuild.SOURCES.glob("*.c")), ids=lambda path: path.name)
def test_our_c_sources_compile_without_a_warning(source: Path, tmp_path: Path) -> None:
    # The benchmark builds without -Werror (a new compiler's new warning must not stop a run); this keeps ours clean.
    assert "-Werror" not in cbuild.CFLAGS and "-Wall" in cbuild.CFLAGS and "-Wextra" in cbuild.CFLAGS
    command = [cbuild.compiler(), *cbuild.CFLAGS, "-Werror", "-o", str(tmp_path / source.stem), str(source)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr


def test_another_compiler_or_version_builds_under_another_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sources, cache, tools = tmp_path / "src", tmp_path / "cache", tmp_path / "tools"
    sources.mkdir()
    tools.mkdir()
    (sources / "hello.c").write_text(HELLO % "one")
    real = shutil.which(cbuild.compiler())
    assert real is not None
    wrapper = tools / "othercc"  # the same compiler under another name and path, as CC=othercc would pick
    wrapper.write_text(f'#!/bin/sh\nexec "{real}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(real))
    first = cbuild.build("hello", cache=cache, sources=sources)

    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CC", "othercc")
    second = cbuild.build("hello", cache=cache, sources=sources)
    # The same path answering with another version (an upgraded compiler) builds afresh too.
    wrapper.write_text(f'#!/bin/sh\n[ "$1" = --version ] && {{ echo "othercc 99.0"; exit 0; }}\nexec "{real}" "$@"\n')
    third = cbuild.build("hello", cache=cache, sources=sources)

    assert first.exists() and second.exists() and third.exists()
    assert len({first, second, third}) == 3
    assert cbuild.build("hello", cache=cache, sources=sources) == third  # and it is reused


def test_no_compiler_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no cc, no gcc
    assert shutil.which("gcc") is None and shutil.which("cc") is None

    with pytest.raises(cbuild.CompilerMissing) as caught:
        cbuild.build("loadgen", cache=tmp_path / "cache")

    message = str(caught.value)
    assert "no C compiler found" in message
    assert "\n" not in message
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_rejected_source_raises_build_failed_with_the_compilers_error_lines(tmp_path: Path) -> None:
    sources, cache = tmp_path / "src", tmp_path / "cache"
    sources.mkdir()
    (sources / "broken.c").write_text("int main(void) { return undeclared_name; }\n")

    with pytest.raises(cbuild.BuildFailed) as caught:
        cbuild.build("broken", cache=cache, sources=sources)

    message = str(caught.value)
    assert message.startswith("compiling broken.c failed:")
    assert "undeclared_name" in message and "error" in message
    assert len(message.splitlines()) <= 6  # the first error lines, not the whole output
    assert not list(cache.iterdir())  # nothing cached for a failed build
