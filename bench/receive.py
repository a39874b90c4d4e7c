"""Benchmark: receive one MR series (189 slices of 256 x 256) into three receivers.

    .venv/bin/python bench/receive.py [--slices 189] [--runs 3] [--only node --only bare]
                                      [--baseline DIR]

The same sender -- a pynetdicom SCU that sends the files as they are, without
decoding them (``STORE_SEND_CHUNKED_DATASET``), one association, one C-STORE at
a time -- sends a freshly generated series (new UIDs every run, so nobody gets a
duplicate) to

  (a) the node: the real ``ai-node serve`` console script, default settings except
      port and data_dir (durable write, SQLite index, completion detector);
  (b) Orthanc 1.10 from the Debian package, with a temporary configuration;
  (c) a bare pynetdicom SCP in its own process that writes each dataset's raw bytes
      to a file and fsyncs it (no rename, no directory fsync, no index): "bare" with
      the node's maximum PDU size (unlimited, the same transport), "bare-16k" with
      pynetdicom's default (16382 bytes, as a bare SCP written from the docs has);
  (d) with ``--baseline DIR``, "node-base": the node of another checkout (e.g.
      ``git archive <commit> | tar -x -C DIR``), run by this interpreter with
      ``PYTHONPATH=DIR``, to compare two versions in the same run.

dcmtk's storescu is *not* the sender: against dcmtk-based receivers (Orthanc) it
stalls ~44 ms per instance (Nagle / delayed ACK), which would measure the sender.

Prints the median time per receiver, instances per second and the ratios,
beside the reference figures from the issue.  The ratio to (c) is the median of
the per-round ratios (each round sends to every receiver in turn, so a round's
receivers see about the same load; on a shared machine compare only ratios of the
same run).  Targets: node >= 10x Orthanc, node at most 1.15x the time of (c).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from demo.synthetic.dicom_series import SeriesSpec, make_affine, write_series

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
NODE_MAXIMUM_PDU_SIZE = 0  # network.maximum_pdu_size's default: no limit
PYNETDICOM_DEFAULT_PDU = 16382
REFERENCE = {"orthanc": 10.0, "bare": 1.3, "slices": 189}  # seconds, from the issue
TARGET_BARE_RATIO = 1.15  # issue 11: the node's time at most 1.15x the bare SCP's


def _test_helpers() -> Any:
    """tests/helpers.py by path: a site-packages ``tests`` package can shadow ours."""
    spec = importlib.util.spec_from_file_location("ainode_test_helpers", REPO / "tests/helpers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


free_port = _test_helpers().free_port  # below the ephemeral range: Orthanc's ports stay free


def make_series(directory: Path, slices: int) -> list[Path]:
    rng = np.random.default_rng(0)
    volume = rng.normal(400, 60, size=(256, 256, slices)).clip(0, 4000)
    affine = make_affine(spacing=(0.9, 0.9, 1.0))
    return write_series(directory, volume, affine, SeriesSpec())


def send(paths: list[Path], port: int, called_ae: str) -> float:
    """Seconds to send every file over one association (association set-up included)."""
    from pynetdicom import AE, _config

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context(MR_IMAGE_STORAGE, EXPLICIT_LE)
    started = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"association with {called_ae} on port {port} failed")
    for path in paths:
        status = assoc.send_c_store(path)
        if status.get("Status") != 0:
            raise RuntimeError(f"{called_ae}: C-STORE of {path.name} answered {status}")
    assoc.release()
    return time.perf_counter() - started


def wait_for_echo(port: int, called_ae: str, process: subprocess.Popen[bytes]) -> None:
    from pynetdicom import AE

    ae = AE(ae_title="BENCHSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{called_ae} exited with {process.returncode}")
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        if assoc.is_established:
            assoc.release()
            return
        time.sleep(0.2)
    raise RuntimeError(f"{called_ae} did not start")


def start_node(work: Path, port: int, tree: Path | None = None) -> subprocess.Popen[bytes]:
    """``ai-node serve``; with ``tree``, the node of that checkout (``PYTHONPATH=tree``)."""
    config = work / "ae_config.yaml"
    config.write_text(
        f"ae_title: AINODE\nbind: 127.0.0.1\nport: {port}\ndata_dir: {work / 'data'}\n"
        "worker: {processes: 0}\nlog_level: WARNING\n"
    )
    script = Path(sys.executable).parent / "ai-node"
    command = [str(script), "serve", "--config", str(config)]
    env = None
    if tree is not None:
        command = [sys.executable, str(script), *command[1:]]
        env = {**os.environ, "PYTHONPATH": str(tree)}
    with (work / "serve.log").open("wb") as log:  # its warnings, shown if a run fails
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=tree)


def start_orthanc(work: Path, port: int) -> subprocess.Popen[bytes]:
    config = {
        "Name": "bench",
        "StorageDirectory": str(work / "storage"),
        "IndexDirectory": str(work / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": port,
        "HttpPort": free_port(),
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "Plugins": [],
    }
    path = work / "orthanc.json"
    path.write_text(json.dumps(config))
    binary = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    return subprocess.Popen(
        [binary, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_bare(work: Path, port: int, pdu: int = NODE_MAXIMUM_PDU_SIZE) -> subprocess.Popen[bytes]:
    bare = [__file__, "--bare-scp", str(port), str(work / "bare"), str(pdu)]
    return subprocess.Popen(
        [sys.executable, *bare], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def start_bare_default_pdu(work: Path, port: int) -> subprocess.Popen[bytes]:
    return start_bare(work, port, PYNETDICOM_DEFAULT_PDU)


def bare_scp(port: int, directory: Path, pdu: int) -> None:
    """(c): write each dataset's raw bytes with fsync; nothing else."""
    from pynetdicom import AE, evt
    from pynetdicom.events import Event

    directory.mkdir(parents=True, exist_ok=True)

    def handle_store(event: Event) -> int:
        path = directory / f"{event.request.AffectedSOPInstanceUID}.dcm"  # type: ignore[union-attr]
        with path.open("wb") as handle:
            handle.write(event.encoded_dataset())
            handle.flush()
            os.fsync(handle.fileno())
        return 0x0000

    ae = AE(ae_title="BARESCP")
    ae.maximum_pdu_size = pdu
    ae.add_supported_context("1.2.840.10008.1.1")
    ae.add_supported_context(MR_IMAGE_STORAGE, EXPLICIT_LE)
    ae.start_server(
        ("127.0.0.1", port),
        block=True,
        evt_handlers=[(evt.EVT_C_STORE, handle_store)],
    )


