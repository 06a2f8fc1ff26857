"""Assemble a study for segmentation: find the patient's studies in the PACS, choose one, map its series.

Contract: ``assemble(pacs, patient_id, study_instance_uid=None, explicit=None, rules=None)`` returns an
``AssembledStudy`` (the chosen ``StudyInfo`` and a complete ``SeriesMapping``) or raises what
``tumorseg.study.choose`` documents (``PatientNotFound``, ``StudyNotFound``, ``ModalityMissing``,
``AmbiguousSeries``), ``InvalidInput`` for an empty PatientID or a malformed explicit mapping, and the
PACS client's own ``PacsError``s unchanged.

I/O is limited to two calls of the ``StudySource`` protocol (``tumorseg.pacs.Pacs`` satisfies
it): ``find_studies`` once, then ``list_series`` per study, newest first, stopping at the first complete
study — or only for the named study when ``study_instance_uid`` is given — since listing a study costs
one request per series.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from tumorseg.errors import InvalidInput
from tumorseg.records import SeriesInfo, StudyInfo
from tumorseg.sequences import ALL_FOUR, InputPolicy
from tumorseg.study.choose import AssembledStudy, choose_from
from tumorseg.study.rules import Rules

__all__ = ["AssembledStudy", "StudySource", "assemble"]


class StudySource(Protocol):
    """What assembly needs from the PACS (``OrthancClient`` has it; tests pass a fake)."""

    def find_studies(self, patient_id: str) -> Sequence[StudyInfo]: ...

    def list_series(self, study_id: str) -> Sequence[SeriesInfo]: ...


def assemble(
    pacs: StudySource,
    patient_id: str,
    study_instance_uid: str | None = None,
    explicit: Mapping[str, str] | None = None,
    rules: Rules | Path | None = None,
    policy: InputPolicy = ALL_FOUR,
) -> AssembledStudy:
    """The study to segment and its FLAIR/T1/T1ce/T2 series, those the model needs at least (``policy``;
    see the module docstring)."""
    if not patient_id or not patient_id.strip():
        # An empty PatientID would be universal matching in a DICOM query.
        raise InvalidInput("the PatientID is empty")
    studies = list(pacs.find_studies(patient_id))
    return choose_from(
        patient_id,
        studies,
        lambda study: pacs.list_series(study.key),
        study_instance_uid=study_instance_uid,
        explicit=explicit,
        rules=rules,
        policy=policy,
    )
