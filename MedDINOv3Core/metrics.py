"""Segmentation metrics: Dice similarity coefficient (DSC) and normalized surface Dice (NSD), per class.

Arrays are label maps (integer values) in the core's (z, y, x) order (or (y, x) for one slice); ``spacing`` is given
in :class:`~MedDINOv3Core.data.volume.Volume` order, x first: (sx, sy, sz) mm (or (sx, sy)). Everything is computed
at that native, possibly anisotropic, spacing: nothing is resampled.

Conventions (the same as nnU-Net's evaluation and MONAI's ``compute_surface_dice``, so scores compare):

- DSC = 2 |P & G| / (|P| + |G|) over voxels of one class.
- NSD (Nikolov et al. 2021, "Clinically applicable segmentation of head and neck anatomy for radiotherapy") is the
  fraction of the two surfaces that lies within ``tolerance_mm`` of the other surface:
  NSD = (|{p in dP : d(p, dG) <= tau}| + |{g in dG : d(g, dP) <= tau}|) / (|dP| + |dG|).
  |.| is surface area. Two surface conventions (``method``):

  * ``"surfels"`` (default), as in Nikolov et al.'s reference code and MONAI's ``use_subvoxels=True``: the surface
    is cut into marching-cubes patches, one per 2x2x2 cell of voxels (centred on a voxel corner, so on a grid shifted
    by half a voxel); each patch weighs its area in mm^2 at the native spacing (contour length in 2D) and sits at its
    cell centre. Patch areas come from a 256-entry table built here (:func:`surfel_area_table`): the same cells and
    planar areas as Nikolov's table, non-planar patches triangulated around their centroid (up to ~30% smaller
    than marching cubes' triangles at strong anisotropy; NSD differs from MONAI's by < 0.01 on organ shapes).
    Because elements are weighted by area, the score hardly depends on how the surface is oriented on a stretched
    grid. Distances between cell centres are off by up to about half a cell diagonal, so on coarse grids NSD
    leans towards 1 (the same holds for MONAI and Nikolov's code); the error shrinks with the voxel size.
  * ``"voxels"``, MONAI's default (``use_subvoxels=False``): boundary voxels (in the mask, with at least one face
    neighbour outside it), each counting 1. Cheaper, but on anisotropic grids the count per mm^2 of surface depends
    on the surface's orientation, which biases NSD by up to ~0.1 (see Testing/core/test_metrics.py).

  In both, beyond the array edge counts as outside (an organ cut by the field of view has a surface there in both
  masks), and d is the Euclidean distance in mm between element centres (scipy's exact distance transform with
  ``sampling`` = the spacing). A distance equal to the tolerance counts as within it (a 1e-6 mm slack absorbs
  floating-point rounding, so a shift of exactly two 0.8 mm voxels is within 1.6 mm).
- Empty masks. Both empty (the class is absent and the model agrees): DSC and NSD are NaN, "undefined", and left
  out of every mean; scoring it 1.0 would reward a model for classes absent from most cases and inflate means
  (nnU-Net and MONAI both return NaN). Exactly one empty: DSC = 0 and NSD = 0 (a missed organ or a false
  positive is a complete failure). MONAI's DiceMetric gives the same numbers with ``ignore_empty=False`` except
  that it scores both-empty as 1.0; with ``ignore_empty=True`` it also gives NaN for an empty truth with a
  non-empty prediction.

Means (:func:`summarize`): per class, the mean over cases that are not NaN; overall, the mean of the per-class means
(each class weighs the same, as in the paper's tables).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from MedDINOv3Core.labelmaps import integer_labels

log = logging.getLogger(__name__)

DISTANCE_SLACK_MM = 1e-6
SURFACE_METHODS = ("surfels", "voxels")

Tolerance = float | Mapping[int, float] | Sequence[float]


class GeometryMismatchError(ValueError):
    """A prediction and its reference do not lie on the same voxel grid."""


@dataclass(frozen=True)
class ClassScore:
    """The scores of one class in one case. Volumes in mm^3; dice/nsd are NaN when both masks are empty."""

    label: int
    dice: float
    nsd: float
    tolerance_mm: float
    pred_volume_mm3: float
    gt_volume_mm3: float


@dataclass(frozen=True)
class ClassSummary:
    """Means over cases of one class; ``n`` counts the cases where the score is defined (not NaN)."""

    label: int
    dice_mean: float
    dice_std: float
    nsd_mean: float
    nsd_std: float
    n: int


# ----------------------------------------------------------------------------------------------- helpers


def _check_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise GeometryMismatchError(
            f"prediction shape {pred.shape} differs from the reference's {gt.shape}; both must be label maps on the "
            "same voxel grid (resample the prediction onto the reference first)"
        )
    if pred.ndim not in (2, 3):
        raise ValueError(f"label maps must be 2D (y, x) or 3D (z, y, x), got shape {pred.shape}")
    return integer_labels(pred, what="prediction"), integer_labels(gt, what="reference")


def _labels_of(pred: np.ndarray, gt: np.ndarray, labels: Iterable[int] | None) -> list[int]:
    if labels is not None:
        return [int(v) for v in labels]
    values = np.union1d(np.unique(pred), np.unique(gt))
    return [int(v) for v in values if v != 0]


def _sampling(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Volume-order spacing (x first) -> scipy ``sampling`` in array-axis order."""
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} needs {ndim} values (x first, as Volume.spacing) for {ndim}D label maps")
    if min(spacing) <= 0:
        raise ValueError(f"spacing must be positive, got {spacing}")
    return spacing[::-1]


