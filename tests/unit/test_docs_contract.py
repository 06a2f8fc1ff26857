"""``docs/contract.md`` names what the code offers, and the pages link to pages that exist.

The contract is the list users and scripts rely on; these tests read the code's own lists (the
``Settings`` fields, the FastAPI app's routes, the Typer app's commands with the installed plugins',
the error codes) and require each name in the contract, so a setting, route, command or code added
without its line in the contract fails here. The other way round (a name in the contract the code no
longer has) is left to review: the contract also names keys, files and options no list here holds.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
import typer
from fastapi.routing import iter_route_contexts

from tumorseg import errors
from tumorseg.api.errors import STATUS_BY_ERROR
from tumorseg.api.main import create_app
from tumorseg.cli import app as cli_app
from tumorseg.config import Settings

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "contract.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Codes that are not an error class's: set by the HTTP layer (api/errors.py, api/main.py) or by the
# job store for a job cut off by a crash.
OTHER_CODES = ("unauthorized", "not_found", "cross_site_request", "internal_error", "interrupted")


@pytest.fixture(scope="module")
def contract() -> str:
    return CONTRACT.read_text(encoding="utf-8")


def _mentions(text: str, phrase: str) -> bool:
    """``phrase`` in ``text`` not followed by more of a name (``GET /jobs`` is not ``GET /jobs/{id}``)."""
    return re.search(re.escape(phrase) + r"(?![\w/{.-])", text) is not None


def test_every_setting_is_in_the_contract(contract: str) -> None:
    names = [f"TUMORSEG_{field.upper()}" for field in Settings.model_fields]
    assert len(names) > 20, names
    missing = [name for name in names if not _mentions(contract, name)]
    assert not missing, f"settings not in docs/contract.md: {missing}"


def test_every_route_is_in_the_contract(tmp_path: Path, contract: str) -> None:
    app = create_app(Settings(results_dir=tmp_path / "results", model_path=tmp_path / "no-model"))
    operations, paths = [], []
    for route in iter_route_contexts(app.routes):
        if route.path is None:
            continue
        paths.append(route.path)
        operations += [f"{method} {route.path}" for method in sorted(route.methods or ()) if method != "HEAD"]
    assert "POST /segment/{patient_id}" in operations and "GET /results/{result_id}/viewer" in operations
    missing = [op for op in operations if not _mentions(contract, op)]
    missing += [path for path in paths if not _mentions(contract, path)]
    assert not missing, f"routes not in docs/contract.md: {missing}"


def _command_lines(group: object, prefix: str) -> list[str]:
    """``tumorseg NAME`` for each command, ``tumorseg GROUP NAME`` below a group (Typer's own click)."""
    lines = []
    for name, command in getattr(group, "commands", {}).items():
        lines.append(f"{prefix} {name}")
        lines += _command_lines(command, f"{prefix} {name}")
    return lines


def test_every_command_is_in_the_contract(contract: str) -> None:
    commands = _command_lines(typer.main.get_command(cli_app), "tumorseg")
    # The training package's plugin (make setup installs it) is part of the CLI the contract describes.
    assert {"tumorseg serve", "tumorseg worker", "tumorseg train", "tumorseg evaluate"} <= set(commands)
    missing = [command for command in commands if not _mentions(contract, command)]
    assert not missing, f"commands not in docs/contract.md: {missing}"


def test_every_error_code_is_in_the_contract(contract: str) -> None:
    codes = {cls.code for cls in errors.error_classes()} | set(OTHER_CODES)
    assert {cls for cls, _ in STATUS_BY_ERROR} <= set(errors.error_classes())
    missing = sorted(code for code in codes if f"`{code}`" not in contract)
    assert not missing, f"error codes not in docs/contract.md: {missing}"


def _anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", page.read_text(encoding="utf-8"), flags=re.MULTILINE):
        text = unicodedata.normalize("NFKC", heading.strip().lower()).replace("`", "")
        anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def _relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.DOTALL)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for link in _relative_links(page):
        target, _, anchor = link.partition("#")
        path = (page.parent / target).resolve() if target else page
        if not path.exists():
            broken.append(link)
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(link)
    assert not broken, f"{page.relative_to(ROOT)}: links to nothing: {broken}"


def test_the_pages_stand_alone() -> None:
    parent_folder = "/".join(("..", "shared"))  # spelt so that the repository holds no such path either
    outside = [p.name for p in PAGES if parent_folder in p.read_text(encoding="utf-8")]
    assert not outside, f"pages pointing outside the repository: {outside}"
