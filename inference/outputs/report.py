"""The patient's follow-up report as a DICOM Encapsulated PDF (``outputs: [report]``).

:func:`build_report` wraps the PDF of :func:`inference.outputs.followup_report.report_pdf`
in an Encapsulated PDF Storage instance (1.2.840.10008.5.1.4.1.1.104.1), a new
series (Modality DOC) in the study of the series the job segmented, so the report
reaches the PACS beside that study and a doctor opens it in the viewer they use.

Modules (PS3.3 A.45.1): Patient and General Study (copied from the source
series' header), Encapsulated Document Series, General Equipment and SC
Equipment (the node and the model, as in every output:
:func:`inference.outputs.provenance.apply_equipment`), Encapsulated Document
(DocumentTitle, ConceptNameCodeSequence LOINC 18748-4 "Diagnostic imaging
report", MIMETypeOfEncapsulatedDocument ``application/pdf``, BurnedInAnnotation
``YES`` — the pages name the patient —, ContentDate/Time, AcquisitionDateTime,
the source instances it was derived from, the PDF padded to an even length with
its true length in EncapsulatedDocumentLength) and SOP Common.  Unless the model
is validated for clinical use, SeriesDescription and DocumentTitle say "NOT FOR
DIAGNOSTIC USE", and every page of the PDF carries the disclaimer and the model.
"""

from __future__ import annotations

import datetime
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from inference.outputs.followup_report import report_pdf
from inference.outputs.provenance import (
    NOT_FOR_DIAGNOSTIC_USE,
    OutputOptions,
    apply_equipment,
    in_utf8,
    new_uid,
    series_description,
)
from inference.types import SegmentationResult

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
SERIES_NUMBER = 9004
DOCUMENT_CODE = ("18748-4", "LN", "Diagnostic imaging report")
TITLE = "Brain metastases follow-up (RANO-BM)"

#: Patient and General Study attributes copied from the source (Type 2: empty when absent)
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
_OPTIONAL = ("IssuerOfPatientID", "StudyDescription", "OtherPatientIDsSequence")


def build_report(
    result: SegmentationResult,
    source: Dataset,
    summary: dict[str, Any],
    options: OutputOptions | None = None,
) -> Dataset:
    """The Encapsulated PDF of ``summary`` in the study of ``source`` (a header of the series)."""
    provenance = result.provenance
    options = (options or OutputOptions()).for_model(provenance)
    pdf = report_pdf(summary, provenance=provenance.disclaimer)
    source = in_utf8(source)
    now = datetime.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in PATIENT_STUDY:
        setattr(ds, keyword, source.get(keyword, ""))
    for keyword in _OPTIONAL:
        if keyword in source:
            setattr(ds, keyword, source[keyword].value)
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = new_uid(options)
    ds.SeriesNumber = SERIES_NUMBER
    ds.SeriesDescription = series_description(provenance, "REPORT", len(result.lesions))
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    apply_equipment(ds, provenance, options)
    ds.ConversionType = "WSD"  # SC Equipment: made on a workstation
    ds.InstanceNumber = 1
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "YES"  # the pages name the patient
    ds.RecognizableVisualFeatures = "NO"
    title = TITLE if provenance.validated_for_clinical_use else f"{TITLE}, {NOT_FOR_DIAGNOSTIC_USE}"
    ds.DocumentTitle = title
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = DOCUMENT_CODE
    ds.ConceptNameCodeSequence = Sequence([code])
    ds.SourceInstanceSequence = Sequence(_references(result))
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)  # OB: an even length
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = new_uid(options)
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _references(result: SegmentationResult) -> list[Dataset]:
    """The source instances the report was derived from (one item each, in slice order)."""
    items: list[Dataset] = []
    seen: set[str] = set()
    for source in result.volume.slices:
        if source.sop_instance_uid in seen:
            continue
        seen.add(source.sop_instance_uid)
        item = Dataset()
        item.ReferencedSOPClassUID = source.sop_class_uid
        item.ReferencedSOPInstanceUID = source.sop_instance_uid
        items.append(item)
    return items
