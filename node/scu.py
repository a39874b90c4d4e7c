"""Storage SCU: send one DICOM file to one destination by C-STORE.

:func:`send_file` opens an association with the destination, proposes the
file's SOP class with its own transfer syntax (plus explicit and implicit VR
little endian), sends it, and releases.  Every way it can go wrong ends in
:class:`DeliveryError` with a reason a person can read:

- the association is rejected, aborted or cannot be opened;
- no presentation context for the SOP class is accepted;
- no response arrives (DIMSE / network timeout);
- the peer answers a *failure* status (for example 0xA700 out of resources,
  0xC000 cannot understand).  A *warning* status (coercion, elements
  discarded) means the peer stored the object: that counts as delivered.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.status import code_to_category

from config.errors import DeliveryError
from config.schema import NodeConfig
from node.ae import make_ae
from storage.outbox import Target

LOGGER = logging.getLogger(__name__)

SUCCESS, WARNING = "Success", "Warning"


def send_file(path: Path, target: Target, config: NodeConfig) -> int:
    """C-STORE the file at ``path`` to ``target``; return the status (Success or Warning)."""
    dataset = _read(path)
    ae = _application_entity(dataset, config)
    try:
        assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    except (OSError, RuntimeError, ValueError) as exc:
        raise DeliveryError(f"{_name(target)}: cannot associate: {exc}") from exc
    if not assoc.is_established:
        raise DeliveryError(f"{_name(target)}: {_why_not_established(assoc)}")
    try:
        return _store(assoc, dataset, target)
    finally:
        if assoc.is_established:
            assoc.release()


def _store(assoc: object, dataset: Dataset, target: Target) -> int:
    try:
        response = assoc.send_c_store(dataset)  # type: ignore[attr-defined]
    except (
        ValueError,
        RuntimeError,
        AttributeError,
    ) as exc:  # no accepted context, bad dataset
        raise DeliveryError(f"{_name(target)}: C-STORE not possible: {exc}") from exc
    if "Status" not in response:
        raise DeliveryError(
            f"{_name(target)}: no C-STORE response (connection lost, aborted or timed out)"
        )
    status = int(response.Status)
    category = code_to_category(status)
    if category not in (SUCCESS, WARNING):
        comment = f" ({response.ErrorComment})" if "ErrorComment" in response else ""
        raise DeliveryError(
            f"{_name(target)}: C-STORE {category.lower()} status 0x{status:04X}{comment}"
        )
    if category == WARNING:
        LOGGER.warning(
            "%s stored %s with warning status 0x%04X",
            _name(target),
            dataset.SOPInstanceUID,
            status,
        )
    return status


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as exc:
        raise DeliveryError(f"result file {path} cannot be read: {exc}") from exc


def _application_entity(dataset: Dataset, config: NodeConfig) -> AE:
    ae = make_ae(config)
    syntaxes = [
        dataset.file_meta.TransferSyntaxUID,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
    ]
    ae.add_requested_context(dataset.SOPClassUID, list(dict.fromkeys(syntaxes)))
    return ae


def _why_not_established(assoc: object) -> str:
    if getattr(assoc, "is_rejected", False):
        return "association rejected (is our AE title known to the peer, and its AE title right?)"
    if getattr(assoc, "is_aborted", False):
        return "association aborted by the peer"
    return "association could not be established (peer unreachable or not answering)"


def _name(target: Target) -> str:
    return f"{target.ae_title}@{target.host}:{target.port}"
