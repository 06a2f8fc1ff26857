"""A patient's studies over time, with the tumour volumes of each and their change (``GET
/patients/{patient_id}/timeline``, ``tumorseg timeline``), and the history segmented on request.

What it reads: the PACS's list of the patient's studies (``find_studies``: every study, oldest first), and
the job store's jobs of the patient with the results they name (not a scan of the results directory). A
study's entry is its newest ``done`` job whose result is of the current model (name and version), else its
newest ``done`` job of another model (listed, never compared), else why it has none: a job queued or
running (``pending``), ``failed``, ``skipped`` (``not_usable``: no brain MRI), or no job
(``not_segmented``).

Change (results of the current model only). The baseline is the earliest study with such a result; each
later one is compared with it and with the nadir, the earlier study (baseline included) with the smallest
enhancing-tumour volume, every region against that same study. An absolute change is always given; a
relative one only when the reference volume is at least ``MIN_REFERENCE_ML`` (a percentage of almost
nothing means nothing). Where the enhancing volume grew by ``PROGRESSION`` or more from the nadir, or fell
by ``RESPONSE`` or more from the baseline, the entry says so, with ``RESEARCH_NOTE``: the thresholds are
the volumetric equivalents of RANO 2.0's bidimensional ones (Wen et al., J Clin Oncol 2023), and this is no
response assessment (confirmation scans, steroids, clinical state and new lesions are unknown here).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, Field

from tumorseg.errors import PacsNotFound, PatientNotFound, ResultFailed, ResultNotFound, ResultPending
from tumorseg.jobs import Jobs
from tumorseg.jobs.trigger import job_key
from tumorseg.jobstore import JobStore
from tumorseg.pacs import Pacs
from tumorseg.records import StudyInfo
from tumorseg.results import ResultStore
from tumorseg.schema import Job, JobRequest, SegmentResult

TIMELINE_REGIONS = ("et", "tc", "wt", "ncr", "ed")
MIN_REFERENCE_ML = 1.0
PROGRESSION = 0.40  # enhancing volume from the nadir
RESPONSE = -0.65  # enhancing volume from the baseline
RESEARCH_NOTE = (
    "Research use only: volumetric change inspired by RANO 2.0, not a response assessment "
    "(confirmation scans, steroids, clinical state and new lesions are not known to this service)."
)
MAX_JOBS = 1000


class Change(BaseModel):
    reference_ml: float = Field(description="the volume compared with")
    absolute_ml: float = Field(description="this study's volume minus the reference")
    relative: float | None = Field(
        description="absolute / reference (0.4 = +40 %); null when the reference is under 1.0 mL"
    )


class ModelTag(BaseModel):
    name: str
    version: str


class TimelineEntry(BaseModel):
    study_instance_uid: str
    study_date: str | None = Field(description="YYYY-MM-DD, null when the study has no date")
    study_description: str
    status: str = Field(description="segmented, pending, failed, not_usable or not_segmented")
    reason: str | None = Field(default=None, description="why there is no result, when there is none")
    job_id: str | None = None
    result_id: str | None = None
    viewer_url: str | None = None
    model: ModelTag | None = None
    current_model: bool = Field(default=False, description="whether the result is of the current model")
    volumes_ml: dict[str, float | None] | None = None
    baseline: bool = False
    change_from_baseline: dict[str, Change] | None = None
    nadir_study_instance_uid: str | None = None
    change_from_nadir: dict[str, Change] | None = None
    progression_threshold_crossed: bool = Field(
        default=False, description="enhancing volume +40 % or more from the nadir (a relative change exists)"
    )
    response_threshold_crossed: bool = Field(
        default=False,
        description="enhancing volume -65 % or more from the baseline (a relative change exists)",
    )
    note: str | None = Field(default=None, description="a sentence for the thresholds, research use only")


class Timeline(BaseModel):
    patient_id: str
    model: ModelTag = Field(description="the current model: only its results are compared")
    baseline_study_instance_uid: str | None
    studies: list[TimelineEntry] = Field(description="oldest first")
    research_note: str = RESEARCH_NOTE


class HistoryStudy(BaseModel):
    study_instance_uid: str
    action: str = Field(description="queued, has_result, has_job (same images, same model) or not_usable")
    job_id: str | None = None


class HistoryAnswer(BaseModel):
    patient_id: str
    studies: list[HistoryStudy]


@dataclass(frozen=True)
class _Found:
    job: Job | None
    result: SegmentResult | None


def build_timeline(
    pacs: Pacs, jobs: JobStore, results: ResultStore, patient_id: str, model: ModelTag
) -> Timeline:
    """The timeline of ``patient_id`` (see the module docstring); ``PatientNotFound`` when the PACS has
    no study of that patient."""
    studies = _studies(pacs, patient_id)
    by_study = _jobs_by_study(jobs, patient_id)
    entries = [_entry(study, by_study.get(study.study_instance_uid, []), results, model) for study in studies]
    _compare(entries)
    baseline = next((e.study_instance_uid for e in entries if e.baseline), None)
    return Timeline(patient_id=patient_id, model=model, baseline_study_instance_uid=baseline, studies=entries)


def _studies(pacs: Pacs, patient_id: str) -> list[StudyInfo]:
    studies = pacs.find_studies(patient_id)
    if not studies:
        raise PatientNotFound(f"the PACS has no study of patient {patient_id!r}")
    return sorted(studies, key=lambda s: (s.study_date or "99999999", s.study_time, s.study_instance_uid))


def _jobs_by_study(jobs: JobStore, patient_id: str) -> dict[str, list[Job]]:
    """The patient's jobs by the study they segmented (or were asked to), newest first."""
    listed, _ = jobs.list(patient_id=patient_id, limit=MAX_JOBS)
    by_study: dict[str, list[Job]] = {}
    for job in listed:
        study = job.study_instance_uid or job.request.study
        if study:
            by_study.setdefault(study, []).append(job)
    return by_study