def _tolerances(tolerance_mm: Tolerance, labels: list[int]) -> dict[int, float]:
    if isinstance(tolerance_mm, Mapping):
        missing = [v for v in labels if v not in tolerance_mm]
        if missing:
            raise ValueError(f"no surface tolerance given for label(s) {missing}; give one (mm) for every class")
        out = {v: float(tolerance_mm[v]) for v in labels}
    elif isinstance(tolerance_mm, (int, float, np.floating, np.integer)):
        out = {v: float(tolerance_mm) for v in labels}
    else:
        tolerance_mm = list(tolerance_mm)
        if len(tolerance_mm) != len(labels):
            raise ValueError(f"{len(tolerance_mm)} tolerances for {len(labels)} labels; give one per label")
        out = {v: float(t) for v, t in zip(labels, tolerance_mm)}
    bad = {v: t for v, t in out.items() if not (math.isfinite(t) and t >= 0)}
    if bad:
        raise ValueError(f"surface tolerances must be finite and >= 0 mm, got {bad}")
    return out


def _bounding_boxes(array: np.ndarray, labels: list[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box (None when absent) of each positive label, in one pass over a non-negative integer map."""
    wanted = [v for v in labels if v > 0]
    if not wanted:
        return {}
    if array.min() >= 0:
        boxes = ndimage.find_objects(array, max_label=max(wanted))
        return {v: boxes[v - 1] for v in wanted}
    return {v: _box_of(array == v) for v in wanted}


def _union_box(shape: tuple[int, ...], *boxes: tuple[slice, ...] | None, margin: int = 1) -> tuple[slice, ...] | None:
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    return tuple(
        slice(max(min(b[d].start for b in boxes) - margin, 0), min(max(b[d].stop for b in boxes) + margin, shape[d]))
        for d in range(len(shape))
    )


def _box_of(mask: np.ndarray) -> tuple[slice, ...] | None:
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    return boxes[0] if boxes else None


# ----------------------------------------------------------------------------------------------- surfaces


class SurfaceDistances(NamedTuple):
    """Surface elements of two masks and their distances (mm) to the other mask's surface.

    ``pred_weights`` / ``gt_weights`` are the elements' sizes: areas in mm^2 (lengths in mm in 2D) for surfels, 1 for
    boundary voxels.
    """

    pred_to_gt: np.ndarray
    gt_to_pred: np.ndarray
    pred_weights: np.ndarray
    gt_weights: np.ndarray


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels of a binary mask: in the mask with a face neighbour outside it (the array edge is outside).

    Args:
        mask: (z, y, x) or (y, x) bool.

    Returns:
        bool array of the same shape.
    """
    mask = np.asarray(mask, dtype=bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _cell_corners(ndim: int) -> list[tuple[int, ...]]:
    """Corners of a 2^ndim cell; bit b of a cell code is corner b."""
    return list(itertools.product((0, 1), repeat=ndim))


def _groups(corners: list[tuple[int, ...]], max_steps: int) -> list[list[tuple[int, ...]]]:
    """Groups of cell corners joined through neighbours that differ in at most ``max_steps`` coordinates."""
    left, groups = set(corners), []
    while left:
        stack = [left.pop()]
        group = list(stack)
        while stack:
            c = stack.pop()
            for o in [o for o in left if sum(abs(p - q) for p, q in zip(c, o)) <= max_steps]:
                left.discard(o)
                group.append(o)
                stack.append(o)
        groups.append(group)
    return groups


def _face_segments(cycle: list[tuple[int, ...]], inside: set[tuple[int, ...]]) -> list[tuple]:
    """Marching-squares segments of one square face: (end, end, an inside corner, an outside corner) each.

    ``cycle`` lists the face's corners in order around it; segment ends are midpoints of the edges whose corners
    differ. Where two diagonal corners are inside, each inside corner gets its own segment (they stay separate).
    """
    status = [c in inside for c in cycle]

    def mid(k: int) -> tuple[float, ...]:
        return tuple((a + b) / 2 for a, b in zip(cycle[k], cycle[(k + 1) % 4]))

    crossing = [k for k in range(4) if status[k] != status[(k + 1) % 4]]
    if len(crossing) == 2:
        c_in = next(c for c, s in zip(cycle, status) if s)
        c_out = next(c for c, s in zip(cycle, status) if not s)
        return [(mid(crossing[0]), mid(crossing[1]), c_in, c_out)]
    if len(crossing) == 4:
        return [(mid((k - 1) % 4), mid(k), cycle[k], cycle[(k + 1) % 4]) for k in range(4) if status[k]]
    return []


def _chain(segments: list[tuple]) -> list[np.ndarray]:
    """Closed loops (vertex arrays) from segments that share their ends."""
    neighbours: dict[tuple, list[tuple]] = {}
    for a, b in segments:
        neighbours.setdefault(a, []).append(b)
        neighbours.setdefault(b, []).append(a)
    loops, seen = [], set()
    for start in neighbours:
        if start in seen:
            continue
        loop, prev, cur = [start], None, start
        seen.add(start)
        while True:
            nxt = next((n for n in neighbours[cur] if n != prev and n not in seen), None)
            if nxt is None:
                break
            loop.append(nxt)
            seen.add(nxt)
            prev, cur = cur, nxt
        loops.append(np.array(loop, dtype=np.float64))
    return loops


@functools.lru_cache(maxsize=2)
def _code_patches(ndim: int) -> tuple[tuple[np.ndarray, ...], ...]:
    """Per cell code, the surface patches in the cell as vertex arrays in unit-cell coordinates (array-axis order).

    2D: one straight segment (2 vertices) per contour piece. 3D: one closed polygon per patch, through the
    midpoints of the edges whose corners differ, chained from the faces' marching-squares segments. The minority
    side's corners are kept apart (for four against four, the inside's): corners of that side join only through cell
    edges, the other side's through faces too, and a patch separates one group of each. This is marching cubes'
    topology, symmetric under swapping inside and outside, as in Nikolov et al.'s table.
    """
    corners = _cell_corners(ndim)
    table = []
    for code in range(2 ** (2**ndim)):
        inside = [c for b, c in enumerate(corners) if code >> b & 1]
        if ndim == 2:
            cycle = [(0, 0), (1, 0), (1, 1), (0, 1)]
            segments = _face_segments(cycle, set(inside))
            table.append(tuple(np.array([a, b], dtype=np.float64) for a, b, _, _ in segments))
            continue
        if len(inside) > 4:  # the complement's patches (same crossings, the outside kept apart)
            inside = [c for c in corners if c not in inside]
        inside_set = set(inside)
        group_in = {c: i for i, g in enumerate(_groups(inside, 1)) for c in g}
        group_out = {c: j for j, g in enumerate(_groups([c for c in corners if c not in inside_set], 2)) for c in g}
        by_patch: dict[tuple[int, int], list[tuple]] = {}
        for axis in range(3):
            u, v = (a for a in range(3) if a != axis)
            for side in (0, 1):
                cycle = []
                for du, dv in ((0, 0), (1, 0), (1, 1), (0, 1)):
                    c = [0, 0, 0]
                    c[axis], c[u], c[v] = side, du, dv
                    cycle.append(tuple(c))
                for a, b, c_in, c_out in _face_segments(cycle, inside_set):
                    by_patch.setdefault((group_in[c_in], group_out[c_out]), []).append((a, b))
        table.append(tuple(loop for segs in by_patch.values() for loop in _chain(segs)))
    return tuple(table)


def surfel_area_table(sampling: Sequence[float]) -> np.ndarray:
    """Surface area (mm^2; contour length in mm for 2D) of the surface patches of each 2^ndim cell code.

    3D patches are polygons through edge midpoints (see :func:`_code_patches`), triangulated as a fan around their
    centroid at the given spacing. Planar patches (a corner triangle, a plane across the cell, the hexagon cutting
    off a corner block) get their exact area, equal to marching cubes' (Nikolov's and MONAI's) table; for the
    non-planar ones (3 to 5 corners inside) the fan is smoother than marching cubes' fan from a vertex and a few
    percent smaller. In 2D every code equals MONAI's table.

    Args:
        sampling: spacing in array-axis order ((sz, sy, sx) or (sy, sx)).

    Returns:
        (2^(2^ndim),) float64: 256 entries in 3D, 16 in 2D.
    """
    sampling = np.asarray(sampling, dtype=np.float64)
    ndim = sampling.size
    if ndim not in (2, 3):
        raise ValueError(f"surfel areas need 2 or 3 spacings, got {sampling.tolist()}")
    out = np.zeros(2 ** (2**ndim))
    for code, patches in enumerate(_code_patches(ndim)):
        for patch in patches:
            points = patch * sampling
            if ndim == 2:
                out[code] += float(np.linalg.norm(points[1] - points[0]))
            else:
                q = points - points.mean(axis=0)
                out[code] += 0.5 * float(np.linalg.norm(np.cross(q, np.roll(q, -1, axis=0)), axis=1).sum())
    return out


def _cell_codes(mask: np.ndarray) -> np.ndarray:
    """Codes of the cells centred on the voxel corners of ``mask`` padded by one background voxel: shape + 1."""
    padded = np.pad(mask.astype(np.uint8), 1)
    n = [s - 1 for s in padded.shape]
    code = np.zeros(n, dtype=np.uint8)
    for bit, corner in enumerate(_cell_corners(mask.ndim)):
        code |= padded[tuple(slice(c, c + m) for c, m in zip(corner, n))] << bit
    return code


def surface_distances(
    pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float] | None = None, method: str = "surfels"
) -> SurfaceDistances:
    """Surface elements of each mask and their distances (mm) to the nearest element of the other's surface.

    Args:
        pred_mask, gt_mask: (z, y, x) or (y, x) bool, same shape, both non-empty.
        spacing: (sx, sy, sz) mm, x first (Volume order); None is 1 mm.
        method: "surfels" (Nikolov et al.: marching-cubes patches on the grid of voxel corners, weighted by their
            area) or "voxels" (boundary voxels, each weighing 1).

    Returns:
        SurfaceDistances with one distance and one weight per surface element.
    """
    pred_mask, gt_mask = _check_pair(np.asarray(pred_mask, bool), np.asarray(gt_mask, bool))
    if method not in SURFACE_METHODS:
        raise ValueError(f"unknown surface method {method!r}; use one of {SURFACE_METHODS}")
    if not pred_mask.any() or not gt_mask.any():
        raise ValueError("surface distances need two non-empty masks (see the empty-mask conventions of nsd)")
    sampling = _sampling(spacing, pred_mask.ndim)
    # Crop to the union box plus one voxel where the array allows: both surfaces stay inside, and the array edge
    # stays an edge, so neither the surfaces nor the distances change.
    box = _union_box(pred_mask.shape, _box_of(pred_mask), _box_of(gt_mask), margin=1)
    p, g = pred_mask[box].astype(bool), gt_mask[box].astype(bool)
    if method == "voxels":
        sp, sg = surface_voxels(p), surface_voxels(g)
        wp, wg = np.ones(int(sp.sum())), np.ones(int(sg.sum()))
    else:
        cp, cg = _cell_codes(p), _cell_codes(g)
        full = 2 ** (2**p.ndim) - 1
        sp, sg = (cp != 0) & (cp != full), (cg != 0) & (cg != full)
        table = surfel_area_table(sampling)
        wp, wg = table[cp[sp]], table[cg[sg]]
    to_g = ndimage.distance_transform_edt(~sg, sampling=sampling)[sp]
    to_p = ndimage.distance_transform_edt(~sp, sampling=sampling)[sg]
    return SurfaceDistances(to_g, to_p, wp, wg)


# ----------------------------------------------------------------------------------------------- metrics


def _dice_from_counts(intersection: int, n_pred: int, n_gt: int) -> float:
    if n_pred + n_gt == 0:
        return math.nan
    return 2.0 * intersection / (n_pred + n_gt)


def dice(pred: np.ndarray, gt: np.ndarray, labels: Iterable[int] | None = None) -> dict[int, float]:
    """Dice similarity coefficient per class.

    Args:
        pred, gt: label maps, (z, y, x) or (y, x), same shape.
        labels: the class values to score; None scores every non-zero value found in either map.

    Returns:
        {label: DSC in [0, 1]}; NaN where the class is absent from both maps (see the module docstring).
    """
    pred, gt = _check_pair(pred, gt)
    out: dict[int, float] = {}
    for value in _labels_of(pred, gt, labels):
        p, g = pred == value, gt == value
        out[value] = _dice_from_counts(int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g)))
    return out


