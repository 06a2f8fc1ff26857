"""Response bodies of the HTTP API, exactly the shapes of CONTRACT.md."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str
    code: str


class OrthancHealth(BaseModel):
    reachable: bool
    version: str | None


class ModelHealth(BaseModel):
    name: str
    loaded: bool


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    orthanc: OrthancHealth
    model: ModelHealth
    device: Literal["cpu", "cuda"]


class SeriesRef(BaseModel):
    series_instance_uid: str
    series_description: str
    orthanc_id: str


class ReferenceRef(BaseModel):
    modality: Literal["flair", "t1", "t1ce", "t2"]
    series_instance_uid: str


class VolumesMl(BaseModel):
    et: float
    tc: float
    wt: float


class DicomSegRef(BaseModel):
    series_instance_uid: str
    sop_instance_uid: str
    orthanc_id: str


class Timings(BaseModel):
    fetch: float
    load: float
    preprocess: float
    inference: float
    postprocess: float
    export: float
    total: float


BRATS_LABELS = {"1": "necrotic tumor core", "2": "peritumoral edema", "4": "enhancing tumor"}


class SegmentResult(BaseModel):
    result_id: str
    patient_id: str
    study_instance_uid: str
    series: dict[Literal["flair", "t1", "t1ce", "t2"], SeriesRef]
    reference: ReferenceRef
    labels: dict[str, str] = Field(default_factory=lambda: dict(BRATS_LABELS))
    volumes_ml: VolumesMl
    mask_url: str
    preview_url: str | None = None
    dicom_seg: DicomSegRef | None = None
    timings_s: Timings
