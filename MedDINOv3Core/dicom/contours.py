"""Planar contours of a 2D mask and their rasterisation (the geometry under RT Structure Sets).

Coordinates are continuous pixel indices ``(x, y) = (column, row)``: pixel ``mask[r, c]`` is centred on ``(c, r)`` and
covers ``[c - 0.5, c + 0.5] x [r - 0.5, r + 0.5]``.

Convention (chosen so a round trip is exact):
- :func:`mask_to_polygons` traces the pixel *boundaries* (voxel-edge convention): every polygon runs along pixel edges,
  so each pixel centre lies 0.5 pixel inside or outside it, never on it. Foreground is 4-connected: two pixels that
  touch only at a corner belong to separate polygons, and the shared corner is cut by ``SADDLE_CUT`` pixel inside each
  polygon so that no two polygons touch.
- Outer boundaries have positive signed (shoelace) area in ``(x, y)``, holes negative. Holes are separate polygons
  nested inside their outer boundary: a reader must combine the polygons of one slice with even-odd (XOR) semantics.
- :func:`polygons_to_mask` rasterises with the pixel-centre rule and even-odd semantics, so
  ``polygons_to_mask(mask_to_polygons(m), m.shape) == m`` for every binary mask.
"""

from __future__ import annotations

import numpy as np

SADDLE_CUT = 0.1
"""How far (pixels) a polygon's vertex at a corner shared with a diagonal neighbour is moved inside the polygon."""

# Unit steps of the four edge directions: 0 +x, 1 +y, 2 -x, 3 -y (a left turn is code + 1 mod 4).
_STEP = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int64)


def signed_area(polygon: np.ndarray) -> float:
    """Shoelace area of a closed polygon ``(N, 2)`` (positive when counter-clockwise in a right-handed x, y frame)."""
    p = np.asarray(polygon, dtype=np.float64)
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _boundary_edges(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed pixel edges with the foreground on their left, on the corner lattice of a 1-padded mask.

    Returns start corners ``(E, 2)`` as (x, y) lattice points, end corners ``(E, 2)`` and direction codes ``(E,)``.
    Lattice point (x, y) is the corner at pixel index position (x - 1.5, y - 1.5) of the unpadded mask.
    """
    p = np.pad(mask.astype(bool), 1)
    starts, codes = [], []
    # Horizontal edges at lattice row y between pixel rows y - 1 (above) and y (below), x from c to c + 1.
    above, below = p[:-1, :], p[1:, :]
    y, x = np.nonzero(below & ~above)  # foreground below: walk +x (left of +x is +y)
    starts.append(np.c_[x, y + 1])
    codes.append(np.zeros(len(x), np.int64))
    y, x = np.nonzero(above & ~below)  # foreground above: walk -x from x + 1
    starts.append(np.c_[x + 1, y + 1])
    codes.append(np.full(len(x), 2, np.int64))
    # Vertical edges at lattice column x between pixel columns x - 1 (left) and x (right), y from r to r + 1.
    left, right = p[:, :-1], p[:, 1:]
    y, x = np.nonzero(left & ~right)  # foreground at -x: walk +y (left of +y is -x)
    starts.append(np.c_[x + 1, y])
    codes.append(np.ones(len(x), np.int64))
    y, x = np.nonzero(right & ~left)  # foreground at +x: walk -y from y + 1
    starts.append(np.c_[x + 1, y + 1])
    codes.append(np.full(len(x), 3, np.int64))
    start = np.concatenate(starts).astype(np.int64)
    code = np.concatenate(codes)
    return start, start + _STEP[code], code


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundary polygons of a 2D binary mask.

    Args:
        mask: ``(H, W)`` array, nonzero = inside.

    Returns:
        A list of ``(N, 2)`` float64 vertex arrays in (x, y) = (column, row) pixel coordinates, each closed implicitly
        (the last vertex connects to the first), without repeated or collinear vertices. Outer boundaries are
        counter-clockwise (positive :func:`signed_area`), hole boundaries clockwise.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask_to_polygons needs a 2D mask, got shape {mask.shape}")
    start, end, code = _boundary_edges(mask)
    n = len(code)
    if n == 0:
        return []
    width = mask.shape[1] + 3
    start_id = start[:, 1] * width + start[:, 0]
    end_id = end[:, 1] * width + end[:, 0]
    # Outgoing edges per corner: at most two (a saddle corner, foreground on one diagonal).
    order = np.argsort(start_id, kind="stable")
    sorted_ids = start_id[order]
    first = np.searchsorted(sorted_ids, end_id, side="left")
    count = np.searchsorted(sorted_ids, end_id, side="right") - first
    nxt = order[np.minimum(first, n - 1)]
    saddle = count == 2
    if np.any(saddle):
        # At a saddle keep hugging the same pixel (a left turn): diagonal neighbours stay separate polygons.
        a, b = order[first[saddle]], order[first[saddle] + 1]
        want = (code[saddle] + 1) % 4
        nxt[saddle] = np.where(code[a] == want, a, b)

    visited = np.zeros(n, bool)
    polygons: list[np.ndarray] = []
    offset = np.array([-1.5, -1.5])
    for seed in range(n):
        if visited[seed]:
            continue
        points: list[np.ndarray] = []
        e = seed
        while not visited[e]:
            visited[e] = True
            f = nxt[e]
            if code[f] != code[e]:  # a corner at end[e]
                corner = end[e].astype(np.float64)
                if saddle[e]:
                    points.append(corner - SADDLE_CUT * _STEP[code[e]])
                    points.append(corner + SADDLE_CUT * _STEP[code[f]])
                else:
                    points.append(corner)
            e = f
        if len(points) >= 3:
            polygons.append(np.asarray(points) + offset)
    return polygons


def polygons_to_mask(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Rasterise closed polygons with the pixel-centre rule and even-odd (XOR) semantics.

    Args:
        polygons: ``(N, 2)`` arrays of (x, y) = (column, row) pixel coordinates; each is closed implicitly.
        shape: ``(H, W)`` of the output.

    Returns:
        ``(H, W)`` bool mask: a pixel is inside when its centre is enclosed by an odd number of polygon boundaries.
    """
    height, width = int(shape[0]), int(shape[1])
    toggles = np.zeros((height, width + 1), dtype=np.int32)
    for polygon in polygons:
        p = np.asarray(polygon, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
            continue
        x0, y0 = p[:, 0], p[:, 1]
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        keep = y0 != y1
        x0, y0, x1, y1 = x0[keep], y0[keep], x1[keep], y1[keep]
        # Half-open rule: an edge crosses the centre row r when min(y) <= r < max(y).
        lo = np.ceil(np.minimum(y0, y1)).astype(np.int64)
        hi = np.ceil(np.maximum(y0, y1)).astype(np.int64)
        lo, hi = np.clip(lo, 0, height), np.clip(hi, 0, height)
        counts = np.maximum(hi - lo, 0)
        if counts.sum() == 0:
            continue
        edge = np.repeat(np.arange(len(lo)), counts)
        rows = lo[edge] + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        t = (rows - y0[edge]) / (y1[edge] - y0[edge])
        xs = x0[edge] + t * (x1[edge] - x0[edge])
        # Centres at column c >= x are right of the crossing: the crossing toggles all of them.
        cols = np.clip(np.ceil(xs), 0, width).astype(np.int64)
        np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)
