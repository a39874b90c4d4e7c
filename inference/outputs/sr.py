"""TID 1500 Measurement Report of the lesions, written with highdicom.

One volumetric measurement group (TID 1411) per lesion, tracked as "Lesion n"
(the RT-Struct ROI / SEG segment of the same number), referencing its SEG
segment and, through it, the source images, with:

- Volume (SCT 118565006), mm3;
- Long axis (SCT 103339001): the longest diameter in the axial plane (RANO-BM);
- Short axis (SCT 103340004): the longest diameter perpendicular to it;
- Diameter (SCT 81827009) derived as Maximum (SCT 56851009): the largest 3D diameter.

The algorithm (model name, version, weights SHA-256) is identified in every
group.  With no lesion, the report holds one TID 1501 group "NO LESION FOUND"
whose qualitative evaluation is Lesion (SCT 52988006) = Absent (SCT 2667000),
its image library lists the source images, and its
SeriesDescription ends in "NO LESION FOUND".
"""

from __future__ import annotations

import logging
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from inference.outputs.provenance import (
    MANUFACTURER,
    apply_equipment,
    lesions_by_size,
    series_description,
)
from inference.types import Lesion, SegmentationResult

LOGGER = logging.getLogger(__name__)

SERIES_NUMBER = 9003
MR_BRAIN = Code("24590-2", "LN", "MR Brain")
MAXIMUM = Code("56851009", "SCT", "Maximum")
ABSENT = Code("2667000", "SCT", "Absent")


def build_sr(
    result: SegmentationResult, source_images: list[Dataset], seg: Dataset | None
) -> hd.sr.Comprehensive3DSR:
    """The measurement report of ``result``; ``seg`` is required when there are lesions."""
    provenance = result.provenance
    ranked = lesions_by_size(result)
    if ranked and seg is None:
        raise ValueError("an SR of lesions references their SEG segments: build the SEG first")
    algorithm = hd.sr.AlgorithmIdentification(
        name=provenance.name[:64],
        version=provenance.version[:64],
        parameters=[f"weights_sha256={provenance.weights_sha256}"],
    )
    groups: list[Any] = [
        _lesion_group(lesion, rank, seg, algorithm)  # type: ignore[arg-type]
        for rank, lesion in enumerate(ranked, start=1)
    ] or [_no_lesion_group(algorithm)]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(),
            name=provenance.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{provenance.name} {provenance.version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=MR_BRAIN,
        imaging_measurements=groups,
        referenced_images=None if ranked else source_images,
    )
    evidence = [*source_images, *([seg] if seg is not None else [])]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description(provenance, "SR", len(ranked)),
    )
    apply_equipment(sr, provenance)
    return sr


def _lesion_group(
    lesion: Lesion, rank: int, seg: Dataset, algorithm: hd.sr.AlgorithmIdentification
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    mm, mm3 = codes.UCUM.Millimeter, codes.UCUM.CubicMillimeter
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=lesion.volume_mm3,
            unit=mm3,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=codes.SCT.LongAxis,
            value=lesion.longest_axial_diameter_mm,
            unit=mm,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=codes.SCT.ShortAxis,
            value=lesion.perpendicular_axial_diameter_mm,
            unit=mm,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=codes.SCT.Diameter,
            value=lesion.longest_3d_diameter_mm,
            unit=mm,
            derivation=MAXIMUM,
            algorithm_id=algorithm,
        ),
    ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"Lesion {rank}"
        ),
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, segment_number=rank),
        finding_type=codes.SCT.Lesion,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _no_lesion_group(
    algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The explicit "no lesion" answer for the whole series: Lesion = Absent."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier="NO LESION FOUND"
        ),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.SCT.Lesion, value=ABSENT)],
    )
