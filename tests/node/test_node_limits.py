"""Hostile peers (issue 11): slowloris, floods per host, oversized PDUs and instances, deflate
bombs, bursts at the association limit; and the SCU's reasons when a destination fails.

Real sockets over loopback only; every hostile test is bounded in time and count.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association

from config.errors import DeliveryError
from config.loader import load_config
from node import statuses
from node.scu import send_file
from storage.outbox import Target

MR = UID("1.2.840.10008.5.1.4.1.1.4")
VERIFICATION = "1.2.840.10008.1.1"
GIB = 1024**3


def _ae_field(title: bytes) -> bytes:
    return title.ljust(16, b" ")[:16]


def associate_rq(calling: bytes, called: bytes = b"AINODE") -> bytes:
    """A minimal A-ASSOCIATE-RQ PDU proposing Verification (raw bytes: any AE title)."""

    def item(kind: int, body: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(body)) + body

    context = item(
        0x20,
        bytes((1, 0, 0, 0)) + item(0x30, VERIFICATION.encode()) + item(0x40, b"1.2.840.10008.1.2"),
    )
    user = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + _ae_field(called)
        + _ae_field(calling)
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBL", 1, 0, len(body)) + body


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    return sock


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    """True when the node closes ``sock`` within ``within`` seconds."""
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def _aborted_and_closed(sock: socket.socket, within: float) -> bool:
    """True when the node sends an A-ABORT (or nothing) and closes ``sock`` within ``within`` s."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        return False
    except OSError:
        pass
    return received[:1] in (b"", b"\x07")


def test_slowloris_does_not_lock_out_a_listed_peer(node_factory, tools, tmp_path, caplog) -> None:
    """Ten sockets trickling a byte a second hold no association slot, and are dropped at the
    negotiation deadline however often they send; a listed peer stores meanwhile (storescu)."""
    node = node_factory(
        peers=[{"ae_title": "STORESCU", "host": "127.0.0.1", "port": 104}],
        network={"maximum_associations": 10, "negotiation_timeout": 4},
    )
    rq = associate_rq(b"STORESCU")
    sockets = [_connect(node.port, f"127.0.0.{i + 2}") for i in range(10)]
    accepted = time.monotonic()
    stop = threading.Event()

    def trickle() -> None:
        for index in range(len(rq) - 1):  # never the last byte
            if stop.wait(1.0):
                return
            for sock in sockets:
                try:
                    sock.send(rq[index : index + 1])
                except OSError:
                    pass

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        time.sleep(1.5)  # the trickle has begun
        paths = tools.series_dir(tmp_path / "in", n_slices=2)
        with caplog.at_level(logging.WARNING, logger="node"):
            result = tools.storescu(paths, node.port)
            assert result.returncode == 0, result.stderr
            assert len(tools.stored_sop_uids()) == 2
            closed = [
                _closed_by_peer(s, max(accepted + 4 + 3 - time.monotonic(), 0.1)) for s in sockets
            ]
    finally:
        stop.set()
        thread.join(5)
        for sock in sockets:
            sock.close()
    assert all(closed), "a trickling socket outlived the negotiation deadline"
    assert "no association within 4 s (network.negotiation_timeout)" in caplog.text


def test_per_host_and_pending_limits_close_at_accept(node_factory, caplog) -> None:
    node = node_factory(network={"max_connections_per_host": 3, "max_pending_associations": 5})
    with caplog.at_level(logging.WARNING, logger="node"):
        same_host = [_connect(node.port, "127.0.0.2") for _ in range(4)]
        assert not any(_closed_by_peer(s, 0.5) for s in same_host[:3])
        assert _closed_by_peer(same_host[3], 3)
        others = [_connect(node.port, f"127.0.0.{i}") for i in (3, 4, 5)]  # pending pool: 5
        assert not any(_closed_by_peer(s, 0.5) for s in others[:2])
        assert _closed_by_peer(others[2], 3)
    assert "3 connections from 127.0.0.2 already open" in caplog.text
    for sock in same_host + others:
        sock.close()
    # the pool is free again once they are gone: a peer associates
    tools_assoc = AE(ae_title="LATER")
    tools_assoc.add_requested_context(VERIFICATION)
    deadline = time.monotonic() + 10
    while True:
        assoc = tools_assoc.associate("127.0.0.1", node.port, ae_title="AINODE")
        if assoc.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert assoc.is_established
    assoc.release()


