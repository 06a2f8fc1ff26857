"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and they can fail.

``lint-imports`` runs on the working tree (as ``make lint`` does); then, for a few of the rules the
architecture names, on a copy of the packages with one deliberate upward import added, which must break
the contract that guards it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = {
    "tumorseg": ROOT / "services" / "inference" / "src" / "tumorseg",
    "tumorseg_training": ROOT / "training" / "tumorseg_training",
    "tumorseg_devkit": ROOT / "devkit" / "tumorseg_devkit",
}


def lint_imports(*args: str, pythonpath: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (*pythonpath, ROOT))
    return subprocess.run(
        [str(LINT_IMPORTS), str(ROOT / "pyproject.toml"), "--no-cache", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_every_contract() -> None:
    run = lint_imports()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract", "message"),
    [
        # the old cycle: imaging must not import model (labels live on the ground floor)
        ("tumorseg/imaging/postprocess.py", "import tumorseg.model.package", "layers", "imaging"),
        # an export step that reaches back into the pipeline
        ("tumorseg/export/nifti.py", "import tumorseg.pipeline", "layers", "export"),
        # study selection reading the Orthanc client
        ("tumorseg/study/choose.py", "import tumorseg.pacs.client", "pure-study", "tumorseg.pacs"),
        # the service importing training code
        ("tumorseg/cli.py", "import tumorseg_training.train", "no-training", "tumorseg_training"),
        # the service importing the phantom generator or a local-server launcher
        ("tumorseg/cli.py", "import tumorseg_devkit.synth.phantom", "no-devkit", "tumorseg_devkit"),
        # one route module importing another
        ("tumorseg/api/routes/results.py", "import tumorseg.api.routes.segment", "routes", "routes"),
    ],
)
def test_an_upward_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str, message: str
) -> None:
    for name, source in PACKAGES.items():
        shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / module).open("a") as handle:
        handle.write(f"\n{line}  # deliberate violation\n")
    run = lint_imports("--contract", contract, pythonpath=[tmp_path])
    assert run.returncode == 1, run.stdout + run.stderr
    assert "1 broken" in run.stdout and message in run.stdout, run.stdout
