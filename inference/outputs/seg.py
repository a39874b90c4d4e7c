"""DICOM Segmentation of the lesions, written with highdicom.

One segment per lesion, segment ``n`` being "Lesion n" of the RT-Struct (largest
first), BINARY, derived from the source images (each frame of the SEG points at
its source image or source frame).  A series with no lesion gets no SEG: a
segmentation needs at least one segment; the RT-Struct and the SR say
"NO LESION FOUND" instead.

Frames that hold no lesion are left out (highdicom's default) unless
``dicom.seg_keep_empty_frames`` is set: then every source frame has a frame per
segment, which viewers that place overlays by frame index (OHIF) need.
``ContentDescription`` is the short disclaimer and model (whole words, 64
characters); the long one is in the contributing equipment's description.
"""

from __future__ import annotations

import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from config.errors import InferenceError
from inference.outputs.provenance import (
    MANUFACTURER,
    OutputOptions,
    apply_equipment,
    lesion_colour,
    lesions_by_size,
    new_uid,
    series_description,
    short_disclaimer,
    software_versions,
)
from inference.types import SegmentationResult

LOGGER = logging.getLogger(__name__)

SERIES_NUMBER = 9002


def build_seg(
    result: SegmentationResult, source_images: list[Dataset], options: OutputOptions | None = None
) -> hd.seg.Segmentation:
    """The Segmentation of ``result``; raises :class:`InferenceError` when there is no lesion."""
    options = (options or OutputOptions()).for_model(result.provenance)
    ranked = lesions_by_size(result)
    if not ranked:
        raise InferenceError("a DICOM SEG needs at least one lesion")
    provenance = result.provenance
    algorithm = hd.AlgorithmIdentificationSequence(
        name=provenance.name[:64],
        version=provenance.version[:64],
        family=codes.DCM.ArtificialIntelligence,
        parameters={"weights_sha256": provenance.weights_sha256},
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=rank,
            segment_label=f"Lesion {rank}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[codes.SCT.Brain],
            display_color=hd.color.CIELabColor.from_rgb(*lesion_colour(rank)),
        )
        for rank in range(1, len(ranked) + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=_frames(result, source_images),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=new_uid(options),
        series_number=SERIES_NUMBER,
        sop_instance_uid=new_uid(options),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=provenance.name[:64],
        software_versions=software_versions(provenance)[0],
        device_serial_number=provenance.weights_sha256[:64] or "unknown",
        content_description=short_disclaimer(provenance),
        content_label="AI_METS",
        series_description=series_description(provenance, "SEG", len(ranked)),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=not options.seg_keep_empty_frames,
    )
    apply_equipment(seg, provenance, options)
    return seg


def _frames(result: SegmentationResult, source_images: list[Dataset]) -> np.ndarray:
    """Label map ``(frames, rows, columns)`` in the order of the source images / frames.

    Label value = segment number = the lesion's rank by size.
    """
    ranked = lesions_by_size(result)
    dtype = np.uint8 if len(ranked) < 256 else np.uint16
    relabel = np.zeros(int(result.labels.max()) + 1, dtype=dtype)
    for rank, lesion in enumerate(ranked, start=1):
        relabel[lesion.number] = rank
    labels = relabel[result.labels]  # [i, j, k]
    volume = result.volume
    if len(source_images) == 1 and volume.slices[0].frame_number is not None:
        frames = np.zeros((len(volume.slices), labels.shape[1], labels.shape[0]), dtype)
        for k, source in enumerate(volume.slices):
            frames[int(source.frame_number) - 1] = labels[:, :, k].T  # type: ignore[arg-type]
        return frames
    position = {ds.SOPInstanceUID: index for index, ds in enumerate(source_images)}
    frames = np.zeros((len(source_images), labels.shape[1], labels.shape[0]), dtype)
    for k, source in enumerate(volume.slices):
        frames[position[source.sop_instance_uid]] = labels[:, :, k].T
    return frames
