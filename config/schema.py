"""Typed, frozen schema of ``ae_config.yaml``.

Every section is a frozen pydantic model that forbids unknown keys, so a typo
is a start-up error instead of a silently ignored setting.  The README
documents each key; keep the two in step.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable, no backslash

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"

OutputKind = Literal["rtstruct", "seg", "sr", "report"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_ae_title(value: str) -> str:
    if not AE_TITLE_RE.match(value) or not value.strip():
        raise ValueError("must be 1-16 printable characters, no backslash")
    return value.strip()


class Peer(_Section):
    """A remote Application Entity that may send to us and receive our replies."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    #: the peer must connect over TLS (refused in clear), and replies to it use TLS
    tls: bool = False

    _ae = field_validator("ae_title")(_check_ae_title)


class Destination(_Section):
    """Where results go: either back to the sender (looked up in ``peers``) or a fixed AE."""

    reply_to_sender: bool = False
    ae_title: str | None = None
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    #: a fixed destination is sent to over TLS (reply_to_sender follows the peer's own ``tls``)
    tls: bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> Destination:
        fixed = (self.ae_title, self.host, self.port)
        if self.reply_to_sender and any(v is not None for v in fixed):
            raise ValueError("reply_to_sender excludes ae_title/host/port")
        if not self.reply_to_sender and any(v is None for v in fixed):
            raise ValueError("a fixed destination needs ae_title, host and port")
        if self.ae_title is not None:
            _check_ae_title(self.ae_title)
        return self


class Completion(_Section):
    idle_seconds: float = Field(default=10.0, gt=0)
    check_interval_seconds: float = Field(default=0.5, gt=0)


class Network(_Section):
    acse_timeout: float = Field(default=30.0, gt=0)
    dimse_timeout: float = Field(default=60.0, gt=0)
    network_timeout: float = Field(default=60.0, gt=0)
    maximum_associations: int = Field(default=10, ge=1)
    #: largest P-DATA PDU we accept (advertised); 0: no limit advertised (see node/limits.py)
    maximum_pdu_size: int = Field(default=4 * 1024 * 1024, ge=0)
    #: a listed peer must also connect from the address its ``host`` resolves to
    verify_peer_address: bool = True
    #: seconds from TCP accept (TLS handshake included) to A-ASSOCIATE-AC: one total deadline
    negotiation_timeout: float = Field(default=10.0, gt=0)
    #: connections still negotiating (own pool, not counted in maximum_associations)
    max_pending_associations: int = Field(default=32, ge=1)
    #: concurrent connections (negotiating or established) from one source address
    max_connections_per_host: int = Field(default=16, ge=1)


class Receive(_Section):
    """What the Storage SCP accepts and which of it is segmented."""

    accept_other_images: bool = True
    segment_sop_classes: tuple[str, ...] = (MR_IMAGE_STORAGE, ENHANCED_MR_IMAGE_STORAGE)
    min_free_disk_mb: int = Field(default=200, ge=0)
    #: largest instance accepted (bytes on the wire, and inflated size of a deflated dataset)
    max_instance_mb: int = Field(default=512, ge=1)


class Tls(_Section):
    """TLS for the SCP (``enabled``) and for the SCU to peers/destinations with ``tls: true``."""

    enabled: bool = False
    #: TLS on its own port, the clear ``port`` staying open; unset: ``port`` speaks TLS only
    port: int | None = Field(default=None, ge=1, le=65535)
    certificate: Path | None = None
    private_key: Path | None = None
    #: CA certificates (PEM) that verify peers: clients (mutual TLS) and servers we send to
    ca_certificates: Path | None = None
    require_client_certificate: bool = False
    minimum_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"

    @model_validator(mode="after")
    def _complete(self) -> Tls:
        if self.enabled and (self.certificate is None or self.private_key is None):
            raise ValueError("enabled needs certificate and private_key")
        if self.require_client_certificate and self.ca_certificates is None:
            raise ValueError("require_client_certificate needs ca_certificates")
        return self


