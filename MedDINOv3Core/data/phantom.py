"""A seeded synthetic abdominal CT phantom with organ labels, for tests, benchmarks and the offline demo.

No labelled abdominal CT ships in any installable package, so the project draws its own: a body ellipse of soft
tissue in air with a subcutaneous fat layer, and smooth, randomly deformed organs with realistic Hounsfield units.

Anatomy lives in patient space (LPS millimetres, centred on LPS (0, 0, 0)): x grows to the patient's left, y
posterior, z superior. Every voxel centre is mapped through the volume's geometry (spacing, origin, oblique direction)
into that space before the shapes are evaluated, so the anatomy is the same whatever the grid: a coarse and a fine
phantom of one seed overlay in physical space, and an oblique grid samples the same organs rotated. Along z the organs
come and go like real anatomy (lungs and heart on top, liver and spleen in the middle, kidneys below, vertebrae
separated by discs), so slice-wise segmentation is non-trivial but learnable.

Image formation: piecewise-constant tissue HU -> Gaussian partial-volume blur (the variance of a one-voxel box,
1/12 voxel^2, plus a scanner point spread of ``psf_mm``) -> white Gaussian noise of ``noise_sigma`` HU -> int16.
Labels are the organs at voxel centres (no blur), uint8.

Label values: 1 liver, 2 spleen, 3 left kidney, 4 right kidney, 5 vertebral column (bone), 6 left lung, 7 right lung;
0 is everything else. The label table has the model-card format (``ModelCard.labels``): value, name, color (RGB in
0..1) and a SNOMED CT terminology entry in slicerio's dict form (``slicerio.segmentation.terminology_entry_to_string``
turns it into Slicer's terminology string).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage

from MedDINOv3Core.data.volume import Volume

log = logging.getLogger(__name__)

# Hounsfield units of the phantom's tissues (typical non-contrast values).
HU = {
    "air": -1000.0,
    "soft_tissue": 40.0,
    "fat": -100.0,
    "liver": 60.0,
    "spleen": 50.0,
    "kidney_cortex": 45.0,
    "kidney_medulla": 25.0,
    "lung": -850.0,
    "heart": 40.0,
    "aorta": 45.0,
    "bone": 700.0,
    "disc": 80.0,
    "csf": 10.0,
}

# Extent of the drawn anatomy along z (mm); the default field of view in plane (mm).
ANATOMY_Z_MM = (-120.0, 120.0)
DEFAULT_FOV_MM = 360.0

_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
_ANATOMICAL_STRUCTURE = ["SCT", "123037004", "Anatomical Structure"]
_LEFT = ["SCT", "7771000", "Left"]
_RIGHT = ["SCT", "24028007", "Right"]


def _term(code: str, meaning: str, modifier: list[str] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "contextName": _CONTEXT,
        "category": list(_ANATOMICAL_STRUCTURE),
        "type": ["SCT", code, meaning],
    }
    if modifier is not None:
        entry["typeModifier"] = list(modifier)
    return entry


# Colors from Slicer's GenericAnatomyColors; codes checked against pydicom's SNOMED CT dictionary.
PHANTOM_LABELS: tuple[dict[str, Any], ...] = (
    {
        "value": 1,
        "name": "liver",
        "color": [221 / 255, 130 / 255, 101 / 255],
        "terminology": _term("10200004", "Liver"),
    },
    {
        "value": 2,
        "name": "spleen",
        "color": [157 / 255, 108 / 255, 162 / 255],
        "terminology": _term("78961009", "Spleen"),
    },
    {
        "value": 3,
        "name": "left kidney",
        "color": [185 / 255, 102 / 255, 83 / 255],
        "terminology": _term("64033007", "Kidney", _LEFT),
    },
    {
        "value": 4,
        "name": "right kidney",
        "color": [185 / 255, 102 / 255, 83 / 255],
        "terminology": _term("64033007", "Kidney", _RIGHT),
    },
    {
        "value": 5,
        "name": "vertebral column",
        "color": [241 / 255, 214 / 255, 145 / 255],
        "terminology": _term("421060004", "Vertebral column"),
    },
    {
        "value": 6,
        "name": "left lung",
        "color": [197 / 255, 165 / 255, 145 / 255],
        "terminology": _term("39607008", "Lung", _LEFT),
    },
    {
        "value": 7,
        "name": "right lung",
        "color": [197 / 255, 165 / 255, 145 / 255],
        "terminology": _term("39607008", "Lung", _RIGHT),
    },
)
LABEL_VALUES = {entry["name"]: entry["value"] for entry in PHANTOM_LABELS}


class Phantom(NamedTuple):
    """What :func:`make_phantom` returns; unpacks as ``ct, labels, label_table``."""

    ct: Volume  # int16 HU, (z, y, x)
    labels: Volume  # uint8 label values, (z, y, x), same geometry as ct
    label_table: list[dict[str, Any]]  # model-card label dicts


def phantom_label_table() -> list[dict[str, Any]]:
    """A fresh copy of the phantom's label table (model-card format)."""
    return copy.deepcopy(list(PHANTOM_LABELS))


