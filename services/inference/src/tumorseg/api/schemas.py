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
    registration: float = 0.0  # results stored before the clinical-input stages have neither
    brain_extraction: float = 0.0
    preprocess: float
    inference: float
    postprocess: float
    export: float
    total: float


class SeriesRegistration(BaseModel):
    rotation_deg: float = Field(description="rotation angle of the rigid transform found, degrees")
    translation_mm: float = Field(description="how far it moves the centre of the reference head, mm")
    angles_deg: list[float] = Field(description="Euler angles about x, y, z (LPS), degrees")
    offset_mm: list[float] = Field(description="translation (LPS), mm")
    metric: float = Field(description="Mattes mutual information at the solution (negative; lower is better)")
    metric_initial: float = Field(description="the same in the scanner's geometry, before registration")
    iterations: int
    applied: bool = Field(
        description="false when the series was already in register (identity kept) or the solution was "
        "implausible (see warnings)"
    )
    via: Literal["flair", "t1", "t1ce", "t2"] | None = Field(
        default=None, description="the hub series the transform was composed through, if any"
    )


class Registration(BaseModel):
    enabled: bool
    series: dict[Literal["flair", "t1", "t1ce", "t2"], SeriesRegistration] = Field(
        description="every series but the reference, registered to it"
    )


class BrainExtractionRef(BaseModel):
    method: Literal["deepbet", "stripped-input", "none"] = Field(
        description="deepbet: extracted; stripped-input: the input was already skull-stripped (its non-zero "
        "voxels are the brain); none: no extraction (TUMORSEG_BRAIN_EXTRACTOR=none)"
    )
    series: str | None = Field(default=None, description="the series the extraction ran on")
    volume_ml: float | None = Field(default=None, description="volume of the extracted brain, mL")


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
    registration: Registration = Field(default_factory=lambda: Registration(enabled=False, series={}))
    brain_extraction: BrainExtractionRef | None = None  # None: a result stored before the stage existed
    warnings: list[str] = Field(
        default_factory=list, description="what a reader should check (e.g. an implausible registration)"
    )
    timings_s: Timings
