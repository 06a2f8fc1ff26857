"""The test folders hold what their names say, so that `make test-unit` (tests/unit) stays a fast loop:
every module in tests/integration is marked ``integration`` (real engines, served processes, phantoms and
whole networks: seconds a test), none in tests/unit is, and the training package's tests live with it, in
training/tests, where `make test` finds them through pytest's testpaths. Read on paper, nothing is run."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_marks(path: Path) -> set[str]:
    """The ``pytest.mark.X`` names of a module's ``pytestmark`` (one mark or a list of them)."""
    marks: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute):
                    if sub.value.attr == "mark":
                        marks.add(sub.attr)
    return marks


def uses_mark(path: Path, name: str) -> bool:
    """Whether the module names ``pytest.mark.<name>`` anywhere (a module mark or a test's decorator)."""
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == name
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "mark"
        for node in ast.walk(ast.parse(path.read_text()))
    )


def test_every_integration_module_is_marked_integration() -> None:
    modules = sorted((ROOT / "tests" / "integration").glob("test_*.py"))
    assert modules
    unmarked = [m.name for m in modules if "integration" not in module_marks(m)]
    assert not unmarked, f"mark these `pytestmark = pytest.mark.integration`: {unmarked}"


def test_no_unit_or_training_test_is_marked_integration() -> None:
    modules = [*(ROOT / "tests" / "unit").glob("test_*.py"), *(ROOT / "training" / "tests").glob("test_*.py")]
    marked = [str(m.relative_to(ROOT)) for m in modules if uses_mark(m, "integration")]
    assert not marked, f"an integration test belongs in tests/integration: {marked}"


def test_make_test_finds_the_training_tests_and_test_unit_only_the_unit_folder() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert set(config["testpaths"]) == {"tests", "training/tests"}
    assert list((ROOT / "training" / "tests").glob("test_*.py")), "the training package's tests"
    assert not list((ROOT / "tests").glob("test_*.py")), "a test in tests/ is neither unit nor integration"
    makefile = (ROOT / "Makefile").read_text()
    test_unit = makefile.split("\ntest-unit:", 1)[1].split("\n\n", 1)[0]
    assert "pytest tests/unit" in test_unit, test_unit