def _nsd_of_masks(p: np.ndarray, g: np.ndarray, sampling: tuple[float, ...], tol: float, method: str) -> float:
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return math.nan
    if not has_p or not has_g:
        return 0.0
    sd = surface_distances(p, g, spacing=sampling[::-1], method=method)
    limit = tol + DISTANCE_SLACK_MM
    within = sd.pred_weights[sd.pred_to_gt <= limit].sum() + sd.gt_weights[sd.gt_to_pred <= limit].sum()
    total = sd.pred_weights.sum() + sd.gt_weights.sum()
    return float(within / total) if total > 0 else 0.0


def normalized_surface_dice(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None,
    tolerance_mm: Tolerance,
    labels: Iterable[int] | None = None,
    method: str = "surfels",
) -> dict[int, float]:
    """Normalized surface Dice per class at the native spacing.

    Args:
        pred, gt: label maps, (z, y, x) or (y, x), same shape.
        spacing: (sx, sy, sz) mm, x first as in Volume.spacing ((sx, sy) for 2D); None is 1 mm.
        tolerance_mm: the accepted surface deviation: one value for every class, {label: mm}, or one value per
            entry of ``labels`` in order.
        labels: the class values to score; None scores every non-zero value found in either map.
        method: "surfels" (area-weighted, Nikolov et al.; default) or "voxels" (boundary-voxel counts, MONAI's
            default); see the module docstring.

    Returns:
        {label: NSD in [0, 1]}; NaN where the class is absent from both maps, 0 where it is in only one.
    """
    pred, gt = _check_pair(pred, gt)
    if method not in SURFACE_METHODS:
        raise ValueError(f"unknown surface method {method!r}; use one of {SURFACE_METHODS}")
    labels = _labels_of(pred, gt, labels)
    sampling = _sampling(spacing, pred.ndim)
    tolerances = _tolerances(tolerance_mm, labels)
    boxes_p, boxes_g = _bounding_boxes(pred, labels), _bounding_boxes(gt, labels)
    out: dict[int, float] = {}
    for value in labels:
        box = tuple(slice(None) for _ in pred.shape)
        if value > 0:  # crop to where the class is; background (0) or negative values use the whole map
            box = _union_box(pred.shape, boxes_p[value], boxes_g[value])
            if box is None:
                out[value] = math.nan  # absent from both maps
                continue
        out[value] = _nsd_of_masks(pred[box] == value, gt[box] == value, sampling, tolerances[value], method)
    return out


