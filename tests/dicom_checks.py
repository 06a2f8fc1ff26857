"""dciodvfy (dicom3tools) on a written DICOM file, for tests of what the service writes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy prints for ``path`` (warnings are not errors)."""
    assert shutil.which("dciodvfy"), "dciodvfy is required (make setup installs dicom3tools)"
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
