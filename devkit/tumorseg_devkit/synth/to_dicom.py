"""A BraTS 2021 case folder as DICOM: four MR series (FLAIR, T1, T1ce, T2) in one study.

Input: ``CASE_DIR/<case>_{flair,t1,t1ce,t2}.nii.gz`` (``.nii`` too; ``seg`` ignored), any affine
with orthogonal voxel axes, any numeric dtype. NIfTI arrays are ``data[i, j, k]`` with an RAS
affine; they are turned into LPS once, on loading (:mod:`tumorseg_devkit.synth.dicom_geometry`).

Output (``OUT``)::

    OUT/manifest.json                          what was written (ground truth for mapping tests)
    OUT/study-1/<SeriesNumber>_<slug>/IM_NNNN.dcm   the current study (NNNN = InstanceNumber)
    OUT/study-2/...                            the prior study, when asked for

Each series is MR Image Storage, one instance per slice, all series of a study sharing one
FrameOfReferenceUID. By default every series keeps the source lattice exactly (same voxel centres,
intensities bit for bit for integer sources): ``dcm2niix`` on a series gives back the source volume
up to a permutation/flip of axes. Geometry options (plane, tilt, spacing, slice order) simulate
other acquisitions; see :class:`SeriesGeometry`. UIDs are derived from the PatientID, the case name,
a digest of the voxel data and every option, so converting the same input again rewrites identical
files (idempotent upload) while any change gives new UIDs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from datetime import date
from datetime import time as dtime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tumorseg.errors import InvalidInput
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.dicom_decoys import LOCALIZER_THICKNESS_MM, Stack, diffusion, localizer
from tumorseg_devkit.synth.dicom_geometry import (
    Lattice,
    Plane,
    SeriesGeometry,
    SourceVolume,
    plan_lattice,
    sample,
)
from tumorseg_devkit.synth.dicom_options import ConversionOptions
from tumorseg_devkit.synth.dicom_profiles import DECOY_KINDS, PROFILES, SERIES_NUMBERS
from tumorseg_devkit.synth.dicom_series import (
    Frame,
    SeriesSpec,
    StudyContext,
    derive_uid,
    quantise,
    write_series,
)

__all__ = [
    "DECOY_KINDS",
    "ConversionOptions",
    "ConvertedSeries",
    "ConvertedStudy",
    "SeriesGeometry",
    "WrittenStudy",
    "convert_case",
    "find_case_files",
]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
_UID_NAMESPACE = "tumorseg_devkit.synth.to_dicom/1"
# Minutes after the study start at which each series begins (a plausible exam timeline).
_MINUTES = {"localizer": 0.0, "t2": 1.5, "flair": 5.0, "dwi": 9.0, "adc": 9.0, "t1": 11.0, "t1ce": 22.0}


@dataclass(frozen=True)
class ConvertedSeries:
    """One written series. ``key``: flair|t1|t1ce|t2, or a decoy kind localizer|dwi|adc."""

    key: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int
    series_description: str
    n_files: int
    folder: Path

    @property
    def is_decoy(self) -> bool:
        return self.key in DECOY_KINDS


@dataclass(frozen=True)
class WrittenStudy:
    study_instance_uid: str
    study_date: date
    accession_number: str
    frame_of_reference_uid: str
    folder: Path
    is_prior: bool
    series: tuple[ConvertedSeries, ...]


@dataclass(frozen=True)
class ConvertedStudy:
    """What :func:`convert_case` wrote: ``studies[0]`` is the current study, ``studies[1]`` the prior."""

    patient_id: str
    case_id: str
    out: Path
    manifest: Path
    studies: tuple[WrittenStudy, ...]

    @property
    def study_instance_uid(self) -> str:
        return self.studies[0].study_instance_uid

    @property
    def series(self) -> tuple[ConvertedSeries, ...]:
        return tuple(s for study in self.studies for s in study.series)

    def get(self, key: str, *, prior: bool = False) -> ConvertedSeries:
        """The series ``key`` of the current (or the prior) study."""
        study = self.studies[1 if prior else 0]
        for series in study.series:
            if series.key == key:
                return series
        raise KeyError(key)


def find_case_files(case_dir: Path) -> dict[str, Path]:
    """The four modality files of a BraTS-layout case folder, by modality key."""
    if not case_dir.is_dir():
        raise InvalidInput(f"{case_dir} is not a folder")
    found: dict[str, Path] = {}
    for key in SEQUENCES:
        matches = sorted(
            p for ext in (".nii.gz", ".nii") for p in case_dir.glob(f"*_{key}{ext}") if p.is_file()
        )
        preferred = [p for p in matches if p.name.startswith(f"{case_dir.name}_")]
        matches = preferred or matches
        if len(matches) != 1:
            what = "no file" if not matches else f"{len(matches)} files"
            raise InvalidInput(f"{case_dir}: {what} matching *_{key}.nii.gz (BraTS layout expected)")
        found[key] = matches[0]
    return found


def load_source(path: Path) -> SourceVolume:
    """A NIfTI file as ``data[i, j, k]`` (dtype as stored, scaling applied) with its LPS affine."""
    try:
        image = nib.load(path)
        data = np.asanyarray(image.dataobj)  # type: ignore[attr-defined]
        affine = image.affine  # type: ignore[attr-defined]
    except Exception as exc:  # nibabel raises a handful of unrelated types for unreadable files
        raise InvalidInput(f"{path} is not a readable NIfTI file: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return SourceVolume.from_nifti(data, affine)


def convert_case(
    case_dir: Path, patient_id: str, out: Path, options: ConversionOptions | None = None
) -> ConvertedStudy:
    """Write the case as DICOM under ``out`` (see the module doc) and return what was written."""
    options = options or ConversionOptions()
    if not patient_id.strip() or len(patient_id) > 64 or "\\" in patient_id:
        raise InvalidInput("patient id must be 1-64 characters without backslash")
    started = time.perf_counter()
    case_dir, out = Path(case_dir), Path(out)
    case_id = case_dir.name
    sources = {key: load_source(path) for key, path in find_case_files(case_dir).items()}
    digest = _digest(sources)
    options_json = options.to_json()
    seed = (_UID_NAMESPACE, patient_id, case_id, digest, json.dumps(options_json, sort_keys=True))

    out.mkdir(parents=True, exist_ok=True)
    _remove_previous_output(out)
    lattices = {key: plan_lattice(sources[key], options.geometry_for(key)) for key in SEQUENCES}
    samples = {key: sample(sources[key], lattices[key]) for key in SEQUENCES}

    studies = [_write_study(sources, lattices, samples, options, seed, out, patient_id, prior=False)]
    if options.prior_study:
        studies.append(_write_study(sources, lattices, samples, options, seed, out, patient_id, prior=True))
    result = ConvertedStudy(patient_id, case_id, out, out / MANIFEST_NAME, tuple(studies))
    _write_manifest(result, options_json)
    n_files, elapsed = sum(s.n_files for s in result.series), time.perf_counter() - started
    logger.info(
        "wrote %d DICOM files in %d series to %s in %.1f s", n_files, len(result.series), out, elapsed
    )
    return result


def _write_study(
    sources: dict[str, SourceVolume],
    lattices: dict[str, Lattice],
    samples: dict[str, np.ndarray],
    options: ConversionOptions,
    seed: tuple[str, ...],
    out: Path,
    patient_id: str,
    *,
    prior: bool,
) -> WrittenStudy:
    index = 2 if prior else 1
    study_uid = derive_uid(*seed, "study", index)
    study_date = _years_before(options.study_date, 1) if prior else options.study_date
    number = int(hashlib.sha256(study_uid.encode()).hexdigest(), 16)
    ctx = StudyContext(
        patient_id=patient_id,
        patient_name=options.patient_name,
        birth_date=options.birth_date,
        patient_sex=options.patient_sex,
        study_instance_uid=study_uid,
        frame_of_reference_uid=derive_uid(*seed, "frame-of-reference", index),
        study_date=study_date,
        study_time=dtime(14, 5) if prior else dtime(9, 30),
        accession_number=f"TS{number % 10**8:08d}",
        study_id=f"{number % 10**6:06d}",
        study_description="MRI BRAIN WITH AND WITHOUT CONTRAST",
        vendor=options.vendor,
    )
    folder = out / f"study-{index}"
    stacks: dict[str, list[Stack]] = {key: [Stack(lattices[key], samples[key])] for key in SEQUENCES}
    if options.decoys and not prior:
        stacks["localizer"] = localizer(sources["t2"])
        stacks["dwi"], stacks["adc"] = diffusion(sources["t2"], sources["flair"])
    written = []
    for key in sorted(stacks, key=SERIES_NUMBERS.__getitem__):
        written.append(_write_one_series(ctx, key, stacks[key], options, seed, folder))
    return WrittenStudy(
        study_uid, study_date, ctx.accession_number, ctx.frame_of_reference_uid, folder, prior, tuple(written)
    )


def _write_one_series(
    ctx: StudyContext,
    key: str,
    stacks: list[Stack],
    options: ConversionOptions,
    seed: tuple[str, ...],
    folder: Path,
) -> ConvertedSeries:
    profile = PROFILES[options.vendor][key]
    geometry = options.geometry_for(key) if key in SEQUENCES else SeriesGeometry()
    plane: Plane = "axial" if key == "localizer" else geometry.plane
    description = options.descriptions.get(key) or profile.description(
        options.vendor, plane, geometry.tilt_deg
    )
    lattice = stacks[0].lattice
    spec = SeriesSpec(
        key=key,
        profile=profile,
        description=description,
        series_number=SERIES_NUMBERS[key],
        series_instance_uid=derive_uid(*seed, "series", ctx.study_instance_uid, key),
        slice_thickness=LOCALIZER_THICKNESS_MM if key == "localizer" else lattice.spacing[2],
        spacing_between_slices=None if key == "localizer" else lattice.spacing[2],
        minutes_after_start=_MINUTES[key],
    )
    # One rescale for the whole series: viewers and dcm2niix expect it constant across instances.
    stored = quantise(np.concatenate([s.values.reshape(-1) for s in stacks]))
    frames: list[Frame] = []
    offset = 0
    for stack in stacks:
        lat = stack.lattice
        values = stored.values[offset : offset + stack.values.size].reshape(stack.values.shape)
        offset += stack.values.size
        order = range(lat.size[2] - 1, -1, -1) if geometry.reverse_slices else range(lat.size[2])
        for w in order:
            frames.append(
                Frame(
                    pixels=values[w],
                    position=lat.slice_position(w),
                    orientation=lat.image_orientation,
                    pixel_spacing=(lat.spacing[1], lat.spacing[0]),
                    instance_number=len(frames) + 1,
                    extra=stack.extra,
                )
            )
    series_folder = folder / f"{spec.series_number}_{_slug(description)}"
    n_files = write_series(ctx, spec, frames, stored, series_folder, options.transfer_syntax)
    logger.debug("%s: %d files in %s", key, n_files, series_folder)
    return ConvertedSeries(
        key,
        ctx.study_instance_uid,
        spec.series_instance_uid,
        spec.series_number,
        description,
        n_files,
        series_folder,
    )


def _digest(sources: dict[str, SourceVolume]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for key in SEQUENCES:
        src = sources[key]
        h.update(f"{key}|{src.data.dtype.str}|{src.data.shape}|".encode())
        h.update(np.ascontiguousarray(src.affine).tobytes())
        h.update(np.ascontiguousarray(src.data).tobytes())
    return h.hexdigest()


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February -> 28 February
        return day.replace(year=day.year - years, day=28)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")
    return slug[:48] or "series"


def _remove_previous_output(out: Path) -> None:
    """Delete the files a previous conversion listed in OUT's manifest (never anything else)."""
    manifest = out / MANIFEST_NAME
    if not manifest.is_file():
        return
    try:
        previous = json.loads(manifest.read_text())
        folders = [out / s["folder"] for study in previous["studies"] for s in study["series"]]
    except (ValueError, KeyError, TypeError):
        logger.warning("ignoring unreadable %s; files from an earlier conversion may remain", manifest)
        return
    root = out.resolve()
    for folder in folders:
        if not folder.resolve().is_relative_to(root) or not folder.is_dir():
            continue
        for path in folder.glob("IM_*.dcm"):
            path.unlink()
        if not any(folder.iterdir()):
            folder.rmdir()


def _write_manifest(result: ConvertedStudy, options_json: dict[str, Any]) -> None:
    def rel(path: Path) -> str:
        return path.relative_to(result.out).as_posix()

    document = {
        "patient_id": result.patient_id,
        "case_id": result.case_id,
        "options": options_json,
        "studies": [
            {
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date.strftime("%Y%m%d"),
                "accession_number": study.accession_number,
                "frame_of_reference_uid": study.frame_of_reference_uid,
                "is_prior": study.is_prior,
                "folder": rel(study.folder),
                "series": [
                    {
                        "key": s.key,
                        "is_decoy": s.is_decoy,
                        "series_instance_uid": s.series_instance_uid,
                        "series_number": s.series_number,
                        "series_description": s.series_description,
                        "n_files": s.n_files,
                        "folder": rel(s.folder),
                    }
                    for s in study.series
                ],
            }
            for study in result.studies
        ],
    }
    result.manifest.write_text(json.dumps(document, indent=2) + "\n")
