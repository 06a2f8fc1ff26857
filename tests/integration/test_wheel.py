"""The service wheel is only the service, and an installed wheel finds its model (issue 39).

The wheel is built the way ``services/inference/Dockerfile`` builds it (``pip wheel --no-deps`` over a copy
of ``pyproject.toml``, ``README.md`` and ``services/inference/src``, so no stale ``build/`` of the checkout
leaks in). It must hold no phantom generator, no local-server launcher and no service launcher (the
development kit's), and must hold the shipped model as package data.

It is then installed, offline (``--no-index --no-deps``), into a fresh venv that sees the development
venv's third-party packages (torch among them: nothing is downloaded) through a ``.pth`` line naming a
folder of links to them, the tumorseg distributions (service, training, devkit: editable installs of the
checkout) left out. ``tumorseg serve`` of that venv, started outside the checkout with no
``TUMORSEG_MODEL_PATH``, must report the model loaded in ``GET /health``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

import httpx
import pytest

from tumorseg.model.package import read_manifest
from tumorseg.paths import SHIPPED_MODEL
from tumorseg_devkit.launcher import LocalService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MODEL_MB = 25  # the most a model may weigh to travel in the wheel
# what the development kit holds (its package, the phantom generator, the local-server and service
# launchers): no module or folder of the wheel may bear these names
DEV_TOOLS = {"tumorseg_devkit", "synth", "local", "launcher"}
START_TIMEOUT_S = 240.0  # model load and warm-up: ~25 s on 2 idle cores, far more on a loaded machine


def build_wheel(workdir: Path) -> Path:
    source = workdir / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(
        ROOT / "services" / "inference" / "src", source / "services" / "inference" / "src", ignore=ignore
    )
    wheels = workdir / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheels),
            ".",
        ],
        cwd=source,
        check=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("tumorseg-*.whl")
    return wheel


def fresh_venv(workdir: Path) -> Path:
    """A venv whose own site-packages comes first, then (by a ``.pth`` line) links to the development
    venv's packages other than tumorseg's own distributions and their editable hooks."""
    venv = workdir / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    dev_site = Path(sysconfig.get_paths()["purelib"])
    view = workdir / "dev-site-packages"
    view.mkdir()
    for entry in dev_site.iterdir():
        name = entry.name.lower()
        if name.startswith(("tumorseg", "__editable__", "_tumorseg")) or name.endswith(".pth"):
            continue
        (view / entry.name).symlink_to(entry)
    (site,) = (venv / "lib").glob("python*/site-packages")
    (site / "dev-dependencies.pth").write_text(f"{view}\n")
    return venv


class InstalledService(LocalService):
    """``tumorseg serve`` of another environment (``bin``: its scripts folder)."""

    def __init__(
        self, bin_dir: Path, env: Mapping[str, str], log_path: Path, *, cwd: Path, timeout: float
    ) -> None:
        self.bin_dir = bin_dir
        super().__init__(env, log_path, cwd=cwd, timeout=timeout)

    @property
    def command(self) -> list[str]:
        return [str(self.bin_dir / "tumorseg"), "serve", "--host", "127.0.0.1", "--port", str(self.port)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_the_service_and_its_model_and_no_dev_tools(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "tumorseg/cli.py" in names and "tumorseg/api/main.py" in names, names[:20]
    dev_tools = [
        name
        for name in names
        if any(part in DEV_TOOLS or "phantom" in part for part in PurePosixPath(name).with_suffix("").parts)
    ]
    assert not dev_tools, f"the service wheel carries development tools: {dev_tools}"
    shipped = {p.relative_to(SHIPPED_MODEL).as_posix() for p in SHIPPED_MODEL.iterdir() if p.is_file()}
    assert {"model.json", "model.pt"} <= shipped
    in_wheel = {name.removeprefix("tumorseg/shipped_model/") for name in names if "shipped_model/" in name}
    assert in_wheel == shipped, "the wheel must carry the whole shipped model package"
    size = sum(
        info.file_size for info in zipfile.ZipFile(wheel).infolist() if "shipped_model/" in info.filename
    )
    assert size < SHIPPED_MODEL_MB * 2**20, f"the shipped model weighs {size / 2**20:.1f} MB"


def test_an_installed_wheel_serves_with_its_own_model(
    wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    venv = fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)],
        check=True,
        timeout=120,
    )
    outside = tmp_path / "elsewhere"  # no checkout above it, nothing of the repository on the path
    outside.mkdir()
    for name in ("TUMORSEG_MODEL_PATH", "PYTHONPATH", "TUMORSEG_QUEUE_URL", "TUMORSEG_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    found = subprocess.run(
        [str(python), "-c", "from tumorseg.config import get_settings; print(get_settings().model_path)"],
        cwd=outside,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()
    assert Path(found).is_relative_to(venv), f"the installed service's default model is {found}"
    assert (Path(found) / "model.json").is_file()

    env = {
        "TUMORSEG_ORTHANC_URL": "http://127.0.0.1:9",  # nothing there: /health says degraded, fast
        "TUMORSEG_RESULTS_DIR": str(tmp_path / "results"),
        "TUMORSEG_ENVIRONMENT": "development",
        "TUMORSEG_BRAIN_EXTRACTOR": "none",  # deepbet's load and warm-up: seconds that prove nothing here
    }
    expected = read_manifest(SHIPPED_MODEL)
    with InstalledService(
        venv / "bin", env, tmp_path / "service.log", cwd=outside, timeout=START_TIMEOUT_S
    ) as service:
        health = service.health
        deadline = time.monotonic() + START_TIMEOUT_S
        while not health.get("model", {}).get("loaded") and time.monotonic() < deadline:
            time.sleep(0.5)
            health = httpx.get(f"{service.url}/health", timeout=10).json()
    assert health["model"]["loaded"] is True, health
    assert (health["model"]["name"], health["model"]["version"]) == (expected.name, expected.version)
