"""TID 1500 Measurement Report of the lesions, written with highdicom.

One volumetric measurement group (TID 1411) per lesion, tracked as "Lesion n"
(the RT-Struct ROI / SEG segment of the same number), referencing its SEG
segment and, through it, the source images, with:

- Volume (SCT 118565006), mm3;
- Long axis (SCT 103339001): the longest diameter in the axial plane (RANO-BM);
- Short axis (SCT 103340004): the longest diameter perpendicular to it;
- Diameter (SCT 81827009) derived as Maximum (SCT 56851009): the largest 3D diameter;
- Certainty of Finding (DCM 111012) derived as Maximum, in percent: the model's
  peak lesion probability inside the lesion (its confidence), when the pipeline
  gave one; a NUM, so a reader can sort the lesions by it.

The algorithm (model name, version, weights SHA-256) is identified in every
group.  With no lesion, the report holds one TID 1501 group "NO LESION FOUND"
whose qualitative evaluation is Lesion (SCT 52988006) = Absent (SCT 2667000),
its image library lists the source images (single-frame sources; an enhanced
source is in the evidence sequence only), and its
SeriesDescription says "0 lesions".

Unless the model is validated for clinical use, the document itself says so:
the report's Qualitative Evaluations container (TID 1500) holds a TEXT item
Comment (DCM 121106) with the disclaimer, besides the SeriesDescription.  The
observer is the node as a device, with the installation's stable device UID.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from inference.outputs.provenance import (
    MANUFACTURER,
    OutputOptions,
    apply_equipment,
    derived_device_uid,
    lesions_by_size,
    new_uid,
    series_description,
)
from inference.types import Lesion, SegmentationResult

LOGGER = logging.getLogger(__name__)

SERIES_NUMBER = 9003
MR_BRAIN = Code("24590-2", "LN", "MR Brain")
MAXIMUM = Code("56851009", "SCT", "Maximum")
ABSENT = Code("2667000", "SCT", "Absent")
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")


def build_sr(
    result: SegmentationResult,
    source_images: list[Dataset],
    seg: Dataset | None,
    options: OutputOptions | None = None,
    tracks: Mapping[int, tuple[str, str]] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The measurement report of ``result``; ``seg`` is required when there are lesions.

    ``tracks``: lesion rank -> (TrackingUID, label) of the follow-up's lesion tracks, so
    the same lesion has the same Tracking UID and identifier in every study's SR; an
    untracked lesion gets a new UID and "Lesion n".
    """
    options = (options or OutputOptions()).for_model(result.provenance)
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
        _lesion_group(lesion, (rank, (tracks or {}).get(rank)), seg, algorithm, options)  # type: ignore[arg-type]
        for rank, lesion in enumerate(ranked, start=1)
    ] or [_no_lesion_group(algorithm, options)]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=options.device_uid or derived_device_uid(options.uid_root, provenance),
            name=provenance.name[:64],
            manufacturer_name=MANUFACTURER,
            model_name=f"{provenance.name} {provenance.version}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=MR_BRAIN,
        imaging_measurements=groups,
        referenced_images=None if ranked or _multiframe(source_images) else source_images,
    )
    if not provenance.validated_for_clinical_use:
        _add_disclaimer(report, provenance.disclaimer)
    evidence = [*source_images, *([seg] if seg is not None else [])]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=new_uid(options),
        series_number=SERIES_NUMBER,
        sop_instance_uid=new_uid(options),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description=series_description(provenance, "SR", len(ranked)),
    )
    apply_equipment(sr, provenance, options)
    return sr


def _multiframe(images: list[Dataset]) -> bool:
    """highdicom's image library describes single-frame geometry only (TID 1604): an
    enhanced source is referenced by the evidence sequence alone."""
    return any("PerFrameFunctionalGroupsSequence" in image for image in images)


def _add_disclaimer(report: hd.sr.MeasurementReport, disclaimer: str) -> None:
    """TID 1500 row 12: a Qualitative Evaluations container with the disclaimer as a Comment."""
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=codes.DCM.Comment,
                value=disclaimer,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    report[0].ContentSequence.append(container)


def _lesion_group(
    lesion: Lesion,
    ranked: tuple[int, tuple[str, str] | None],
    seg: Dataset,
    algorithm: hd.sr.AlgorithmIdentification,
    options: OutputOptions,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    rank, track = ranked
    uid, identifier = track if track is not None else (new_uid(options), f"Lesion {rank}")
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
    if lesion.peak_probability is not None:
        measurements.append(
            hd.sr.Measurement(
                name=codes.DCM.CertaintyOfFinding,
                value=round(100.0 * lesion.peak_probability, 2),
                unit=codes.UCUM.Percent,
                derivation=MAXIMUM,
                algorithm_id=algorithm,
            )
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=identifier),
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, segment_number=rank),
        finding_type=codes.SCT.Lesion,
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        algorithm_id=algorithm,
        measurements=measurements,
    )


def _no_lesion_group(
    algorithm: hd.sr.AlgorithmIdentification, options: OutputOptions
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The explicit "no lesion" answer for the whole series: Lesion = Absent."""
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=new_uid(options), identifier="NO LESION FOUND"
        ),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Brain)],
        algorithm_id=algorithm,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=codes.SCT.Lesion, value=ABSENT)],
    )
