"""Validation gate: every output kind, in every orientation, with and without lesions.

Each RT-Struct, SEG and SR goes through dicom3tools' ``dciodvfy``: an
``Error`` line fails the test, and so does any ``Warning`` not triaged in
:data:`ACCEPTED_WARNINGS` (the table "dciodvfy warnings" in docs/results.md
gives the reasons).  Each file is also read back with pydicom and highdicom.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest

from inference.outputs import OutputOptions, write_outputs
from tests.results.conftest import build_case, measurement_report
from tests.results.test_results_rtstruct import CASES

DCIODVFY = Path("/usr/bin/dciodvfy")

#: warnings of dciodvfy that are expected, each with its reason in docs/results.md
ACCEPTED_WARNINGS = (
    # Device UID (0018,1002) in the Contributing Equipment Sequence is in the current
    # PS3.3 C.12.1 (Type 3); the installed dicom3tools (2022) predates it
    re.compile(r"Attribute is not present in standard DICOM IOD - \(0x0018,0x1002\) UI Device UID"),
    re.compile(r"Dicom dataset contains attributes not present in standard DICOM IOD"),
)

ORIENTATIONS = ["axial", "sagittal", "coronal", "oblique", "reversed", "enhanced"]


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """The errors and the untriaged warnings dciodvfy reports for ``path``."""
    run = subprocess.run(
        [str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = [line.strip() for line in (run.stdout + run.stderr).splitlines()]
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [
        line
        for line in lines
        if line.startswith("Warning") and not any(p.search(line) for p in ACCEPTED_WARNINGS)
    ]
    return errors, warnings


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools (dciodvfy) is not installed")
@pytest.mark.parametrize("lesions", [True, False], ids=["lesions", "none"])
@pytest.mark.parametrize("name", ORIENTATIONS)
def test_every_output_validates(tmp_path: Path, name: str, lesions: bool) -> None:
    fields: dict[str, Any] = dict(CASES[name])  # type: ignore[call-overload]
    if not lesions:
        fields["blobs"] = ()
    _, result = build_case(tmp_path / "series", **fields)  # type: ignore[arg-type]
    keep_empty = name in ("sagittal", "oblique", "enhanced")  # both SEG layouts validated
    options = OutputOptions(uid_root="1.2.826.0.1.3680043.10", seg_keep_empty_frames=keep_empty)
    written = write_outputs(result, ["rtstruct", "seg", "sr"], tmp_path / "out", options=options)
    assert not written.failed
    assert set(written.paths) == ({"rtstruct", "seg", "sr"} if lesions else {"rtstruct", "sr"})
    for kind, path in written.paths.items():
        errors, warnings = dciodvfy(path)
        assert not errors, f"{name} {kind}: {errors}"
        assert not warnings, f"{name} {kind}: untriaged dciodvfy warnings {warnings}"
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription and len(ds.SeriesDescription) <= 64
        assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.")
        assert ds.StudyInstanceUID == result.volume.study_instance_uid
    if lesions:
        seg = hd.seg.segread(written.paths["seg"])
        assert list(seg.get_segment_numbers()) == list(range(1, len(result.lesions) + 1))
    sr = hd.sr.srread(written.paths["sr"])
    assert len(measurement_report(sr).get_volumetric_roi_measurement_groups()) == len(
        result.lesions
    )


@pytest.mark.skipif(not DCIODVFY.exists(), reason="dicom3tools (dciodvfy) is not installed")
def test_the_gate_catches_an_invalid_file(tmp_path: Path) -> None:
    """The gate can fail: an RT-Struct without its Frame of Reference is an error."""
    _, result = build_case(tmp_path / "series")
    path = write_outputs(result, ["rtstruct"], tmp_path / "out").paths["rtstruct"]
    ds = pydicom.dcmread(path)
    del ds.FrameOfReferenceUID
    ds.save_as(tmp_path / "broken.dcm", enforce_file_format=True)
    errors, _ = dciodvfy(tmp_path / "broken.dcm")
    assert any("FrameOfReferenceUID" in error for error in errors)