def test_a_burst_up_to_the_limit_is_admitted_exactly(node_factory) -> None:
    """15 concurrent peers against maximum_associations 10: exactly 10 in, 5 rejected
    (transient, local limit); then, those released, a burst of 10 is admitted whole."""
    node = node_factory(network={"maximum_associations": 10})

    def burst(count: int) -> list[Association]:
        barrier = threading.Barrier(count)
        results: list[Association | None] = [None] * count

        def one(index: int) -> None:
            ae = AE(ae_title=f"BURST{index}")
            ae.add_requested_context(VERIFICATION)
            barrier.wait(10)
            results[index] = ae.associate("127.0.0.1", node.port, ae_title="AINODE")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        associations = [a for a in results if a is not None]
        assert len(associations) == count
        return associations

    first = burst(15)
    established = [a for a in first if a.is_established]
    rejected = [a for a in first if a.is_rejected]
    assert len(established) == 10
    assert len(rejected) == 5
    answers = [a.acceptor.primitive for a in rejected]
    assert all(p is not None and p.result == 0x02 for p in answers)  # transient
    assert all(p is not None and p.diagnostic == 0x02 for p in answers)  # local limit
    for assoc in established:
        assoc.release()
    second = burst(10)
    assert sum(a.is_established for a in second) == 10
    for assoc in second:
        if assoc.is_established:
            assoc.release()


def test_calling_ae_with_cr_lf_is_refused_and_never_logged_raw(node_factory, caplog) -> None:
    node = node_factory()
    with caplog.at_level(logging.DEBUG):
        sock = _connect(node.port)
        sock.sendall(associate_rq(b"EVIL\r\nFORGED"))
        sock.settimeout(5)
        answer = sock.recv(10)
        sock.close()
        time.sleep(0.3)
    assert answer[:1] == b"\x03"  # A-ASSOCIATE-RJ; pynetdicom never decoded the raw title
    assert "calling AE title 'EVIL\\x0d\\x0aFORGED' is not a valid AE title" in caplog.text
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and "\r" not in message, message


def _rejection(sock: socket.socket) -> bytes:
    """The 10 bytes of the A-ASSOCIATE-RJ (or whatever PDU) the node answers with."""
    sock.settimeout(5)
    answer = b""
    while len(answer) < 10 and (chunk := sock.recv(10 - len(answer))):
        answer += chunk
    return answer


@pytest.mark.parametrize(
    ("called", "calling", "diagnostic", "said"),
    [
        (b"AINODE", b"", 3, "calling AE title is empty (all spaces)"),
        (b"AINODE", b"\0" * 16, 3, "calling AE title '\\x00"),
        (b"AINODE", b"BAD\x07BELL", 3, "calling AE title 'BAD\\x07BELL' is not a valid"),
        (b"AINODE", b"BACK\\SLASH", 3, "calling AE title 'BACK\\x5cSLASH' is not a valid"),
        (b"AINODE", "CAFÉ".encode("latin-1"), 3, "calling AE title 'CAF\\xc9' is not a valid"),
        (b"", b"TESTSCU", 7, "called AE title is empty (all spaces)"),
        (b"AI\tNODE", b"TESTSCU", 7, "called AE title 'AI\\x09NODE' is not a valid"),
    ],
)
def test_invalid_ae_titles_get_a_rejection_and_one_line(
    node_factory, tools, caplog, called: bytes, calling: bytes, diagnostic: int, said: str
) -> None:
    """Issue 11: an empty title or one with a control character got an A-ABORT and a
    pynetdicom traceback in the log; now an A-ASSOCIATE-RJ (permanent, service user,
    calling/called AE title not recognised) and one WARNING line, and the node serves on."""
    node = node_factory()
    with caplog.at_level(logging.DEBUG):
        with _connect(node.port) as sock:
            sock.sendall(associate_rq(calling, called))
            answer = _rejection(sock)
        time.sleep(0.3)
        echo = tools.associate(node.port)
        assert echo.is_established
        assert echo.send_c_echo().Status == 0
        echo.release()
    assert answer[:1] == b"\x03", answer  # A-ASSOCIATE-RJ
    assert tuple(answer[7:10]) == (1, 1, diagnostic)  # permanent, service user, which title
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in lines if said in r.getMessage()], caplog.text
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert "rejected" in lines[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records)
    assert "Traceback" not in caplog.text


