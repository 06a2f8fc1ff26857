"""No function or method of the service package is longer than a screen (issue 39; STYLE.md, 15).

A function's length is counted from its ``def`` line to its last line, docstring and nested functions
included, decorators not (what ``ast`` reports as ``end_lineno - lineno + 1``). Each exception stays on
``ALLOWED`` with the reason it stays; an entry whose function is gone or already short fails too, so the
list cannot outlive its reasons.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "services" / "inference" / "src" / "tumorseg"
MAX_LINES = 60

SPLITTING = "being split (issue 39)"

# qualified name (``tumorseg.module.Class.method``, ``outer.<locals>.inner`` for a nested function) → why
ALLOWED: dict[str, str] = {}


def function_lengths(source: str, module: str) -> dict[str, tuple[int, int]]:
    """Qualified name → (first line, length in lines) of every function and method in ``source``."""
    found: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                length = (child.end_lineno or child.lineno) - child.lineno + 1
                if length > found.get(name, (0, 0))[1]:  # a property's setter shares its getter's name
                    found[name] = (child.lineno, length)
                visit(child, f"{name}.<locals>.")
            else:  # if/try/with blocks at any level hold definitions too
                visit(child, prefix)

    visit(ast.parse(source), f"{module}.")
    return found


def package_functions() -> dict[str, tuple[Path, int, int]]:
    """Every function of the service package: qualified name → (file, first line, length)."""
    functions: dict[str, tuple[Path, int, int]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for name, (line, length) in function_lengths(path.read_text(encoding="utf-8"), module).items():
            functions[name] = (path, line, length)
    return functions


def test_no_function_is_longer_than_a_screen() -> None:
    long = [
        f"{name} ({path.relative_to(ROOT)}:{line}): {length} lines"
        for name, (path, line, length) in package_functions().items()
        if length > MAX_LINES and name not in ALLOWED
    ]
    assert not long, (
        f"functions longer than {MAX_LINES} lines: split them into parts that each do one thing, or add "
        "them to ALLOWED with the reason they stay:\n" + "\n".join(long)
    )


def test_every_allowed_function_exists_is_long_and_says_why() -> None:
    functions = package_functions()
    stale = [
        f"{name}: " + ("no such function" if name not in functions else f"{functions[name][2]} lines")
        for name in ALLOWED
        if name not in functions or functions[name][2] <= MAX_LINES
    ]
    assert not stale, "remove these from ALLOWED (gone or already short):\n" + "\n".join(stale)
    assert all(reason.strip() for reason in ALLOWED.values()), "every exception names why it stays"


def test_the_measure_counts_methods_nested_functions_and_docstrings() -> None:
    body = "".join(f"        x{i} = {i}\n" for i in range(57))
    source = (
        "import functools\n"
        "class Stage:\n"
        "    @functools.cache\n"  # decorators are not counted
        "    def run(self):\n"
        '        """A docstring counts."""\n'
        "        def step():\n"
        "            return 1\n"
        "        return step()\n"
        "if True:\n"
        "    def long():\n"
        '        """Docstring."""\n' + body + "        return 0\n"
    )
    lengths = function_lengths(source, "tumorseg.example")
    assert lengths["tumorseg.example.Stage.run"] == (4, 5)
    assert lengths["tumorseg.example.Stage.run.<locals>.step"] == (6, 2)
    assert lengths["tumorseg.example.long"] == (10, MAX_LINES)
    one_more = source.replace("        return 0\n", "        y = 1\n        return 0\n")
    assert function_lengths(one_more, "tumorseg.example")["tumorseg.example.long"][1] == MAX_LINES + 1