class Gating(_Section):
    """Which complete series are segmented: the rules a site running a T1c model expects.

    A series that fails a rule is kept and not segmented; its job is ``skipped``
    with the rule's name and reason, and nothing is sent.  Patterns are Python
    regular expressions, matched case-insensitively against SeriesDescription
    and ProtocolName.
    """

    enabled: bool = True
    modalities: tuple[str, ...] = ("MR",)
    #: T1 post-contrast evidence is required: ContrastBolusAgent, or a description/protocol match
    require_contrast: bool = True
    contrast_patterns: tuple[str, ...] = (
        r"\bpost\b",
        r"\+\s*c\b",
        r"\bc\+",
        r"\bgd\b",
        r"\bgad",
        r"contrast",
        r"\bt1\s*c\b",
        r"\bt1ce\b",
        r"\bce\b",
    )
    #: a description/protocol naming another sequence or a pre-contrast series is refused
    exclude_patterns: tuple[str, ...] = (
        r"\bpre\b",
        r"\bnative\b",
        r"\bw/?o\b",
        r"without",
        r"flair",
        r"\bdwi\b",
        r"diffusion",
        r"\badc\b",
        r"\btrace\b",
        r"\bt2\b",
        r"\bswi\b",
        r"localizer",
        r"localiser",
        r"\bscout\b",
        r"\bsurvey\b",
        r"\bperfusion\b",
    )
    #: ImageType values that mark a series as not a diagnostic T1 volume
    exclude_image_types: tuple[str, ...] = ("LOCALIZER", "DIFFUSION", "ADC", "TRACEW", "SCOUT")
    #: RANO-BM: measurable lesions need slices of 5 mm or thinner
    max_slice_thickness_mm: float = Field(default=5.0, gt=0)
    min_slices: int = Field(default=20, ge=1)
    #: extent along the slice normal (slices x spacing)
    min_coverage_mm: float = Field(default=80.0, ge=0)

    @field_validator("contrast_patterns", "exclude_patterns")
    @classmethod
    def _compiles(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from exc
        return patterns


class Delivery(_Section):
    max_attempts: int = Field(default=8, ge=1)
    backoff_initial_seconds: float = Field(default=2.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    poll_interval_seconds: float = Field(default=0.5, gt=0)


class Retention(_Section):
    """Received images are removed a number of days after their results were delivered.

    ``days_after_delivery`` unset (the default): kept until ``ai-node purge``.  Outputs, job
    and delivery rows and the follow-up record are kept either way (storage/purge.py).
    """

    days_after_delivery: float | None = Field(default=None, ge=0)
    #: how often ``ai-node serve`` looks for series to purge
    check_interval_seconds: float = Field(default=3600.0, gt=0)


class UNETRParams(_Section):
    """Every constructor hyperparameter of ``monai.networks.nets.UNETR``."""

    in_channels: int = Field(default=1, ge=1)
    out_channels: int = Field(default=2, ge=1)
    img_size: tuple[int, int, int] = (96, 96, 96)
    feature_size: int = Field(default=16, ge=1)
    hidden_size: int = Field(default=768, ge=1)
    mlp_dim: int = Field(default=3072, ge=1)
    num_heads: int = Field(default=12, ge=1)
    proj_type: Literal["conv", "perceptron"] = "conv"
    norm_name: str = "instance"
    res_block: bool = True
    dropout_rate: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _heads_divide(self) -> UNETRParams:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        return self


class Intensity(_Section):
    """zscore: over non-zero voxels; range: a_min..a_max -> b_min..b_max;
    percentile: lower..upper percentile of the volume -> b_min..b_max."""

    mode: Literal["zscore", "range", "percentile"] = "zscore"
    a_min: float = 0.0
    a_max: float = 1.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    lower_percentile: float = Field(default=1.0, ge=0, le=100)
    upper_percentile: float = Field(default=99.0, ge=0, le=100)


class Preprocessing(_Section):
    orientation: str = "RAS"
    spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
    intensity: Intensity = Intensity()
    crop_foreground: bool = False

    @field_validator("orientation")
    @classmethod
    def _axcodes(cls, v: str) -> str:
        v = v.upper()
        axis = {"L": 0, "R": 0, "A": 1, "P": 1, "S": 2, "I": 2}
        if len(v) != 3 or any(c not in axis for c in v) or len({axis[c] for c in v}) != 3:
            raise ValueError("must be three axis codes such as RAS or LPS")
        return v


class SlidingWindow(_Section):
    roi_size: tuple[int, int, int] = (96, 96, 96)
    overlap: float = Field(default=0.25, ge=0, lt=1)
    sw_batch_size: int = Field(default=2, ge=1)
    mode: Literal["gaussian", "constant"] = "gaussian"


class Postprocessing(_Section):
    lesion_channel: int = Field(default=1, ge=0)
    method: Literal["argmax", "threshold"] = "argmax"
    threshold: float = Field(default=0.5, ge=0, le=1)
    min_lesion_mm3: float = Field(default=10.0, ge=0)
    min_peak_probability: float = Field(default=0.0, ge=0, lt=1)
    #: a component is kept only when its 90th-percentile intensity reaches this multiple of the
    #: brain's median intensity and of its surroundings' median (2-5 mm outside it): an
    #: enhancing lesion is brighter than both; needs ``brain_mask``; 0: off
    min_enhancement_ratio: float = Field(default=0.0, ge=0)
    #: ... and this multiple of the bright tissue near it (the 90th percentile 3-15 mm outside
    #: it, inside the grown brain mask): white matter beside a dark ventricle is not enhancing;
    #: needs ``brain_mask``; 0: off
    min_local_enhancement_ratio: float = Field(default=0.0, ge=0)
    #: a kept lesion's edge: its surroundings' median plus this fraction of the way to its bright
    #: part (holes filled, so a ring keeps its core); needs ``brain_mask``; 0: the network's edge
    edge_fraction: float = Field(default=0.0, ge=0, lt=1)


class BrainMask(_Section):
    """Brain extraction before lesion extraction: nothing outside the (dilated) mask is output.

    Off by default in the schema, so a configuration written for another model keeps its
    behaviour; the shipped ``ae_config.yaml`` turns it on for the demo model.
    """

    enabled: bool = False
    method: Literal["deepbet", "none"] = "deepbet"
    #: deepbet's brain probability is cut here
    threshold: float = Field(default=0.5, gt=0, lt=1)
    #: the mask is grown by this much so lesions at the cortical surface stay inside
    margin_mm: float = Field(default=5.0, ge=0, le=50)
    #: a component with less than this fraction of its voxels inside the grown mask is dropped
    min_inside_fraction: float = Field(default=0.5, gt=0, le=1)
    #: the sliding window runs on the grown mask's bounding box only
    crop_sliding_window: bool = True
    #: plausible brain volume; outside it the job fails (only the upper bound for partial coverage)
    min_volume_ml: float = Field(default=800.0, ge=0)
    max_volume_ml: float = Field(default=2600.0, gt=0)
    #: the mask's median intensity must be this multiple of the median outside it (0: off);
    #: deepbet finds a confident "brain" of plausible volume in pure noise
    min_contrast_ratio: float = Field(default=2.0, ge=0)

    @model_validator(mode="after")
    def _volume_range(self) -> BrainMask:
        if self.min_volume_ml >= self.max_volume_ml:
            raise ValueError(
                f"min_volume_ml {self.min_volume_ml} must be below max_volume_ml {self.max_volume_ml}"
            )
        return self

    @property
    def active(self) -> bool:
        return self.enabled and self.method != "none"


class Model(_Section):
    """The segmentation model and everything needed to run it the same way every time."""

    name: str = "ai-node demo UNETR"
    version: str = "0.3.0"
    architecture: Literal["UNETR"] = "UNETR"
    weights: Path = Path("models/demo_unetr/weights.pt")
    format: Literal["auto", "state_dict", "checkpoint", "torchscript"] = "auto"
    unetr: UNETRParams = UNETRParams()
    preprocessing: Preprocessing = Preprocessing()
    sliding_window: SlidingWindow = SlidingWindow()
    postprocessing: Postprocessing = Postprocessing()
    brain_mask: BrainMask = BrainMask()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    validated_for_clinical_use: bool = False

    @model_validator(mode="after")
    def _channel_exists(self) -> Model:
        if self.postprocessing.lesion_channel >= self.unetr.out_channels:
            raise ValueError(
                f"postprocessing.lesion_channel {self.postprocessing.lesion_channel} "
                f"does not exist with unetr.out_channels {self.unetr.out_channels}"
            )
        return self


class Worker(_Section):
    task: str = "jobs.task:segment_job"
    poll_interval_seconds: float = Field(default=0.5, gt=0)
    #: worker processes that ``ai-node serve`` supervises (0: queue only, no worker)
    processes: int = Field(default=1, ge=0)
    #: a job whose worker process died this many times is failed instead of re-queued
    max_attempts: int = Field(default=3, ge=1)


UID_ROOT_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # PS3.5 9.1, no trailing dot


class Dicom(_Section):
    """How the DICOM outputs are identified and laid out."""

    #: the organisation's UID root for new UIDs; at most 24 characters, so a generated
    #: UID keeps 39 random digits within 64; unset: UUID-derived "2.25." UIDs
    uid_root: str | None = Field(default=None, max_length=24)
    #: write every SEG frame, empty ones too (some viewers misplace sparse SEGs' overlays)
    seg_keep_empty_frames: bool = False

    @field_validator("uid_root")
    @classmethod
    def _uid_root(cls, v: str | None) -> str | None:
        if v is not None and not UID_ROOT_RE.match(v):
            raise ValueError(
                f"{v!r} is not a UID root: digits and dots, no leading zero, no trailing dot"
            )
        return v


class Metrics(_Section):
    """``ai-node serve``'s HTTP endpoint: Prometheus ``/metrics`` and ``/healthz``.

    Loopback only unless ``allow_non_loopback`` says otherwise: the endpoint has no
    authentication (put a reverse proxy with TLS in front of it to publish it).
    """

    enabled: bool = False
    bind: str = "127.0.0.1"
    #: 0: any free port (the one chosen is logged)
    port: int = Field(default=9110, ge=0, le=65535)
    allow_non_loopback: bool = False

    @model_validator(mode="after")
    def _loopback_only(self) -> Metrics:
        if not ipaddress.ip_address(self.bind).is_loopback and not self.allow_non_loopback:
            raise ValueError(
                f"bind {self.bind} is not loopback: the endpoint has no authentication; "
                "set allow_non_loopback: true to publish it anyway"
            )
        return self


class NodeConfig(_Section):
    """The whole of ``ae_config.yaml``."""

    ae_title: str = "AINODE"
    bind: str = "127.0.0.1"
    port: int = Field(default=11112, ge=1, le=65535)
    data_dir: Path = Path("data")
    database_url: str | None = None
    peers: tuple[Peer, ...] = ()
    destinations: tuple[Destination, ...] = (Destination(reply_to_sender=True),)
    completion: Completion = Completion()
    network: Network = Network()
    receive: Receive = Receive()
    delivery: Delivery = Delivery()
    retention: Retention = Retention()
    model: Model = Model()
    outputs: tuple[OutputKind, ...] = ("rtstruct",)
    gating: Gating = Gating()
    dicom: Dicom = Dicom()
    worker: Worker = Worker()
    tls: Tls = Tls()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    #: text: one line per record; json: one JSON object per line (common/logs.py)
    log_format: Literal["text", "json"] = "text"
    metrics: Metrics = Metrics()
    source: Path | None = Field(default=None, exclude=True)

    _ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("bind")
    @classmethod
    def _bind_is_address(cls, v: str) -> str:
        if v in ("localhost", ""):
            return "127.0.0.1" if v == "localhost" else "0.0.0.0"
        ipaddress.ip_address(v)  # raises ValueError with the bad value
        return v

    @model_validator(mode="after")
    def _secure_by_default(self) -> NodeConfig:
        if not self.peers and not self.bind_is_loopback:
            raise ValueError(
                f"bind {self.bind} is not loopback and peers is empty: "
                "list the peers that may send to this node"
            )
        names = [p.ae_title for p in self.peers]
        if len(names) != len(set(names)):
            raise ValueError("peers: each ae_title must appear once")
        if any(p.tls for p in self.peers) and not self.tls.enabled:
            raise ValueError("a peer with tls: true needs tls.enabled (and its certificate)")
        if any(d.tls for d in self.destinations) and self.tls.ca_certificates is None:
            raise ValueError("a destination with tls: true needs tls.ca_certificates")
        return self

    @property
    def bind_is_loopback(self) -> bool:
        return ipaddress.ip_address(self.bind).is_loopback

    @property
    def accepts_any_calling_ae(self) -> bool:
        """Only an empty peer list on a loopback address accepts any caller."""
        return not self.peers and self.bind_is_loopback

    def peer(self, ae_title: str) -> Peer | None:
        return next((p for p in self.peers if p.ae_title == ae_title.strip()), None)

    @property
    def database_path(self) -> Path:
        return self.data_dir / "node.sqlite"
