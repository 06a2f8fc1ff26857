"""What ``tumorseg inspect`` reports: Orthanc, the patient, the studies, and the mapping ``segment`` would use.

Returns plain JSON-able data. The patient block holds the name and birth date for the person at the
terminal; nothing here logs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tumorseg.errors import PacsError, StudyError
from tumorseg.pacs import Pacs
from tumorseg.sequences import ALL_FOUR, InputPolicy
from tumorseg.study.assemble import assemble
from tumorseg.study.choose import newest_first
from tumorseg.study.mapping import propose_mapping


def inspect_patient(
    pacs: Pacs,
    patient_id: str,
    *,
    study_instance_uid: str | None = None,
    rules: Path | None = None,
    policy: InputPolicy = ALL_FOUR,
) -> dict[str, Any]:
    """``policy``: the sequences the model package needs (its ``inputs``), as ``segment`` would apply."""
    report: dict[str, Any] = {"patient_id": patient_id}
    try:
        version = pacs.version()
        report["orthanc"] = {
            "url": pacs.url,
            "protocol": pacs.protocol,
            "reachable": True,
            "version": version,
        }
    except PacsError as exc:
        report["orthanc"] = {
            "url": pacs.url,
            "protocol": pacs.protocol,
            "reachable": False,
            "version": None,
            "error": exc.detail,
        }
        return report

    studies = newest_first(pacs.find_studies(patient_id))
    if studies:
        patient = pacs.patient_of_study(studies[0].key)
        report["patient"] = {
            "patient_name": patient.patient_name,
            "patient_birth_date": patient.patient_birth_date,
            "patient_sex": patient.patient_sex,
        }
    report["studies"] = []
    for study in studies:
        proposal = propose_mapping(pacs.list_series(study.key), rules=rules)
        report["studies"].append(
            {
                "study_instance_uid": study.study_instance_uid,
                "study_date": study.study_date,
                "study_description": study.study_description,
                "series_count": study.series_count,
                "complete": proposal.complete,
                "usable": proposal.usable(policy),
                "mapping": proposal.to_json(),
            }
        )
    try:
        chosen = assemble(pacs, patient_id, study_instance_uid, rules=rules, policy=policy)
    except StudyError as exc:
        report["error"] = {"code": exc.code, "detail": exc.detail}
    else:
        report.update(chosen.to_json())
    return report
