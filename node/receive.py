"""The DIMSE face of ingest: each :class:`storage.ingest.Result` answered with its C-STORE status.

Storage owns the order of work and the guarantee (:mod:`storage.ingest`); this
module only chooses the status, on purpose, for each outcome:

===============  ========================  ======================================
ingest result    status                    why
===============  ========================  ======================================
STORED           SUCCESS 0x0000            durably stored and indexed
DUPLICATE        SUCCESS 0x0000            already stored; the first copy is kept
UNREADABLE       CANNOT_UNDERSTAND 0xC210  not parseable, or a required UID missing
INVALID_UID      INVALID_UID 0xC212        a UID that must not become a path
MISMATCH         DATA_SET_DOES_NOT_MATCH   the request's Affected SOP Class /
                 0xA900                    Instance UID differ from the dataset's
CONFLICT         UID_CONFLICT 0xC213       SOP Instance UID stored in another series
NO_SPACE         OUT_OF_RESOURCES 0xA700   below ``receive.min_free_disk_mb``
WRITE_FAILED     OUT_OF_RESOURCES 0xA700   I/O error; nothing kept
INDEX_FAILED     OUT_OF_RESOURCES 0xA700   the database failed; the file is indexed
                                           at the next start-up (reconciliation)
===============  ========================  ======================================
"""

from __future__ import annotations

from node import statuses
from storage.ingest import Result

STATUS: dict[Result, int] = {
    Result.STORED: statuses.SUCCESS,
    Result.DUPLICATE: statuses.SUCCESS,
    Result.UNREADABLE: statuses.CANNOT_UNDERSTAND,
    Result.INVALID_UID: statuses.INVALID_UID,
    Result.MISMATCH: statuses.DATA_SET_DOES_NOT_MATCH,
    Result.CONFLICT: statuses.UID_CONFLICT,
    Result.NO_SPACE: statuses.OUT_OF_RESOURCES,
    Result.WRITE_FAILED: statuses.OUT_OF_RESOURCES,
    Result.INDEX_FAILED: statuses.OUT_OF_RESOURCES,
}


def status_for(result: Result) -> int:
    """The C-STORE status that answers an ingest result."""
    return STATUS[result]