def _implicit_bytes_labelled_explicit(path: Path) -> Path:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName = "MR", "Test^Label"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR, ds.SOPInstanceUID
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, True
    write_dataset(body, ds)
    path.write_bytes(head.getvalue() + body.getvalue())
    return path


def test_implicit_bytes_on_an_explicit_context_are_refused(
    node_factory, tmp_path, caplog, monkeypatch
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes
    node = node_factory()
    path = _implicit_bytes_labelled_explicit(tmp_path / "mislabelled.dcm")
    ae = AE(ae_title="LABELS")
    ae.add_requested_context(MR, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AINODE")
    assert assoc.is_established
    with caplog.at_level(logging.WARNING, logger="node"):
        status = assoc.send_c_store(path)  # the file's bytes as they are
    assoc.release()
    assert int(status.Status) == statuses.CANNOT_UNDERSTAND
    assert "encoded in implicit VR but its transfer syntax 1.2.840.10008.1.2.1" in caplog.text
    assert not list((node.config.data_dir / "instances").rglob("*.dcm"))


# --- memory: the real ai-node serve, its peak RSS read from /proc ---------------------------


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def _deflate_bomb(path: Path, inflated: int) -> Path:
    """A Deflated Explicit VR LE file whose PixelData inflates to ``inflated`` zero bytes."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MR, ds.SOPInstanceUID
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    pixel_header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, b"OB", 0, inflated)
    with path.open("wb") as out:
        out.write(head.getvalue())
        out.write(deflater.compress(body.getvalue() + pixel_header))
        zeros = bytes(16 * 1024 * 1024)
        for _ in range(inflated // len(zeros)):
            out.write(deflater.compress(zeros))
        out.write(deflater.flush())
    return path


def _big_dataset(megabytes: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = MR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MR"
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1024, 512, 16, 16, 15
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    ds.NumberOfFrames = megabytes
    ds.PixelData = bytes(megabytes * 1024 * 1024)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def test_hostile_payloads_keep_the_node_under_1_gb(tools, tmp_path, capsys, monkeypatch) -> None:
    """One real ``ai-node serve`` (receive.max_instance_mb: 64) against: an unauthenticated
    A-ASSOCIATE-RQ declaring 1 GiB (128 MiB actually sent), a P-DATA PDU declaring 1 GiB, an
    instance of 96 MiB (over the limit), a 1 GiB deflate bomb.  Each is refused; the peak
    RSS of the node stays under 1 GB; no temporary file is left behind."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bomb as it is
    spool = tmp_path / "tmp"
    spool.mkdir()
    config_path = tools.write_config(tmp_path, receive={"max_instance_mb": 64})
    port = load_config(config_path).port
    env_before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(spool)  # the serve process spools there
    try:
        process = tools.start_serve(config_path, tmp_path / "serve.log")
    finally:
        if env_before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = env_before
    figures: dict[str, float] = {"idle": _peak_rss_mb(process.pid)}
    try:
        # 1. an A-ASSOCIATE-RQ declaring 1 GiB: closed after its 6-byte header
        sock = _connect(port)
        sock.sendall(struct.pack(">BBL", 1, 0, GIB - 1))
        chunk, sent = bytes(1024 * 1024), 0
        try:
            while sent < 128 * 1024 * 1024:
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        assert sent < 128 * 1024 * 1024, "the node kept reading a 1 GiB A-ASSOCIATE-RQ"
        sock.close()
        figures["1 GiB A-ASSOCIATE-RQ"] = _peak_rss_mb(process.pid)

        # 2. an accepted peer: a P-DATA PDU declaring 1 GiB
        sock = _connect(port)
        sock.sendall(associate_rq(b"HOSTILE"))
        sock.settimeout(5)
        assert sock.recv(1) == b"\x02"  # A-ASSOCIATE-AC
        sock.recv(65536)
        sock.sendall(struct.pack(">BBL", 4, 0, GIB))
        assert _aborted_and_closed(sock, 10)
        sock.close()
        figures["1 GiB P-DATA PDU"] = _peak_rss_mb(process.pid)

        # 3. an instance over receive.max_instance_mb: aborted, nothing stored
        ae = AE(ae_title="BIG")
        ae.add_requested_context(MR, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        response = assoc.send_c_store(_big_dataset(96))
        assert "Status" not in response  # aborted, no status
        # the requestor's reactor thread records the A-ABORT a moment after the call returns
        tools.wait_for(lambda: assoc.is_aborted, timeout=10)
        figures["96 MiB instance (limit 64)"] = _peak_rss_mb(process.pid)

        # 4. a deflate bomb: 1 GiB of zeros in about 1 MB
        bomb = _deflate_bomb(tmp_path / "bomb.dcm", GIB)
        ae = AE(ae_title="BOMB")
        ae.add_requested_context(MR, DeflatedExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
        assert assoc.is_established
        status = assoc.send_c_store(bomb)
        assoc.release()
        assert int(status.Status) == statuses.CANNOT_UNDERSTAND
        figures[f"deflate bomb ({bomb.stat().st_size // 1024} KiB -> 1 GiB)"] = _peak_rss_mb(
            process.pid
        )
    finally:
        tools.stop_serve(process)
    log = (tmp_path / "serve.log").read_text()
    assert "PDU type 0x01 declares 1073741823 bytes" in log
    assert "PDU type 0x04 declares 1073741824 bytes" in log
    assert "a data set of more than 67108864 bytes" in log
    assert "deflated data set inflates to more than 64 MiB" in log
    assert not list((load_config(config_path).data_dir / "instances").rglob("*.dcm"))
    assert list(spool.iterdir()) == [], "a partial data set was left in the temporary directory"
    leftovers = list((load_config(config_path).data_dir / "spool").iterdir())
    assert leftovers == [], "a partial data set was left in the spool"
    with capsys.disabled():
        print("\npeak RSS of ai-node serve (VmHWM, MB):", {k: round(v) for k, v in figures.items()})
    assert max(figures.values()) < 1000, figures


# --- the SCU: what happened, in words -------------------------------------------------------


def _target(port: int, ae_title: str = "DEST") -> Target:
    return Target(ae_title, "127.0.0.1", port)


def _one_file(tools, tmp_path: Path) -> Path:
    return tools.series_dir(tmp_path / "out", n_slices=1)[0]


def _send_error(path: Path, port: int, config) -> str:
    try:
        send_file(path, _target(port), config)
    except DeliveryError as exc:
        return str(exc)
    raise AssertionError("delivered")


def test_scu_says_connection_refused(tools, tmp_path) -> None:
    config = load_config(tools.write_config(tmp_path))
    port = tools.free_port()
    assert "connection refused" in _send_error(_one_file(tools, tmp_path), port, config)


def test_scu_gives_up_on_a_silent_destination_within_acse_timeout(tools, tmp_path) -> None:
    config = load_config(tools.write_config(tmp_path, network={"acse_timeout": 2}))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # accepts TCP (backlog), never answers
        started = time.monotonic()
        reason = _send_error(_one_file(tools, tmp_path), listener.getsockname()[1], config)
        elapsed = time.monotonic() - started
    assert "timed out: no answer to the association request within 2 s" in reason
    assert elapsed < 2 + 10  # gave up within the configured timeout (plus teardown)


def _answering_listener(answer: bytes | None) -> tuple[socket.socket, threading.Thread]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        if answer is not None:
            conn.sendall(answer)
            time.sleep(0.5)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


def test_scu_says_aborted_or_closed_by_the_peer(tools, tmp_path) -> None:
    config = load_config(tools.write_config(tmp_path))
    path = _one_file(tools, tmp_path)
    abort = bytes((0x07, 0, 0, 0, 0, 4, 0, 0, 0x00, 0x00))
    for answer, expected in (
        (abort, "association aborted by the peer"),
        (None, "connection closed by the peer before the association was accepted"),
    ):
        listener, thread = _answering_listener(answer)
        with listener:
            assert expected in _send_error(path, listener.getsockname()[1], config)
        thread.join(5)


def test_scu_says_rejected_with_the_reason(node_factory, tools, tmp_path) -> None:
    node = node_factory()
    reason = _send_error(_one_file(tools, tmp_path), node.port, node.config)  # called AE: DEST
    assert "association rejected (permanent, source 1, reason 7): called AE title" in reason


def test_echo_to_a_closed_port_says_connection_refused(tools, tmp_path) -> None:
    port = tools.free_port()
    result = subprocess.run(
        [
            tools.ai_node_script(),
            "echo",
            f"X@127.0.0.1:{port}",
            "--config",
            str(tools.write_config(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "connection refused" in result.stdout
    assert "aborted" not in result.stdout
