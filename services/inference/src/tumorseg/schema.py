"""The result JSON (docs/contract.md "Result JSON") as one pydantic model, ``SegmentResult``.

It is the one shape of a result everywhere: the pipeline builds it, ``ResultStore`` writes and reads it,
the API returns it (and OpenAPI documents it), the CLI writes it to ``result.json``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tumorseg.labels import LABEL_NAMES
from tumorseg.sequences import SequenceName


class SeriesRef(BaseModel):
    series_instance_uid: str
    series_description: str
    orthanc_id: str | None = Field(default=None, description="Orthanc's series id; null over DICOMweb")


class ReferenceRef(BaseModel):
    modality: SequenceName
    series_instance_uid: str


class VolumesMl(BaseModel):
    et: float
    tc: float
    wt: float
    ncr: float | None = Field(default=None, description="necrotic core (label 1); null in older results")
    ed: float | None = Field(default=None, description="oedema (label 2); null in older results")


class DicomSegRef(BaseModel):
    series_instance_uid: str
    sop_instance_uid: str
    orthanc_id: str | None = Field(default=None, description="Orthanc's instance id; null over DICOMweb")


class DicomSrRef(BaseModel):
    """The DICOM SR (TID 1500 volumetry report) stored next to the SEG, and the SEG instance it measures."""

    series_instance_uid: str
    sop_instance_uid: str
    seg_sop_instance_uid: str
    orthanc_id: str | None = Field(default=None, description="Orthanc's instance id; null over DICOMweb")


class Timings(BaseModel):
    fetch: float
    load: float
    registration: float = 0.0  # results stored before the clinical-input stages have neither
    brain_extraction: float = 0.0
    bias_correction: float = 0.0  # only for a package (or its fallback) that corrects the bias field
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
        description="false when the series was already in register (identity kept) or the registration "
        "failed (see failed and warnings)"
    )
    via: SequenceName | None = Field(
        default=None, description="the hub series the transform was composed through, if any"
    )
    matrix: list[list[float]] | None = Field(
        default=None,
        description="4x4 matrix of the transform applied (its centre of rotation folded in): maps a point of "
        "the reference series (LPS mm, homogeneous) to the same anatomy in this series; identity when not "
        "applied (null in results stored before it existed)",
    )
    overlap: float | None = Field(
        default=None, description="head masks' Dice after the transform, within the fields of view both cover"
    )
    coverage: float | None = Field(
        default=None,
        description="share of the reference's cranium (its head's top 150 mm) inside this series' field of view",
    )
    failed: bool = Field(
        default=False,
        description="the registration failed (see warnings): the series was not used, treated as missing",
    )


class Registration(BaseModel):
    enabled: bool
    series: dict[SequenceName, SeriesRegistration] = Field(
        description="every series but the reference, registered to it"
    )


class BrainExtractionRef(BaseModel):
    method: Literal["deepbet", "stripped-input", "none"] = Field(
        description="deepbet: extracted; stripped-input: the input was already skull-stripped (its non-zero "
        "voxels are the brain); none: no extraction (TUMORSEG_BRAIN_EXTRACTOR=none)"
    )
    series: str | None = Field(default=None, description="the series the extraction ran on")
    volume_ml: float | None = Field(default=None, description="volume of the extracted brain, mL")


class MaskGeometry(BaseModel):
    """The mask's lattice, which is the reference series' lattice (LPS, SimpleITK's order)."""

    shape: list[int] = Field(description="voxels along i (columns), j (rows), k (slices)")
    spacing: list[float] = Field(description="mm along i, j, k")
    origin: list[float] = Field(description="centre of voxel (0, 0, 0), LPS mm")
    direction: list[float] = Field(description="direction cosines of i, j, k as columns, row-major 3x3, LPS")


class ModelRef(BaseModel):
    name: str
    version: str
    backend: Literal["monai-unet", "monai-bundle", "nnunet-v2"] = Field(
        "monai-unet",
        description="what runs the network: tumorseg's own MONAI UNet, an imported MONAI bundle or nnU-Net v2",
    )
    provenance: dict[str, Any] = Field(
        default_factory=dict,
        description="where an imported model came from (bundle name and version; nnU-Net dataset, trainer, "
        "plans, configuration, folds, checkpoint)",
    )
    network: Literal["main", "fallback"] = Field(
        "main",
        description="the package's network that segmented the study: 'fallback' (trained to do without the "
        "optional sequences) when the study lacks one and the package has such a network",
    )


class SegmentResult(BaseModel):
    """The result JSON: built by the pipeline, persisted by the result store, returned by the API
    (``POST /segment``, ``GET /results/{id}``) and written by ``tumorseg segment``. Every key it has is
    declared here (``extra="forbid"``), so the OpenAPI document shows the whole JSON. Keys added after
    results were first stored have defaults, so those results still read back."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    result_id: str
    patient_id: str
    study_instance_uid: str
    series: dict[SequenceName, SeriesRef] = Field(description="the series used, by sequence")
    missing_sequences: list[SequenceName] = Field(
        default_factory=list,
        description="sequences the study lacked and the model did without (a line in warnings says so)",
    )
    reference: ReferenceRef
    labels: dict[str, str] = Field(default_factory=lambda: dict(LABEL_NAMES))
    volumes_ml: VolumesMl
    mask_url: str
    preview_url: str | None = None
    reference_url: str | None = Field(
        default=None, description="the reference series as NIfTI on the mask's lattice (the viewer's image)"
    )
    viewer_url: str | None = Field(
        default=None, description="an HTML page showing the mask over the reference series (NiiVue)"
    )
    dicom_seg: DicomSegRef | None = None
    dicom_sr: DicomSrRef | None = Field(
        default=None, description="the DICOM SR of the volumes, stored next to the SEG (null without a SEG)"
    )
    registration: Registration = Field(default_factory=lambda: Registration(enabled=False, series={}))
    brain_extraction: BrainExtractionRef | None = None  # None: a result stored before the stage existed
    warnings: list[str] = Field(
        default_factory=list, description="what a reader should check (e.g. an implausible registration)"
    )
    mask: MaskGeometry | None = None  # None: a result stored before the key existed
    model: ModelRef | None = None
    mapping_notes: list[str] = Field(
        default_factory=list, description="how the series mapping was decided where it was not obvious"
    )
    created_at: str | None = Field(default=None, description="ISO 8601, UTC, seconds")
    tumorseg_version: str | None = None
    timings_s: Timings


JobState = Literal["queued", "running", "done", "failed", "skipped"]
JobOrigin = Literal["api", "auto", "segment"]
"""Who asked: ``POST /jobs`` (api), the auto-trigger (auto), or ``POST /segment`` waiting for it (segment)."""


class JobRequest(BaseModel):
    """What a job segments: the body of ``POST /jobs`` (the query parameters of ``POST /segment``)."""

    model_config = ConfigDict(extra="forbid")

    patient_id: str = Field(description="DICOM PatientID (0010,0020)")
    study: str | None = Field(default=None, description="StudyInstanceUID; default: newest complete study")
    reference: SequenceName = Field(default="flair", description="the series whose lattice the mask lies on")
    store_seg: bool = Field(default=False, description="also store a DICOM SEG in the study")
    registration: bool | None = Field(
        default=None, description="co-register the series to the reference (default TUMORSEG_REGISTRATION)"
    )
    wait: bool = Field(
        default=True,
        description="a study Orthanc has not marked stable yet: wait for it (up to TUMORSEG_STABLE_WAIT_S) "
        "instead of failing with study_incomplete",
    )
    series: dict[SequenceName, str] | None = Field(
        default=None, description="SeriesInstanceUIDs to use instead of the automatic mapping, by sequence"
    )


class Job(BaseModel):
    """One job as ``GET /jobs/{job_id}`` returns it."""

    job_id: str
    state: JobState
    stage: str | None = Field(default=None, description="the pipeline stage a running job is in")
    origin: JobOrigin
    request: JobRequest
    patient_id: str
    study_instance_uid: str | None = Field(default=None, description="the study segmented, once known")
    result_id: str = Field(description="given when the job is created; the result exists once it is done")
    result_url: str | None = None
    code: str | None = Field(default=None, description="the error code when failed or skipped")
    reason: str | None = Field(default=None, description="why it failed or was skipped")
    attempts: int = 0
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


class ResultSummary(BaseModel):
    """One line of ``GET /results``: what the results page lists."""

    result_id: str
    patient_id: str
    study_instance_uid: str
    reference: ReferenceRef
    volumes_ml: VolumesMl
    model: ModelRef | None = None
    created_at: str | None = None
    preview_url: str | None = None
    viewer_url: str | None = None
    result_url: str


class ResultPage(BaseModel):
    results: list[ResultSummary] = Field(description="newest first")
    total: int = Field(description="how many results the store holds")
    limit: int
    offset: int


class JobPage(BaseModel):
    jobs: list[Job]
    total: int = Field(description="how many jobs match the filters in all")
    limit: int
    offset: int
