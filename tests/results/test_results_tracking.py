"""Lesion tracks across studies, registration of two series, RANO-BM.

The database tests run on SQLite and, where the Debian ``postgresql`` package and
psycopg2 are installed, on a throw-away PostgreSQL cluster (``initdb`` + ``pg_ctl``
as the ``postgres`` user, trust authentication on a free loopback port).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import peewee
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from scipy.ndimage import affine_transform

from common.types import Lesion as MeasuredLesion
from inference.outputs import write_outputs
from inference.registration import apply, register_arrays
from inference.types import Volume
from jobs.followup import record_and_track, register_runs
from storage import followup, rano, tracking
from storage.db import init_database
from tests.results.conftest import PROVENANCE, build_case

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_available() -> bool:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return False
    return (PG_BIN / "initdb").exists() and shutil.which("runuser") is not None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL cluster for this module; yields its server URL (no database)."""
    if not _pg_available():
        pytest.skip("needs the Debian postgresql package and psycopg2")
    root = Path(tempfile.mkdtemp(prefix="ai-node-pg-"))
    os.chmod(root, 0o755)
    data = root / "data"
    shutil.chown(root, "postgres")
    port = _free_port()
    as_postgres = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_postgres, str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    options = f"-p {port} -c listen_addresses=127.0.0.1 -k {root} -c fsync=off"
    subprocess.run(
        [
            *as_postgres,
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-w",
            "start",
            "-l",
            str(root / "log"),
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def node_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[peewee.Database]:
    """The node's database on SQLite, then on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        db = init_database(tmp_path / "db" / "node.sqlite")
    else:
        import psycopg2

        server = request.getfixturevalue("postgres_url")
        name = f"t{uuid.uuid4().hex[:12]}"
        connection = psycopg2.connect(server + "/postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
        connection.close()
        db = init_database(tmp_path / "unused.sqlite", f"{server}/{name}")
    yield db
    db.close()


def header(patient: str, study: str, date: str, frame: str = "1.2.3.4") -> Dataset:
    ds = Dataset()
    ds.PatientID, ds.StudyInstanceUID, ds.StudyDate = patient, study, date
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.Modality = study + ".1", frame, "MR"
    return ds


def lesion(centre: tuple[float, float, float], diameter: float, slices: int = 4) -> MeasuredLesion:
    return MeasuredLesion(
        number=1,
        voxel_count=int(diameter**3),
        volume_mm3=float(np.pi / 6 * diameter**3),
        longest_axial_diameter_mm=diameter,
        perpendicular_axial_diameter_mm=0.8 * diameter,
        longest_3d_diameter_mm=diameter,
        first_slice=10,
        last_slice=10 + slices - 1,
        centroid_lps_mm=centre,
    )


def point(matrix: np.ndarray, xyz: npt.ArrayLike) -> tuple[float, float, float]:
    """One LPS point (mm) mapped by the 4x4 ``matrix``."""
    x, y, z = (float(v) for v in apply(matrix, np.asarray(xyz, float))[0])
    return x, y, z


def grid(xyz: Sequence[float]) -> tuple[int, int, int]:
    """A point rounded to whole millimetres (a dictionary key)."""
    x, y, z = (round(float(v)) for v in xyz)
    return x, y, z


def moved(matrix: np.ndarray, lesions: list[MeasuredLesion]) -> list[MeasuredLesion]:
    return [replace(m, centroid_lps_mm=point(matrix, m.centroid_lps_mm)) for m in lesions]


def rigid(degrees: float, shift: tuple[float, float, float]) -> np.ndarray:
    a = np.deg2rad(degrees)
    matrix = np.eye(4)
    matrix[:3, :3] = [[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]
    matrix[:3, 3] = shift
    return matrix


def record(
    patient: str, study: str, date: str, lesions: list[MeasuredLesion], **kw: str
) -> followup.SegmentationRun:
    return followup.record_run(header(patient, study, date, **kw), PROVENANCE, lesions)


def labels_by_centre(run: followup.SegmentationRun) -> dict[tuple[int, int, int], str]:
    uids = {t.tracking_uid: t.label for t in tracking.LesionTrack.select()}
    labels: dict[tuple[int, int, int], str] = {}
    for row in followup.Lesion.select().where(followup.Lesion.run == run):
        assert row.tracking_uid is not None
        centre = grid((row.centroid_x_mm, row.centroid_y_mm, row.centroid_z_mm))
        labels[centre] = uids[row.tracking_uid]
    return labels


def statuses(patient: followup.Patient) -> dict[str, list[str | None]]:
    report = tracking.patient_tracks(patient)
    return {
        t["label"]: [o["status"] if o else None for o in t["observations"]]
        for t in report["tracks"]
    }


def test_match_is_global_and_gated_by_size() -> None:
    # a greedy nearest-first choice would pair track 0 with lesion 10 and leave track 1 unmatched
    tracks = [tracking.Spot(0, (0, 0, 0), 10.0), tracking.Spot(1, (12, 0, 0), 10.0)]
    lesions = [tracking.Spot(10, (6, 0, 0), 10.0), tracking.Spot(11, (-5, 0, 0), 10.0)]
    found = tracking.match(tracks, lesions)
    assert found.pairs == {0: 11, 1: 10} and not found.new and not found.vanished
    # 20 mm apart: two 4 mm lesions are different lesions, two 30 mm lesions the same one
    small = tracking.match([tracking.Spot(0, (0, 0, 0), 4.0)], [tracking.Spot(1, (20, 0, 0), 4.0)])
    assert small.pairs == {} and small.new == [1] and small.vanished == [0]
    big = tracking.match([tracking.Spot(0, (0, 0, 0), 30.0)], [tracking.Spot(1, (20, 0, 0), 30.0)])
    assert big.pairs == {0: 1}


def test_tracks_follow_lesions_through_head_motion(node_db: peewee.Database) -> None:
    base = [lesion((10, 20, 30), 16), lesion((-30, 5, 10), 8), lesion((40, -20, 0), 12)]
    motion = rigid(
        12.0, (25.0, -15.0, 10.0)
    )  # the patient moved: study 2's LPS = motion @ study 1's
    first = record("P1", "1.9.1", "20250101", base)
    second_lesions = moved(motion, [base[0], base[2], lesion((-5, -40, 20), 11)])
    second = record("P1", "1.9.2", "20250401", second_lesions, frame="9.8.7")
    patient = followup.Patient.get(followup.Patient.patient_id == "P1")
    assert tracking.registrations_needed(patient) == [(second, first)]

    # without the registration the moved lesions are strangers: 3 + 3 tracks
    tracking.retrack_patient(patient)
    assert len(statuses(patient)) == 6
    new_one = labels_by_centre(second)[grid(point(motion, (-5, -40, 20)))]
    assert new_one == "Lesion F"

    tracking.store_registration(second, first, np.linalg.inv(motion), "rigid", 0.95)
    assert tracking.registrations_needed(patient) == []
    tracks = tracking.retrack_patient(patient)
    # the strangers found their tracks; the new lesion keeps the label it was given (stable)
    assert [t.label for t in tracks] == ["Lesion A", "Lesion B", "Lesion C", "Lesion F"]
    assert statuses(patient) == {
        "Lesion A": ["new", "present"],
        "Lesion B": ["new", "present"],
        "Lesion C": ["new", "vanished"],
        "Lesion F": [None, "new"],
    }
    before, after = labels_by_centre(first), labels_by_centre(second)
    moved_a = grid(point(motion, (10, 20, 30)))
    assert before[(10, 20, 30)] == after[moved_a] == "Lesion A"
    assert before[(40, -20, 0)] == "Lesion B" and before[(-30, 5, 10)] == "Lesion C"
    labels = tracking.run_labels(second)
    assert {label for _, label in labels.values()} == {"Lesion A", "Lesion B", "Lesion F"}
    uid_a = tracking.LesionTrack.get(tracking.LesionTrack.label == "Lesion A").tracking_uid
    assert followup.Lesion.select().where(followup.Lesion.tracking_uid == uid_a).count() == 2


def test_rerun_and_late_study_keep_identities(node_db: peewee.Database) -> None:
    lesions = [lesion((0, 0, 0), 15), lesion((40, 0, 0), 10)]
    record("P2", "1.8.2", "20250301", lesions)
    later = record("P2", "1.8.3", "20250601", lesions[:1])
    patient = followup.Patient.get(followup.Patient.patient_id == "P2")
    tracking.retrack_patient(patient)
    uids = {t.label: t.tracking_uid for t in tracking.LesionTrack.select()}
    for _ in range(2):  # the same run again, twice: nothing duplicated, nothing renamed
        record("P2", "1.8.3", "20250601", lesions[:1])
        tracking.retrack_patient(patient)
    assert {t.label: t.tracking_uid for t in tracking.LesionTrack.select()} == uids
    assert tracking.TrackObservation.select().count() == 4
    # an older study arrives last: it becomes the first time point, the tracks keep their UIDs
    record("P2", "1.8.1", "20241201", [lesion((0, 0, 0), 20), lesion((-40, 0, 0), 9)])
    tracking.retrack_patient(patient)
    after = {t.label: t.tracking_uid for t in tracking.LesionTrack.select()}
    assert after["Lesion A"] == uids["Lesion A"] and after["Lesion B"] == uids["Lesion B"]
    assert statuses(patient)["Lesion C"] == ["new", "vanished", "vanished"]
    assert statuses(patient)["Lesion A"] == ["new", "present", "present"]
    assert tracking.run_labels(later)[1][1] == "Lesion A"


def test_merge_and_split_are_flagged(node_db: peewee.Database) -> None:
    record("P3", "1.7.1", "20250101", [lesion((0, 0, 0), 8), lesion((12, 0, 0), 8)])
    record("P3", "1.7.2", "20250201", [lesion((6, 0, 0), 22)])  # the two grew into one
    record(
        "P3",
        "1.7.3",
        "20250301",
        [lesion((0, 0, 0), 9), lesion((14, 0, 0), 9), lesion((70, 0, 0), 6)],
    )
    patient = followup.Patient.get(followup.Patient.patient_id == "P3")
    tracking.retrack_patient(patient)
    report = tracking.patient_tracks(patient)
    by_label = {t["label"]: t for t in report["tracks"]}
    assert [o["status"] for o in by_label["Lesion B"]["observations"]][:2] == ["new", "merged"]
    assert by_label["Lesion B"]["observations"][1]["related"] == "Lesion A"
    assert by_label["Lesion B"]["observations"][2]["status"] == "present"  # apart again: matched
    assert [o["status"] if o else None for o in by_label["Lesion C"]["observations"]] == [
        None,
        None,
        "new",
    ]

    record("P4", "1.6.1", "20250101", [lesion((0, 0, 0), 24)])
    record("P4", "1.6.2", "20250201", [lesion((-6, 0, 0), 10), lesion((7, 0, 0), 10)])  # split
    patient = followup.Patient.get(followup.Patient.patient_id == "P4")
    tracking.retrack_patient(patient)
    tracks = {t["label"]: t for t in tracking.patient_tracks(patient)["tracks"]}
    assert tracks["Lesion B"]["parent"] == "Lesion A"
    assert tracks["Lesion B"]["observations"][1]["status"] == "split"
    assert tracks["Lesion A"]["observations"][1]["status"] == "present"


def M(track: str, longest: float, parent: str | None = None, slices: int = 3) -> rano.Measurement:
    return rano.Measurement(track, longest, 0.7 * longest, slices, parent)


def test_rano_bm_responses() -> None:
    points = [
        rano.TimePoint(
            1, (M("A", 20), M("B", 15), M("C", 8), M("D", 12, slices=1))
        ),  # C, D not measurable
        rano.TimePoint(2, (M("A", 14), M("B", 10), M("C", 8))),  # 24 vs 35: -31 % -> PR
        rano.TimePoint(3, (M("A", 17), M("B", 11), M("C", 8))),  # 28 vs nadir 24: +17 % -> SD
        rano.TimePoint(4, (M("A", 20), M("B", 10), M("C", 8))),  # 30: +25 %, A +6 mm -> PD
        rano.TimePoint(5, (M("A", 13), M("B", 9), M("E", 11))),  # new measurable lesion -> PD
        rano.TimePoint(6, ()),  # nothing left -> CR
    ]
    results = rano.assess(points)
    assert [r.response for r in results] == ["baseline", "PR", "SD", "PD", "PD", "CR"]
    assert results[0].targets == ["A", "B"] and results[0].sld_mm == 35
    assert results[3].nadir_sld_mm == 24 and "A grew >= 5 mm" in results[3].reasons[0]
    assert "E 11.0" in results[4].reasons[0]
    assert all(rano.OUTSIDE_THE_NODE in r.reasons for r in results[1:])
    # +20 % of a small nadir without any lesion growing 5 mm is not progression
    small = [
        rano.TimePoint(1, (M("A", 10), M("B", 10))),
        rano.TimePoint(2, (M("A", 13), M("B", 12))),
    ]
    assert rano.assess(small)[1].response == "SD"
    # a chosen baseline: earlier points are pre-baseline; split pieces count with their target
    split = [
        rano.TimePoint(1, (M("A", 30),)),
        rano.TimePoint(2, (M("A", 30),)),
        rano.TimePoint(3, (M("A", 12), M("B", 12, parent="A"))),
    ]
    assert [r.response for r in rano.assess(split, baseline=1)] == [
        "pre-baseline",
        "baseline",
        "SD",
    ]
    # no measurable disease at baseline: not evaluable by size, a new small lesion is equivocal
    tiny = [rano.TimePoint(1, (M("A", 6),)), rano.TimePoint(2, (M("A", 7), M("F", 4)))]
    second = rano.assess(tiny)[1]
    assert second.response == "NE" and any("equivocal" in r for r in second.reasons)


def test_rano_stored_and_baseline_chosen(node_db: peewee.Database) -> None:
    record("P5", "1.5.1", "20250101", [lesion((0, 0, 0), 20), lesion((40, 0, 0), 16)])
    record("P5", "1.5.2", "20250301", [lesion((0, 0, 0), 12), lesion((40, 0, 0), 10)])
    record("P5", "1.5.3", "20250601", [lesion((0, 0, 0), 13), lesion((40, 0, 0), 10)])
    patient = followup.Patient.get(followup.Patient.patient_id == "P5")
    tracking.retrack_patient(patient)
    stored = rano.assess_patient(patient)
    assert [r.response for r in stored] == ["baseline", "PR", "PR"]
    rano.set_baseline("P5", "1.5.2")
    responses = rano.patient_responses(patient)
    assert sorted(r["response"] for r in responses.values()) == ["SD", "baseline", "pre-baseline"]
    with pytest.raises(Exception, match="not a study of patient"):
        rano.set_baseline("P5", "9.9.9")


@cache
def template() -> tuple[np.ndarray, np.ndarray]:
    """The MNI152 template (shipped with nilearn) at 3 mm: ``(array [i, j, k], LPS affine)``."""
    from nilearn.datasets import load_mni152_template
    from nilearn.image import resample_img

    image = resample_img(
        load_mni152_template(resolution=2),
        target_affine=np.diag([3.0, 3.0, 3.0]),
        interpolation="linear",
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(image.get_fdata(), np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine


def moved_template(motion: np.ndarray) -> np.ndarray:
    """The template after the head moved by ``motion`` (LPS mm), on the same grid."""
    array, affine = template()
    voxels = np.linalg.inv(affine) @ np.linalg.inv(motion) @ affine
    return affine_transform(array, voxels[:3, :3], voxels[:3, 3], order=1)


def test_registration_recovers_a_known_head_motion() -> None:
    array, affine = template()
    motion = rigid(9.0, (7.0, -5.0, 4.0))
    reg = register_arrays(array, affine, moved_template(motion), affine)
    brain = apply(affine, np.argwhere(array > array.mean())[::40].astype(float))
    error = np.linalg.norm(reg.apply(apply(motion, brain)) - brain, axis=1)
    assert error.max() < 1.5, error.max()
    assert reg.quality > 0.9 and reg.quality > reg.identity_quality + 0.2


def volume(array: np.ndarray, affine: np.ndarray, uid: str) -> Volume:
    return Volume(array, affine, [], uid, "", "")


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[peewee.Database]:
    """SQLite only: for a test whose time goes to image registration, not to the database."""
    db = init_database(tmp_path / "db" / "node.sqlite")
    yield db
    db.close()


def test_glue_registers_then_tracks(tmp_path: Path, sqlite_db: peewee.Database) -> None:
    array, affine = template()
    motion = rigid(8.0, (10.0, 4.0, -6.0))
    centre = point(affine, np.array(array.shape) / 2)
    first = record("P6", "1.4.1", "20250101", [lesion(centre, 9)], frame=generate_uid())
    second = record(
        "P6", "1.4.2", "20250301", moved(motion, [lesion(centre, 9)]), frame=generate_uid()
    )
    cache_: dict[str, Volume | None] = {
        "1.4.1.1": volume(array, affine, "1.4.1.1"),
        "1.4.2.1": volume(moved_template(motion), affine, "1.4.2.1"),
    }
    stored = register_runs(second, first, cache_, tmp_path)
    assert stored.method == "rigid" and stored.quality is not None and stored.quality > 0.9
    assert np.abs(stored.transform - np.linalg.inv(motion)).max() < 1.5
    patient = followup.Patient.get(followup.Patient.patient_id == "P6")
    tracking.retrack_patient(patient)
    assert statuses(patient) == {"Lesion A": ["new", "present"]}
    # same Frame of Reference and no motion: the identity, said so
    third = record("P6", "1.4.3", "20250601", [lesion(centre, 9)], frame="1.2.3")
    fourth = record("P6", "1.4.4", "20250901", [lesion(centre, 9)], frame="1.2.3")
    cache_ |= {"1.4.3.1": cache_["1.4.1.1"], "1.4.4.1": volume(array.copy(), affine, "1.4.4.1")}
    same = register_runs(fourth, third, cache_, tmp_path)
    assert same.method == "identity" and np.array_equal(same.transform, np.eye(4))
    missing = register_runs(third, second, {}, tmp_path)  # images gone: flagged
    assert missing.method == "unregistered" and "no longer stored" in missing.note


def _tracking_items(ds: Dataset) -> list[tuple[str, str]]:
    """(TrackingIdentifier, TrackingUID) of each measurement group of an SR, in order."""
    found: list[tuple[str, str]] = []

    def walk(items: Any) -> None:
        for item in items:
            codes_here = {
                c.ConceptNameCodeSequence[0].CodeValue: c
                for c in item.get("ContentSequence", [])
                if "ConceptNameCodeSequence" in c
            }
            if "112039" in codes_here and "112040" in codes_here:
                found.append((codes_here["112039"].TextValue, codes_here["112040"].UID))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def test_outputs_carry_the_tracks(tmp_path: Path, node_db: peewee.Database) -> None:
    """The SR of a follow-up study repeats the TrackingUIDs and identifiers of the earlier one;
    RT-Struct ROIs are named by the tracks."""
    written = {}
    for date in ("20250101", "20250401"):
        paths, result = build_case(tmp_path / date, patient_id="OUT1", study_date=date)
        if date == "20250401":  # the smallest lesion is gone at follow-up
            smallest = min(result.lesions, key=lambda m: m.volume_mm3)
            result.labels[result.labels == smallest.number] = 0
            result.lesions.remove(smallest)
        source = pydicom.dcmread(paths[0], stop_before_pixels=True)
        run, tracks = record_and_track(source, PROVENANCE, result.lesions, None, tmp_path)
        assert len(tracks) == len(result.lesions)
        written[date] = write_outputs(
            result, ["rtstruct", "seg", "sr"], tmp_path / f"out{date}", tracks=tracks
        ).paths
    first, second = (pydicom.dcmread(written[d]["sr"]) for d in ("20250101", "20250401"))
    before, after = _tracking_items(first), _tracking_items(second)
    assert [name for name, _ in before] == ["Lesion A", "Lesion B", "Lesion C"]
    assert after == before[:2]  # same identifiers, same UIDs
    uids = {t.label: t.tracking_uid for t in tracking.LesionTrack.select()}
    assert dict(before) == uids
    rtstruct = pydicom.dcmread(written["20250401"]["rtstruct"])
    assert [r.ROIName for r in rtstruct.StructureSetROISequence] == ["Lesion A", "Lesion B"]
    patient = followup.Patient.get(followup.Patient.patient_id == "OUT1")
    assert len(rano.patient_responses(patient)) == 2
