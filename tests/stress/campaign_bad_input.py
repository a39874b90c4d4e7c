"""Campaign 3: malformed and hostile input over C-STORE (pynetdicom, dcmtk's storescu, raw PDUs).

Each *kind* is one dataset (or association) built to break one assumption.  Most are
sent by pynetdicom from a file whose bytes are written here element by element
(``STORE_SEND_CHUNKED_DATASET``: the Affected SOP Class/Instance UIDs come from the file
meta and the dataset bytes go out exactly as written, malformed or not); a few go through
``/usr/bin/storescu``; association-level ones are raw A-ASSOCIATE-RQ PDUs.

For every kind: the status (expected *failure*, *success* where storing is right, or
*either* where both are defensible), and the invariants: no 0xC211 (a handler that raised),
no traceback text in the response, a WARNING/ERROR log line for a refusal, C-ECHO answers
afterwards, no ``.part`` file, no stored file without its index row, no file for a refused
SOP Instance UID.
"""

from __future__ import annotations

import contextlib
import copy
import re
import struct
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.config
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, _config, build_context

from demo.synthetic.dicom_series import small_series
from tests.helpers import dcmtk
from tests.stress.harness import (
    LOOPBACK,
    NODE_AE,
    SENDER_AE,
    SUCCESS,
    ServeProcess,
    base_settings,
    echo,
    port_pair,
)
from tests.stress.pdu import associate_rq, read_pdu, release_rq

MR = "1.2.840.10008.5.1.4.1.1.4"
CT = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
FAIL, OK, EITHER, REJECT = "failure", "success", "either", "rejected"
LONG_UID = "1." + "2" * 70
TRACEBACK_RE = re.compile(r"Traceback|File \"")
SAYS_WHY = re.compile(r"refused|rejected|aborted|not a valid|cannot|invalid", re.I)


@dataclass
class Raw:
    """A dataset to send as written: file meta from the three UIDs, then ``body``."""

    sop_class: str
    sop_instance: str
    transfer_syntax: str
    body: bytes
    contexts: tuple[tuple[str, str], ...] = ()


@dataclass
class Kind:
    name: str
    expect: str
    build: Callable[[BadInput], Any]
    via: str = "pynetdicom"  # pynetdicom | storescu | association
    refused_uid: str | None = None


# -- byte-level writers -----------------------------------------------------------------------

LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UC", "UR", "UT", "UN", "SV", "UV"}