def _result_of(job: Job, results: ResultStore) -> SegmentResult | None:
    try:
        return results.read(job.result_id)
    except (ResultNotFound, ResultPending, ResultFailed):  # deleted by retention since
        return None


def _find(jobs: Sequence[Job], results: ResultStore, model: ModelTag) -> _Found:
    """The study's newest done job with a result of ``model``, else of another model, else its newest job."""
    other: _Found | None = None
    for job in jobs:
        if job.state != "done":
            continue
        result = _result_of(job, results)
        if result is None:
            continue
        if _is_current(result, model):
            return _Found(job, result)
        other = other or _Found(job, result)
    return other or _Found(jobs[0] if jobs else None, None)


def _is_current(result: SegmentResult, model: ModelTag) -> bool:
    return result.model is not None and (result.model.name, result.model.version) == (
        model.name,
        model.version,
    )


def _entry(study: StudyInfo, jobs: Sequence[Job], results: ResultStore, model: ModelTag) -> TimelineEntry:
    date = study.study_date
    found = _find(jobs, results, model)
    entry = TimelineEntry(
        study_instance_uid=study.study_instance_uid,
        study_date=f"{date[:4]}-{date[4:6]}-{date[6:8]}" if len(date) == 8 and date.isdigit() else None,
        study_description=study.study_description,
        status="not_segmented",
        job_id=found.job.job_id if found.job else None,
    )
    if found.result is not None:
        result = found.result
        volumes = result.volumes_ml.model_dump()
        entry.status = "segmented"
        entry.result_id = result.result_id
        entry.model = ModelTag(name=result.model.name, version=result.model.version) if result.model else None
        entry.current_model = _is_current(result, model)
        entry.volumes_ml = {r: volumes.get(r) for r in TIMELINE_REGIONS}
    elif found.job is not None and found.job.state in ("queued", "running"):
        entry.status, entry.reason = "pending", f"job {found.job.job_id} is {found.job.state}"
    elif found.job is not None and found.job.state == "failed":
        entry.status, entry.reason = "failed", f"{found.job.code}: {found.job.reason}"
    elif found.job is not None and found.job.state == "skipped":
        entry.status, entry.reason = "not_usable", f"{found.job.code}: {found.job.reason}"
    elif found.job is not None:
        entry.reason = "its result was deleted (retention)"
    else:
        entry.reason = "no job has segmented this study yet"
    return entry


def change(volume: float | None, reference: float | None) -> Change | None:
    """``volume`` against ``reference`` (mL); None when either is unknown (a result before the key)."""
    if volume is None or reference is None:
        return None
    absolute = round(volume - reference, 3)
    relative = round(absolute / reference, 4) if reference >= MIN_REFERENCE_ML else None
    return Change(reference_ml=reference, absolute_ml=absolute, relative=relative)


def _changes(entry: TimelineEntry, reference: TimelineEntry) -> dict[str, Change]:
    assert entry.volumes_ml is not None and reference.volumes_ml is not None
    pairs = {r: change(entry.volumes_ml.get(r), reference.volumes_ml.get(r)) for r in TIMELINE_REGIONS}
    return {r: c for r, c in pairs.items() if c is not None}


