"""Hostile studies against the served process and a real Orthanc (issue "Hardening").

Each study is a clone of the phantom study with edited headers, uploaded to Orthanc; ``POST /segment``
must refuse it with a 4xx ``{"detail", "code"}`` naming the series, in under 30 s, and without the
process allocating what the headers claim: the served process's peak RSS (``VmHWM``) stays under 3 GiB.
A clean request afterwards still answers 200, and two requests with ``store_seg=true`` leave one SEG.

Three served processes, one per group of settings, so only one runs at a time: default limits (class
``TestDefaultLimits``), small limits (``TestSmallLimits``: ``TUMORSEG_MAX_SERIES_FRAMES``,
``TUMORSEG_MAX_STUDY_GB``), and one on a private Orthanc whose ``StableAge`` the test chooses. Every study
but the clean one is a slab of the phantom (its middle slices: complete series on a uniform lattice), to
keep uploads short.
Run with ``-s`` to see each answer's time and the process's VmHWM (lines starting ``[hostile]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.encaps import encapsulate
from pydicom.tag import Tag
from pydicom.uid import RLELossless, generate_uid

from tests.hostile import (
    GIB,
    Answer,
    HostileStudy,
    Served,
    hostile_study,
    post_segment,
    seg_series,
    served,
    upload,
)
from tests.orthanc import OrthancEndpoint, service_env
from tests.studies import Edit
from tumorseg.pacs import OrthancClient
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

ANSWER_LIMIT_S = 30.0
PEAK_RSS_LIMIT = 3 * GIB
SLAB = range(60, 100)  # the phantom's middle 40 slices (of 155): where the head and the tumour are


def assert_refused(answer: Answer, status: int, codes: set[str], *named: str) -> dict[str, object]:
    """A 4xx JSON ``{"detail", "code"}`` with one of ``codes``, its detail naming every string of
    ``named``, in under ``ANSWER_LIMIT_S``."""
    response = answer.response
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = answer.body
    assert set(body) == {"detail", "code"}, body
    assert body["code"] in codes, body
    detail = str(body["detail"])
    for name in named:
        assert name in detail, f"{name!r} not in {detail!r}"
    assert answer.seconds < ANSWER_LIMIT_S, f"answered in {answer.seconds:.1f} s"
    return body


def report(case: str, answer: Answer, service: Served) -> None:
    """What the hardening report quotes (shown with ``pytest -rA`` or ``-s``)."""
    code = answer.body.get("code", "-") if answer.response.status_code >= 400 else "ok"
    print(
        f"[hostile] {case}: HTTP {answer.response.status_code} {code} in {answer.seconds:.2f} s; "
        f"service VmHWM {service.peak_rss() / 2**20:.0f} MiB"
    )


# -- edits --------------------------------------------------------------------------------------------

Change = Callable[[int, pydicom.Dataset], pydicom.Dataset | None]


def edit(modality: str, change: Change | None = None, *, slab: bool = True) -> Edit:
    """An ``Edit`` for ``clone_study``: ``change(n, ds)`` on every instance of ``modality``; with ``slab``,
    every series keeps only the instances of ``SLAB``."""

    def apply(m: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset | None:
        if slab and n not in SLAB:
            return None
        return change(n, ds) if change is not None and m == modality else ds

    return apply


def set_attribute(keyword: str, value: object, only: int | None = None) -> Change:
    def change(n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if only is None or n == only:
            setattr(ds, keyword, value)
        return ds

    return change


def delete_attribute(keyword: str, only: int) -> Change:
    def change(n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if n == only:
            delattr(ds, keyword)
        return ds

    return change


def bomb(only: int | None = None) -> Change:
    """Rows = Columns = 65535 (8 GiB of 16-bit pixels per frame) behind one 70-byte RLE fragment."""
    header = (2).to_bytes(4, "little") + (64).to_bytes(4, "little") + (66).to_bytes(4, "little") + bytes(52)

    def change(n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if only is None or n == only:
            ds.Rows = ds.Columns = 65535
            ds.file_meta.TransferSyntaxUID = RLELossless
            ds.PixelData = encapsulate([header + b"\x81\x00\x81\x00\x00\x00"])
            ds["PixelData"].VR = "OB"
        return ds

    return change


def moved_apart(offset_mm: float) -> Change:
    """The series shifted ``offset_mm`` along x, in a frame of reference of its own."""
    frame = generate_uid()

    def change(n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + offset_mm, y, z]
        ds.FrameOfReferenceUID = frame
        return ds

    return change


def set_raw(keyword: str, value: bytes, only: int | None = None) -> Change:
    """``keyword`` set to exactly the bytes ``value`` (pydicom writes them unchecked): what a broken
    modality or a crafted upload can send, and Orthanc stores."""
    tag = Tag(keyword)

    def change(n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        if only is None or n == only:
            ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
        return ds

    return change


@dataclass(frozen=True)
class Case:
    """One hostile study: ``modality`` is the edited series, which the answer's detail must name."""

    modality: str
    change: Change
    codes: set[str]
    words: tuple[str, ...] = ()
    allow_refused_upload: bool = False


