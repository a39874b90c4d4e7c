"""Outbox + Storage SCU + delivery service against real peers: dcmtk storescp and pynetdicom SCPs."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import peewee
import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    RTStructureSetStorage,
    SegmentationStorage,
)
from pynetdicom.status import Status

from config.errors import DeliveryError
from config.schema import NodeConfig
from node.delivery import DeliveryService
from node.scu import send_file
from storage import outbox
from tests.helpers import dcmtk, free_port

Comprehensive3DSRStorage = "1.2.840.10008.5.1.4.1.1.88.34"
OUT_OF_RESOURCES = 0xA700


class RecordingSCP:
    """A pynetdicom Storage SCP answering the statuses it is told to, and recording what it got."""

    def __init__(
        self,
        statuses: list[int] | None = None,
        require_calling_aet: list[str] | None = None,
    ):
        self.statuses = list(statuses or [])
        self.received: list[pydicom.Dataset] = []
        self.port = free_port()
        ae = AE(ae_title="DEST")
        for uid in (
            RTStructureSetStorage,
            SegmentationStorage,
            ComprehensiveSRStorage,
            Comprehensive3DSRStorage,
        ):
            ae.add_supported_context(uid)
        if require_calling_aet:
            ae.require_calling_aet = require_calling_aet
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event: evt.Event) -> int:
        status = self.statuses.pop(0) if self.statuses else int(Status.SUCCESS)
        if status in (0x0000, 0xB000):
            self.received.append(event.dataset)
        return status

    def target(self) -> outbox.Target:
        return outbox.Target("DEST", "127.0.0.1", self.port)

    def close(self) -> None:
        assert self.server is not None
        self.server.shutdown()


@pytest.fixture
def scp() -> Iterator[RecordingSCP]:
    server = RecordingSCP()
    yield server
    server.close()


def config(**delivery: float) -> NodeConfig:
    settings = {
        "max_attempts": 3,
        "backoff_initial_seconds": 2,
        "backoff_max_seconds": 5,
        **delivery,
    }
    return NodeConfig.model_validate(
        {
            "ae_title": "AINODE",
            "delivery": settings,
            "network": {"acse_timeout": 5, "dimse_timeout": 5},
        }
    )


def _deliver_all(service: DeliveryService, until: float = 20.0) -> None:
    deadline = time.time() + until
    while (
        time.time() < deadline
        and outbox.Delivery.select()
        .where(
            outbox.Delivery.state.in_(outbox.DUE_STATES),
            outbox.Delivery.next_at <= time.time(),
        )
        .exists()
    ):
        service.run_once()


def test_send_to_dcmtk_storescp(
    tmp_path: Path, node_db: peewee.Database, result_files: dict[str, Path]
) -> None:
    storescp = dcmtk("storescp")
    if storescp is None:
        pytest.skip("dcmtk storescp is not installed")
    port, received = free_port(), tmp_path / "storescp"
    received.mkdir()
    process = subprocess.Popen(
        [storescp, "-aet", "STORESCP", "--output-directory", str(received), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port)
        target = outbox.Target("STORESCP", "127.0.0.1", port)
        files = [(kind, path) for kind, path in result_files.items()]
        outbox.enqueue(files, [target], job_id=1)
        _deliver_all(DeliveryService(config()))
        states = [d.state for d in outbox.Delivery.select()]
        assert states == [outbox.SENT] * 3
        got = {pydicom.dcmread(p).SOPInstanceUID for p in received.iterdir()}
        assert got == {pydicom.dcmread(p).SOPInstanceUID for p in result_files.values()}
    finally:
        process.terminate()
        process.wait(10)


def test_failure_status_backs_off_then_dies_then_retry_delivers(
    node_db: peewee.Database, result_files: dict[str, Path]
) -> None:
    scp = RecordingSCP(statuses=[OUT_OF_RESOURCES] * 3)
    try:
        cfg = config()
        (delivery,) = outbox.enqueue(
            [("rtstruct", result_files["rtstruct"])], [scp.target()], job_id=7
        )
        service = DeliveryService(cfg)
        t0 = time.time()
        assert service.run_once() == 1
        row = outbox.Delivery.get_by_id(delivery.id)
        assert (row.state, row.attempts) == (outbox.RETRYING, 1)
        assert "0xA700" in row.reason
        assert row.next_at == pytest.approx(t0 + 2, abs=1.0)
        assert service.run_once() == 0  # not due yet: back-off is respected
        outbox.Delivery.update(next_at=0).execute()
        service.run_once()
        row = outbox.Delivery.get_by_id(delivery.id)
        assert (row.state, row.attempts) == (outbox.RETRYING, 2)
        assert row.next_at - time.time() == pytest.approx(4, abs=1.0)  # 2 s doubled
        outbox.Delivery.update(next_at=0).execute()
        service.run_once()
        row = outbox.Delivery.get_by_id(delivery.id)
        assert (row.state, row.attempts) == (outbox.DEAD, 3)
        assert scp.received == []
        assert outbox.retry_dead() == 1
        service.run_once()
        row = outbox.Delivery.get_by_id(delivery.id)
        assert row.state == outbox.SENT and len(scp.received) == 1
    finally:
        scp.close()


def test_backoff_is_capped() -> None:
    settings = config(backoff_initial_seconds=2, backoff_max_seconds=5).delivery
    assert [outbox.backoff_seconds(n, settings) for n in range(1, 6)] == [2, 4, 5, 5, 5]


def test_warning_status_counts_as_delivered(
    node_db: peewee.Database, result_files: dict[str, Path]
) -> None:
    scp = RecordingSCP(statuses=[0xB000])
    try:
        assert send_file(result_files["seg"], scp.target(), config()) == 0xB000
        assert len(scp.received) == 1
    finally:
        scp.close()


@pytest.mark.parametrize("status", [0xA700, 0xC000, 0xA900, 0x0122])
def test_failure_statuses_raise(result_files: dict[str, Path], status: int) -> None:
    scp = RecordingSCP(statuses=[status])
    try:
        with pytest.raises(DeliveryError, match=f"0x{status:04X}"):
            send_file(result_files["sr"], scp.target(), config())
    finally:
        scp.close()


def test_rejected_and_unreachable_peers(result_files: dict[str, Path]) -> None:
    scp = RecordingSCP(require_calling_aet=["SOMEONE"])
    try:
        with pytest.raises(DeliveryError, match="rejected"):
            send_file(result_files["rtstruct"], scp.target(), config())
    finally:
        scp.close()
    with pytest.raises(DeliveryError, match="DEST@127.0.0.1"):
        send_file(
            result_files["rtstruct"],
            outbox.Target("DEST", "127.0.0.1", free_port()),
            config(),
        )


def test_restart_resumes_an_interrupted_attempt(
    node_db: peewee.Database, scp: RecordingSCP, result_files: dict[str, Path]
) -> None:
    outbox.enqueue([("rtstruct", result_files["rtstruct"])], [scp.target()], job_id=3)
    claimed = outbox.claim_next()  # the process "crashes" while sending
    assert claimed is not None
    assert outbox.Delivery.get_by_id(claimed.id).state == outbox.SENDING
    assert outbox.claim_next() is None  # one attempt at a time
    service = DeliveryService(config(poll_interval_seconds=0.1))
    service.start()  # recovers, then sends in its thread
    try:
        deadline = time.time() + 20
        while time.time() < deadline and outbox.Delivery.get_by_id(claimed.id).state != outbox.SENT:
            time.sleep(0.1)
    finally:
        service.stop()
    row = outbox.Delivery.get_by_id(claimed.id)
    # the interrupted attempt is counted (it might have reached the peer), and said so
    assert (row.state, row.attempts, row.interrupted) == (outbox.SENT, 2, 1)
    assert len(scp.received) == 1


class _Killed(BaseException):
    """Ends a sender thread mid-send the way a kill would: nothing after it runs."""


def test_a_crash_mid_send_interrupts_only_the_delivery_being_sent(
    node_db: peewee.Database,
    scp: RecordingSCP,
    result_files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11, defect 2: ``interrupted`` counted every row the sender had claimed (up to
    10), not only the one it was sending, so it over-stated the possible duplicates."""
    files = [("rtstruct", result_files["rtstruct"]), ("seg", result_files["seg"])]
    outbox.enqueue(files, [scp.target()], job_id=4)
    in_flight: list[list[str]] = []
    killed = threading.Event()

    def killed_mid_send(*_args: object) -> None:
        in_flight.append([d.state for d in outbox.Delivery.select().order_by(outbox.Delivery.id)])
        killed.set()
        raise _Killed()

    monkeypatch.setattr("node.delivery.send_file", killed_mid_send)
    monkeypatch.setattr(threading, "excepthook", lambda _args: None)  # the "kill" is expected
    service = DeliveryService(config(poll_interval_seconds=30))  # one poll: one sender
    service.start()
    try:
        assert killed.wait(20)
    finally:
        service.stop()
    assert in_flight == [[outbox.SENDING, outbox.PENDING]]  # only the one being sent
    assert outbox.recover_in_flight() == 1  # the restart
    rows = list(outbox.Delivery.select().order_by(outbox.Delivery.id))
    assert [(r.attempts, r.interrupted) for r in rows] == [(1, 1), (0, 0)]


