"""DICOM series -> volume: true geometry in every orientation, slice order and transfer syntax,
and a clear reason for every series that cannot be trusted."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.data import PydicomReader
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from config.errors import SeriesGeometryError
from demo.synthetic.blob import (
    ORIENTATION_NAMES,
    blob_series,
    centroid_lps,
    voxel_diagonal,
)
from demo.synthetic.dicom_series import small_series
from inference.volume import load_series

CENTRE = np.array([12.3, -20.7, 31.4])


@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "reversed"])
@pytest.mark.parametrize("orientation", ORIENTATION_NAMES)
def test_blob_lands_at_its_patient_coordinate(
    tmp_path: Path, orientation: str, reverse: bool
) -> None:
    paths, truth_affine = blob_series(tmp_path, orientation, tuple(CENTRE), reverse_order=reverse)
    volume = load_series(paths[::-1] if reverse else paths)  # file order must not matter
    assert np.allclose(volume.affine_lps, truth_affine, atol=1e-4)
    found = centroid_lps(volume.array > 550, volume.affine_lps)
    assert np.linalg.norm(found - CENTRE) < voxel_diagonal(volume.affine_lps) / 2
    normal = np.cross(volume.affine_lps[:3, 0], volume.affine_lps[:3, 1])
    assert normal @ volume.affine_lps[:3, 2] > 0  # slices ascend along the normal
    positions = [
        pydicom.dcmread(s.path, stop_before_pixels=True).ImagePositionPatient for s in volume.slices
    ]
    expected = [volume.affine_lps @ [0, 0, k, 1] for k in range(len(positions))]
    assert np.allclose(np.array(positions, float), np.array(expected)[:, :3], atol=1e-4)


@pytest.mark.parametrize("orientation", ORIENTATION_NAMES)
def test_same_voxels_in_patient_space_as_monai_pydicomreader(
    tmp_path: Path, orientation: str
) -> None:
    """MONAI's reader (RAS) sees the same intensity at every patient coordinate."""
    paths, _ = blob_series(tmp_path, orientation, tuple(CENTRE), reverse_order=True)
    ours = load_series(paths)
    reader = PydicomReader()
    array, meta = reader.get_data(reader.read(str(tmp_path)))
    theirs_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(meta["affine"], float)
    ijk = np.indices(ours.array.shape).reshape(3, -1).T.astype(float)
    mapped = np.rint(
        (np.linalg.inv(theirs_lps) @ ours.affine_lps @ np.c_[ijk, np.ones(len(ijk))].T)[:3].T
    )
    mapped = mapped.astype(int)
    assert np.allclose(np.asarray(array)[tuple(mapped.T)], ours.array.ravel())


@pytest.mark.parametrize(
    "syntax",
    [
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        RLELossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        JPEGLosslessSV1,
    ],
    ids=lambda s: s.name,
)
def test_transfer_syntaxes_decode_to_the_same_volume(tmp_path: Path, syntax: str) -> None:
    reference = load_series(small_series(tmp_path / "ref", orientation="coronal"))
    volume = load_series(
        small_series(tmp_path / "enc", orientation="coronal", transfer_syntax=syntax)
    )
    assert np.array_equal(volume.array, reference.array)
    assert np.allclose(volume.affine_lps, reference.affine_lps)


@pytest.mark.parametrize("reverse", [False, True], ids=["ascending", "reversed"])
def test_enhanced_mr_reads_per_frame_groups(tmp_path: Path, reverse: bool) -> None:
    classic_paths, _ = blob_series(tmp_path / "classic", "oblique", tuple(CENTRE))
    enhanced_paths, _ = blob_series(
        tmp_path / "enh", "oblique", tuple(CENTRE), enhanced=True, reverse_order=reverse
    )
    classic, enhanced = load_series(classic_paths), load_series(enhanced_paths)
    assert len(enhanced_paths) == 1
    assert np.allclose(enhanced.affine_lps, classic.affine_lps, atol=1e-4)
    assert np.array_equal(enhanced.array, classic.array)
    numbers = [s.frame_number for s in enhanced.slices]
    assert numbers == (
        list(range(len(numbers), 0, -1)) if reverse else list(range(1, len(numbers) + 1))
    )


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    plain = load_series(small_series(tmp_path / "a"))
    rescaled = load_series(
        small_series(tmp_path / "b", rescale_slope=0.5, rescale_intercept=-100.0)
    )
    assert np.allclose(rescaled.array, plain.array, atol=0.51)