MIDDLE = SLAB.start + len(SLAB) // 2

CASES = {
    # 240 columns of 25 mm: a 6 m field of view, over TUMORSEG_MAX_EXTENT_MM (400 mm).
    "pixel-spacing-25mm": Case(
        "flair", set_attribute("PixelSpacing", [25, 25]), {"series_too_large"}, ("TUMORSEG_MAX_EXTENT_MM",)
    ),
    "orientation-all-zeros": Case(
        "t1", set_attribute("ImageOrientationPatient", [0, 0, 0, 0, 0, 0]), {"broken_series"}
    ),
    "pixel-spacing-zero": Case(
        "t2", set_attribute("PixelSpacing", [0, 0]), {"broken_series"}, ("PixelSpacing",)
    ),
    "pixel-spacing-negative": Case(
        "t1ce", set_attribute("PixelSpacing", [-1, -1]), {"broken_series"}, ("PixelSpacing",)
    ),
    "rows-deleted-from-one-instance": Case(
        "flair", delete_attribute("Rows", MIDDLE), {"broken_series"}, ("Rows",), allow_refused_upload=True
    ),
    # Every instance a bomb: refused from the PACS listing, before any download.
    "decompression-bomb-series": Case(
        "t2", bomb(), {"series_too_large"}, ("65535x65535", "TUMORSEG_MAX_FRAME_PIXELS")
    ),
    # One bomb among normal instances: refused from the downloaded headers (different image sizes), or
    # from the listing when Orthanc happens to list the bomb first; decoded never.
    "decompression-bomb-instance": Case("t1", bomb(MIDDLE), {"series_too_large", "broken_series"}),
    "series-500mm-apart": Case("t2", moved_apart(500.0), {"series_apart"}, ("FrameOfReferenceUID", "flair")),
    # Found by these tests and tests/unit/test_header_fuzz.py (answered 500 before they were fixed).
    "pixel-spacing-not-numbers": Case(
        "flair", set_raw("PixelSpacing", b"abc\\def "), {"broken_series"}, ("PixelSpacing",)
    ),
    "orientation-not-numbers": Case(
        "flair",
        set_raw("ImageOrientationPatient", b"a\\b\\c\\d\\e\\f "),
        {"broken_series"},
        ("ImageOrientationPatient",),
    ),
    "pixel-spacing-1e-300": Case("flair", set_raw("PixelSpacing", b"1e-300\\1e-300 "), {"broken_series"}),
    "rows-of-3-bytes-in-one-instance": Case(
        "flair", set_raw("Rows", b"\x01\x02\x03", only=MIDDLE), {"broken_series"}, ("Rows",)
    ),
}


def case_params() -> list[object]:
    return [pytest.param(name) for name in CASES]


# -- default limits -----------------------------------------------------------------------------------


