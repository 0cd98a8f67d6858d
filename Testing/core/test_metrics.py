"""DSC and NSD: agreement with MONAI, analytic cases at anisotropic spacing, empty-mask conventions, summaries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.metrics import (
    ClassScore,
    GeometryMismatchError,
    dice,
    evaluate_case,
    normalized_surface_dice,
    summarize,
    surface_distances,
    surfel_area_table,
)

ANISO = (0.8, 0.8, 3.0)  # (sx, sy, sz) mm


def _onehot(label_map: np.ndarray, labels: list[int]) -> torch.Tensor:
    """(z, y, x) labels -> MONAI's (1, C, z, y, x) one-hot with background first."""
    channels = [~np.isin(label_map, labels)] + [label_map == v for v in labels]
    return torch.from_numpy(np.stack(channels)[None].astype(np.float32))


@pytest.fixture(scope="module")
def phantom_pair():
    """Two different phantoms' labels on one anisotropic grid: a realistic, imperfect 'prediction'."""
    kw = dict(shape=(20, 72, 72), spacing=(5.0, 5.0, 12.0), noise_sigma=0.0)
    gt = make_phantom(seed=0, **kw).labels.array
    pred = make_phantom(seed=1, **kw).labels.array
    return pred, gt, kw["spacing"]


def _sphere(shape_zyx, spacing, center_mm, radius_mm):
    grids = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape_zyx, spacing[::-1])), indexing="ij")
    z, y, x = grids
    cx, cy, cz = center_mm
    return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius_mm**2


# ----------------------------------------------------------------------------------------------- MONAI parity


