"""The on-disk patch-feature cache of feature exploration, and the patch-grid <-> voxel-grid mapping (numpy only).

A cache is a directory written once by ``MedDINOv3Core.extraction.extract_features`` (torch) and read by every click
(numpy; this module never imports torch, so the Slicer process needs none):

- ``header.json``: format, the cache KEY (model weights hash, volume content hash, preprocessing, layers, upsampling
  factor), the grid mapping (axial layout, native / model / padded shapes) and the volume geometry;
- ``features.npy``: float16 (Z, h, w, D) L2-normalised patch features, opened with ``np.load(mmap_mode="r")``, so a
  cosine similarity is one matrix-vector product. D = n_blocks x C: each block's C tokens are L2-normalised, then the
  concatenation is normalised again, so block b's part is f_b / |f_b| / sqrt(n_blocks);
- ``norms.npy`` (version 2): float32 (Z, h, w, n_blocks) the L2 norm |f_b| of every block's raw tokens, so the raw
  multi-scale tokens the segmentation heads consume come back as ``part_b x sqrt(n_blocks) x |f_b|``
  (``FeatureCache.raw_tokens``; exact up to the float16 rounding of the parts: relative error ~5e-4 per value);
- ``foreground.npy``: float16 (Z, h, w) fraction of each patch's voxels inside the foreground (body) mask;
- ``mask.npy``: uint8 (z, y, x) the foreground mask on the input grid (for PCA maps).

The header is written last and the directory is renamed into place, so a cache that exists is complete.

Grid mapping
------------
Axial slice k of the input (see MedDINOv3Core.data.preprocess: the permuted/flipped axial layout) has native size
(H, W); the model saw it resampled to (H', W') (same field of view), upsampled by ``scale`` (1 or 2) to
(sH', sW'), padded centred to (16 h, 16 w) and cut into (h, w) patches. A patch map goes back to the voxel grid by
bilinear upsampling (``align_corners=False``) to the padded grid, cropping the padding, and the preprocess module's
bilinear restore to (H, W). Both steps are linear and separable, so they are composed into one (H, h) and one
(W, w) matrix per cache (``axis_operator``); a slice is then ``M_y @ S @ M_x.T``, exactly what
``preprocess.restore_to_input`` gives for the upsampled map (tested against it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MedDINOv3Core.atomic import replace_directory
from MedDINOv3Core.resampling import bilinear_matrix

log = logging.getLogger(__name__)

CACHE_FORMAT = "meddinov3-feature-cache"
CACHE_VERSION = 2  # 2: norms.npy (the raw tokens recoverable, issue 18) and the pad value in the key
HEADER_NAME = "header.json"
FEATURES_NAME = "features.npy"
NORMS_NAME = "norms.npy"
FOREGROUND_NAME = "foreground.npy"
MASK_NAME = "mask.npy"
# A float32 copy of the features is kept in memory (the fast click path) when it is at most this large.
DEFAULT_MEMORY_LIMIT = 2 << 30


class FeatureCacheError(ValueError):
    """A directory that is not a complete feature cache of this format; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------- keys


