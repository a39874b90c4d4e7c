"""One synthetic patient at three time points, and the truth the node should find.

The head moves between studies (a few degrees and several millimetres, a new
Frame of Reference each time) and the metastases change::

    track  baseline   +3 months   +6 months
    M1     26 mm      17 mm       15 mm       shrinks
    M2     20 mm      13 mm       19 mm       shrinks, then grows back
    M3     15 mm      --          --          vanishes
    M4     --         --          15 mm       new, measurable

so the RANO-BM response the truth implies is baseline, PR (the sum of
diameters halves), PD (a new measurable lesion): :func:`implied_responses`
applies the node's own rules (:func:`storage.rano.assess`) to the true
measurements, so the expected responses are derived, never typed in.

Everything is drawn with the synthetic generator (:mod:`demo.synthetic`): the
lesions' places come from :func:`~demo.synthetic.metastases.place_metastases`
(inside the brain, apart from each other), the images from
:func:`~demo.synthetic.brain.render` on an axial grid
(:func:`~demo.synthetic.case.case_geometry`) fixed on the scanner's isocentre,
so the head's motion moves it in the image, and the files from
:func:`~demo.synthetic.dicom_series.write_series`.

The truth of a lesion at a time point is its label on that series' grid,
measured the node's way (:func:`inference.lesions.measure`: voxel centres,
RANO-BM axial diameters, volume), beside its nominal diameter.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from demo.synthetic.anatomy import load_template, pose_matrix
from demo.synthetic.brain import Appearance, Phantom, render
from demo.synthetic.case import CaseSpec, case_geometry
from demo.synthetic.dicom_series import SeriesSpec, write_series
from demo.synthetic.metastases import Metastasis, place_metastases
from inference.lesions import measure
from storage import rano

PATIENT_ID = "DEMO-FOLLOWUP"
PATIENT_NAME = "Demo^Followup"
#: the three studies: date, and the head's pose (rotation about x, y, z in degrees; shift in mm)
STUDIES: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("20260105", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0)),
    ("20260406", (3.0, -2.0, 4.0), (6.0, -4.0, 3.0)),
    ("20260706", (-2.0, 3.0, -3.0), (-5.0, 7.0, -2.0)),
)
#: nominal diameter (mm) of each true lesion at each time point; None: absent
DIAMETERS: dict[str, tuple[float | None, ...]] = {
    "M1": (26.0, 17.0, 15.0),
    "M2": (20.0, 13.0, 19.0),
    "M3": (15.0, None, None),
    "M4": (None, None, 15.0),
}
#: the seed that places the lesions (checked apart and inside the brain) and draws the noise
SEED = 0
GRID = CaseSpec(orientation="axial", in_plane_mm=1.0, slice_mm=2.0)
CONTRAST = 1.6


@dataclass(frozen=True)
class TrueLesion:
    """One true lesion at one time point, measured on its series' grid."""

    track: str
    nominal_diameter_mm: float
    longest_axial_diameter_mm: float
    perpendicular_axial_diameter_mm: float
    volume_mm3: float
    slices: int
    centroid_lps_mm: tuple[float, float, float]


@dataclass(frozen=True)
class TimePoint:
    study_date: str
    study_instance_uid: str
    series_instance_uid: str
    frame_of_reference_uid: str
    dicom_paths: tuple[Path, ...]
    lesions: tuple[TrueLesion, ...]

    def lesion(self, track: str) -> TrueLesion | None:
        return next((lesion for lesion in self.lesions if lesion.track == track), None)


@dataclass(frozen=True)
class PatientTruth:
    patient_id: str
    time_points: tuple[TimePoint, ...]

    @property
    def tracks(self) -> list[str]:
        return list(DIAMETERS)

    def as_dict(self) -> dict[str, object]:
        return json.loads(json.dumps(asdict(self), default=str))


def lesion_places(seed: int = SEED) -> dict[str, Metastasis]:
    """Each track's lesion in template LPS, placed by the generator as if it were 26 mm
    (the largest), so every size stays inside the brain and the lesions stay apart."""
    rng = np.random.default_rng(seed)
    largest = max(d for sizes in DIAMETERS.values() for d in sizes if d is not None)
    placed = place_metastases(rng, load_template(), len(DIAMETERS), (largest, largest))
    if len(placed) < len(DIAMETERS):
        raise ValueError(f"seed {seed}: only {len(placed)} of {len(DIAMETERS)} lesions placed")
    round_solid = [
        replace(m, kind="solid", contrast=CONTRAST, shape_axes=(), shape_terms=()) for m in placed
    ]
    return dict(zip(DIAMETERS, round_solid))


def phantom_at(index: int, places: dict[str, Metastasis]) -> tuple[Phantom, list[str]]:
    """The head at time point ``index`` and the tracks of its lesions, in label order."""
    _, degrees, shift = STUDIES[index]
    pose = pose_matrix(tuple(np.radians(degrees)), 1.0, shift)  # type: ignore[arg-type]
    present = [t for t, sizes in DIAMETERS.items() if sizes[index] is not None]
    lesions = tuple(
        replace(places[t], radius_mm=float(DIAMETERS[t][index] or 0.0) / 2.0) for t in present
    )
    return Phantom(pose, lesions, Appearance()), present