def _compare(entries: list[TimelineEntry]) -> None:
    """Baseline, nadir, changes and thresholds of the entries of the current model, in date order."""
    compared = [e for e in entries if e.current_model and e.volumes_ml is not None]
    if not compared:
        return
    baseline = compared[0]
    baseline.baseline = True
    for n, entry in enumerate(compared[1:], start=1):
        earlier = compared[:n]
        nadir = min(earlier, key=lambda e: (e.volumes_ml or {}).get("et") or 0.0)
        entry.change_from_baseline = _changes(entry, baseline)
        entry.nadir_study_instance_uid = nadir.study_instance_uid
        entry.change_from_nadir = _changes(entry, nadir)
        grown = entry.change_from_nadir.get("et")
        shrunk = entry.change_from_baseline.get("et")
        entry.progression_threshold_crossed = bool(
            grown and grown.relative is not None and grown.relative >= PROGRESSION
        )
        entry.response_threshold_crossed = bool(
            shrunk and shrunk.relative is not None and shrunk.relative <= RESPONSE
        )
        said = []
        if entry.progression_threshold_crossed and grown and grown.relative is not None:
            said.append(
                f"the enhancing tumour volume is {grown.relative:+.0%} from the nadir ({nadir.study_date or 'undated'}), "
                f"beyond the +{PROGRESSION:.0%} volumetric threshold"
            )
        if entry.response_threshold_crossed and shrunk and shrunk.relative is not None:
            said.append(
                f"the enhancing tumour volume is {shrunk.relative:+.0%} from the baseline "
                f"({baseline.study_date or 'undated'}), beyond the {RESPONSE:.0%} volumetric threshold"
            )
        if said:
            entry.note = "; ".join(said).capitalize() + ". " + RESEARCH_NOTE


def segment_history(
    pacs: Pacs, jobs: Jobs, results: ResultStore, patient_id: str, model: ModelTag, model_tag: str
) -> HistoryAnswer:
    """Queue a job for every study of ``patient_id`` that has images and no result of the current model,
    with the auto-trigger's request and key, so neither makes a job the other made."""
    timeline = build_timeline(pacs, jobs.store, results, patient_id, model)
    infos = {s.study_instance_uid: s for s in _studies(pacs, patient_id)}
    answer = []
    for entry in timeline.studies:
        uid = entry.study_instance_uid
        if entry.current_model:
            answer.append(HistoryStudy(study_instance_uid=uid, action="has_result", job_id=entry.job_id))
            continue
        try:
            version = pacs.images_version(infos[uid])  # as the auto-trigger keys it
        except PacsNotFound:  # deleted meanwhile
            version = None
        if version is None:
            answer.append(HistoryStudy(study_instance_uid=uid, action="not_usable"))
            continue
        request = JobRequest(patient_id=patient_id, study=uid, store_seg=True)
        key = job_key(uid, version, model_tag, request)
        if jobs.store.has_key(key):
            answer.append(HistoryStudy(study_instance_uid=uid, action="has_job", job_id=entry.job_id))
            continue
        job = jobs.submit(request, origin="auto", key=key)
        answer.append(HistoryStudy(study_instance_uid=uid, action="queued", job_id=job.job_id))
    return HistoryAnswer(patient_id=patient_id, studies=answer)


TABLE_COLUMNS = (
    "date",
    "study",
    "status",
    "model",
    "ET mL",
    "TC mL",
    "WT mL",
    "ET vs baseline",
    "ET vs nadir",
    "flag",
)


def table_rows(timeline: Timeline) -> list[tuple[str, ...]]:
    """The timeline as rows of ``TABLE_COLUMNS`` (text), what ``tumorseg timeline`` prints."""

    def ml(entry: TimelineEntry, region: str) -> str:
        value = (entry.volumes_ml or {}).get(region)
        return "" if value is None else f"{value:.2f}"

    def versus(changes: dict[str, Change] | None) -> str:
        c = (changes or {}).get("et")
        if c is None:
            return ""
        return f"{c.absolute_ml:+.2f} mL" + (f" ({c.relative:+.0%})" if c.relative is not None else "")

    rows: list[tuple[str, ...]] = []
    for e in timeline.studies:
        model = (
            f"{e.model.name} {e.model.version}" + ("" if e.current_model else " (other)") if e.model else ""
        )
        flag = " ".join(
            f
            for f, on in (
                ("+40% from nadir", e.progression_threshold_crossed),
                ("-65% from baseline", e.response_threshold_crossed),
            )
            if on
        ) or ("baseline" if e.baseline else "")
        rows.append(
            (
                e.study_date or "",
                e.study_instance_uid,
                e.status if e.reason is None else f"{e.status}: {e.reason}",
                model,
                ml(e, "et"),
                ml(e, "tc"),
                ml(e, "wt"),
                versus(e.change_from_baseline),
                versus(e.change_from_nadir),
                flag,
            )
        )
    return rows