def key_digest(key: dict[str, Any]) -> str:
    """A stable hex digest of a cache key (sorted JSON)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def volume_hash(array: np.ndarray, spacing, origin, direction, chunk_bytes: int = 64 << 20) -> str:
    """Content hash of a volume: every voxel byte (streamed), dtype, shape and geometry.

    blake2b runs at about 1 GB/s, so a 100-slice 512 x 512 int16 CT (52 MB) hashes in ~50 ms: cheap enough to hash
    all voxels rather than a sample (a sample would miss a local edit).
    """
    h = hashlib.blake2b(digest_size=20)
    a = np.asarray(array)
    h.update(json.dumps([str(a.dtype), list(a.shape)]).encode())
    h.update(np.asarray([*spacing, *origin, *direction], dtype=np.float64).tobytes())
    flat = np.ascontiguousarray(a).reshape(-1)
    step = max(1, chunk_bytes // max(1, a.itemsize))
    for i in range(0, flat.size, step):
        h.update(memoryview(flat[i : i + step]).cast("B"))
    return h.hexdigest()


def default_cache_root() -> Path:
    """``~/.cache/meddinov3/features`` (one sub-directory per cache key)."""
    return Path.home() / ".cache" / "meddinov3" / "features"


# -------------------------------------------------------------------------------------------------- grid mapping


@dataclass(frozen=True)
class GridMapping:
    """How the (h, w) patch grid of every axial slice lies on the input grid (see the module docstring).

    Attributes:
        input_shape: (z, y, x) of the input array.
        axes, flips: the axial layout (``np.transpose(a, axes)`` then flip axis n where ``flips[n]``).
        native_shape: (H, W) of an axial slice; model_shape: (H', W') after in-plane resampling.
        scale: extra upsampling of the model grid before the backbone (1 or 2).
        patch: the backbone's patch size; grid: (h, w) patches; pad: (top, left) padding on the upsampled grid.
    """

    input_shape: tuple[int, int, int]
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    native_shape: tuple[int, int]
    model_shape: tuple[int, int]
    scale: int
    patch: int
    grid: tuple[int, int]
    pad: tuple[int, int]

    @classmethod
    def plan(cls, input_shape, axes, flips, native_shape, model_shape, scale: int, patch: int) -> GridMapping:
        """The mapping for a model grid upsampled ``scale`` times and padded centred to multiples of ``patch``."""
        up = (model_shape[0] * scale, model_shape[1] * scale)
        grid = (-(-up[0] // patch), -(-up[1] // patch))
        pad = ((grid[0] * patch - up[0]) // 2, (grid[1] * patch - up[1]) // 2)
        return cls(
            tuple(int(v) for v in input_shape),
            tuple(int(v) for v in axes),
            tuple(bool(v) for v in flips),
            tuple(int(v) for v in native_shape),
            tuple(int(v) for v in model_shape),
            int(scale),
            int(patch),
            grid,
            pad,
        )

    @property
    def upsampled_shape(self) -> tuple[int, int]:
        return (self.model_shape[0] * self.scale, self.model_shape[1] * self.scale)

    @property
    def n_slices(self) -> int:
        return self.input_shape[self.axes[0]]

    def axis_operator(self, axis: int) -> np.ndarray:
        """(N, n) float32 matrix taking a patch-grid axis (n = h or w) to the native axial axis (N = H or W).

        axis 0: rows (H), 1: columns (W). Bilinear patch -> padded grid, crop, bilinear upsampled -> native.
        """
        n, p, top = self.grid[axis], self.patch, self.pad[axis]
        up, native = self.upsampled_shape[axis], self.native_shape[axis]
        to_padded = bilinear_matrix(n, n * p)[top : top + up]
        to_native = bilinear_matrix(up, native) if up != native else np.eye(up)
        return (to_native @ to_padded).astype(np.float32)

    def native_to_patch(self, row: float, col: float) -> tuple[int, int]:
        """The patch (r, c) containing the native axial point (row, col) (continuous pixel indices)."""
        out = []
        for axis, v in enumerate((row, col)):
            up, native = self.upsampled_shape[axis], self.native_shape[axis]
            u = (v + 0.5) * up / native + self.pad[axis]  # position in padded-grid pixel-edge units
            out.append(int(np.clip(np.floor(u / self.patch), 0, self.grid[axis] - 1)))
        return out[0], out[1]

    def to_axial_index(self, zyx: np.ndarray) -> np.ndarray:
        """Input-layout array indices (..., 3) = (z, y, x) -> axial-layout indices (..., 3) (slice, row, col)."""
        zyx = np.asarray(zyx, dtype=np.float64)
        out = np.stack([zyx[..., a] for a in self.axes], axis=-1)
        for t in range(3):
            if self.flips[t]:
                out[..., t] = self.input_shape[self.axes[t]] - 1 - out[..., t]
        return out

    def axial_view(self, array: np.ndarray) -> np.ndarray:
        """A view of an input-layout array ([C,] z, y, x) in the axial layout (same as PreparedVolume.axial_view)."""
        lead = array.ndim - 3
        if tuple(array.shape[lead:]) != self.input_shape:
            raise ValueError(f"array shape {array.shape[lead:]} differs from the volume's {self.input_shape}")
        view = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in self.axes))
        return view[tuple([slice(None)] * lead + [slice(None, None, -1) if f else slice(None) for f in self.flips])]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridMapping:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class PatchUpsampler:
    """Writes patch maps (Z, h, w) onto the input voxel grid through the GridMapping (float32, reused buffers)."""

    def __init__(self, mapping: GridMapping) -> None:
        self.mapping = mapping
        self.my = mapping.axis_operator(0)  # (H, h)
        self.mxt = np.ascontiguousarray(mapping.axis_operator(1).T)  # (w, W)

    def volume_into(self, patch_maps: np.ndarray, out: np.ndarray, slices: Sequence[int] | None = None) -> np.ndarray:
        """Patch maps (Z, h, w) -> ``out`` (z, y, x) on the input grid (written in place, returned).

        Args:
            patch_maps: one map per axial slice (all Z slices, or the ones in ``slices``).
            out: a float32 input-layout array, reused between calls.
            slices: axial slice indices to write (default all; a step-1 range is fastest); others are untouched.
        """
        m = self.mapping
        view = m.axial_view(out)
        slices = range(m.n_slices) if slices is None else slices
        n, (h, w) = len(slices), m.grid
        maps = np.asarray(patch_maps, dtype=np.float32).reshape(n, h, w)
        # y first on the small grid (one GEMM over all slices), then x as ONE large GEMM straight into the output
        # when its slices are contiguous in memory (the usual axial CT): few large BLAS calls, no temporaries.
        rows = (self.my @ maps.transpose(1, 0, 2).reshape(h, n * w)).reshape(-1, n, w).transpose(1, 0, 2)
        rows = np.ascontiguousarray(rows)  # (n, H, w)
        block = view[slices.start : slices.stop] if isinstance(slices, range) and slices.step == 1 else None
        if block is not None and block.flags.c_contiguous:
            np.dot(rows.reshape(-1, w), self.mxt, out=block.reshape(-1, block.shape[-1]))
            return out
        for i, k in enumerate(slices):
            view[k] = rows[i] @ self.mxt
        return out


# ----------------------------------------------------------------------------------------------------------- cache


class FeatureCache:
    """A complete feature cache directory, opened read-only (memory-mapped); see the module docstring.

    Attributes:
        path: the directory; header: the parsed header.json; mapping: the GridMapping;
        features: float16 (Z, h, w, D) memmap (L2-normalised rows); norms: float32 (Z, h, w, n_blocks) memmap (each
        block's token norm); foreground: float32 (Z, h, w) fractions;
        spacing, origin, direction: the volume geometry (SimpleITK LPS convention).
    """

    def __init__(self, path: Path, header: dict[str, Any], memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.path = path
        self.header = header
        self.mapping = GridMapping.from_dict(header["grid"])
        self.features = np.load(path / FEATURES_NAME, mmap_mode="r")
        self.norms = np.load(path / NORMS_NAME, mmap_mode="r")
        self.foreground = np.load(path / FOREGROUND_NAME).astype(np.float32)
        geometry = header["geometry"]
        self.spacing = tuple(geometry["spacing"])
        self.origin = tuple(geometry["origin"])
        self.direction = tuple(geometry["direction"])
        expected = (self.mapping.n_slices, *self.mapping.grid)
        consistent = self.norms.shape[:3] == expected and self.dim % max(1, self.norms.shape[-1]) == 0
        if self.features.shape[:3] != expected or self.foreground.shape != expected or not consistent:
            raise FeatureCacheError(
                f"feature cache {path} is inconsistent (features {self.features.shape}, grid {expected}); delete it "
                "and extract the features again"
            )
        self.memory_limit = memory_limit
        self._dense: np.ndarray | None = None
        self._upsampler: PatchUpsampler | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> FeatureCache:
        """Open a complete cache directory (raises FeatureCacheError when it is not one)."""
        path = Path(path).expanduser()
        header = read_header(path)
        old = read_header(path, any_version=True) if header is None else None
        if old is not None:
            raise FeatureCacheError(
                f"{path} is a feature cache of an older format (version {old.get('version')}, this is "
                f"{CACHE_VERSION}); extract the features again (`python -m training explore ... --cache-dir {path}` "
                "rebuilds it)"
            )
        if header is None:
            raise FeatureCacheError(
                f"{path} is not a complete feature cache; run `python -m training explore` (or extract_features) "
                "to build it"
            )
        return cls(path, header, memory_limit)

    @property
    def key(self) -> dict[str, Any]:
        return self.header["key"]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(z, y, x) of the input volume."""
        return self.mapping.input_shape

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def n_patches(self) -> int:
        return int(np.prod(self.features.shape[:3]))

    @property
    def n_blocks(self) -> int:
        """Backbone blocks concatenated in the features (``key["layers"]``)."""
        return int(self.norms.shape[-1])

    def raw_tokens(self, start: int, stop: int) -> np.ndarray:
        """The raw multi-scale tokens of axial slices ``start:stop``: float32 (n, h, w, D).

        Block b's channels are ``part_b x sqrt(n_blocks) x |f_b|``: the LayerNorm'ed patch tokens of the blocks,
        concatenated in block order, as ``MultiScaleBackbone.features`` returns them (channels last), up to the
        float16 rounding of the stored parts. Only these slices are read, by plain file reads (``read_rows``), so
        a pass over the whole cache keeps one batch in the process's memory.
        """
        import torch  # float16 -> float32 about 2x faster than numpy's conversion

        n_blocks = self.n_blocks
        parts = torch.from_numpy(read_rows(self.features, start, stop)).float()
        n, h, w, d = parts.shape
        scale = torch.from_numpy(read_rows(self.norms, start, stop)).float() * float(np.sqrt(n_blocks))
        parts = parts.view(n, h, w, n_blocks, d // n_blocks)
        parts *= scale[..., None]
        return parts.view(n, h, w, d).numpy()

    @property
    def upsampler(self) -> PatchUpsampler:
        if self._upsampler is None:
            self._upsampler = PatchUpsampler(self.mapping)
        return self._upsampler

    def matrix(self) -> np.ndarray | None:
        """All features as a float32 (N, D) array held in memory, or None when larger than ``memory_limit``.

        numpy has no fast float16 matrix product, so clicks use this float32 copy (made once, on first use).
        """
        if self._dense is None and self.n_patches * self.dim * 4 <= self.memory_limit:
            self._dense = np.asarray(self.features, dtype=np.float32).reshape(self.n_patches, self.dim)
        return self._dense

    def dot(self, queries: np.ndarray, rows: slice | None = None, chunk: int = 8192) -> np.ndarray:
        """Features (rows of the flattened (N, D) matrix) times queries (D, k) -> float32 (n, k)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        dense = self.matrix()
        if dense is not None:
            return dense[rows if rows is not None else slice(None)] @ q
        flat = self.features.reshape(self.n_patches, self.dim)
        start, stop, _ = (rows or slice(None)).indices(self.n_patches)
        out = np.empty((stop - start, q.shape[1]), dtype=np.float32)
        for a in range(start, stop, chunk):
            b = min(stop, a + chunk)
            out[a - start : b - start] = np.asarray(flat[a:b], dtype=np.float32) @ q
        return out

    def mask(self) -> np.ndarray:
        """The foreground mask stored at extraction, bool (z, y, x) on the input grid."""
        return np.load(self.path / MASK_NAME).astype(bool)

    def __repr__(self) -> str:
        return (
            f"FeatureCache({str(self.path)!r}, slices={self.mapping.n_slices}, grid={self.mapping.grid}, D={self.dim})"
        )


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """A copy of ``array[start:stop]`` (first axis) of a memory-mapped .npy array, read with one file read.

    Slicing the memory map would do the same, but every page it touches stays mapped into the process (its resident
    memory grows to the whole file over a pass); a plain read leaves the pages in the operating system's cache only.
    Arrays that are not C-ordered memory maps are sliced as they are.
    """
    start, stop, _ = slice(start, stop).indices(len(array))
    out = np.empty((max(0, stop - start), *array.shape[1:]), dtype=array.dtype)
    if not isinstance(array, np.memmap) or not array.flags.c_contiguous or array.filename is None or out.size == 0:
        out[...] = array[start:stop]
        return out
    row = out[0].nbytes if len(out) else 0
    with open(array.filename, "rb") as f:
        f.seek(array.offset + start * row)
        if f.readinto(memoryview(out).cast("B")) != out.nbytes:
            raise FeatureCacheError(f"{array.filename} is shorter than its header says; extract the features again")
    return out


def read_header(path: str | os.PathLike, any_version: bool = False) -> dict[str, Any] | None:
    """The header of a complete cache of this format and version, or None (missing, partial, other format).

    ``any_version``: also a complete cache of an older version (to list and remove it, or to say it is old).
    """
    p = Path(path) / HEADER_NAME
    try:
        header = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict) or header.get("format") != CACHE_FORMAT or not header.get("complete"):
        return None
    if header.get("version") != CACHE_VERSION and not any_version:
        return None
    names = (FEATURES_NAME, FOREGROUND_NAME, MASK_NAME)
    if header.get("version") == CACHE_VERSION:
        names += (NORMS_NAME,)
    if not all((Path(path) / name).is_file() for name in names):
        return None
    return header


# ------------------------------------------------------------------------------------------- listing and cleaning

CACHE_FILES = frozenset({HEADER_NAME, FEATURES_NAME, NORMS_NAME, FOREGROUND_NAME, MASK_NAME})


@dataclass(frozen=True)
class CacheInfo:
    """One feature cache found on disk: its folder, the model's name, the volume (shape and content hash prefix),
    size in bytes, creation time (the header's mtime, seconds since the epoch) and whether it holds other files."""

    path: Path
    model: str
    volume: str
    size: int
    created: float
    foreign: tuple[str, ...] = ()


def _cache_info(path: Path) -> CacheInfo | None:
    header = read_header(path, any_version=True)  # old versions are listed too, so that they can be removed
    if header is None:
        return None
    entries = list(path.iterdir())
    size = sum(e.stat().st_size for e in entries if e.is_file() and not e.is_symlink())
    shape = header.get("grid", {}).get("input_shape", [])
    digest = str(header.get("key", {}).get("volume", ""))[:8]
    volume = "x".join(str(v) for v in shape) + (f" ({digest})" if digest else "")
    model = str(header.get("model", {}).get("name") or str(header.get("key", {}).get("model", "?"))[:12])
    foreign = tuple(sorted(e.name for e in entries if e.name not in CACHE_FILES))
    return CacheInfo(path, model, volume, size, (path / HEADER_NAME).stat().st_mtime, foreign)


def find_caches(roots: Sequence[str | os.PathLike] | None = None) -> list[CacheInfo]:
    """The complete feature caches in ``roots`` (default ``default_cache_root()``), oldest first.

    A root that is itself a cache is listed; otherwise its direct sub-folders that are caches (recognised by their
    header, ``read_header``). Missing roots are skipped; nothing else is looked at.
    """
    found: dict[Path, CacheInfo] = {}
    for root in roots if roots is not None else [default_cache_root()]:
        root = Path(root).expanduser().resolve()
        if not root.is_dir():
            continue
        candidates = (
            [root]
            if read_header(root, any_version=True) is not None
            else sorted(p for p in root.iterdir() if p.is_dir())
        )
        for path in candidates:
            if path.is_symlink():
                continue
            info = _cache_info(path)
            if info is not None:
                found[path] = info
    return sorted(found.values(), key=lambda c: (c.created, str(c.path)))


def remove_cache(info: CacheInfo) -> int:
    """Delete one feature cache folder; returns the bytes freed.

    The folder is checked again (a complete cache holding only cache files) and renamed away first, so it stops
    being a cache at once and an interrupted removal leaves no half cache. Raises FeatureCacheError otherwise.
    """
    current = _cache_info(info.path)
    if current is None:
        raise FeatureCacheError(f"{info.path} is no longer a feature cache; left alone")
    if current.foreign:
        raise FeatureCacheError(
            f"{info.path} holds files that are not part of a feature cache ({', '.join(current.foreign[:3])}); "
            "left alone: remove it by hand if it is yours to delete"
        )
    doomed = Path(tempfile.mkdtemp(prefix=f".{info.path.name}.removing-", dir=info.path.parent))
    os.replace(info.path, doomed / "cache")
    shutil.rmtree(doomed)
    return current.size


class CacheWriter:
    """Builds a cache in a temporary sibling directory (the features and block norms memory-mapped there and filled
    slice by slice) and renames it into place on ``commit`` (``MedDINOv3Core.atomic.replace_directory``); ``abort``
    deletes it.

    Args:
        target: the cache directory.
        shape: (Z, h, w, D) of the features.
        n_blocks: backbone blocks concatenated in D (the shape of ``norms``: (Z, h, w, n_blocks)).
    """

    def __init__(self, target: Path, shape: tuple[int, int, int, int], n_blocks: int = 1) -> None:
        if n_blocks < 1 or shape[3] % n_blocks:
            raise ValueError(f"features of {shape[3]} channels cannot hold {n_blocks} equal blocks")
        self.target = Path(target).expanduser().resolve()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        self.features = np.lib.format.open_memmap(self.tmp / FEATURES_NAME, mode="w+", dtype=np.float16, shape=shape)
        norms_shape = (*shape[:3], n_blocks)
        self.norms = np.lib.format.open_memmap(self.tmp / NORMS_NAME, mode="w+", dtype=np.float32, shape=norms_shape)
        self.foreground = np.zeros(shape[:3], dtype=np.float16)

    def commit(self, header: dict[str, Any], mask: np.ndarray) -> Path:
        self.features.flush()
        self.norms.flush()
        del self.features, self.norms
        np.save(self.tmp / FOREGROUND_NAME, self.foreground)
        np.save(self.tmp / MASK_NAME, np.asarray(mask, dtype=np.uint8))
        header = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **header, "complete": True}
        (self.tmp / HEADER_NAME).write_text(json.dumps(header, indent=1) + "\n", encoding="utf-8")
        return replace_directory(self.tmp, self.target)

    def abort(self) -> None:
        for name in ("features", "norms"):
            if hasattr(self, name):
                delattr(self, name)
        shutil.rmtree(self.tmp, ignore_errors=True)


__all__ = [
    "CACHE_FORMAT",
    "CACHE_FILES",
    "CACHE_VERSION",
    "CacheInfo",
    "CacheWriter",
    "FeatureCache",
    "FeatureCacheError",
    "GridMapping",
    "NORMS_NAME",
    "PatchUpsampler",
    "bilinear_matrix",
    "default_cache_root",
    "read_rows",
    "find_caches",
    "key_digest",
    "read_header",
    "remove_cache",
    "volume_hash",
]