def write_time_point(out_dir: Path, index: int, places: dict[str, Metastasis]) -> TimePoint:
    """Render and write one study; measure its true lesions on the series' grid."""
    phantom, tracks = phantom_at(index, places)
    isocentre = load_template().brain_centre_lps  # the scanner's: the head moves around it
    affine, shape = case_geometry(GRID, isocentre)
    image, labels = render(phantom, affine, shape, np.random.default_rng(SEED + index))
    date = STUDIES[index][0]
    spec = SeriesSpec(
        patient_id=PATIENT_ID,
        patient_name=PATIENT_NAME,
        study_date=date,
        study_id=str(index + 1),
        accession_number=f"DEMO{index + 1:04d}",
        series_description=f"T1 post-contrast, time point {index + 1} (synthetic)",
    ).resolved()  # new study, series and Frame of Reference UIDs
    paths = write_series(out_dir / f"tp{index + 1}", np.clip(image, 0, 65535), affine, spec)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    lesions = tuple(
        _true_lesion(track, labels == number, affine, voxel_mm3, DIAMETERS[track][index] or 0.0)
        for number, track in enumerate(tracks, start=1)
    )
    return TimePoint(
        date,
        str(spec.study_instance_uid),
        str(spec.series_instance_uid),
        str(spec.frame_of_reference_uid),
        tuple(paths),
        lesions,
    )


def _true_lesion(
    track: str, mask: np.ndarray, affine: np.ndarray, voxel_mm3: float, nominal: float
) -> TrueLesion:
    measured = measure(0, np.argwhere(mask).astype(float), affine, voxel_mm3)
    return TrueLesion(
        track,
        nominal,
        measured.longest_axial_diameter_mm,
        measured.perpendicular_axial_diameter_mm,
        round(measured.volume_mm3, 1),
        measured.last_slice - measured.first_slice + 1,
        measured.centroid_lps_mm,
    )


def write_patient(out_dir: Path, seed: int = SEED) -> PatientTruth:
    """Write the three studies under ``out_dir`` (``tp1/``, ``tp2/``, ``tp3/``) and
    ``truth.json``; return the truth."""
    places = lesion_places(seed)
    points = tuple(write_time_point(out_dir, i, places) for i in range(len(STUDIES)))
    truth = PatientTruth(PATIENT_ID, points)
    (out_dir / "truth.json").write_text(json.dumps(truth.as_dict(), indent=1))
    return truth


def nominal_lesions(seed: int = SEED) -> list[tuple[TrueLesion, ...]]:
    """Each time point's lesions at their nominal size (no image drawn): round lesions,
    so both axial diameters are the diameter, seen on ``diameter / slice`` slices."""
    places = lesion_places(seed)
    out = []
    for index in range(len(STUDIES)):
        phantom, tracks = phantom_at(index, places)
        out.append(
            tuple(
                TrueLesion(
                    track,
                    2 * m.radius_mm,
                    2 * m.radius_mm,
                    2 * m.radius_mm,
                    round(np.pi / 6 * (2 * m.radius_mm) ** 3, 1),
                    int(2 * m.radius_mm // GRID.slice_mm),
                    tuple(float(v) for v in centre),  # type: ignore[arg-type]
                )
                for track, m, centre in zip(tracks, phantom.lesions, phantom.lesion_centres_lps())
            )
        )
    return out


def nominal_measurements() -> list[tuple[rano.Measurement, ...]]:
    """Each time point's lesions at their nominal size, from :data:`DIAMETERS` alone (no
    template, no image): round, so both axial diameters are the diameter, seen on
    ``diameter / slice`` slices."""
    return [
        tuple(
            rano.Measurement(track, d, d, int(d // GRID.slice_mm))
            for track, sizes in DIAMETERS.items()
            if (d := sizes[index]) is not None
        )
        for index in range(len(STUDIES))
    ]


def measurements(lesions: Sequence[TrueLesion]) -> tuple[rano.Measurement, ...]:
    """True lesions as RANO-BM measurements (the track is the true lesion's name)."""
    return tuple(
        rano.Measurement(
            lesion.track,
            lesion.longest_axial_diameter_mm,
            lesion.perpendicular_axial_diameter_mm,
            lesion.slices,
        )
        for lesion in lesions
    )


def assess_truth(time_points: Sequence[Sequence[rano.Measurement]]) -> list[rano.Result]:
    """The RANO-BM results the true measurements imply, by the node's rules
    (:func:`storage.rano.assess`, the first time point the baseline)."""
    return rano.assess([rano.TimePoint(i, tuple(m)) for i, m in enumerate(time_points)])


def implied_responses(truth: PatientTruth) -> list[str]:
    """The response of each time point that the truth measured on its grids implies."""
    return [r.response for r in assess_truth([measurements(p.lesions) for p in truth.time_points])]
