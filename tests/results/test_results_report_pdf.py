"""The follow-up report as a DICOM Encapsulated PDF (``outputs: [report]``).

Built from a patient with three time points (the report tests' ``three_visits``),
validated by dciodvfy, read back with pydicom (strict reading), and its PDF read
back for the patient's tracks and responses.  The end-to-end path to Orthanc is
in ``test_results_orthanc.py``.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import peewee
import pydicom
import pytest
from pydicom import config as pydicom_config

from inference.outputs import write_outputs
from inference.outputs.report import ENCAPSULATED_PDF_STORAGE
from storage.summary import patient_summary
from tests.results.conftest import build_case
from tests.results.test_results_report import three_visits
from tests.results.test_results_validation import DCIODVFY, dciodvfy


def pdf_streams(pdf: bytes) -> list[bytes]:
    """Each stream's data, exactly ``/Length`` bytes (direct, or an indirect ``N 0 R`` object).

    Not up to the next ``endstream``: compressed data may itself end in a carriage return,
    which a pattern would take for the end-of-line before ``endstream``.
    """
    streams = []
    for m in re.finditer(rb"<<((?:(?!<<|>>).)*)>>\s*stream\r?\n", pdf, re.DOTALL):
        length = re.search(rb"/Length (\d+)(?: (\d+) R)?", m.group(1))
        assert length is not None, m.group(1)
        size = int(length.group(1))
        if length.group(2) is not None:
            target = rb"\b%s %s obj\s*(\d+)\s*endobj" % (length.group(1), length.group(2))
            value = re.search(target, pdf)
            assert value is not None
            size = int(value.group(1))
        data = pdf[m.end() : m.end() + size]
        streams.append(zlib.decompress(data) if b"/FlateDecode" in m.group(1) else data)
    return streams


def pdf_text(pdf: bytes) -> str:
    """The text that a PDF written by matplotlib shows: the strings of its text operators."""
    streams = pdf_streams(pdf)
    texts = []
    for stream in streams:
        for block in re.findall(rb"BT(.*?)ET", stream, re.DOTALL):
            strings = re.findall(rb"\(((?:\\.|[^\\)])*)\)", block)
            texts.append(b"".join(strings).decode("latin-1"))
    return "\n".join(texts)


def test_report_is_an_encapsulated_pdf_of_the_patients_follow_up(
    tmp_path: Path, node_db: peewee.Database
) -> None:
    three_visits("RPT1")
    _, result = build_case(tmp_path / "series", patient_id="RPT1")
    written = write_outputs(
        result,
        ["rtstruct", "report"],
        tmp_path / "out",
        summary=lambda: patient_summary("RPT1", retrack=False),
    )
    assert written.failed == {}
    path = written.paths["report"]
    assert path.name == "report.dcm" and path.stat().st_mode & 0o777 == 0o600  # PHI
    if DCIODVFY.exists():
        assert dciodvfy(path) == ([], [])
    with pydicom_config.strict_reading():
        ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "DOC"
    assert ds.StudyInstanceUID == result.volume.study_instance_uid  # beside the series
    assert ds.SeriesInstanceUID != result.volume.series_instance_uid
    assert ds.PatientID == "RPT1"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.BurnedInAnnotation == "YES"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18748-4"
    assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
    assert "NOT FOR DIAGNOSTIC USE" in ds.DocumentTitle
    assert ds.ContributingEquipmentSequence[0].ContributionDescription
    assert len(ds.EncapsulatedDocument) % 2 == 0
    pdf = bytes(ds.EncapsulatedDocument[: ds.EncapsulatedDocumentLength])
    assert pdf.startswith(b"%PDF") and pdf.rstrip().endswith(b"%%EOF")
    referenced = {item.ReferencedSOPInstanceUID for item in ds.SourceInstanceSequence}
    assert referenced == {s.sop_instance_uid for s in result.volume.slices}
    text = pdf_text(pdf)
    for expected in ("Lesion A", "Lesion B", "Lesion C", "Lesion D", "PatientID RPT1"):
        assert expected in text
    assert "NOT FOR DIAGNOSTIC USE" in text and "tiny" not in text
    assert re.search(r"2025-07-01\s*PD", text) and re.search(r"2025-04-01\s*PR", text)
    assert "RANO-BM sum of longest diameters" in text  # the plot with its thresholds
    assert "PD: +20 % of nadir" in text and "PR: -30 % of baseline" in text


def test_report_fails_on_its_own(tmp_path: Path, node_db: peewee.Database) -> None:
    _, result = build_case(tmp_path / "series", patient_id="NOBODY")
    written = write_outputs(result, ["rtstruct", "report"], tmp_path / "out", summary=lambda: None)
    assert set(written.paths) == {"rtstruct"}
    assert "no follow-up record" in written.failed["report"]

    def broken() -> None:
        raise RuntimeError("database gone")

    written = write_outputs(result, ["report", "sr"], tmp_path / "out2", summary=broken)
    assert set(written.paths) == {"sr"}
    assert written.failed == {"report": "RuntimeError: database gone"}
    offline = write_outputs(result, ["report"], tmp_path / "out3")  # ai-node segment
    assert offline.paths == {} and "report" in offline.failed


@pytest.mark.parametrize("tracks", [0, 40])
def test_long_reports_flow_onto_more_pages(tracks: int) -> None:
    from inference.outputs.followup_report import report_pdf

    lesion = {
        "longest_axial_diameter_mm": 12.0,
        "perpendicular_axial_diameter_mm": 8.0,
        "volume_mm3": 500.0,
        "slice_range": [3, 7],
    }
    summary = {
        "patient": {"patient_id": "P", "patient_name": "", "birth_date": None, "sex": None},
        "time_points": [
            {
                "run_id": 1,
                "study_instance_uid": "1.2",
                "study_date": "20250101",
                "series_instance_uid": "1.2.1",
                "registration": None,
                "response": None,
            }
        ],
        "tracks": [
            {
                "tracking_uid": f"2.25.{n}",
                "label": f"Lesion {n}",
                "parent": None,
                "observations": [{"status": "new", "lesion": lesion}],
            }
            for n in range(tracks)
        ],
    }
    pdf = report_pdf(summary)
    pages = len(re.findall(rb"/Type\s*/Page\b", pdf))
    assert pages == 1 if tracks == 0 else pages >= 2  # the table continues, header repeated
    text = pdf_text(pdf)
    assert ("Lesion 39" in text) == bool(tracks)
    assert text.count("TrackingUID") >= (2 if tracks else 0)  # the header on each page


def test_stream_data_that_ends_in_a_carriage_return_is_read_whole() -> None:
    """The report test read a PDF wrongly once in a CI run: its compressed page ended in ``\\r``,
    which a pattern up to ``\\r?\\nendstream`` dropped.  Streams are cut by their ``/Length``."""
    data = zlib.compress(b"BT (Lesion 9999) Tj ET")
    assert data.endswith(b"\r")
    direct = b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (len(data), data)
    indirect = (
        b"4 0 obj\n<< /Filter /FlateDecode /Length 5 0 R >>\nstream\n%s\nendstream\nendobj\n"
        b"5 0 obj\n%d\nendobj\n" % (data, len(data))
    )
    for pdf in (direct, indirect):
        assert pdf_text(pdf) == "Lesion 9999"
