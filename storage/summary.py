"""One patient's follow-up summary: the data behind every form of the report.

:func:`patient_summary` gathers the patient, the time points (each with its
registration and RANO-BM response) and the lesion tracks (one observation per
time point).  ``ai-node followup report|plot|export``, ``ai-node web`` and the
worker's Encapsulated PDF (``outputs: [report]``) all render this one dict.
"""

from __future__ import annotations

from typing import Any

from storage import rano, tracking
from storage.followup import Patient


def patient_summary(patient_id: str, retrack: bool = True) -> dict[str, Any] | None:
    """Patient, time points (registration, RANO-BM response) and tracks; None if unknown.

    ``retrack=False`` (``ai-node web``, the worker) never writes: a patient recorded before
    tracking existed has no tracks until a run or ``ai-node followup export|report`` tracks them.
    """
    patient = Patient.get_or_none(Patient.patient_id == patient_id)
    if patient is None:
        return None
    if retrack and not (
        tracking.LesionTrack.select().where(tracking.LesionTrack.patient == patient).exists()
    ):
        tracking.retrack_patient(patient)  # runs recorded before tracking existed
        rano.assess_patient(patient)
    summary = tracking.patient_tracks(patient)
    responses = rano.patient_responses(patient)
    for point in summary["time_points"]:
        point["response"] = responses.get(point["run_id"])
    summary["patient"] = {
        "patient_id": patient.patient_id,
        "patient_name": patient.patient_name,
        "birth_date": patient.birth_date,
        "sex": patient.sex,
    }
    return summary
