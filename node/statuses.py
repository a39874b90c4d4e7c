"""The C-STORE statuses the node answers, each chosen on purpose (PS3.4 Annex B.2.3).

pynetdicom's :class:`~pynetdicom.status.Status` names only a few codes, so the
Storage ones the node uses are named here and registered on it too; every code
lies in a range that ``pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS`` knows.

=========================  ======  ==================================================
name                       code    when
=========================  ======  ==================================================
SUCCESS                    0x0000  the instance is durably stored (or was already)
OUT_OF_RESOURCES           0xA700  disk below ``receive.min_free_disk_mb``, an I/O
                                   error, or the database stayed busy; nothing kept
DATA_SET_DOES_NOT_MATCH    0xA900  the dataset's SOPClassUID / SOPInstanceUID differ
                                   from the C-STORE request's Affected SOP Class /
                                   Instance UID
CANNOT_UNDERSTAND          0xC210  the dataset cannot be parsed, or lacks SOPClassUID,
                                   SOPInstanceUID, StudyInstanceUID or SeriesInstanceUID
(pynetdicom)               0xC211  the handler raised (a bug): pynetdicom's own answer
INVALID_UID                0xC212  one of those UIDs is not a valid UID (longer than 64,
                                   not digits and dots, ``/`` or ``..``): no file written
UID_CONFLICT               0xC213  the SOP Instance UID is already stored in another
                                   series
=========================  ======  ==================================================
"""

from __future__ import annotations

from pynetdicom.status import Status

SUCCESS = int(Status.SUCCESS)
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210
INVALID_UID = 0xC212
UID_CONFLICT = 0xC213

for _name, _code in (
    ("OUT_OF_RESOURCES", OUT_OF_RESOURCES),
    ("DATA_SET_DOES_NOT_MATCH", DATA_SET_DOES_NOT_MATCH),
    ("CANNOT_UNDERSTAND", CANNOT_UNDERSTAND),
    ("INVALID_UID", INVALID_UID),
    ("UID_CONFLICT", UID_CONFLICT),
):
    if not hasattr(Status, _name):
        Status.add(_name, _code)