def element(group: int, elem: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the declared length."""
    size = len(value) if length is None else length
    head = struct.pack("<HH", group, elem) + vr.encode("ascii")
    if vr in LONG_VRS:
        return head + b"\0\0" + struct.pack("<I", size) + value
    return head + struct.pack("<H", size & 0xFFFF) + value


def implicit(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, True
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def explicit(ds: Dataset) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def file_bytes(raw: Raw) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = pydicom.uid.UID(raw.sop_class)
    meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(raw.sop_instance)
    meta.TransferSyntaxUID = pydicom.uid.UID(raw.transfer_syntax)
    meta.ImplementationClassUID = pydicom.uid.UID("1.2.826.0.1.3680043.9.9999.1")
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + bytes(buffer.getvalue()) + raw.body


def pad(text: str) -> bytes:
    data = text.encode("latin-1")
    return data + (b"\0" if len(data) % 2 else b"")


# -- the campaign ---------------------------------------------------------------------------


class BadInput:
    """Builds every kind from one good MR instance, sends it, checks the node after it."""

    def __init__(self, node: ServeProcess, root: Path) -> None:
        self.node = node
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.template = pydicom.dcmread(small_series(root / "template", n_slices=2)[0])
        self.stored_elsewhere = self.good()  # stored first, for the duplicate kinds

    def good(self, **changes: Any) -> Dataset:
        """A fresh valid MR instance (new study, series and SOP UIDs) with ``changes``."""
        ds = copy.deepcopy(self.template)
        del ds.file_meta
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.SOPInstanceUID = generate_uid()
        for key, value in changes.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
        return ds

    def raw(
        self, ds: Dataset, body: bytes | None = None, ts: str = ExplicitVRLittleEndian, **meta: str
    ) -> Raw:
        return Raw(
            meta.get("sop_class", str(ds.get("SOPClassUID", MR))),
            meta.get("sop_instance", str(ds.get("SOPInstanceUID", generate_uid()))),
            ts,
            explicit(ds) if body is None else body,
        )

    def bad_uid(self, keyword: str, value: str) -> Raw:
        ds = self.good()
        body = explicit(ds)
        tag = {
            "SOPInstanceUID": (0x0008, 0x0018),
            "StudyInstanceUID": (0x0020, 0x000D),
            "SeriesInstanceUID": (0x0020, 0x000E),
        }[keyword]
        good = explicit_element(ds, keyword)
        body = body.replace(good, element(*tag, "UI", pad(value)))
        sop = value if keyword == "SOPInstanceUID" else str(ds.SOPInstanceUID)
        return Raw(MR, sop, ExplicitVRLittleEndian, body)

    def without(self, keyword: str) -> Raw:
        ds = self.good()
        sop = str(ds.SOPInstanceUID)
        delattr(ds, keyword)
        return Raw(MR, sop, ExplicitVRLittleEndian, explicit(ds))

    def with_pixels(self, pixel_element: bytes, **changes: Any) -> Raw:
        ds = self.good(**changes)
        del ds.PixelData
        return self.raw(ds, explicit(ds) + pixel_element)

    # -- sending --------------------------------------------------------------------------
    def send_raw(self, raw: Raw, calling_ae: str = SENDER_AE) -> dict[str, Any]:
        path = self.root / f"{time.monotonic_ns()}.dcm"
        path.write_bytes(file_bytes(raw))
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        contexts = raw.contexts or ((raw.sop_class, raw.transfer_syntax),)
        ae.requested_contexts = [build_context(a, t) for a, t in contexts]
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            assoc = ae.associate(LOOPBACK, self.node.port, ae_title=NODE_AE)
            if not assoc.is_established:
                return {"outcome": "association rejected", "status": None}
            try:
                accepted = [
                    c for c in assoc.accepted_contexts if c.abstract_syntax == raw.sop_class
                ]
                if not accepted:
                    return {"outcome": "presentation context rejected", "status": None}
                rsp = assoc.send_c_store(path)
            except Exception as exc:  # noqa: BLE001 - the sender refused to send it
                return {"outcome": f"sender error: {type(exc).__name__}: {exc}", "status": None}
            finally:
                with contextlib.suppress(Exception):
                    assoc.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
        if not rsp or "Status" not in rsp:
            return {"outcome": "no response (aborted?)", "status": None}
        comment = str(rsp.get("ErrorComment", "") or "")
        return {"outcome": "answered", "status": int(rsp.Status), "comment": comment}

    def send_dataset(self, ds: Dataset, sop_class: str | None = None) -> dict[str, Any]:
        """A dataset that pydicom can encode: sent the ordinary way."""
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return self.send_raw(self.raw(ds, sop_class=sop_class or str(ds.SOPClassUID)))

    def send_storescu(self, raw: Raw) -> dict[str, Any]:
        tool = dcmtk("storescu")
        if tool is None:
            return {"outcome": "dcmtk storescu not installed", "status": None}
        path = self.root / f"storescu-{time.monotonic_ns()}.dcm"
        path.write_bytes(file_bytes(raw))
        done = subprocess.run(
            [
                tool,
                "-d",
                "-aet",
                "STORESCU",
                "-aec",
                NODE_AE,
                LOOPBACK,
                str(self.node.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        text = done.stdout + done.stderr
        match = re.search(r"Received Store Response \(([^)]*)\)", text)
        codes = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", text)
        status: int | None = None
        if codes:
            status = int(codes[-1], 16)
        elif match:
            status = SUCCESS if match.group(1).startswith("Success") else 0xFFFF
        first = next((ln for ln in text.splitlines() if "Store Response" in ln or "E:" in ln), "")
        return {
            "outcome": f"storescu exit {done.returncode}: {first.strip()[:160]}",
            "status": status,
            "comment": "",
        }

    def send_association(self, calling: bytes, called: bytes = b"AINODE") -> dict[str, Any]:
        """A hand-made A-ASSOCIATE-RQ (AE title bytes as given); the PDU type answered."""
        from tests.stress.harness import connect_raw

        with contextlib.closing(connect_raw(self.node.port, 10)) as sock:
            sock.sendall(associate_rq(called, calling))
            pdu_type, body = read_pdu(sock, 10)
            if pdu_type == 0x02:  # accepted: release politely
                with contextlib.suppress(OSError):
                    sock.sendall(release_rq())
                    read_pdu(sock, 5)
        name = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x07: "A-ABORT"}.get(
            pdu_type or -1, f"PDU {pdu_type}"
        )
        return {"outcome": name, "status": None, "detail": body[:4].hex() if body else ""}

    # -- one kind -------------------------------------------------------------------------
    def run_kind(self, kind: Kind) -> dict[str, Any]:
        offset = self.node.log_size()
        built = kind.build(self)
        refused_uid = kind.refused_uid
        if isinstance(built, Raw):
            refused_uid = refused_uid or built.sop_instance
            result = self.send_storescu(built) if kind.via == "storescu" else self.send_raw(built)
            if str(result["outcome"]).startswith("sender error") and kind.via == "pynetdicom":
                # pynetdicom will not put an invalid UID in the C-STORE request: the hostile
                # UID stays in the data set, the request carries a valid one
                built.sop_instance = generate_uid()
                result = self.send_raw(built)
                result["outcome"] = (
                    "answered (request UID valid: pynetdicom refuses an invalid one)"
                )
        elif isinstance(built, Dataset):
            refused_uid = refused_uid or str(built.get("SOPInstanceUID", ""))
            result = self.send_dataset(built)
        else:
            result = built  # already sent (association kinds, sequences of sends)
        time.sleep(0.3)  # let the log line reach the file
        alive = self.node.alive()
        echoed = echo(self.node.port, timeout=10)
        new_log = self.node.log_text(offset)
        warn_lines = [
            ln
            for ln in new_log.splitlines()
            if (" WARNING " in ln or " ERROR " in ln)
            and "association from AE" not in ln
            and "[worker " not in ln  # earlier kinds' jobs failing
        ]
        saying = [ln for ln in warn_lines if SAYS_WHY.search(ln)] or warn_lines
        if result.get("status") is None:  # refused at association level: its own line only
            saying = [ln for ln in warn_lines if "association" in ln or "context" in ln]
        assoc_lines = [ln for ln in new_log.splitlines() if "association" in ln]
        status = result.get("status")
        outcome = result["outcome"]
        failed = status is None or status != SUCCESS and (status >> 12) != 0xB
        violations: list[str] = []
        if status == 0xC211:
            violations.append("0xC211: a handler raised (traceback in the node's log)")
        if TRACEBACK_RE.search(str(result.get("comment", ""))):
            violations.append("traceback text in the response to the peer")
        if kind.expect == FAIL and not failed:
            violations.append("hostile dataset answered Success")
        if kind.expect == OK and failed:
            violations.append(f"valid dataset refused: {outcome} {status}")
        if kind.expect == REJECT and status is not None:
            violations.append("expected a refusal at association level")
        if failed and not warn_lines and not (kind.expect == REJECT and assoc_lines):
            violations.append("refused without a WARNING/ERROR line saying why")
        if not alive:
            violations.append("the node died")
        if not echoed:
            violations.append("C-ECHO failed afterwards")
        files = self.node.store_files()
        parts = [p.name for p in files if p.name.endswith(".part")]
        if parts:
            violations.append(f"temporary files left: {parts}")
        indexed = self.node.indexed_sop_uids()
        orphans = [p.name for p in files if p.suffix == ".dcm" and p.stem not in indexed]
        if orphans:
            violations.append(f"stored file(s) without an index row: {orphans[:3]}")
        if failed and refused_uid and any(p.stem == refused_uid for p in files):
            if kind.name not in DUPLICATE_KINDS:
                violations.append("a file was kept for the refused instance")
        return {
            "kind": kind.name,
            "via": kind.via,
            "expect": kind.expect,
            "outcome": outcome,
            "status": None if status is None else f"0x{status:04X}",
            "log_line": _strip_log(saying[0]) if saying and failed else None,
            "tracebacks_in_log": len(re.findall(r"Traceback", new_log)),
            "echo_after": echoed,
            "violations": violations,
        }


DUPLICATE_KINDS = {"same SOP Instance UID in another series", "series over two studies"}


def explicit_element(ds: Dataset, keyword: str) -> bytes:
    sub = Dataset()
    setattr(sub, keyword, getattr(ds, keyword))
    return explicit(sub)


def _strip_log(line: str) -> str:
    line = re.sub(r"^\S+ \S+ ", "", line)  # the time stamp
    return line[:220]


def _nested_sequences(depth: int) -> bytes:
    """``depth`` nested SQ items of undefined length (0008,1140 Referenced Image Sequence)."""
    head = b""
    tail = b""
    for _ in range(depth):
        head += element(0x0008, 0x1140, "SQ", b"", 0xFFFFFFFF) + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        tail = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00" + tail
    return head + tail


def _duplicate_in_other_series(b: BadInput) -> Dataset:
    ds = b.good()
    ds.SOPInstanceUID = b.stored_elsewhere.SOPInstanceUID  # stored first in another series
    return ds


def _series_over_two_studies(b: BadInput) -> Dataset:
    ds = b.good()
    ds.SeriesInstanceUID = b.stored_elsewhere.SeriesInstanceUID  # that series' study differs
    return ds


def _crlf_calling_ae(b: BadInput) -> dict[str, Any]:
    return b.send_association(b"X\r\nFAKE INJECTED")


def kinds() -> list[Kind]:
    """Every kind, in the order sent (at least 40)."""
    mr = MR
    k = Kind
    return [
        # -- missing identifiers
        k("missing SOPInstanceUID", FAIL, lambda b: b.without("SOPInstanceUID")),
        k("missing SOPClassUID", FAIL, lambda b: b.without("SOPClassUID")),
        k("missing StudyInstanceUID", FAIL, lambda b: b.without("StudyInstanceUID")),
        k("missing SeriesInstanceUID", FAIL, lambda b: b.without("SeriesInstanceUID")),
        # -- invalid UIDs
        k("SOP UID 71 characters", FAIL, lambda b: b.bad_uid("SOPInstanceUID", LONG_UID)),
        k("Series UID 71 characters", FAIL, lambda b: b.bad_uid("SeriesInstanceUID", LONG_UID)),
        k("Study UID with letters", FAIL, lambda b: b.bad_uid("StudyInstanceUID", "1.2.abc.4")),
        k("Series UID with '..'", FAIL, lambda b: b.bad_uid("SeriesInstanceUID", "1.2..3")),
        k("SOP UID with '/'", FAIL, lambda b: b.bad_uid("SOPInstanceUID", "1.2/3.4")),
        k("Study UID '../../etc'", FAIL, lambda b: b.bad_uid("StudyInstanceUID", "../../etc")),
        k("Series UID '..'", FAIL, lambda b: b.bad_uid("SeriesInstanceUID", "..")),
        k("SOP UID with a NUL inside", FAIL, lambda b: b.bad_uid("SOPInstanceUID", "1.2\x003.4")),
        k("SOP UID with a space", FAIL, lambda b: b.bad_uid("SOPInstanceUID", "1.2 3.4")),
        k("Study UID with trailing dot", FAIL, lambda b: b.bad_uid("StudyInstanceUID", "1.2.3.")),
        k("Series UID empty", FAIL, lambda b: b.bad_uid("SeriesInstanceUID", "")),
        k(
            "Study UID with backslash (2 values)",
            FAIL,
            lambda b: b.bad_uid("StudyInstanceUID", "1.2\\1.3"),
        ),
        # -- request vs dataset
        k(
            "Affected SOP Instance UID differs from dataset",
            FAIL,
            lambda b: b.raw(b.good(), sop_instance=generate_uid()),
        ),
        k(
            "Affected SOP Class UID differs from dataset",
            FAIL,
            lambda b: _mismatched_class(b),
        ),
        k(
            "dataset SOPClassUID RT Structure Set under an MR context",
            FAIL,
            lambda b: b.raw(b.good(SOPClassUID=RTSTRUCT), sop_class=mr),
        ),
        # -- pixel data and image geometry (stored: the job reads and fails, or succeeds)
        k(
            "truncated pixel data (declared = sent, too short for Rows x Columns)",
            OK,
            lambda b: b.with_pixels(element(0x7FE0, 0x0010, "OW", b"\1\0" * 100)),
        ),
        # stored by design (docs/node.md: "the SCP checks the header, not the pixel data")
        k(
            "pixel data length beyond the end of the data set",
            EITHER,
            lambda b: b.with_pixels(element(0x7FE0, 0x0010, "OW", b"\1\0" * 100, 0x10000)),
        ),
        k(
            "pixel data declaring 0x7FFFFFF0 bytes",
            EITHER,
            lambda b: b.with_pixels(element(0x7FE0, 0x0010, "OW", b"\1\0" * 64, 0x7FFFFFF0)),
        ),
        k(
            "odd pixel data length (OW)",
            EITHER,
            lambda b: b.with_pixels(element(0x7FE0, 0x0010, "OW", b"\1\0" * 10 + b"\1")),
        ),
        k(
            "NaN in ImagePositionPatient",
            OK,
            lambda b: b.good(ImagePositionPatient=["nan", "0", "0"]),
        ),
        k("inf in PixelSpacing", OK, lambda b: b.good(PixelSpacing=["inf", "1"])),
        k("negative PixelSpacing", OK, lambda b: b.good(PixelSpacing=["-1", "1"])),
        k("Rows = 0", OK, lambda b: b.good(Rows=0)),
        k("Columns = 0", OK, lambda b: b.good(Columns=0)),
        k("BitsAllocated = 0", OK, lambda b: b.good(BitsAllocated=0)),
        k(
            "NumberOfFrames = -1",
            EITHER,
            lambda b: _raw_with(b, element(0x0028, 0x0008, "IS", b"-1")),
        ),
        k(
            "InstanceNumber 'abc'",
            EITHER,
            lambda b: _raw_with(b, element(0x0020, 0x0013, "IS", b"abc ")),
        ),
        k("ImagesInAcquisition 999999999", OK, lambda b: b.good(ImagesInAcquisition=999999999)),
        # -- wrong lengths and encodings
        k(
            "US element with length 3",
            EITHER,
            lambda b: _raw_with(b, element(0x0028, 0x0101, "US", b"\x10\x00\x00")),
        ),
        k(
            "PatientName declaring 0xFFFF bytes, 10 sent",
            FAIL,
            lambda b: _raw_with(b, element(0x0010, 0x0010, "PN", b"Doe^John  ", 0xFFFF), last=True),
        ),
        k(
            "private UN element declaring 0xFFFFFFF0 bytes",
            FAIL,
            lambda b: _raw_with(b, element(0x0009, 0x1010, "UN", b"x" * 16, 0xFFFFFFF0), last=True),
        ),
        k(
            "undefined length on a non-sequence LO",
            FAIL,
            lambda b: _raw_with(b, element(0x0009, 0x0010, "UN", b"x" * 8, 0xFFFFFFFF), last=True),
        ),
        k(
            "unknown VR 'ZZ'",
            EITHER,
            lambda b: _raw_with(b, element(0x0009, 0x1011, "ZZ", b"abcd")),
        ),
        k(
            "implicit VR bytes declared explicit",
            EITHER,
            lambda b: b.raw(b.good(), body=implicit(b.good())),
        ),
        k(
            "explicit VR bytes declared deflated (not deflated)",
            FAIL,
            lambda b: b.raw(b.good(), ts=DeflatedExplicitVRLittleEndian),
        ),
        k(
            "native pixels declared JPEG baseline",
            EITHER,
            lambda b: b.raw(b.good(), ts=JPEGBaseline8Bit),
        ),
        k(
            "random bytes as the data set",
            FAIL,
            lambda b: b.raw(b.good(), body=bytes(range(256)) * 8),
        ),
        k("empty data set", FAIL, lambda b: b.raw(b.good(), body=b"")),
        k(
            "a single item delimiter as the data set",
            FAIL,
            lambda b: b.raw(b.good(), body=b"\xfe\xff\x0d\xe0\0\0\0\0"),
        ),
        k(
            "sequence nesting 200 deep",
            EITHER,
            lambda b: _raw_with(b, _nested_sequences(200)),
        ),
        # -- private tags and character sets
        k(
            "many private tags",
            OK,
            lambda b: _raw_with(
                b,
                element(0x0009, 0x0010, "LO", b"STRESS  ")
                + b"".join(element(0x0009, 0x1000 + i, "LO", b"private ") for i in range(200)),
            ),
        ),
        k(
            "only private tags (no UIDs)",
            FAIL,
            lambda b: b.raw(
                b.good(),
                body=element(0x0009, 0x0010, "LO", b"STRESS  ")
                + element(0x0009, 0x1001, "LO", b"x" * 8),
            ),
        ),
        k("bogus SpecificCharacterSet", OK, lambda b: b.good(SpecificCharacterSet="ISO_IR 9999")),
        k(
            "invalid UTF-8 in PatientName under ISO_IR 192",
            OK,
            lambda b: _raw_with(
                b,
                element(0x0008, 0x0005, "CS", b"ISO_IR 192")
                + element(0x0010, 0x0010, "PN", b"\xff\xfe\xc3\x28"),
            ),
        ),
        # -- SOP classes and duplicates
        k(
            "non-image SOP class (RT Structure Set)",
            REJECT,
            lambda b: b.raw(b.good(SOPClassUID=RTSTRUCT)),
        ),
        k(
            "non-image SOP class (Basic Text SR)",
            REJECT,
            lambda b: b.raw(b.good(SOPClassUID=BASIC_TEXT_SR)),
        ),
        k("same SOP Instance UID in another series", FAIL, _duplicate_in_other_series),
        k("series over two studies", FAIL, _series_over_two_studies),
        k("same instance twice (duplicate)", OK, lambda b: copy.deepcopy(b.stored_elsewhere)),
        # -- AE titles (raw A-ASSOCIATE-RQ)
        k("CR/LF in the calling AE title", EITHER, _crlf_calling_ae, via="association"),
        k(
            "NUL bytes in the calling AE title",
            EITHER,
            lambda b: b.send_association(b"\0" * 16),
            via="association",
        ),
        k(
            "wrong called AE title",
            REJECT,
            lambda b: b.send_association(b"STRESSSCU", called=b"NOTTHENODE"),
            via="association",
        ),
        # -- the same through dcmtk's storescu
        k(
            "storescu: SOP UID 71 characters",
            FAIL,
            lambda b: b.bad_uid("SOPInstanceUID", LONG_UID),
            via="storescu",
        ),
        k(
            "storescu: Series UID with letters",
            FAIL,
            lambda b: b.bad_uid("SeriesInstanceUID", "1.2.x.4"),
            via="storescu",
        ),
        k(
            "storescu: Study UID with '/'",
            FAIL,
            lambda b: b.bad_uid("StudyInstanceUID", "1/2"),
            via="storescu",
        ),
        k(
            "storescu: missing SeriesInstanceUID",
            FAIL,
            lambda b: b.without("SeriesInstanceUID"),
            via="storescu",
        ),
        k(
            "storescu: truncated pixel data",
            EITHER,
            lambda b: b.with_pixels(element(0x7FE0, 0x0010, "OW", b"\1\0" * 100)),
            via="storescu",
        ),
    ]


def _mismatched_class(b: BadInput) -> Raw:
    raw = b.raw(b.good(), sop_class=CT)
    raw.contexts = ((CT, ExplicitVRLittleEndian), (MR, ExplicitVRLittleEndian))
    return raw


def _raw_with(b: BadInput, extra: bytes, last: bool = False) -> Raw:
    """A good data set with ``extra`` element bytes spliced in at their tag's place
    (or at the very end when ``last``, for elements whose length runs past the end)."""
    ds = b.good()
    if last:
        del ds.PixelData
        return b.raw(ds, explicit(ds) + extra)
    group = struct.unpack("<H", extra[:2])[0]
    elem = struct.unpack("<H", extra[2:4])[0]
    tag = (group << 16) | elem
    before = Dataset()
    after = Dataset()
    for item in ds:
        if int(item.tag) == tag:
            continue
        (before if int(item.tag) < tag else after).add(item)
    return b.raw(ds, explicit(before) + extra + explicit(after))


def run(root: Path, seed: int = 0) -> dict[str, Any]:
    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    started = time.monotonic()
    port, _ = port_pair()
    node = ServeProcess(root / "node", base_settings(root / "node" / "data", port))
    results: list[dict[str, Any]] = []
    try:
        node.start()
        campaign = BadInput(node, root / "files")
        first = campaign.send_dataset(copy.deepcopy(campaign.stored_elsewhere))
        if first.get("status") != SUCCESS:
            raise RuntimeError(f"the good instance was not stored: {first}")
        for kind in kinds():
            try:
                results.append(campaign.run_kind(kind))
            except Exception as exc:  # noqa: BLE001 - a harness failure is reported, not hidden
                results.append(
                    {
                        "kind": kind.name,
                        "via": kind.via,
                        "expect": kind.expect,
                        "outcome": f"harness error: {type(exc).__name__}: {exc}",
                        "status": None,
                        "violations": [f"harness error: {exc}"],
                    }
                )
        log = node.log_text()
    finally:
        node.stop()
    injected = [ln for ln in log.splitlines() if ln.startswith("FAKE INJECTED")]
    violations = [f"{r['kind']}: {v}" for r in results for v in r["violations"]]
    if injected:
        violations.append(f"CR/LF in an AE title forged a log line: {injected[0]!r}")
    return {
        "campaign": "bad-input",
        "kinds": len(results),
        "results": results,
        "tracebacks_in_log": log.count("Traceback"),
        "peak_rss_kib": node.peak_rss_kib,
        "seconds": round(time.monotonic() - started, 1),
        "violations": violations,
    }
