"""docs/protocol.md says where each rule is tested: every test it names must exist, and every numbered rule must
have a row, so the page cannot drift from the suite."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PAGE = TESTS.parent / "docs" / "protocol.md"
SECTION = "## Where each rule is tested"
REFERENCE = re.compile(r"`(test_\w+\.py)::(test_\w+)`")


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def _mapping() -> str:
    text = PAGE.read_text(encoding="utf-8")
    assert SECTION in text, f"{PAGE.name} has no '{SECTION}' section"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def test_every_test_the_protocol_page_names_exists() -> None:
    references = REFERENCE.findall(PAGE.read_text(encoding="utf-8"))
    assert len(references) > 20  # the situation: the page does name tests (the pattern matches them)
    missing = []
    defined: dict[str, set[str]] = {}
    for file, name in references:
        if file not in defined:
            defined[file] = _test_functions(TESTS / file) if (TESTS / file).is_file() else set()
        if name not in defined[file]:
            missing.append(f"{file}::{name}")
    assert missing == [], f"{PAGE.name} names tests that do not exist: {missing}"


def test_every_numbered_rule_has_a_row_with_a_test_over_loopback() -> None:
    text = PAGE.read_text(encoding="utf-8")
    conversation = text.split("## The conversation", 1)[1].split("\n## ", 1)[0]
    rules = re.findall(r"^(\d+)\. \*\*", conversation, flags=re.MULTILINE)
    assert len(rules) >= 10, rules  # the situation: the rules were found
    rows = {}
    for line in _mapping().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        number = re.match(r"(\d+) ", cells[0])
        if number and len(cells) == 3:
            rows[number.group(1)] = cells
    assert sorted(rows, key=int) == rules, f"rules {rules}, rows {sorted(rows, key=int)}"
    for rule, (_name, _alone, over_loopback) in rows.items():
        assert REFERENCE.search(over_loopback), f"rule {rule} names no test over loopback"


def test_a_test_named_for_a_rule_is_listed_in_that_rules_row() -> None:
    """``test_ruleN_*`` says it tests rule N: it must be named in rule N's row, not in another rule's (rules get
    renumbered; the names must follow)."""
    misplaced = []
    named = 0
    for line in _mapping().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            continue
        number = re.match(r"(\d+) ", cells[0])
        for _file, test in REFERENCE.findall(line):
            claimed = [int(n) for n in re.findall(r"(?:^test_|_and_)rule(\d+)", test)]
            if not claimed:
                continue
            named += 1
            if number is None or int(number.group(1)) not in claimed:
                misplaced.append(f"{test} in the row '{cells[0]}'")
    assert named > 10  # the situation: the page names tests after their rules
    assert misplaced == [], f"tests named for another rule than their row's: {misplaced}"