def test_concurrent_claims_never_share_a_delivery(
    node_db: peewee.Database, result_files: dict[str, Path]
) -> None:
    targets = [outbox.Target(f"D{n}", "127.0.0.1", 104) for n in range(15)]
    outbox.enqueue([("rtstruct", result_files["rtstruct"])], targets)
    claimed: list[int] = []
    lock = threading.Lock()

    def claim() -> None:
        while True:
            got = outbox.claim_next()
            if got is None:
                return
            with lock:
                claimed.append(got.id)

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == sorted(d.id for d in outbox.Delivery.select())


def test_destinations_from_configuration() -> None:
    cfg = NodeConfig.model_validate(
        {
            "peers": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242}],
            "destinations": [
                {"reply_to_sender": True},
                {"ae_title": "ARCHIVE", "host": "10.0.0.9", "port": 104},
            ],
        }
    )
    assert outbox.resolve_targets(cfg, "ORTHANC") == [
        outbox.Target("ORTHANC", "127.0.0.1", 4242, "reply_to_sender"),
        outbox.Target("ARCHIVE", "10.0.0.9", 104, "fixed"),
    ]
    assert outbox.resolve_targets(cfg, "STRANGER") == [outbox.Target("ARCHIVE", "10.0.0.9", 104)]
    only_reply = NodeConfig.model_validate({})
    with pytest.raises(DeliveryError, match="STORESCU"):
        outbox.resolve_targets(only_reply, "STORESCU")


def _wait_for_port(port: int, timeout: float = 10.0) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port}")
