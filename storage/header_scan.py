"""A strict scan of a received file's identifying elements, for the common case, without pydicom.

pydicom builds a data element object for every element it reads, which costs
more CPU per received instance than anything else the node does with it (about
1.5 ms for a 50-element MR header, several for a real scanner's).  :func:`scan`
walks the encoded bytes once, the way the standard lays them out (PS3.5 7.1,
7.5): the file meta, then every element of the data set, into sequences and
their items, checking that each value ends inside its parent and the file; it
copies nothing but the few values :class:`storage.instances.InstanceHeader` needs.

It is strict on purpose: anything unusual -- a transfer syntax other than
Explicit or Implicit VR Little Endian, an unknown VR, an undefined length outside
a sequence, elements out of order, a value running past its end, nesting deeper
than :data:`MAX_DEPTH`, a required UID missing -- returns None, and the caller
reads the file with pydicom instead, which decides and words the refusal.  So
the scan can only take the fast way through a file that pydicom also reads
without complaint; it never refuses anything itself.
"""

from __future__ import annotations

import mmap
import struct

from pydicom.datadict import dictionary_VR

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_DELIMITER, SEQUENCE_DELIMITER = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
TRANSFER_SYNTAX_UID = 0x00020010
#: sequences nested deeper than this are left to pydicom
MAX_DEPTH = 16

#: VRs whose length is 4 bytes after 2 reserved ones (PS3.5 7.1.2, table 7.1-1)
LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
SHORT_VRS = frozenset(
    (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT")
    + (b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
)

#: tag -> DICOM keyword of each element the node needs from the top level of a data set
WANTED = {
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080060: "Modality",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200012: "AcquisitionNumber",
    0x00200013: "InstanceNumber",
    0x00201002: "ImagesInAcquisition",
    0x00280008: "NumberOfFrames",
}

_TAG = struct.Struct("<HH")
_SHORT = struct.Struct("<H")
_LONG = struct.Struct("<L")


class _Unusual(Exception):
    """Something the scan leaves to pydicom."""


def scan(data: bytes | mmap.mmap) -> dict[str, bytes] | None:
    """The raw values of the wanted elements (by keyword) plus ``TransferSyntaxUID``, or
    None when the file is anything but a plain, well-formed, native little-endian one."""
    try:
        return _scan(memoryview(data))
    except (_Unusual, struct.error):
        return None


def _scan(buffer: memoryview) -> dict[str, bytes]:
    if len(buffer) < 132 or buffer[128:132] != b"DICM":
        raise _Unusual
    meta: dict[int, bytes] = {}
    position = _elements(buffer, 132, len(buffer), True, 0, meta, group=0x0002)
    syntax = bytes(meta.get(TRANSFER_SYNTAX_UID, b"")).decode("ascii").strip("\x00 ")
    if syntax not in (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN):
        raise _Unusual
    found: dict[int, bytes] = {}
    _elements(buffer, position, len(buffer), syntax == EXPLICIT_VR_LITTLE_ENDIAN, 0, found)
    values = {WANTED[tag]: value for tag, value in found.items()}
    values["TransferSyntaxUID"] = meta[TRANSFER_SYNTAX_UID]
    return values


def _elements(
    buffer: memoryview,
    position: int,
    end: int | None,
    explicit: bool,
    depth: int,
    found: dict[int, bytes] | None = None,
    group: int | None = None,
) -> int:
    """Walk the elements from ``position`` to ``end`` (None: to an item delimiter); returns
    where they end.  ``found`` collects the wanted values (the top level only); with
    ``group`` the walk stops at the first element of another group (the file meta)."""
    if depth > MAX_DEPTH:
        raise _Unusual
    limit = len(buffer) if end is None else end
    previous = -1
    while end is None or position < end:
        if position + 8 > limit:
            raise _Unusual
        element_group, element = _TAG.unpack_from(buffer, position)
        tag = element_group << 16 | element
        if group is not None and element_group != group:
            return position
        if tag == ITEM_DELIMITER and end is None:
            return position + 8
        if tag <= previous or element_group == 0xFFFE:
            raise _Unusual  # out of order, or a delimiter where an element belongs
        previous = tag
        vr, length, value = _header(buffer, position, explicit or group is not None, limit)
        if length == UNDEFINED:
            if not (vr == b"SQ" or (vr is None and _is_sequence(tag))):
                raise _Unusual  # encapsulated pixel data, UN of undefined length, ...
            position = _items(buffer, value, None, explicit, depth + 1)
            continue
        position = value + length
        if position > limit:
            raise _Unusual
        if vr == b"SQ" or (vr is None and _is_sequence(tag)):
            _items(buffer, value, position, explicit, depth + 1)
        elif found is not None and (tag in WANTED or (group is not None)):
            found[tag] = bytes(buffer[value:position])
    if position != end:
        raise _Unusual
    return position


def _header(
    buffer: memoryview, position: int, explicit: bool, limit: int
) -> tuple[bytes | None, int, int]:
    """(VR or None when implicit, value length, where the value starts) of one element."""
    if not explicit:
        return None, _LONG.unpack_from(buffer, position + 4)[0], position + 8
    vr = bytes(buffer[position + 4 : position + 6])
    if vr in SHORT_VRS:
        return vr, _SHORT.unpack_from(buffer, position + 6)[0], position + 8
    if vr in LONG_VRS and position + 12 <= limit:
        return vr, _LONG.unpack_from(buffer, position + 8)[0], position + 12
    raise _Unusual


def _items(buffer: memoryview, position: int, end: int | None, explicit: bool, depth: int) -> int:
    """Walk a sequence's items from ``position`` to ``end`` (None: to its delimiter)."""
    limit = len(buffer) if end is None else end
    while end is None or position < end:
        if position + 8 > limit:
            raise _Unusual
        group, element = _TAG.unpack_from(buffer, position)
        tag = group << 16 | element
        length = _LONG.unpack_from(buffer, position + 4)[0]
        if tag == SEQUENCE_DELIMITER and end is None and length == 0:
            return position + 8
        if tag != ITEM:
            raise _Unusual
        if length == UNDEFINED:
            position = _elements(buffer, position + 8, None, explicit, depth)
        else:
            item_end = position + 8 + length
            if item_end > limit:
                raise _Unusual
            position = _elements(buffer, position + 8, item_end, explicit, depth)
    if position != end:
        raise _Unusual
    return position


def _is_sequence(tag: int) -> bool:
    """Implicit VR: whether the data dictionary says the element is a sequence."""
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False  # a private or unknown element: pydicom reads it as bytes (UN)
