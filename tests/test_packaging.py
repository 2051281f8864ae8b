"""What an install needs: every imported package declared where it is used, an option whose package is missing
refused in one line before the server listens, and a wheel that ships the package, its type hints and its license."""

from __future__ import annotations

import ast
import email
import importlib.metadata
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from geventchat.testing import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
# Top-level packages of this repository: imports of these are ours, not dependencies.
LOCAL = {"geventchat", "loadtest", "benchmarks", "deploy", "tests"}
# Which install a directory's code runs from: the library with its core dependencies only; its Locust users
# (geventchat/loadtest/), loadtest/ and benchmarks/ with their extras; the tests and the tools beside them with dev
# (which includes the others). A file belongs to the most specific directory listed.
INSTALL_FOR = {
    "geventchat": "",
    "geventchat/loadtest": "loadtest",
    "loadtest": "loadtest",
    "benchmarks": "bench",
    "tests": "dev",
    "deploy": "dev",
}
# greenlet is gevent's foundation (gevent.Greenlet is a greenlet): gevent requires it on CPython and PyPy has it
# built in, so declaring it ourselves would only repeat gevent's marker.
PROVIDED_BY_GEVENT = {"greenlet"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared(extra: str) -> set[str]:
    """Distributions geventchat's metadata requires for ``extra`` ("" for the core), following geventchat[x]."""
    names: set[str] = set()
    pending, seen = [extra], set()
    while pending:
        wanted = pending.pop()
        seen.add(wanted)
        for requirement in importlib.metadata.requires("geventchat") or []:
            spec, _, marker = requirement.partition(";")
            in_extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", marker)
            if (in_extra.group(1) if in_extra else "") not in ("", wanted):
                continue
            name_match = re.match(r"\s*([A-Za-z0-9._-]+)(?:\[([^\]]+)\])?", spec)
            assert name_match is not None, requirement
            name = normalize(name_match.group(1))
            if name == "geventchat":
                pending.extend(e for e in (name_match.group(2) or "").split(",") if e not in seen)
            else:
                names.add(name)
    return names


def imported_modules(path: Path) -> Iterator[str]:
    """Top-level modules ``path`` imports: import statements anywhere (also inside functions) and
    ``pytest.importorskip("x")`` / ``importlib.import_module("x")`` with a literal name."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("importorskip", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not node.args[0].value.startswith(".")
        ):
            yield node.args[0].value.split(".")[0]


def test_every_imported_package_is_declared_for_the_install_that_runs_it() -> None:
    distributions = importlib.metadata.packages_distributions()
    scanned: dict[str, set[str]] = {}
    undeclared = []
    for directory, extra in INSTALL_FOR.items():
        allowed = declared(extra) | declared("")
        nested = [ROOT / other for other in INSTALL_FOR if other.startswith(directory + "/")]
        for path in sorted((ROOT / directory).rglob("*.py")):
            if any(path.is_relative_to(inner) for inner in nested):
                continue
            for module in imported_modules(path):
                if module in LOCAL or module in sys.stdlib_module_names or module == "__future__":
                    continue
                assert module in distributions, f"{path.relative_to(ROOT)} imports {module!r}, which is not installed"
                names = {normalize(d) for d in distributions[module]}
                scanned.setdefault(directory, set()).update(names)
                if not names & allowed and module not in PROVIDED_BY_GEVENT:
                    where = f"the '{extra}' extra" if extra else "the core dependencies"
                    undeclared.append(
                        f"{path.relative_to(ROOT)} imports {module!r} ({', '.join(names)}): not in {where}"
                    )
    # The scan saw what it must have seen, so an empty list below means something.
    assert {"gevent", "prometheus-client"} <= scanned["geventchat"]
    assert {"locust", "flask", "hdrhistogram"} <= scanned["geventchat/loadtest"]
    assert {"uvloop", "matplotlib"} <= scanned["benchmarks"]
    assert {"pytest", "psutil", "pyyaml"} <= scanned["tests"]
    assert undeclared == []


def test_metrics_is_a_core_dependency_and_the_old_extra_still_installs() -> None:
    assert "prometheus-client" in declared("")
    assert "metrics" in (importlib.metadata.metadata("geventchat").get_all("Provides-Extra") or [])
    assert declared("metrics") == declared("")  # the compat alias adds nothing


# A Python that cannot import prometheus_client (as after `pip install --no-deps geventchat`), then the CLI.
REFUSE_PROMETHEUS = """
import sys

class RefusePrometheus:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "prometheus_client":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, RefusePrometheus())
try:
    import prometheus_client
