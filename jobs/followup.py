"""The follow-up stage of a job: record the run, register it to the patient's previous
time point, track the lesions and assess RANO-BM.

The one place that joins the image code (:mod:`inference.registration`,
:func:`inference.volume.load_series`) and the follow-up record
(:mod:`storage.followup`, :mod:`storage.tracking`, :mod:`storage.rano`).  The order:

1. :func:`storage.followup.record_run` stores the run and its lesions;
2. for each pair of consecutive time points of the patient without a current
   registration, both series' volumes are registered (the new run's volume is
   the one in memory; another is loaded from its stored instances), and the
   transform is stored: the **identity** when both series share a Frame of
   Reference and the registration agrees with it within ``AGREE_MM`` over the
   reference volume's box; the **registration** when its correlation reaches
   ``MIN_QUALITY`` and improves on the identity; otherwise the identity marked
   ``unregistered`` with the reason (images gone, too poor a match), so the
   report says so;
3. :func:`storage.tracking.retrack_patient` recomputes the patient's tracks and
   :func:`storage.rano.assess_patient` the responses;
4. the new run's ``ROI number -> (TrackingUID, label)`` is returned for the
   DICOM writers.

Tracking is an addition: a failure in steps 2-4 is logged and the job goes on
with the lesions recorded and the outputs numbered as before.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from common.types import ModelProvenance
from config.errors import NodeError
from inference.registration import Kind, agrees_with_identity, box_corners, register
from inference.types import Lesion, Volume
from inference.volume import load_series
from storage import followup, rano, tracking
from storage.followup import SegmentationRun
from storage.jobs import instance_paths
from storage.models import ReceivedSeries

LOGGER = logging.getLogger(__name__)

AGREE_MM = 2.0
MIN_QUALITY = 0.5

TrackLabels = dict[int, tuple[str, str]]  # ROI number -> (TrackingUID, label)


def record_and_track(
    source: Dataset,
    provenance: ModelProvenance,
    lesions: list[Lesion],
    volume: Volume | None,
    data_dir: Path,
    **run_fields: object,
) -> tuple[SegmentationRun, TrackLabels]:
    """Record the run (errors raise) and track it (errors are logged, labels then empty)."""
    run = followup.record_run(source, provenance, lesions, **run_fields)  # type: ignore[arg-type]
    try:
        return run, track(run, volume, data_dir)
    except (NodeError, OSError, ValueError, RuntimeError) as exc:
        LOGGER.error("follow-up tracking of run %s failed, lesions kept untracked: %s", run.id, exc)
        return run, {}


def track(
    run: SegmentationRun, volume: Volume | None, data_dir: Path, kind: Kind = "rigid"
) -> TrackLabels:
    """Register what needs it, retrack the run's patient, assess; the run's labels."""
    patient = run.series.study.patient
    cache: dict[str, Volume | None] = {}
    if volume is not None:
        cache[volume.series_instance_uid] = volume
    for moving, reference in tracking.registrations_needed(patient):
        register_runs(moving, reference, cache, data_dir, kind)
    tracking.retrack_patient(patient)
    rano.assess_patient(patient)
    return tracking.run_labels(run)


def register_runs(
    moving: SegmentationRun,
    reference: SegmentationRun,
    cache: dict[str, Volume | None],
    data_dir: Path,
    kind: Kind = "rigid",
) -> tracking.RunRegistration:
    """Register two runs' series and store the transform (see the module docstring)."""
    same_frame = bool(moving.series.frame_of_reference_uid) and (
        moving.series.frame_of_reference_uid == reference.series.frame_of_reference_uid
    )
    fixed = _volume(reference.series.series_instance_uid, cache, data_dir)
    mov = _volume(moving.series.series_instance_uid, cache, data_dir)
    if fixed is None or mov is None:
        why = "images of a time point are no longer stored"
        method = tracking.IDENTITY if same_frame else tracking.UNREGISTERED
        return tracking.store_registration(moving, reference, np.eye(4), method, None, why)
    try:
        reg = register(fixed, mov, kind)
    except NodeError as exc:
        method = tracking.IDENTITY if same_frame else tracking.UNREGISTERED
        return tracking.store_registration(moving, reference, np.eye(4), method, None, str(exc))
    corners = box_corners(fixed.array.shape, fixed.affine_lps)
    if same_frame and agrees_with_identity(reg.moving_to_reference, corners, AGREE_MM):
        note = f"same Frame of Reference; registration agrees within {AGREE_MM} mm"
        return tracking.store_registration(
            moving, reference, np.eye(4), tracking.IDENTITY, reg.identity_quality, note
        )
    if reg.quality >= MIN_QUALITY and reg.quality >= reg.identity_quality:
        note = f"correlation {reg.quality:.3f} (identity {reg.identity_quality:.3f})"
        return tracking.store_registration(
            moving, reference, reg.moving_to_reference, reg.kind, reg.quality, note
        )
    note = f"registration unreliable: correlation {reg.quality:.3f}, identity {reg.identity_quality:.3f}"
    LOGGER.warning("run %s to run %s: %s", moving.id, reference.id, note)
    return tracking.store_registration(
        moving, reference, np.eye(4), tracking.UNREGISTERED, reg.quality, note
    )


def _volume(series_uid: str, cache: dict[str, Volume | None], data_dir: Path) -> Volume | None:
    if series_uid not in cache:
        cache[series_uid] = _load(series_uid, data_dir)
    return cache[series_uid]


def _load(series_uid: str, data_dir: Path) -> Volume | None:
    received = ReceivedSeries.get_or_none(ReceivedSeries.series_instance_uid == series_uid)
    if received is None:
        LOGGER.warning("series %s is not stored: registered as unregistered", series_uid)
        return None
    paths = [p for p in instance_paths(received.id, data_dir) if p.is_file()]
    try:
        return load_series(paths)
    except (NodeError, OSError) as exc:
        LOGGER.warning("series %s cannot be loaded for registration: %s", series_uid, exc)
        return None