RECEIVERS: dict[str, tuple[str, Callable[[Path, int], subprocess.Popen[bytes]]]] = {
    "node": ("AINODE", start_node),
    "orthanc": ("ORTHANC", start_orthanc),
    "bare": ("BARESCP", start_bare),
    "bare-16k": ("BARESCP", start_bare_default_pdu),
}


def run_once(name: str, slices: int, scratch: Path) -> float:
    called_ae, start = RECEIVERS[name]
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=scratch))
    paths = make_series(work / "series", slices)
    port = free_port()
    process = start(work, port)
    try:
        wait_for_echo(port, called_ae, process)
        return send(paths, port, called_ae)
    except RuntimeError:
        log = work / "serve.log"
        if log.exists():
            print(f"{name} failed; its log ends:\n{log.read_text()[-3000:]}", file=sys.stderr)
        raise
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=189)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=[*sorted(RECEIVERS), "node-base"], action="append")
    parser.add_argument("--baseline", type=Path, help="another checkout's node, as node-base")
    parser.add_argument(
        "--bare-scp", nargs=3, metavar=("PORT", "DIR", "PDU"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.bare_scp:
        bare_scp(int(args.bare_scp[0]), Path(args.bare_scp[1]), int(args.bare_scp[2]))
        return 0
    names = args.only or ["node", "orthanc", "bare", "bare-16k"]
    if args.baseline is not None:
        tree = args.baseline.resolve()
        RECEIVERS["node-base"] = ("AINODE", lambda work, port: start_node(work, port, tree))
        names = [name for name in names if name != "node-base"]
        names.insert(names.index("node") + 1 if "node" in names else 0, "node-base")
    print(
        f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"series: {args.slices} slices of 256x256 16-bit MR, explicit VR LE; "
        f"sender: pynetdicom SCU, raw files, one association; {args.runs} runs "
        "(round robin), median"
    )
    scratch = Path(tempfile.mkdtemp(prefix="bench-receive-", dir=REPO))
    results: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in names}
    try:
        for _ in range(args.runs):  # round robin: load changes hit every receiver alike
            for name in names:
                times[name].append(run_once(name, args.slices, scratch))
        for name in names:
            results[name] = statistics.median(times[name])
            rate = args.slices / results[name]
            print(
                f"  {name:8s} {results[name]:7.2f} s  {rate:8.1f} instances/s  "
                f"(runs: {', '.join(f'{t:.2f}' for t in times[name])})"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    scale = args.slices / REFERENCE["slices"]
    print(
        f"reference (issue, {REFERENCE['slices']} slices): orthanc ~{REFERENCE['orthanc']} s, "
        f"bare ~{REFERENCE['bare']} s  (scaled to {args.slices}: "
        f"{REFERENCE['orthanc'] * scale:.1f} s, {REFERENCE['bare'] * scale:.1f} s)"
    )
    if "node" in results and "orthanc" in results:
        speedup = results["orthanc"] / results["node"]
        print(f"node vs orthanc: {speedup:.1f}x faster (target >= 10x)")
    for node in ("node", "node-base"):
        for bare in ("bare", "bare-16k"):
            if node in results and bare in results:
                ratios = [n / b for n, b in zip(times[node], times[bare], strict=True)]
                print(
                    f"{node} vs {bare} fsync SCP: {statistics.median(ratios):.2f}x the time, "
                    f"median of the rounds' ratios ({', '.join(f'{r:.2f}' for r in ratios)}); "
                    f"ratio of medians {results[node] / results[bare]:.2f}x "
                    f"(target <= {TARGET_BARE_RATIO}x)"
                )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