except ModuleNotFoundError:
    print("prometheus_client refused", flush=True)
from geventchat.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("workers", ["1", "2"])
def test_metrics_port_without_prometheus_client_is_one_line_and_exit_2(workers: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", REFUSE_PROMETHEUS, "--port", "0", "--workers", workers, "--metrics-port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.stdout.splitlines()[:1] == ["prometheus_client refused"]  # the blocker was in place
    assert result.returncode == 2, result.stderr
    assert "listening" not in result.stdout  # refused before binding the port
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("geventchat: --metrics-port needs the 'prometheus-client' package")
    assert line.endswith("pip install 'prometheus-client>=0.20'")


def test_without_prometheus_client_the_server_still_runs_when_metrics_are_off() -> None:
    with ServerProcess("--port", "0", "--stats-interval", "0", code=REFUSE_PROMETHEUS, wait=False) as server:
        server.wait_for("^prometheus_client refused$", stream="stdout")
        server.wait_listening()
        server.send_signal()
        assert server.wait() == 0
        assert not any("Traceback" in line for line in server.stderr)


# ------------------------------------------------------------------------------------------------- the wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel pip builds from what a clean clone has (a copy of the files the build reads), offline, with the
    setuptools already installed (no build isolation: nothing is downloaded)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "geventchat", source / "geventchat", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out)]
    result = subprocess.run([*command, str(source)], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("geventchat-*.whl")
    with zipfile.ZipFile(built) as archive:
        yield archive


def test_wheel_ships_the_package_its_locust_parts_and_its_type_hints(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    # Every module of the package, the Locust parts (geventchat/loadtest/) among them, and nothing from outside.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "geventchat").rglob("*.py")}
    assert {"geventchat/__init__.py", "geventchat/cli.py", "geventchat/loadtest/__init__.py"} <= modules
    assert modules <= names
    if (ROOT / "geventchat" / "loadtest" / "locustfile.py").exists():  # the packaged locustfile, once it lands
        assert "geventchat/loadtest/locustfile.py" in names
    assert "geventchat/py.typed" in names  # PEP 561: users' type checkers read our hints
    assert not {n for n in names if n.split("/")[0] in ("tests", "benchmarks", "deploy", "loadtest")}


def test_wheel_metadata_says_mit_by_spdx_and_carries_the_license_text(wheel: zipfile.ZipFile) -> None:
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(wheel.read(metadata_name))
    assert metadata["Name"] == "geventchat"
    # PEP 639: an SPDX expression, the file it names, and no legacy License: field or license classifier.
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["License"] is None
    classifiers = metadata.get_all("Classifier") or []
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert {"Typing :: Typed", "Framework :: gevent", "Operating System :: POSIX :: Linux"} <= set(classifiers)
    versions = {
        c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    assert versions == {"3.10", "3.11", "3.12", "3.13"}
    assert metadata["Requires-Python"] == ">=3.10"  # the classifiers start where requires-python does
    license_path = metadata_name.replace("METADATA", "licenses/LICENSE")
    shipped = wheel.read(license_path).decode()
    assert shipped == (ROOT / "LICENSE").read_text()
    assert shipped.startswith("MIT License\n") and "the geventchat authors" in shipped
