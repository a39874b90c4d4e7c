"""Input gating: of a study's sequences, only the T1 post-contrast series is segmented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from config.schema import Gating
from storage.gating import evaluate, evaluate_header

DEFAULT_GATE = {"min_slices": 20, "min_coverage_mm": 80}  # the schema's defaults


def _series(tools: Any, folder: Path, n_slices: int, thickness: float, **tags: Any) -> list[Path]:
    description = tags.pop("SeriesDescription")
    paths = tools.series_dir(
        folder, n_slices=n_slices, spacing=(1.0, 1.0, thickness), series_description=description
    )
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return paths


def test_a_study_of_five_sequences_yields_exactly_one_job(node_factory, tools, tmp_path) -> None:
    node = node_factory(gating=DEFAULT_GATE)
    study = pydicom.uid.generate_uid()
    make: dict[str, dict[str, Any]] = {
        "t1_pre": dict(n_slices=24, thickness=4.0, SeriesDescription="T1 MPRAGE PRE"),
        "t1_post": dict(
            n_slices=24,
            thickness=4.0,
            SeriesDescription="T1 MPRAGE +C",
            ContrastBolusAgent="Gadoterate",
        ),
        "flair": dict(
            n_slices=24, thickness=4.0, SeriesDescription="AX FLAIR", ContrastBolusAgent="Gd"
        ),
        "dwi": dict(
            n_slices=24,
            thickness=4.0,
            SeriesDescription="AX DWI b1000",
            ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"],
        ),
        "localizer": dict(
            n_slices=3,
            thickness=8.0,
            SeriesDescription="3-plane loc",
            ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
        ),
    }
    uids = {}
    for name, spec in make.items():
        paths = _series(tools, tmp_path / name, study_instance_uid=study, **spec)
        assert tools.pynetdicom_send(paths, node.port) == [0] * len(paths)
        uids[name] = tools.uid_of(paths[0])
    tools.wait_for(lambda: all(tools.jobs_of(uid) for uid in uids.values()))
    states = {name: [(j.state, j.reason) for j in tools.jobs_of(uid)] for name, uid in uids.items()}
    assert states["t1_post"] == [("queued", None)]
    queued = [name for name, jobs in states.items() if jobs[0][0] == "queued"]
    assert queued == ["t1_post"]
    assert states["t1_pre"][0][1].startswith("sequence: SeriesDescription 'T1 MPRAGE PRE'")
    assert states["flair"][0][1].startswith("sequence:")
    assert states["dwi"][0][1] == "image_type: ImageType has DIFFUSION"
    assert states["localizer"][0][1] == "image_type: ImageType has LOCALIZER"
    # skipped series are kept: stored, listed, and nothing is sent
    assert all(tools.series_state(uid).instance_count > 0 for uid in uids.values())


def _header(**tags: Any) -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    ds.SeriesDescription = "T1 post-contrast"
    ds.SliceThickness = "1.0"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    "tags, slices, rule",
    [
        ({}, 160, None),
        ({"Modality": "CT"}, 160, "modality"),
        ({"SeriesDescription": "T1 MPRAGE", "ProtocolName": "t1_mprage"}, 160, "contrast"),
        ({"SeriesDescription": "T1 MPRAGE", "ContrastBolusAgent": "Gadobutrol"}, 160, None),
        ({"SeriesDescription": "Ax T1 3D", "ProtocolName": "T1 3D GD"}, 160, None),
        ({"SeriesDescription": "T2 post"}, 160, "sequence"),
        ({"SliceThickness": "6"}, 40, "slice_thickness"),
        ({}, 12, "slices"),
        ({"SliceThickness": "2"}, 30, "coverage"),
    ],
)
def test_each_rule_refuses_for_its_reason(tags: dict[str, str], slices: int, rule: str | None):
    refusal = evaluate_header(Gating(), _header(**tags), slices)
    assert (refusal.rule if refusal else None) == rule


def test_a_disabled_gate_segments_everything() -> None:
    assert evaluate(Gating(enabled=False), Path("/no/such/file"), 1) is None
    assert evaluate(Gating(), Path("/no/such/file"), 1).rule == "header"  # type: ignore[union-attr]
