"""docs/conformance.md lists exactly what the code negotiates, for the default configuration.

The statement's tables are parsed (a row holds its UID in backticks); the SCP side is
compared with ``node.ae.accepted_sop_classes`` and ``TRANSFER_SYNTAXES``, the SCU side
with the SOP classes of the output kinds the configuration can ask for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

from pydicom.uid import (
    Comprehensive3DSRStorage,
    EncapsulatedPDFStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RTStructureSetStorage,
    SegmentationStorage,
)

from config.schema import NodeConfig, OutputKind
from node.ae import TRANSFER_SYNTAXES, accepted_sop_classes, build_ae

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
VERIFICATION = "1.2.840.10008.1.1"
ROW_UID = re.compile(r"^\|[^|]*\|\s*`(1\.2\.840\.[0-9.]+)`\s*\|")
#: the SOP class each output kind is written as (rt-utils, highdicom, inference/outputs/report.py)
OUTPUT_SOP_CLASSES = {
    "rtstruct": RTStructureSetStorage,
    "seg": SegmentationStorage,
    "sr": Comprehensive3DSRStorage,
    "report": EncapsulatedPDFStorage,
}


def section_uids(heading: str) -> list[str]:
    """The UIDs of the table rows under ``#### <heading>`` (up to the next heading)."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(f"#### {heading}")
    end = text.find("\n#", start + 1)
    rows = text[start : end if end > 0 else None].splitlines()
    return [m.group(1) for line in rows if (m := ROW_UID.match(line))]


def test_scp_sop_classes_are_exactly_those_accepted() -> None:
    listed = section_uids("3.2.1 SOP classes as SCP")
    assert len(listed) == len(set(listed)), "a SOP class listed twice"
    assert set(listed) == {VERIFICATION, *accepted_sop_classes(NodeConfig())}
    negotiated = {str(c.abstract_syntax) for c in build_ae(NodeConfig()).supported_contexts}
    assert set(listed) == negotiated


def test_scp_transfer_syntaxes_are_exactly_those_accepted() -> None:
    listed = section_uids("3.2.2 Transfer syntaxes as SCP")
    assert listed == list(TRANSFER_SYNTAXES)
    for context in build_ae(NodeConfig()).supported_contexts:
        if context.abstract_syntax != VERIFICATION:
            assert list(context.transfer_syntax) == listed


def test_scu_sop_classes_are_those_of_the_outputs() -> None:
    assert set(get_args(OutputKind)) == set(OUTPUT_SOP_CLASSES), "a new output kind: document it"
    listed = section_uids("3.2.3 SOP classes as SCU")
    assert sorted(listed) == sorted([VERIFICATION, *OUTPUT_SOP_CLASSES.values()])
    assert OUTPUT_SOP_CLASSES == {
        "rtstruct": "1.2.840.10008.5.1.4.1.1.481.3",
        "seg": "1.2.840.10008.5.1.4.1.1.66.4",
        "sr": "1.2.840.10008.5.1.4.1.1.88.34",
        "report": "1.2.840.10008.5.1.4.1.1.104.1",
    }


def test_scu_transfer_syntaxes_are_those_proposed() -> None:
    # node/scu.py proposes the file's own syntax (every output is explicit VR little
    # endian), then explicit and implicit VR little endian
    listed = section_uids("3.2.4 Transfer syntaxes as SCU")
    assert listed == [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


def test_tls_is_described_as_the_configuration_offers_it() -> None:
    text = DOC.read_text(encoding="utf-8")
    has_tls = "tls" in NodeConfig.model_fields
    assert ("**TLS" in text and "Supported" in text) == has_tls
