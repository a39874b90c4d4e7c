"""End-to-end latency: last instance acknowledged → RT-Struct acknowledged by the destination.

    .venv/bin/python bench/end_to_end.py [--slice-mm 1.5] [--fov-scale 1.0] [--idle-seconds 10]

Runs the real ``ai-node serve`` (subprocess, with its worker process) with the
configured model (the committed demo UNETR; random weights of the same
architecture when the weights file is absent, said so in the output), a
pynetdicom sender and a pynetdicom Storage SCP as the fixed destination.  Two
cases, after one warm-up series that loads the model in the worker:

(a) *count known*: the instances carry ImagesInAcquisition; the series is
    complete when the association is released;
(b) *idle*: no count; the series completes after ``completion.idle_seconds``.

For each it prints the latency, the job's inference time (load + preprocess +
sliding window + postprocess, from the job's stage timings) and the overhead
(latency - inference).  Target: overhead <= 5 s for (a).  A benchmark, not a
test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, RTStructureSetStorage  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from config.schema import NodeConfig
from demo.synthetic.case import CaseSpec, write_case
from inference.model import build_unetr


def _harness() -> Any:
    """tests/results/harness.py by path: a site-packages ``tests`` package can shadow ours."""
    spec = importlib.util.spec_from_file_location(
        "ainode_harness", REPO / "tests/results/harness.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_h = _harness()
NodeProcess, free_port = _h.NodeProcess, _h.free_port

INFERENCE_STAGES = ("load", "model_load", "preprocess", "sliding_window", "postprocess")


class Destination:
    """A Storage SCP that notes when each RT-Struct has been acknowledged."""

    def __init__(self) -> None:
        self.port = free_port()
        self.rtstruct_at: dict[str, float] = {}  # referenced source series -> time
        self.arrived = threading.Condition()
        ae = AE(ae_title="DEST")
        ae.add_supported_context(RTStructureSetStorage)
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4")
        ae.add_supported_context("1.2.840.10008.5.1.4.1.1.88.34")
        self.server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)]
        )

    def _store(self, event: evt.Event) -> int:
        ds = event.dataset
        if ds.Modality == "RTSTRUCT":
            frame = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
            series = frame.RTReferencedSeriesSequence[0].SeriesInstanceUID
            with self.arrived:
                self.rtstruct_at[series] = time.perf_counter()  # returned next: the acknowledgement
                self.arrived.notify_all()
        return 0x0000

    def wait(self, series_uid: str, timeout: float) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: series_uid in self.rtstruct_at, timeout):
                raise TimeoutError(f"no RT-Struct for {series_uid} within {timeout} s")
            return self.rtstruct_at[series_uid]


def send(paths: list[Path], port: int) -> float:
    """C-STORE every file in one association; return the time the last one was acknowledged."""
    import pydicom

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="AINODE")
    assert assoc.is_established, "the node refused the association"
    last = 0.0
    for path in paths:
        status = assoc.send_c_store(pydicom.dcmread(path))
        assert status.Status == 0, f"C-STORE failed: 0x{status.Status:04X}"
        last = time.perf_counter()
    assoc.release()
    return last


def node_settings(root: Path, dest_port: int, idle: float) -> dict[str, Any]:
    model = dict(yaml.safe_load((REPO / "ae_config.yaml").read_text())["model"])
    weights = REPO / model["weights"]
    note = f"demo weights {weights.relative_to(REPO)}"
    if not weights.exists():
        weights = root / "random.pt"
        torch.save(
            build_unetr(NodeConfig.model_validate({"model": model}).model.unetr).state_dict(),
            weights,
        )
        note = "RANDOM weights of the demo architecture (demo weights not found)"
    model["weights"] = str(weights)
    settings = {
        "ae_title": "AINODE",
        "bind": "127.0.0.1",
        "port": free_port(),
        "data_dir": str(root / "data"),
        "destinations": [{"ae_title": "DEST", "host": "127.0.0.1", "port": dest_port}],
        "completion": {"idle_seconds": idle},
        "outputs": ["rtstruct"],
        "model": model,
        "log_level": "INFO",
    }
    return {"settings": settings, "note": note}


def job_inference_seconds(node: Any, series_uid: str) -> float:
    """The job's inference time from its stage timings.

    ``load`` is the series load; when it already spans the whole segmentation
    (it is at least the sum of the other stages), it alone is the inference time.
    """
    status = json.loads(node.run("status", "--json").stdout)
    job = next(j for j in status["jobs"] if j["series_instance_uid"] == series_uid)
    timings = job["stage_timings"]
    others = sum(v for k, v in timings.items() if k in INFERENCE_STAGES and k != "load")
    load = float(timings.get("load", 0.0))
    return load if load >= others else load + others


def run_case(
    node: Any,
    dest: Destination,
    root: Path,
    name: str,
    spec: CaseSpec,
    count: bool = True,
) -> dict[str, Any]:
    import pydicom

    truth = write_case(root / name, spec)
    if not count:  # no announced count: only idle time completes the series
        for path in truth.dicom_paths:
            ds = pydicom.dcmread(path)
            del ds.ImagesInAcquisition
            ds.save_as(path)
    series_uid = pydicom.dcmread(truth.dicom_paths[0], stop_before_pixels=True).SeriesInstanceUID
    last_ack = send(truth.dicom_paths, int(node.settings["port"]))
    arrived = dest.wait(series_uid, timeout=900)
    time.sleep(1.0)  # let the worker record its last stage
    inference = job_inference_seconds(node, series_uid)
    latency = arrived - last_ack
    return {
        "case": name,
        "slices": len(truth.dicom_paths),
        "latency_s": latency,
        "inference_s": inference,
        "overhead_s": latency - inference,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slice-mm", type=float, default=1.5)
    parser.add_argument("--fov-scale", type=float, default=1.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ainode-e2e-") as tmp:
        root = Path(tmp)
        dest = Destination()
        prepared = node_settings(root, dest.port, args.idle_seconds)
        print(
            f"model: {prepared['note']}; machine: {platform.processor() or platform.machine()}, "
            f"{torch.get_num_threads()} torch threads"
        )
        with NodeProcess(root / "node", prepared["settings"]) as node:
            base = {"slice_mm": args.slice_mm, "fov_scale": args.fov_scale}
            run_case(node, dest, root, "warm-up", CaseSpec(seed=101, **base))  # type: ignore[arg-type]
            rows.append(run_case(node, dest, root, "(a) count known", CaseSpec(seed=102, **base)))  # type: ignore[arg-type]
            # (b): the same kind of series without ImagesInAcquisition: completed by idle time
            rows.append(
                run_case(
                    node,
                    dest,
                    root,
                    "(b) idle",
                    CaseSpec(seed=103, **base),
                    count=False,
                )
            )  # type: ignore[arg-type]
        assert dest.server is not None
        dest.server.shutdown()
    print(f"{'case':<18}{'slices':>7}{'latency s':>11}{'inference s':>13}{'overhead s':>12}")
    for r in rows:
        print(
            f"{r['case']:<18}{r['slices']:>7}{r['latency_s']:>11.2f}{r['inference_s']:>13.2f}{r['overhead_s']:>12.2f}"
        )
    a = rows[0]
    verdict = "meets" if a["overhead_s"] <= 5.0 else "MISSES"
    print(
        f"(a) overhead {a['overhead_s']:.2f} s {verdict} the target (<= inference + 5 s); "
        f"(b) includes completion.idle_seconds = {args.idle_seconds:g} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