def test_dice_matches_monai(phantom_pair):
    from monai.metrics import DiceMetric

    pred, gt, _ = phantom_pair
    labels = list(range(1, 8))
    ours = dice(pred, gt, labels)
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    ref = metric(_onehot(pred, labels), _onehot(gt, labels))[0].numpy()
    assert 0.2 < np.mean(list(ours.values())) < 0.95  # a realistic, imperfect overlap
    np.testing.assert_allclose([ours[v] for v in labels], ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method, subvoxels, atol", [("voxels", False, 1e-6), ("surfels", True, 0.003)])
def test_nsd_matches_monai(phantom_pair, method, subvoxels, atol):
    from monai.metrics import compute_surface_dice

    pred, gt, spacing = phantom_pair
    labels = list(range(1, 8))
    tolerances = {1: 6.0, 2: 5.0, 3: 4.0, 4: 4.0, 5: 7.5, 6: 10.0, 7: 10.0}
    ours = normalized_surface_dice(pred, gt, spacing, tolerances, labels, method=method)
    ref = compute_surface_dice(
        _onehot(pred, labels),
        _onehot(gt, labels),
        [tolerances[v] for v in labels],
        include_background=False,
        spacing=list(spacing[::-1]),  # MONAI takes spacing in array-axis order
        use_subvoxels=subvoxels,
    )[0].numpy()
    assert 0.1 < np.mean(list(ours.values())) < 0.95
    np.testing.assert_allclose([ours[v] for v in labels], ref, atol=atol)


def test_surfel_areas_match_monai_table_and_geometry():
    from monai.metrics.utils import get_code_to_measure_table

    spacing_zyx = (3.0, 0.7, 0.5)
    ours = surfel_area_table(spacing_zyx)
    ref = get_code_to_measure_table(spacing_zyx)[0].cpu().numpy().astype(np.float64)
    assert ours.shape == ref.shape == (256,)
    assert ours[0] == ours[255] == 0.0
    # A planar patch across the cell perpendicular to z has the area of the z face; a corner triangle with
    # vertices at the three edge midpoints has 1/8 of sqrt(sum of squared face areas); cutting three edges of a
    # corner block gives a hexagon: 3/4 of the same root.
    faces = np.array([0.7 * 0.5, 3.0 * 0.5, 3.0 * 0.7])
    corner_block = 0b00010111  # corner (0,0,0) with its three edge neighbours
    for code, area in (
        (0b00001111, 0.7 * 0.5),
        (1, np.linalg.norm(faces) / 8),
        (corner_block, 0.75 * np.linalg.norm(faces)),
    ):
        assert ours[code] == pytest.approx(area) and ref[code] == pytest.approx(area, rel=1e-5)
        assert ours[255 - code] == pytest.approx(area)
    # Same topology as marching cubes (Nikolov's and MONAI's table): the same cells carry surface, and the planar
    # patches have the same area. Non-planar patches (3-5 corners inside) are triangulated around their centroid,
    # which is never larger than marching cubes' fan from a vertex, and at most ~30% smaller at 6:1 anisotropy.
    np.testing.assert_array_equal(ours > 0, ref > 0)
    assert np.isclose(ours, ref, rtol=1e-5, atol=1e-6).mean() >= 0.6
    ratio = ours[ref > 0] / ref[ref > 0]
    assert ratio.max() <= 1 + 1e-5 and ratio.min() > 0.7
    # In 2D every patch is a straight segment: the table equals MONAI's exactly.
    np.testing.assert_allclose(
        surfel_area_table((2.0, 0.5)), get_code_to_measure_table((2.0, 0.5))[0].cpu().numpy(), rtol=1e-6
    )


def test_surfel_area_of_a_sphere_is_close_to_4_pi_r2():
    spacing = (0.5, 0.6, 1.0)
    mask = _sphere((40, 60, 70), spacing, (17.5, 18.0, 20.0), 12.0)
    sd = surface_distances(mask, mask, spacing)
    area = sd.pred_weights.sum()
    # Marching cubes on a binary mask overestimates a smooth surface by a few percent (staircase facets).
    assert 1.0 < area / (4 * math.pi * 12.0**2) < 1.12
    np.testing.assert_array_equal(sd.pred_to_gt, 0.0)


# ----------------------------------------------------------------------------------------------- analytic cases


@pytest.mark.parametrize("axis", ["x", "z"])
def test_sphere_shifted_by_known_distance(axis):
    """Two spheres of radius R whose centres are d mm apart, on a grid of (0.25, 0.35, 0.6) mm voxels.

    DSC = V(lens) / V(sphere) with V(lens) = pi (4R + d)(2R - d)^2 / 12. NSD: a point of one sphere at polar angle
    theta (from the shift axis) lies | sqrt(R^2 + d^2 - 2 R d cos theta) - R | from the other sphere; area is uniform
    in cos theta, so NSD = the fraction of cos theta in [-1, 1] where that distance <= tau (= tau / d here).
    """
    spacing, radius, shift, tol = (0.25, 0.35, 0.6), 12.0, 3.0, 1.5
    shape = (int(34 / 0.6), int(34 / 0.35), int(34 / 0.25))
    c = np.array([15.0, 15.0, 15.0])
    offset = np.array([shift, 0, 0]) if axis == "x" else np.array([0, 0, shift])
    a = _sphere(shape, spacing, c, radius).astype(np.uint8)
    b = _sphere(shape, spacing, c + offset, radius).astype(np.uint8)

    lens = math.pi * (4 * radius + shift) * (2 * radius - shift) ** 2 / 12
    expected_dice = lens / (4 / 3 * math.pi * radius**3)
    assert dice(a, b, [1])[1] == pytest.approx(expected_dice, abs=0.003)

    def analytic_nsd(tau: float) -> float:
        lo = max(-1.0, (radius**2 + shift**2 - (radius + tau) ** 2) / (2 * radius * shift))
        hi = min(1.0, (radius**2 + shift**2 - (radius - tau) ** 2) / (2 * radius * shift))
        return (hi - lo) / 2

    nsd = normalized_surface_dice(a, b, spacing, tol, [1])[1]
    # Surface elements sit at cell centres, within half a cell diagonal h of the true surface, so each distance is
    # off by at most 2h: the score lies between the analytic NSD at tolerances tau - 2h and tau + 2h.
    h = 0.5 * float(np.linalg.norm(spacing))
    assert analytic_nsd(tol - 2 * h) <= nsd <= analytic_nsd(tol + 2 * h)
    assert nsd == pytest.approx(analytic_nsd(tol), abs=0.1)


def test_area_weighting_removes_the_anisotropy_bias_of_voxel_counting():
    spacing, radius, shift, tol = (0.5, 0.7, 1.2), 15.0, 3.0, 2.0
    shape = (int(40 / 1.2), int(40 / 0.7), int(40 / 0.5))
    c = np.array([20.0, 20.0, 20.0])
    a = _sphere(shape, spacing, c, radius)
    scores = {}
    for method in ("surfels", "voxels"):
        along_x = normalized_surface_dice(
            a, _sphere(shape, spacing, c + [shift, 0, 0], radius), spacing, tol, [1], method
        )
        along_z = normalized_surface_dice(
            a, _sphere(shape, spacing, c + [0, 0, shift], radius), spacing, tol, [1], method
        )
        scores[method] = abs(along_x[1] - along_z[1])
    assert scores["surfels"] < 0.05 < scores["voxels"]


def test_box_shifted_by_whole_voxels_gives_exact_scores():
    """A box of n x n x h voxels shifted by one slice (3 mm) along z, or by two 0.8 mm voxels along x."""
    n, h = 20, 10
    a = np.zeros((16, 30, 30), np.uint8)
    a[2 : 2 + h, 4 : 4 + n, 4 : 4 + n] = 1
    up = np.roll(a, 1, axis=0)
    side = np.roll(a, 2, axis=2)
    assert dice(a, up, [1])[1] == pytest.approx((h - 1) / h)
    assert dice(a, side, [1])[1] == pytest.approx((n - 2) / n)
    for method in ("voxels", "surfels"):
        # Every surface element moved by exactly the shift: within a tolerance >= the shift, NSD is exactly 1.
        assert normalized_surface_dice(a, up, ANISO, 3.0, [1], method)[1] == 1.0
        assert normalized_surface_dice(a, side, ANISO, 1.6, [1], method)[1] == 1.0
    # Boundary voxels, tolerance 2 mm < 3 mm, so only voxels in the same slice can match. A's bottom cap (n^2
    # voxels) has no voxel of B in its slice; A's top cap lies in a middle slice of B, whose boundary there is the
    # ring: cap voxels 3 or more voxels (2.4 mm) in from the ring fail, (n - 6)^2 of them. B mirrors A.
    surface = 2 * n * n + (h - 2) * (4 * n - 4)
    failing = n * n + (n - 6) ** 2
    expected = 1 - failing / surface
    assert normalized_surface_dice(a, up, ANISO, 2.0, [1], "voxels")[1] == pytest.approx(expected)
    # In plane, 2 mm covers the 1.6 mm shift whatever the 3 mm slices do.
    assert normalized_surface_dice(a, side, ANISO, 2.0, [1], "voxels")[1] == 1.0


def test_identical_maps_score_one_and_2d_works():
    _, labels, _ = make_phantom((12, 48, 48), spacing=(7.0, 7.0, 20.0), seed=3, noise_sigma=0.0)
    arr = labels.array
    present = [int(v) for v in np.unique(arr) if v]
    assert all(v == 1.0 for v in dice(arr, arr).values())
    assert all(v == 1.0 for v in normalized_surface_dice(arr, arr, labels.spacing, 0.0).values())
    slice2d = arr[6]
    shifted = np.roll(slice2d, 1, axis=1)
    scores = normalized_surface_dice(slice2d, shifted, (7.0, 7.0), 7.0)
    assert set(scores) == {int(v) for v in np.unique(slice2d) if v}
    assert all(v == 1.0 for v in scores.values())
    assert set(dice(arr, arr)) == set(present)


# ----------------------------------------------------------------------------------------------- conventions


def test_empty_mask_conventions():
    gt = np.zeros((6, 10, 10), np.uint8)
    gt[2:4, 3:6, 3:6] = 1
    pred = np.zeros_like(gt)
    pred[1:3, 2:5, 2:5] = 2  # class 2 only in the prediction, class 1 missed
    d = dice(pred, gt, [1, 2, 3])
    n = normalized_surface_dice(pred, gt, ANISO, 2.0, [1, 2, 3])
    assert d[1] == 0.0 and n[1] == 0.0  # missed organ
    assert d[2] == 0.0 and n[2] == 0.0  # false positive
    assert math.isnan(d[3]) and math.isnan(n[3])  # absent from both: undefined, left out of means
    assert dice(pred, gt).keys() == {1, 2}  # labels=None scores what is present in either map


def test_summary_leaves_out_undefined_scores_and_weighs_classes_equally():
    def case(d1, n1, d2, n2):
        return [ClassScore(1, d1, n1, 2.0, 1.0, 1.0), ClassScore(2, d2, n2, 2.0, 1.0, 1.0)]

    summaries, mean_dice, mean_nsd = summarize([case(0.9, 0.8, 0.5, 0.4), case(0.7, 0.6, math.nan, math.nan)])
    assert [s.label for s in summaries] == [1, 2]
    assert summaries[0].dice_mean == pytest.approx(0.8) and summaries[0].n == 2
    assert summaries[1].dice_mean == pytest.approx(0.5) and summaries[1].n == 1
    assert mean_dice == pytest.approx((0.8 + 0.5) / 2)
    assert mean_nsd == pytest.approx((0.7 + 0.4) / 2)


def test_evaluate_case_reports_volumes_and_tolerances(phantom_pair):
    pred, gt, spacing = phantom_pair
    scores = evaluate_case(pred, gt, spacing, {v: float(v) for v in range(1, 8)}, range(1, 8))
    voxel = spacing[0] * spacing[1] * spacing[2]
    assert [s.label for s in scores] == list(range(1, 8))
    assert scores[0].gt_volume_mm3 == pytest.approx(np.count_nonzero(gt == 1) * voxel)
    assert scores[2].tolerance_mm == 3.0


def test_bad_inputs_raise_clear_errors():
    a = np.zeros((4, 5, 6), np.uint8)
    with pytest.raises(GeometryMismatchError, match="same voxel grid"):
        dice(a, np.zeros((4, 5, 7), np.uint8))
    with pytest.raises(ValueError, match="non-integer"):
        dice(a.astype(float) + 0.5, a)
    with pytest.raises(ValueError, match="no surface tolerance given for label"):
        normalized_surface_dice(a, a, ANISO, {1: 2.0}, [1, 2])
    with pytest.raises(ValueError, match=">= 0 mm"):
        normalized_surface_dice(a, a, ANISO, -1.0, [1])
    with pytest.raises(ValueError, match="needs 3 values"):
        normalized_surface_dice(a, a, (1.0, 1.0), 1.0, [1])
    with pytest.raises(ValueError, match="unknown surface method"):
        normalized_surface_dice(a, a, ANISO, 1.0, [1], method="mesh")
