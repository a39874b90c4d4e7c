"""Campaign 4: resources — slowloris sockets and PDUs that declare huge lengths.

The node lists one peer (``STRESSSCU`` at 127.0.0.1).  While the attack runs, that peer
stores a small series every ``probe_interval`` seconds over its own association; every
probe's outcome and latency is recorded.  The serve process's memory is sampled (VmRSS)
every 0.2 s and its peak (VmHWM) read before and after.

* **slowloris**: ``sockets`` connections each trickle an A-ASSOCIATE-RQ one byte every
  ``trickle_interval`` seconds for ``duration`` seconds; recorded: how long the node kept
  each open (it should close them after ``network.negotiation_timeout``).
* **huge A-ASSOCIATE-RQ**: an A-ASSOCIATE-RQ header declaring 0xFFFFFFFF bytes, then
  junk as fast as the node takes it (at most ``junk_mib``); recorded: bytes the node
  read before closing, time, memory.
* **huge P-DATA-TF**: a real association (Verification), then a P-DATA-TF declaring
  0xFFFFFFF0 bytes and junk after it, as above.

Figures, not only pass/fail: the peak memory growth and whether the listed peer could
store meanwhile.  Invariants: the node survives, the listed peer's probes all succeed,
and the attack's memory growth stays under ``max_growth_mib``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Any

from demo.synthetic.dicom_series import small_series
from tests.stress.harness import (
    LOOPBACK,
    SENDER_AE,
    Sender,
    ServeProcess,
    base_settings,
    connect_raw,
    echo,
    port_pair,
)
from tests.stress.pdu import associate_rq, pdata_header, read_pdu

CHUNK = b"\x5a" * 65536


class Sampler(threading.Thread):
    """Samples the serve process's VmRSS every 0.2 s until stopped."""

    def __init__(self, node: ServeProcess) -> None:
        super().__init__(daemon=True)
        self.node = node
        self.stop_event = threading.Event()
        self.max_rss_kib = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            with contextlib.suppress(OSError):
                self.max_rss_kib = max(self.max_rss_kib, self.node.rss_kib())

    def stop(self) -> int:
        self.stop_event.set()
        self.join(5)
        return self.max_rss_kib


class Prober(threading.Thread):
    """The listed peer stores a fresh 2-instance series every ``interval`` seconds."""

    def __init__(self, node: ServeProcess, root: Path, interval: float) -> None:
        super().__init__(daemon=True)
        self.node, self.root, self.interval = node, root, interval
        self.stop_event = threading.Event()
        self.results: list[tuple[bool, float]] = []

    def run(self) -> None:
        index = 0
        while not self.stop_event.is_set():
            files = small_series(self.root / f"probe{index}", n_slices=2)
            index += 1
            started = time.monotonic()
            sender = Sender(self.node.port, files, calling_ae=SENDER_AE)
            ok = sender.send_pending()
            self.results.append((ok, time.monotonic() - started))
            self.stop_event.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(60)
        latencies = [t for _, t in self.results]
        return {
            "probes": len(self.results),
            "probes_ok": sum(ok for ok, _ in self.results),
            "probe_max_s": round(max(latencies), 2) if latencies else None,
        }


def slowloris(port: int, sockets: int, duration: float, trickle_interval: float) -> dict[str, Any]:
    message = associate_rq(b"AINODE", b"SLOWLORIS")
    opened: list[tuple[socket.socket, float]] = []
    refused = 0
    for _ in range(sockets):
        try:
            opened.append((connect_raw(port, 5), time.monotonic()))
        except OSError:
            refused += 1
    closed_after: list[float] = []
    position = 0
    deadline = time.monotonic() + duration
    alive = list(opened)
    while alive and time.monotonic() < deadline:
        still = []
        for sock, since in alive:
            try:
                sock.sendall(message[position % len(message) : position % len(message) + 1])
                still.append((sock, since))
            except OSError:
                closed_after.append(time.monotonic() - since)
                sock.close()
        alive = still
        position += 1
        time.sleep(trickle_interval)
    for sock, since in alive:  # a last look: did the node close them meanwhile?
        sock.setblocking(False)
        try:
            if sock.recv(1) == b"":
                closed_after.append(time.monotonic() - since)
        except BlockingIOError:
            pass
        except OSError:
            closed_after.append(time.monotonic() - since)
        sock.close()
    return {
        "sockets": sockets,
        "connect_refused": refused,
        "closed_by_node": len(closed_after),
        "open_at_end": len(opened) - len(closed_after),
        "closed_after_s_max": round(max(closed_after), 1) if closed_after else None,
        "bytes_trickled_each": position,
    }


