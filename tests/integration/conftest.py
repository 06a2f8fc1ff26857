"""Session data for integration tests: one phantom case, converted to DICOM the ways a clinic would;
and a hung server for timeout tests. Helpers the tests call are in ``tests/orthanc.py`` and
``tests/studies.py``, not here: test modules import no conftest."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dicom_factory import unique_patient_id
from tests.models import tiny_package
from tests.orthanc import OrthancEndpoint
from tests.studies import CLINICAL, UploadedStudy
from tumorseg.pacs.upload import upload_directory
from tumorseg_devkit.synth.phantom import generate_case, write_case
from tumorseg_devkit.synth.to_dicom import ConvertedStudy, convert_case

PHANTOM_SEED = 424242  # not a training seed (those are small consecutive integers)


@pytest.fixture(scope="session")
def random_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A package with random weights: a non-trivial mask for plumbing and geometry tests, fast on CPU."""
    return tiny_package(tmp_path_factory.mktemp("model") / "tiny", roi_size=(64, 64, 64))


@pytest.fixture(scope="session")
def phantom_case(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_case(generate_case(PHANTOM_SEED), tmp_path_factory.mktemp("phantom"), "BraTS2021_90001")


@pytest.fixture(scope="session")
def clinical_study(
    phantom_case: Path, orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> UploadedStudy:
    """Oblique anisotropic FLAIR, sagittal 3D T1, reversed-slice T1ce, coronal T2, localizer, DWI, ADC,
    and an older complete study — uploaded."""
    patient_id = unique_patient_id("CLIN")
    converted = convert_case(phantom_case, patient_id, tmp_path_factory.mktemp("clinical"), CLINICAL)
    with orthanc.client() as pacs:
        report = upload_directory(pacs, converted.out, stable_timeout=60.0)
    assert not report.failed and report.stored == sum(s.n_files for s in converted.series)
    return UploadedStudy(patient_id, phantom_case, converted)


@pytest.fixture(scope="session")
def plain_study(phantom_case: Path, tmp_path_factory: pytest.TempPathFactory) -> ConvertedStudy:
    """The phantom on its own lattice, four series, not uploaded: raw material for clones."""
    return convert_case(phantom_case, "PLAIN", tmp_path_factory.mktemp("plain"))


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A real TCP server that accepts connections and never answers: a hung Orthanc."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()