# ----------------------------------------------------------------------------------------------- geometry


def _default_spacing(shape: tuple[int, int, int]) -> tuple[float, float, float]:
    """Spacing (sx, sy, sz) that fits the body in plane and the drawn anatomy along z."""
    nz, ny, nx = shape
    s = DEFAULT_FOV_MM / min(nx, ny)
    return (s, s, (ANATOMY_Z_MM[1] - ANATOMY_Z_MM[0]) / nz)


def _physical_grid(vol: Volume) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """LPS coordinates (mm, float32) of every voxel centre: three (z, y, x) arrays."""
    nz, ny, nx = vol.shape
    d = vol.direction_matrix
    s = vol.spacing
    axes = (
        np.arange(nx, dtype=np.float64)[None, None, :] * s[0],
        np.arange(ny, dtype=np.float64)[None, :, None] * s[1],
        np.arange(nz, dtype=np.float64)[:, None, None] * s[2],
    )
    coords = []
    for row in range(3):
        c = np.float32(vol.origin[row])
        parts = [(d[row, col] * axes[col]).astype(np.float32) for col in range(3)]
        coords.append((c + parts[0]) + parts[1] + parts[2])
    return coords[0], coords[1], coords[2]


def _index_box(vol: Volume, lo: Sequence[float], hi: Sequence[float]) -> tuple[slice, slice, slice] | None:
    """The (z, y, x) index box covering the physical box [lo, hi] (mm), or None when it misses the grid."""
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = vol.physical_to_index(corners)
    start = np.maximum(np.floor(ijk.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(ijk.max(axis=0)).astype(int) + 1, np.array(vol.shape[::-1]))
    if np.any(stop <= start):
        return None
    return (slice(start[2], stop[2]), slice(start[1], stop[1]), slice(start[0], stop[0]))


class _Deformation:
    """A smooth random displacement field u(p) = sum_m A_m sin(w_m . p + phi_m), |u| <= amplitude_mm."""

    def __init__(self, rng: np.random.Generator, amplitude_mm: float, n_modes: int = 3) -> None:
        wavelengths = rng.uniform(90.0, 180.0, n_modes)
        dirs = rng.normal(size=(n_modes, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        self.w = (2 * np.pi / wavelengths)[:, None] * dirs
        self.phi = rng.uniform(0, 2 * np.pi, n_modes)
        amps = rng.normal(size=(n_modes, 3))
        amps *= amplitude_mm / max(float(np.abs(amps).sum(axis=0).max()), 1e-9)  # bound each component
        self.amps = amps
        self.amplitude_mm = float(amplitude_mm)

    def __call__(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        qx, qy, qz = x.copy(), y.copy(), z.copy()
        if self.amplitude_mm <= 0:
            return qx, qy, qz
        for w, phi, a in zip(self.w, self.phi, self.amps):
            s = np.sin(np.float32(w[0]) * x + np.float32(w[1]) * y + np.float32(w[2]) * z + np.float32(phi))
            qx += np.float32(a[0]) * s
            qy += np.float32(a[1]) * s
            qz += np.float32(a[2]) * s
        return qx, qy, qz


class _Ellipsoid:
    """An ellipsoid in patient space: centre (mm), semi-axes (mm), rotation about z (radians)."""

    def __init__(self, center: Sequence[float], semi: Sequence[float], angle: float = 0.0) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.semi = np.asarray(semi, dtype=np.float64)
        self.cos, self.sin = float(np.cos(angle)), float(np.sin(angle))

    def bounds(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        r = float(self.semi.max()) + margin
        return self.center - r, self.center + r

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, shrink_mm: float = 0.0) -> np.ndarray:
        dx, dy, dz = x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2])
        u = np.float32(self.cos) * dx + np.float32(self.sin) * dy
        v = np.float32(-self.sin) * dx + np.float32(self.cos) * dy
        a, b, c = (np.float32(max(s - shrink_mm, 1e-3)) for s in self.semi)
        return (u / a) ** 2 + (v / b) ** 2 + (dz / c) ** 2 <= 1.0


def _jitter(rng: np.random.Generator, center, semi, angle_deg, pos_mm=6.0, scale=0.08, angle_jitter_deg=8.0):
    center = np.asarray(center, float) + rng.uniform(-pos_mm, pos_mm, 3)
    semi = np.asarray(semi, float) * rng.uniform(1 - scale, 1 + scale, 3)
    angle = np.deg2rad(angle_deg + rng.uniform(-angle_jitter_deg, angle_jitter_deg))
    return _Ellipsoid(center, semi, angle)


class _Canvas:
    """The HU and label arrays being drawn, the deformed patient coordinates of every voxel, the body's inside."""

    def __init__(
        self, geom: Volume, hu: np.ndarray, labels: np.ndarray, q: tuple, inside: np.ndarray, margin: float
    ) -> None:
        self.geom, self.hu, self.labels, self.q, self.inside, self.margin = geom, hu, labels, q, inside, margin

    def region(self, lo: Sequence[float], hi: Sequence[float]) -> tuple[tuple | None, tuple | None]:
        """Index box of the physical box [lo, hi] (mm) and the deformed coordinates (views) inside it."""
        box = _index_box(self.geom, lo, hi)
        if box is None:
            return None, None
        return box, tuple(c[box] for c in self.q)

    def paint(self, shape: _Ellipsoid, tissue: str, label: int, shrink_mm: float = 0.0) -> None:
        """Fill ``shape`` (shrunk by ``shrink_mm``) with the tissue's HU and ``label``, over what is there."""
        box, q = self.region(*shape.bounds(self.margin))
        if box is None:
            return
        m = shape.inside(*q, shrink_mm=shrink_mm) & self.inside[box]
        self.hu[box][m] = HU[tissue]
        self.labels[box][m] = label


# ----------------------------------------------------------------------------------------------- phantom


def make_phantom(
    shape: Sequence[int] = (64, 256, 256),
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    direction: Sequence[float] | None = None,
    origin: Sequence[float] | None = None,
    noise_sigma: float = 15.0,
    deformation_mm: float = 6.0,
    psf_mm: float = 0.6,
) -> Phantom:
    """Draw a labelled synthetic abdominal CT.

    Args:
        shape: (z, y, x) voxels.
        spacing: (sx, sy, sz) mm; None fits a 360 mm field of view in plane (over the smaller in-plane size) and the
            drawn anatomy (z from -120 to +120 mm) along z.
        seed: every random choice (organ positions, sizes, rotations, deformation, noise) follows from it.
        direction: 9 floats, row-major 3x3 with the LPS directions of the i, j, k axes as columns (SimpleITK);
            None is the identity. Oblique directions sample the same anatomy rotated.
        origin: LPS position (mm) of voxel (0, 0, 0); None centres the grid on the anatomy (LPS (0, 0, 0)).
        noise_sigma: standard deviation (HU) of the white Gaussian noise; 0 for a noise-free image.
        deformation_mm: the largest displacement (per component, mm) of the smooth random deformation.
        psf_mm: scanner point spread (Gaussian sigma, mm) added to the one-voxel partial-volume blur.

    Returns:
        Phantom(ct, labels, label_table): ct int16 HU and labels uint8, both (z, y, x) with the same geometry, and
        the label table (model-card format).
    """
    t0 = time.perf_counter()
    geom = _phantom_geometry(shape, spacing, direction, origin)
    # One generator, drawn from in a fixed order: deformation, body, organs, aorta and spine, noise.
    rng = np.random.default_rng(seed)
    canvas = _body_canvas(geom, rng, deformation_mm)
    _draw_organs(canvas, rng)
    _draw_aorta(canvas, rng)
    _draw_spine(canvas, rng)
    hu, labels = canvas.hu, canvas.labels
    del canvas  # the deformed coordinates go before the blur
    ct_array = _form_image(hu, geom.spacing, rng, noise_sigma, psf_mm)

    ct = Volume(ct_array, geom.spacing, geom.origin, geom.direction)
    label_volume = Volume(labels, geom.spacing, geom.origin, geom.direction)
    log.debug("phantom %s seed %d drawn in %.2f s", geom.shape, seed, time.perf_counter() - t0)
    return Phantom(ct, label_volume, phantom_label_table())


def _phantom_geometry(
    shape: Sequence[int],
    spacing: Sequence[float] | None,
    direction: Sequence[float] | None,
    origin: Sequence[float] | None,
) -> Volume:
    """The phantom's grid (a voxel-free Volume), the defaults filled in: see make_phantom's arguments."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"phantom shape must be 3 positive sizes (z, y, x), got {shape}")
    spacing = _default_spacing(shape) if spacing is None else tuple(float(s) for s in spacing)
    direction = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0) if direction is None else tuple(direction)
    dmat = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    if not np.allclose(dmat.T @ dmat, np.eye(3), atol=1e-3):
        raise ValueError("phantom direction must be an orthonormal 3x3 matrix (9 floats, row-major)")
    if origin is None:
        half = np.asarray(spacing) * (np.asarray(shape[::-1], dtype=np.float64) - 1) / 2
        origin = tuple(-(dmat @ half))
    return Volume.geometry_of(shape, spacing, origin, direction)


def _body_canvas(geom: Volume, rng: np.random.Generator, deformation_mm: float) -> _Canvas:
    """The deformed patient coordinates of every voxel and the body drawn in air: an elliptic cylinder whose width
    breathes slowly along z, with a fat layer under the skin; the organs are drawn inside that layer."""
    deform = _Deformation(rng, deformation_mm)
    qx, qy, qz = deform(*_physical_grid(geom))
    hu = np.full(geom.shape, HU["air"], dtype=np.float32)
    labels = np.zeros(geom.shape, dtype=np.uint8)

    body_a, body_b = rng.uniform(150, 170), rng.uniform(105, 120)
    fat = rng.uniform(8, 18)
    zmod = 1.0 + np.float32(0.05) * np.sin(qz / np.float32(70.0) + np.float32(rng.uniform(0, 2 * np.pi)))
    r2 = (qx / (np.float32(body_a) * zmod)) ** 2 + ((qy - np.float32(5.0)) / (np.float32(body_b) * zmod)) ** 2
    hu[r2 <= 1.0] = HU["fat"]
    inside_body = r2 <= np.float32((1.0 - fat / body_b) ** 2)  # organs stay under the fat layer
    hu[inside_body] = HU["soft_tissue"]
    return _Canvas(geom, hu, labels, (qx, qy, qz), inside_body, margin=deformation_mm + 1.0)


def _draw_organs(canvas: _Canvas, rng: np.random.Generator) -> None:
    """Liver, spleen, kidneys (cortex and medulla), lungs and heart; the draw order sets precedence (later organs
    overwrite earlier ones)."""
    liver_right = _jitter(rng, (-55, -5, 15), (85, 80, 65), 15)
    liver_left = _jitter(rng, (15, -45, 35), (50, 35, 35), -10)
    spleen = _jitter(rng, (95, 45, 30), (28, 50, 50), 30)
    kidney_l = _jitter(rng, (70, 60, -45), (30, 32, 55), -20)
    kidney_r = _jitter(rng, (-70, 60, -58), (30, 32, 55), 20)
    lung_l = _jitter(rng, (82, 10, 100), (52, 80, 95), 0)
    lung_r = _jitter(rng, (-82, 10, 105), (56, 82, 95), 0)
    heart = _jitter(rng, (20, -25, 90), (55, 50, 45), 25)
    cortex_mm = rng.uniform(5, 8)
    paint = canvas.paint
    for organ in (liver_right, liver_left):
        paint(organ, "liver", LABEL_VALUES["liver"])
    paint(spleen, "spleen", LABEL_VALUES["spleen"])
    for organ, name in ((kidney_l, "left kidney"), (kidney_r, "right kidney")):
        paint(organ, "kidney_cortex", LABEL_VALUES[name])
        paint(organ, "kidney_medulla", LABEL_VALUES[name], shrink_mm=cortex_mm)
    paint(lung_l, "lung", LABEL_VALUES["left lung"])
    paint(lung_r, "lung", LABEL_VALUES["right lung"])
    paint(heart, "heart", 0)


# Aorta and spine run the whole length: their boxes reach well past the drawn anatomy along z (mm).
_LONG_Z_MM = (ANATOMY_Z_MM[0] - 200, ANATOMY_Z_MM[1] + 200)


def _draw_aorta(canvas: _Canvas, rng: np.random.Generator) -> None:
    """The aorta: a 12 mm tube along z, left of the midline in front of the spine (unlabelled)."""
    z_lo, z_hi = _LONG_Z_MM
    aorta_x, aorta_y = 22 + rng.uniform(-4, 4), 18 + rng.uniform(-4, 4)
    box, q = canvas.region((aorta_x - 30, aorta_y - 30, z_lo), (aorta_x + 30, aorta_y + 30, z_hi))
    if box is not None:
        m = (q[0] - np.float32(aorta_x)) ** 2 + (q[1] - np.float32(aorta_y)) ** 2 <= np.float32(12.0**2)
        canvas.hu[box][m] = HU["aorta"]
        canvas.labels[box][m] = 0


def _draw_spine(canvas: _Canvas, rng: np.random.Generator) -> None:
    """The vertebral column: a stack of vertebrae (body, arch, spinous process) and discs around the spinal canal,
    with a gentle lordosis; only the bone is labelled."""
    z_lo, z_hi = _LONG_Z_MM
    period, disc = rng.uniform(28, 34), rng.uniform(5, 7)
    phase = rng.uniform(0, period)
    spine_y = 55 + rng.uniform(-4, 4)
    box, q = canvas.region((-40, spine_y - 40, z_lo), (40, spine_y + 70, z_hi))
    if box is None:
        return
    x, y, z = q
    yc = np.float32(spine_y) + np.float32(8.0) * np.sin(z / np.float32(150.0))  # gentle lordosis
    dy = y - yc
    vertebra = np.mod(z - np.float32(phase), np.float32(period)) >= np.float32(disc)
    body = (x / np.float32(22.0)) ** 2 + (dy / np.float32(18.0)) ** 2 <= 1.0
    canal_r2 = x**2 + (dy - np.float32(28.0)) ** 2
    arch = (canal_r2 <= np.float32(13.0**2)) & (canal_r2 > np.float32(8.0**2))
    spinous = (x / np.float32(5.0)) ** 2 + ((dy - np.float32(44.0)) / np.float32(10.0)) ** 2 <= 1.0
    bone = vertebra & (body | arch | spinous)
    hu_box, lab_box = canvas.hu[box], canvas.labels[box]
    hu_box[body & ~vertebra] = HU["disc"]
    lab_box[body & ~vertebra] = 0
    hu_box[canal_r2 <= np.float32(8.0**2)] = HU["csf"]
    lab_box[canal_r2 <= np.float32(8.0**2)] = 0
    hu_box[bone] = HU["bone"]
    lab_box[bone] = LABEL_VALUES["vertebral column"]


def _form_image(
    hu: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, noise_sigma: float, psf_mm: float
) -> np.ndarray:
    """Image formation from the piecewise-constant HU: partial volume (a one-voxel box, variance 1/12 voxel^2) plus
    the scanner's point spread, then white noise; int16 clipped to the CT range."""
    sigma_vox = [float(np.sqrt(1.0 / 12.0 + (psf_mm / s) ** 2)) for s in spacing[::-1]]
    hu = ndimage.gaussian_filter(hu, sigma=sigma_vox, mode="nearest", truncate=3.0)
    if noise_sigma > 0:
        hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_sigma)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