def flood(sock: socket.socket, junk_bytes: int, timeout: float) -> tuple[int, float, str]:
    """Send junk until the node closes, ``junk_bytes`` are sent, or ``timeout`` passes."""
    sent = 0
    started = time.monotonic()
    sock.settimeout(5)
    outcome = "all sent, connection still open"
    while sent < junk_bytes and time.monotonic() - started < timeout:
        try:
            sent += sock.send(CHUNK)
        except TimeoutError:
            outcome = "node stopped reading (send blocked 5 s)"
            break
        except OSError as exc:
            outcome = f"closed by the node ({type(exc).__name__})"
            break
    else:
        if sent >= junk_bytes:
            with contextlib.suppress(OSError):
                sock.settimeout(3)
                if sock.recv(1) == b"":
                    outcome = "all sent, then closed by the node"
    return sent, time.monotonic() - started, outcome


def huge_associate(port: int, junk_mib: int) -> dict[str, Any]:
    with contextlib.closing(connect_raw(port, 5)) as sock:
        head = associate_rq(b"AINODE", SENDER_AE.encode(), declared_length=0xFFFFFFFF)
        sock.sendall(head)
        sent, took, outcome = flood(sock, junk_mib << 20, 60)
    return {
        "declared": "0xFFFFFFFF",
        "junk_sent_mib": round(sent / 2**20, 1),
        "seconds": round(took, 1),
        "outcome": outcome,
    }


def huge_pdata(port: int, junk_mib: int) -> dict[str, Any]:
    with contextlib.closing(connect_raw(port, 5)) as sock:
        sock.sendall(associate_rq(b"AINODE", SENDER_AE.encode()))
        pdu_type, _ = read_pdu(sock, 10)
        if pdu_type != 0x02:
            return {"outcome": f"association not accepted (PDU {pdu_type})"}
        sock.sendall(pdata_header(0xFFFFFFF0))
        sent, took, outcome = flood(sock, junk_mib << 20, 60)
    return {
        "declared": "0xFFFFFFF0",
        "junk_sent_mib": round(sent / 2**20, 1),
        "seconds": round(took, 1),
        "outcome": outcome,
    }


def run(
    root: Path,
    sockets: int,
    duration: float,
    trickle_interval: float,
    junk_mib: int,
    probe_interval: float = 2.0,
    max_growth_mib: int = 256,
) -> dict[str, Any]:
    started = time.monotonic()
    port, peer_port = port_pair()
    settings = base_settings(
        root / "node" / "data",
        port,
        peers=[{"ae_title": SENDER_AE, "host": LOOPBACK, "port": peer_port}],
        worker={"processes": 0},
    )
    node = ServeProcess(root / "node", settings)
    violations: list[str] = []
    phases: dict[str, Any] = {}
    try:
        node.start()
        baseline = small_series(root / "baseline", n_slices=2)
        Sender(node.port, baseline).send_pending()
        hwm_before = node.sample_memory()
        phases["baseline_rss_mib"] = round(node.rss_kib() / 1024, 1)
        for name, attack in (
            ("slowloris", lambda: slowloris(port, sockets, duration, trickle_interval)),
            ("huge_associate_rq", lambda: huge_associate(port, junk_mib)),
            ("huge_pdata", lambda: huge_pdata(port, junk_mib)),
        ):
            sampler, prober = Sampler(node), Prober(node, root / name, probe_interval)
            sampler.start()
            prober.start()
            hwm_start = node.sample_memory()
            try:
                figures = attack()
            except OSError as exc:
                figures = {"outcome": f"attack failed: {exc}"}
            time.sleep(min(2.0, probe_interval))
            probes = prober.stop()
            max_rss = sampler.stop()
            hwm = node.sample_memory()
            figures.update(probes)
            figures["max_rss_mib"] = round(max_rss / 1024, 1)
            figures["vmhwm_mib"] = round(hwm / 1024, 1)
            figures["vmhwm_growth_mib"] = round((hwm - hwm_start) / 1024, 1)
            figures["node_alive"] = node.alive()
            figures["echo_after"] = echo(port, timeout=10)
            phases[name] = figures
            if not figures["node_alive"] or not figures["echo_after"]:
                violations.append(f"{name}: the node stopped answering")
            if probes["probes"] and probes["probes_ok"] < probes["probes"]:
                violations.append(
                    f"{name}: the listed peer could store only {probes['probes_ok']} of "
                    f"{probes['probes']} times meanwhile"
                )
            if figures["vmhwm_growth_mib"] > max_growth_mib:
                violations.append(
                    f"{name}: peak memory grew {figures['vmhwm_growth_mib']} MiB "
                    f"(> {max_growth_mib} MiB)"
                )
        if phases.get("slowloris", {}).get("open_at_end"):
            violations.append(
                f"slowloris: {phases['slowloris']['open_at_end']} trickling socket(s) still open "
                f"after {duration:.0f} s"
            )
        phases["vmhwm_before_mib"] = round(hwm_before / 1024, 1)
        log = node.log_text()
    finally:
        node.stop()
    return {
        "campaign": "resources",
        **phases,
        "tracebacks_in_log": log.count("Traceback"),
        "peak_rss_kib": node.peak_rss_kib,
        "seconds": round(time.monotonic() - started, 1),
        "violations": violations,
    }