def evaluate_case(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: Sequence[float] | None,
    tolerance_mm: Tolerance,
    labels: Iterable[int] | None = None,
    method: str = "surfels",
) -> list[ClassScore]:
    """DSC, NSD and volumes of every class of one case (label maps on the same grid).

    Args: as :func:`normalized_surface_dice`.

    Returns:
        one ClassScore per label, in the order of ``labels``.
    """
    pred, gt = _check_pair(pred, gt)
    labels = _labels_of(pred, gt, labels)
    voxel_mm3 = float(np.prod(_sampling(spacing, pred.ndim)))
    tolerances = _tolerances(tolerance_mm, labels)
    dsc = dice(pred, gt, labels)
    nsd = normalized_surface_dice(pred, gt, spacing, tolerances, labels, method)
    return [
        ClassScore(
            label=v,
            dice=dsc[v],
            nsd=nsd[v],
            tolerance_mm=tolerances[v],
            pred_volume_mm3=float(np.count_nonzero(pred == v)) * voxel_mm3,
            gt_volume_mm3=float(np.count_nonzero(gt == v)) * voxel_mm3,
        )
        for v in labels
    ]


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    finite = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return math.nan, math.nan, 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


def summarize(cases: Iterable[Sequence[ClassScore]]) -> tuple[list[ClassSummary], float, float]:
    """Per-class means over cases (NaN scores left out) and the overall means (mean of the class means).

    Args:
        cases: the ClassScore lists of each case (as returned by :func:`evaluate_case`).

    Returns:
        (per-class summaries sorted by label, overall mean DSC, overall mean NSD); NaN where nothing is defined.
    """
    by_label: dict[int, list[ClassScore]] = {}
    for case in cases:
        for score in case:
            by_label.setdefault(score.label, []).append(score)
    summaries = []
    for label in sorted(by_label):
        d_mean, d_std, n_d = _mean_std([s.dice for s in by_label[label]])
        n_mean, n_std, _ = _mean_std([s.nsd for s in by_label[label]])
        summaries.append(ClassSummary(label, d_mean, d_std, n_mean, n_std, n_d))
    overall_dice = _mean_std([s.dice_mean for s in summaries])[0]
    overall_nsd = _mean_std([s.nsd_mean for s in summaries])[0]
    return summaries, overall_dice, overall_nsd