@pytest.fixture(scope="class")
def default_service(
    orthanc: OrthancEndpoint, random_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The service with the default limits (class scope: stopped after the class that uses it)."""
    work = tmp_path_factory.mktemp("hostile-service")
    with served(service_env(orthanc.url, orthanc.auth, random_model, work / "results"), work) as service:
        yield service


@pytest.fixture(scope="class")
def clean_study(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, tmp_path_factory: pytest.TempPathFactory
) -> HostileStudy:
    """The whole phantom study, unedited: what the service must still segment."""
    study = hostile_study(plain_study, tmp_path_factory.mktemp("clean"))
    with orthanc.client() as pacs:
        assert not upload(pacs, study.folder).failed
    return study


@pytest.fixture(scope="class")
def first_seg(default_service: Served, clean_study: HostileStudy) -> dict[str, object]:
    """The first ``store_seg=true`` request for the clean study (its result, and the patient)."""
    answer = post_segment(default_service.url, clean_study.patient_id, store_seg="true")
    report("store-seg-1", answer, default_service)
    assert answer.response.status_code == 200, answer.response.text
    return {**answer.body, "patient_id": clean_study.patient_id}


class TestDefaultLimits:
    @pytest.mark.parametrize("name", case_params())
    def test_a_hostile_study_is_refused_quickly_naming_the_series(
        self,
        name: str,
        default_service: Served,
        plain_study: ConvertedStudy,
        orthanc_client: OrthancClient,
        tmp_path: Path,
    ) -> None:
        case = CASES[name]
        study = hostile_study(plain_study, tmp_path / "study", edit(case.modality, case.change))
        uploaded = upload(orthanc_client, study.folder)
        if uploaded.failed:
            if not case.allow_refused_upload:
                pytest.fail(f"Orthanc refused {uploaded.failed}")
            pytest.skip(f"Orthanc refuses the file itself: {uploaded.failed}")
        before = default_service.peak_rss()
        answer = post_segment(default_service.url, study.patient_id, timeout=120)
        report(name, answer, default_service)
        assert_refused(answer, 422, case.codes, case.modality, study.series_uids[case.modality], *case.words)
        assert default_service.peak_rss() < PEAK_RSS_LIMIT
        # Refused from headers: no decoded volume of what the headers claim (8 GiB for a bomb frame).
        assert default_service.peak_rss() - before < 512 * 2**20, (
            "refusing a hostile study raised the peak by 512 MiB+"
        )

    def test_the_service_survives_the_hostile_studies(
        self, default_service: Served, clean_study: HostileStudy
    ) -> None:
        """After every hostile study (the tests above ran on this process): same process, still 200."""
        answer = post_segment(default_service.url, clean_study.patient_id, reference="t2")
        report("clean-after-hostile", answer, default_service)
        assert answer.response.status_code == 200, answer.response.text
        assert answer.body["reference"]["modality"] == "t2"  # type: ignore[index]
        assert default_service.alive()
        health = httpx.get(f"{default_service.url}/health", timeout=30).json()
        assert health["status"] == "ok", health
        assert default_service.peak_rss() < PEAK_RSS_LIMIT, (
            f"VmHWM {default_service.peak_rss() / GIB:.2f} GiB"
        )

    def test_a_request_right_after_a_stored_seg_is_answered(
        self, default_service: Served, first_seg: dict[str, object], orthanc_client: OrthancClient
    ) -> None:
        """The SEG the service itself just stored is no instance "still arriving": a retry at once gets
        the result, not 409 study_incomplete."""
        (study,) = orthanc_client.find_studies(str(first_seg["patient_id"]))
        if orthanc_client.get_study(study.key).is_stable:
            pytest.skip("Orthanc marked the study stable again before the second request could be sent")
        answer = post_segment(default_service.url, str(first_seg["patient_id"]), store_seg="true")
        report("store-seg-immediate-retry", answer, default_service)
        assert answer.response.status_code == 200, answer.response.text

    def test_store_seg_twice_stores_one_seg(
        self, default_service: Served, first_seg: dict[str, object], orthanc: OrthancEndpoint
    ) -> None:
        patient_id = str(first_seg["patient_id"])
        # ?wait=true: the SEG stored by the first request makes Orthanc call the study unstable for
        # StableAge seconds (see the test above).
        answer = post_segment(default_service.url, patient_id, store_seg="true", wait="true")
        report("store-seg-2", answer, default_service)
        assert answer.response.status_code == 200, answer.response.text
        answers = [first_seg, answer.body]
        first, second = (a["dicom_seg"] for a in answers)
        assert isinstance(first, dict) and first["series_instance_uid"], first
        assert isinstance(second, dict)
        assert second["series_instance_uid"] == first["series_instance_uid"]
        in_orthanc = seg_series(orthanc.url, orthanc.auth, patient_id)
        assert len(in_orthanc) == 1, in_orthanc
        tags = in_orthanc[0]["MainDicomTags"]
        assert isinstance(tags, dict) and tags["SeriesInstanceUID"] == first["series_instance_uid"]
        for result in answers:
            stored = httpx.get(f"{default_service.url}/results/{result['result_id']}", timeout=30)
            assert stored.status_code == 200
            assert stored.json()["dicom_seg"] == result["dicom_seg"]
            assert stored.json()["dicom_seg"]["series_instance_uid"] == first["series_instance_uid"]


# -- small limits -------------------------------------------------------------------------------------

MAX_SERIES_FRAMES = 30
MAX_STUDY_GB = 0.01  # 10.7 MB: two float32 series of 240 x 240 x 25 are over it, each alone under
# 25 slices: under MAX_SERIES_FRAMES, and over the mapping's min_instances (20; fewer is "too few slices").
BUDGET_SLAB = range(65, 90)


def slab_of(slices: range) -> Edit:
    def apply(m: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset | None:
        return ds if n in slices else None

    return apply


@pytest.fixture(scope="class")
def limits_service(
    orthanc: OrthancEndpoint, random_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("limits-service")
    env = service_env(
        orthanc.url,
        orthanc.auth,
        random_model,
        work / "results",
        max_series_frames=str(MAX_SERIES_FRAMES),
        max_study_gb=str(MAX_STUDY_GB),
        brain_extractor="none",  # these requests end before it; a faster start
    )
    with served(env, work) as service:
        yield service


class TestSmallLimits:
    def test_too_many_instances_is_refused_naming_the_setting(
        self,
        limits_service: Served,
        plain_study: ConvertedStudy,
        orthanc_client: OrthancClient,
        tmp_path: Path,
    ) -> None:
        slices = plain_study.get("flair").n_files
        assert slices > MAX_SERIES_FRAMES
        study = hostile_study(plain_study, tmp_path / "study")
        assert not upload(orthanc_client, study.folder).failed
        answer = post_segment(limits_service.url, study.patient_id, timeout=120)
        report("too-many-instances", answer, limits_service)
        body = assert_refused(
            answer, 422, {"series_too_large"}, "TUMORSEG_MAX_SERIES_FRAMES", f"{slices} instances"
        )
        assert any(uid in str(body["detail"]) for uid in study.series_uids.values()), body
        assert limits_service.peak_rss() < PEAK_RSS_LIMIT

    def test_a_study_over_the_decoded_budget_is_refused(
        self,
        limits_service: Served,
        plain_study: ConvertedStudy,
        orthanc_client: OrthancClient,
        tmp_path: Path,
    ) -> None:
        study = hostile_study(plain_study, tmp_path / "study", slab_of(BUDGET_SLAB))
        assert not upload(orthanc_client, study.folder).failed
        answer = post_segment(limits_service.url, study.patient_id, timeout=120)
        report("study-over-decoded-budget", answer, limits_service)
        body = assert_refused(answer, 422, {"series_too_large"}, "TUMORSEG_MAX_STUDY_GB")
        assert any(uid in str(body["detail"]) for uid in study.series_uids.values()), body
        assert limits_service.peak_rss() < PEAK_RSS_LIMIT


# -- a study Orthanc has not marked stable ------------------------------------------------------------


def test_an_incomplete_study_is_409_then_waited_for(
    plain_study: ConvertedStudy, random_model: Path, tmp_path: Path
) -> None:
    """StableAge 30: a study just uploaded is incomplete, 409 with Retry-After. Then an Orthanc with
    StableAge 2 on the same port and credentials: ``?wait=true`` waits until it is stable and answers 200."""
    study = hostile_study(plain_study, tmp_path / "study", slab_of(SLAB))
    slow = LocalOrthanc(tmp_path / "orthanc-stable-30", overrides={"StableAge": 30})
    env = service_env(slow.url, slow.auth, random_model, tmp_path / "results", brain_extractor="none")
    with slow, served(env, tmp_path / "service") as service:
        with OrthancClient(slow.url, slow.auth) as pacs:
            assert not upload(pacs, study.folder, stable_timeout=None).failed
            answer = post_segment(service.url, study.patient_id, timeout=120)
        report("incomplete-study", answer, service)
        assert_refused(answer, 409, {"study_incomplete"}, study.study_uid, "wait=true")
        retry_after = answer.response.headers.get("Retry-After", "")
        assert retry_after.isdigit() and int(retry_after) > 0, answer.response.headers
        slow.stop()

        quick = LocalOrthanc(
            tmp_path / "orthanc-stable-2",
            http_port=slow.http_port,
            password=slow.password,
            overrides={"StableAge": 2},
        )
        with quick, OrthancClient(quick.url, quick.auth) as pacs:
            assert not upload(pacs, study.folder, stable_timeout=None).failed
            (listed,) = pacs.find_studies(study.patient_id)
            assert not pacs.get_study(listed.key).is_stable  # so the request below has to wait
            waited = post_segment(service.url, study.patient_id, wait="true")
            report("incomplete-study-wait", waited, service)
            assert waited.response.status_code == 200, waited.response.text
            assert waited.body["study_instance_uid"] == study.study_uid
            assert pacs.get_study(listed.key).is_stable
        assert service.peak_rss() < PEAK_RSS_LIMIT


def test_every_sequence_has_a_case() -> None:
    """The hostile cases edit every modality at least once (a guard on the table above)."""
    assert {case.modality for case in CASES.values()} == set(SEQUENCES)
