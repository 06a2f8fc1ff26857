"""``GET /patients/{patient_id}/timeline`` (the studies over time, volumes and change) and ``POST
/patients/{patient_id}/timeline/segment`` (queue the history's studies that have no result yet)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from tumorseg.api.deps import AppState, StateDep
from tumorseg.api.schemas import ERROR_RESPONSES
from tumorseg.api.urls import linked_timeline
from tumorseg.errors import ModelError
from tumorseg.export.dicom_seg import algorithm_tag
from tumorseg.timeline import HistoryAnswer, ModelTag, Timeline, build_timeline, segment_history
from tumorseg.validation import check_patient_id

router = APIRouter(tags=["timeline"])

PatientId = Annotated[str, Path(description="the DICOM PatientID, exactly")]


def _model(state: AppState) -> ModelTag:
    if state.model.version is None:
        raise ModelError(state.model_error or "no model is loaded: the current model's results are unknown")
    return ModelTag(name=state.model.name, version=state.model.version)


@router.get("/patients/{patient_id}/timeline", response_model=Timeline, responses=ERROR_RESPONSES)
def get_timeline(state: StateDep, patient_id: PatientId) -> Timeline:
    """The patient's studies, oldest first, each with its result (or why none), volumes, and the change
    against the baseline and the nadir (results of the current model only). Research use only."""
    check_patient_id(patient_id)
    timeline = build_timeline(state.pacs, state.job_runner().store, state.store, patient_id, _model(state))
    return linked_timeline(timeline)


@router.post(
    "/patients/{patient_id}/timeline/segment",
    status_code=202,
    response_model=HistoryAnswer,
    responses=ERROR_RESPONSES,
)
def segment_timeline(state: StateDep, patient_id: PatientId) -> HistoryAnswer:
    """Queue a job (storing SEG and SR) for every study of the patient with images and no result of the
    current model, with the auto-trigger's job keys: a study either has queued once, never twice."""
    check_patient_id(patient_id)
    model = _model(state)
    return segment_history(
        state.pacs,
        state.job_runner(),
        state.store,
        patient_id,
        model,
        algorithm_tag(model.name, model.version),
    )