# ---- series that cannot be trusted -------------------------------------------------------


def _rewrite(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def test_missing_position_is_named(tmp_path: Path) -> None:
    paths = small_series(tmp_path)
    _rewrite(paths[3], ImagePositionPatient=None)
    with pytest.raises(SeriesGeometryError, match=r"missing ImagePositionPatient"):
        load_series(paths)


def test_uneven_spacing_names_the_gap(tmp_path: Path) -> None:
    paths = small_series(tmp_path, n_slices=10)
    with pytest.raises(
        SeriesGeometryError, match=r"uneven slice spacing: 4\.000 mm .* steps 2\.000 mm"
    ):
        load_series(paths[:4] + paths[5:])


def test_mixed_orientations(tmp_path: Path) -> None:
    paths = small_series(tmp_path)
    _rewrite(paths[2], ImageOrientationPatient=[1, 0, 0, 0, 0.9848, 0.1736])
    with pytest.raises(SeriesGeometryError, match="mixed orientations"):
        load_series(paths)


def test_three_plane_localizer(tmp_path: Path) -> None:
    uid = pydicom.uid.generate_uid()
    frame = pydicom.uid.generate_uid()
    paths = []
    for n, plane in enumerate(("axial", "sagittal", "coronal")):
        paths += small_series(
            tmp_path / plane,
            n_slices=3,
            orientation=plane,
            series_instance_uid=uid,
            frame_of_reference_uid=frame,
            series_number=n + 1,
        )
    with pytest.raises(SeriesGeometryError, match="three-plane localizer"):
        load_series(paths)


def test_mixed_sizes(tmp_path: Path) -> None:
    uid = pydicom.uid.generate_uid()
    frame = pydicom.uid.generate_uid()
    a = small_series(
        tmp_path / "a", n_slices=4, rows=32, series_instance_uid=uid, frame_of_reference_uid=frame
    )
    b = small_series(
        tmp_path / "b",
        n_slices=4,
        rows=30,
        series_instance_uid=uid,
        frame_of_reference_uid=frame,
        series_number=2,
    )
    with pytest.raises(SeriesGeometryError, match="mixed image sizes"):
        load_series(a + b)


def test_too_few_slices(tmp_path: Path) -> None:
    with pytest.raises(SeriesGeometryError, match="too few slices: 2"):
        load_series(small_series(tmp_path, n_slices=2))


def test_two_series_and_duplicates_and_non_dicom(tmp_path: Path) -> None:
    a = small_series(tmp_path / "a", n_slices=4)
    b = small_series(tmp_path / "b", n_slices=4)
    with pytest.raises(SeriesGeometryError, match="belong to 2 series"):
        load_series(a + b)
    duplicate = tmp_path / "a" / "dup.dcm"
    ds = pydicom.dcmread(a[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(duplicate)
    with pytest.raises(SeriesGeometryError, match="same position"):
        load_series(a + [duplicate])
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(SeriesGeometryError, match="junk.dcm: not a readable DICOM file"):
        load_series(a + [junk])


def _rewrite_raw(path: Path, keyword: str, text: str) -> None:
    """Store ``text`` (backslash-separated) in a DS element as a faulty writer would."""
    ds = pydicom.dcmread(path)
    with warnings.catch_warnings():  # pydicom warns that NaN/inf are not valid DS; we want them
        warnings.simplefilter("ignore")
        ds[keyword].value = text
        ds.save_as(path)


@pytest.mark.parametrize(
    ("keyword", "text", "bad"),
    [
        ("ImagePositionPatient", "-10.0\\NaN\\4.0", "nan"),
        ("ImagePositionPatient", "-10.0\\-20.0\\inf", "inf"),
        ("PixelSpacing", "inf\\1.0", "inf"),
        ("PixelSpacing", "1.0\\NaN", "nan"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\NaN\\0", "nan"),
    ],
)
def test_non_finite_geometry_is_refused_and_named(
    tmp_path: Path, keyword: str, text: str, bad: str
) -> None:
    """Issue 11 defect 5: a NaN position gave a job that succeeded, an inf spacing an internal error."""
    paths = small_series(tmp_path, n_slices=6)
    _rewrite_raw(paths[3], keyword, text)
    with pytest.raises(SeriesGeometryError, match=rf"{keyword} .*non-finite value \({bad}\)"):
        load_series(paths)
