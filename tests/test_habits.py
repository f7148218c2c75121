"""Habits the test suite keeps: every test function asserts something.

A test with no assertion passes whatever the code does. :func:`unasserted_tests` reads test files
with :mod:`ast` and lists the ``test_*`` functions whose body (nested blocks included) has none
of: an ``assert`` statement, ``pytest.raises``/``pytest.warns``/``pytest.fail``, a call whose name
starts with ``assert`` (``np.testing.assert_array_equal``, ``self.assertEqual``, ``assert_close``,
``_assert_...``), or a call of a helper in :data:`ASSERTING_HELPERS` (each raises
``AssertionError`` itself when what it waits for or checks does not hold).
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent

# Helpers that raise AssertionError (or fail the test) themselves; keep this list short and
# explicit: a name here must assert in every call.
ASSERTING_HELPERS = frozenset({
    "_wait_admitted",  # tests/agents/test_aggregator_kafka.py: AssertionError on timeout
    "_wait_committed",  # tests/agents/test_aggregator_kafka.py: AssertionError on timeout
})

_PYTEST_CHECKS = frozenset({"raises", "warns", "fail", "deprecated_call"})


def _call_name(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _asserts(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Assert):
            return True
        if isinstance(sub, ast.Call):
            name = _call_name(sub.func)
            if name.lstrip("_").startswith("assert") or name in ASSERTING_HELPERS:
                return True
            if (isinstance(sub.func, ast.Attribute) and name in _PYTEST_CHECKS
                    and isinstance(sub.func.value, ast.Name) and sub.func.value.id == "pytest"):
                return True
    return False


def unasserted_tests(path: Path) -> list[str]:
    """``file:line name`` of every ``test_*`` function in ``path`` that asserts nothing."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [f"{path}:{node.lineno} {node.name}" for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name.startswith("test") and not _asserts(node)]


def test_every_test_function_asserts_something() -> None:
    found = [hit for path in sorted(TESTS.rglob("test_*.py")) for hit in unasserted_tests(path)]
    assert found == [], "test functions without an assertion:\n" + "\n".join(found)


def test_the_checker_catches_a_planted_test_without_assertions(tmp_path: Path) -> None:
    planted = tmp_path / "test_planted.py"
    planted.write_text(
        "import numpy as np\n"
        "import pytest\n"
        "def test_nothing_checked():\n"
        "    x = 1 + 1\n"
        "    print(x)\n"
        "def test_plain_assert():\n"
        "    assert 1 + 1 == 2\n"
        "def test_raises():\n"
        "    with pytest.raises(ZeroDivisionError):\n"
        "        1 / 0\n"
        "def test_numpy_helper():\n"
        "    np.testing.assert_array_equal([1], [1])\n"
        "class TestGroup:\n"
        "    def test_in_a_class_without_check(self):\n"
        "        for i in range(3):\n"
        "            i * 2\n"
        "    async def test_async_nested_assert(self):\n"
        "        if True:\n"
        "            assert True\n"
        "def test_calls_an_unlisted_helper():\n"
        "    check_it()\n"
    )
    names = [hit.split()[-1] for hit in unasserted_tests(planted)]
    assert names == ["test_nothing_checked", "test_calls_an_unlisted_helper",
                     "test_in_a_class_without_check"]
