"""The Application Entity: which SOP classes and transfer syntaxes the SCP accepts.

* Verification (C-ECHO).
* Every SOP class in ``receive.segment_sop_classes`` (MR and Enhanced MR by
  default); with ``receive.accept_other_images`` also every other *Image
  Storage* class pynetdicom knows (CT, PET, secondary capture, ... of a routed
  study: stored, not segmented).  Non-image objects (SR, SEG, RT Structure Set,
  presentation states) are not accepted, so the node's own results routed back
  to it are refused at negotiation instead of becoming series.
* Transfer syntaxes: implicit and explicit VR little endian, deflated explicit
  VR little endian, JPEG baseline / extended / lossless (process 14 and SV1),
  JPEG-LS lossless and near-lossless, JPEG 2000 lossless and lossy, RLE lossless.
  The SCP stores the bytes as received and never transcodes.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, sop_class
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config.schema import NodeConfig

TRANSFER_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: out of reach: node.transport enforces network.maximum_associations instead
PYNETDICOM_MAXIMUM_ASSOCIATIONS = 1_000_000

#: every "... Image Storage ..." SOP class pynetdicom knows, by UID
IMAGE_STORAGE_CLASSES: tuple[str, ...] = tuple(
    sorted(
        {
            str(getattr(sop_class, name))
            for name in dir(sop_class)
            if "ImageStorage" in name and not name.startswith("_")
        }
    )
)


def accepted_sop_classes(config: NodeConfig) -> tuple[str, ...]:
    """The storage SOP classes the SCP negotiates, segmented ones first."""
    classes = list(dict.fromkeys(config.receive.segment_sop_classes))
    if config.receive.accept_other_images:
        classes += [uid for uid in IMAGE_STORAGE_CLASSES if uid not in classes]
    return tuple(classes)


def make_ae(config: NodeConfig) -> AE:
    """Our AE title with the configured timeouts: the one factory for SCP and SCU alike."""
    ae = AE(ae_title=config.ae_title)
    ae.acse_timeout = config.network.acse_timeout
    ae.dimse_timeout = config.network.dimse_timeout
    ae.network_timeout = config.network.network_timeout
    return ae


def build_ae(config: NodeConfig) -> AE:
    """An AE configured as the node's Storage SCP (not yet listening)."""
    ae = make_ae(config)
    # node.transport counts admitted associations exactly; pynetdicom's count of live threads
    # (negotiating and tearing-down ones included) rejected peers of bursts below the limit
    ae.maximum_associations = PYNETDICOM_MAXIMUM_ASSOCIATIONS
    ae.maximum_pdu_size = config.network.maximum_pdu_size
    # node.handlers.handle_requested rejects first, with a log line; these stay as a backstop
    ae.require_called_aet = True
    if not config.accepts_any_calling_ae:
        ae.require_calling_aet = [peer.ae_title for peer in config.peers]
    ae.add_supported_context(Verification)
    for uid in accepted_sop_classes(config):
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
    return ae
