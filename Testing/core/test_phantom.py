"""The synthetic CT phantom: geometry, reproducibility, anatomy in physical space, HU, label table, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest

from MedDINOv3Core.data.phantom import HU, LABEL_VALUES, PHANTOM_LABELS, make_phantom, phantom_label_table
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.volume_io import to_sitk

SMALL = (24, 64, 64)


def _rot_z(deg: float) -> tuple[float, ...]:
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return tuple(np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).ravel())


def test_shapes_types_and_geometry():
    ct, labels, table = make_phantom(SMALL, spacing=(6.0, 6.0, 10.0), seed=3)
    assert isinstance(ct, Volume) and isinstance(labels, Volume)
    assert ct.shape == labels.shape == SMALL
    assert ct.array.dtype == np.int16 and labels.array.dtype == np.uint8
    assert ct.same_geometry(labels)
    assert ct.spacing == (6.0, 6.0, 10.0)
    # The default origin centres the grid on the anatomy (LPS 0, 0, 0).
    centre = ct.index_to_physical((np.array(SMALL[::-1]) - 1) / 2)
    np.testing.assert_allclose(centre, 0.0, atol=1e-9)
    assert set(np.unique(labels.array)) == {0} | {e["value"] for e in table}


def test_reproducible_and_seed_dependent():
    a = make_phantom(SMALL, seed=7)
    b = make_phantom(SMALL, seed=7)
    c = make_phantom(SMALL, seed=8)
    np.testing.assert_array_equal(a.ct.array, b.ct.array)
    np.testing.assert_array_equal(a.labels.array, b.labels.array)
    assert not np.array_equal(a.labels.array, c.labels.array)
    assert not np.array_equal(a.ct.array, c.ct.array)


def test_anatomy_is_defined_in_physical_space():
    """A grid of half the spacing whose even voxels coincide with the coarse voxels draws the same labels there."""
    coarse = make_phantom((16, 48, 48), spacing=(8.0, 8.0, 15.0), seed=2, origin=(-190.0, -190.0, -112.0))
    fine = make_phantom((32, 96, 96), spacing=(4.0, 4.0, 7.5), seed=2, origin=(-190.0, -190.0, -112.0))
    np.testing.assert_array_equal(fine.labels.array[::2, ::2, ::2], coarse.labels.array)


def test_oblique_direction_samples_the_same_anatomy():
    import SimpleITK as sitk

    spacing, shape = (3.0, 3.0, 6.0), (40, 128, 128)
    axial = make_phantom(shape, spacing=spacing, seed=5)
    oblique = make_phantom(shape, spacing=spacing, seed=5, direction=_rot_z(25.0))
    assert oblique.ct.direction == pytest.approx(_rot_z(25.0))
    resampled = sitk.Resample(
        to_sitk(oblique.labels), to_sitk(axial.labels), sitk.Transform(), sitk.sitkNearestNeighbor, 0
    )
    moved = sitk.GetArrayFromImage(resampled)
    # Compare only where the oblique grid covers the axial one.
    cover = sitk.GetArrayFromImage(
        sitk.Resample(
            sitk.Cast(to_sitk(oblique.labels) * 0 + 1, sitk.sitkUInt8),
            to_sitk(axial.labels),
            sitk.Transform(),
            sitk.sitkNearestNeighbor,
            0,
        )
    ).astype(bool)
    for entry in PHANTOM_LABELS:
        a = (axial.labels.array == entry["value"]) & cover
        b = (moved == entry["value"]) & cover
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice > 0.9, (entry["name"], dice)


def test_organs_come_and_go_along_z():
    _, labels, _ = make_phantom((48, 64, 64), seed=0)
    present = {name: np.flatnonzero((labels.array == v).any(axis=(1, 2))) for name, v in LABEL_VALUES.items()}
    nz = labels.shape[0]
    for name in ("liver", "spleen", "left kidney", "right kidney", "left lung", "right lung"):
        assert 0 < len(present[name]) < nz, name
    # Kidneys below the liver's top, lungs above the kidneys; the column runs the whole length.
    assert present["left kidney"].min() < present["liver"].min()
    assert present["left lung"].max() > present["liver"].max()
    assert present["left kidney"].max() < present["left lung"].min()
    # The column runs the whole length, vertebrae and discs alternating: some slices cut only a disc.
    assert 0.7 * nz < len(present["vertebral column"]) < nz
    assert present["vertebral column"].min() == 0 and present["vertebral column"].max() == nz - 1


def test_hounsfield_units_are_realistic():
    ct, labels, _ = make_phantom((32, 128, 128), seed=1, noise_sigma=15.0)
    from scipy import ndimage

    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[1] = ndimage.generate_binary_structure(2, 1)
    expected = {"liver": HU["liver"], "spleen": HU["spleen"], "left lung": HU["lung"], "vertebral column": HU["bone"]}
    for name, hu in expected.items():
        core = ndimage.binary_erosion(labels.array == LABEL_VALUES[name], structure=in_plane, iterations=2)
        assert core.sum() > 50, name
        assert abs(np.median(ct.array[core]) - hu) < 12, (name, np.median(ct.array[core]))
    kidney = ndimage.binary_erosion(labels.array == LABEL_VALUES["left kidney"], structure=in_plane)
    assert 15 < np.median(ct.array[kidney]) < 50
    assert np.median(ct.array[0, :3, :3]) < -950  # air in the corner


def test_noise_level_and_noise_free_image():
    clean = make_phantom(SMALL, seed=4, noise_sigma=0.0)
    noisy = make_phantom(SMALL, seed=4, noise_sigma=15.0)
    np.testing.assert_array_equal(clean.labels.array, noisy.labels.array)
    diff = noisy.ct.array.astype(float) - clean.ct.array
    inside = clean.ct.array > -900  # away from the -1024 clip
    assert 13.5 < diff[inside].std() < 16.5


def test_label_table_is_a_valid_model_card_label_list():
    from MedDINOv3Core.card import ModelCard
    from MedDINOv3Core.models.vit import vit_config

    table = phantom_label_table()
    assert table == list(PHANTOM_LABELS) and table is not PHANTOM_LABELS
    assert [e["value"] for e in table] == list(range(1, 8))
    codes = {
        e["name"]: (e["terminology"]["type"][1], e["terminology"].get("typeModifier", [None, None])[1]) for e in table
    }
    assert codes == {
        "liver": ("10200004", None),
        "spleen": ("78961009", None),
        "left kidney": ("64033007", "7771000"),
        "right kidney": ("64033007", "24028007"),
        "vertebral column": ("421060004", None),
        "left lung": ("39607008", "7771000"),
        "right lung": ("39607008", "24028007"),
    }
    for entry in table:
        assert len(entry["color"]) == 3 and all(0.0 <= c <= 1.0 for c in entry["color"])
        assert entry["terminology"]["category"] == ["SCT", "123037004", "Anatomical Structure"]
    card = ModelCard(task="segmentation", backbone=vit_config("vit_tiny"), labels=tuple(table))
    assert list(ModelCard.from_dict(card.to_dict()).labels) == table
    # Slicer's terminology string can be built from the entries.
    slicerio = pytest.importorskip("slicerio.segmentation")
    text = slicerio.terminology_entry_to_string(table[2]["terminology"])
    assert "SCT^64033007^Kidney" in text and "SCT^7771000^Left" in text


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="3 positive sizes"):
        make_phantom((8, 8))
    with pytest.raises(ValueError, match="orthonormal"):
        make_phantom(SMALL, direction=(2, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(ValueError, match="spacing must be positive"):
        make_phantom(SMALL, spacing=(1.0, 0.0, 1.0))


def test_fast_enough_for_tests_and_benchmarks():
    make_phantom((8, 32, 32))  # warm up imports
    # CPU time of this process (single-threaded numpy/scipy), so that other jobs on a shared machine do not count.
    best = min(_cpu_time(make_phantom, (64, 256, 256), seed=s) for s in range(2))
    assert best < 2.0, f"a 64x256x256 phantom took {best:.2f} s of CPU time"


def _cpu_time(fn, *args, **kwargs) -> float:
    t0 = time.process_time()
    fn(*args, **kwargs)
    return time.process_time() - t0
