"""The ONE preprocessing of MedDINOv3: axial reorientation, intensity normalisation, in-plane resampling, and back.

Training (slice sampling), prediction, feature exploration and the Slicer module all call this module, with the
PreprocessConfig stored in the model card (``card.preprocessing``), so inference repeats exactly what training saw.

API
---
``PreprocessConfig``: frozen settings (intensity scheme + statistics, target in-plane spacing); defined with the
model card in MedDINOv3Core.card and re-exported here.

``prepare_volume(volume, config) -> PreparedVolume``: cheap (no voxel copy): finds the axial layout, resolves the
intensity statistics (per-volume z-score computes them here, streaming over slices) and the model grid. Then:

- ``prepared.slices(start, stop) -> np.ndarray (n, H', W') float32``: normalised axial slices resampled to the model
  spacing, computed on demand (so memory is that of the requested slices only);
- ``prepared.labels(label_array, start, stop) -> np.ndarray (n, H', W') int64``: a labelmap on the input grid,
  same slices, nearest-neighbour resampled (for training targets);
- ``prepared.restore(data, mode)``: a torch tensor (n, C, H', W') on the model grid -> (n, C, H, W) on the native
  axial grid (bilinear for logits / probabilities / features, nearest for labels);
- ``prepared.axial_view(array)``: a (writable) view of an input-layout (z, y, x) array in the axial layout, so a
  consumer can stream results slice by slice straight into an output array with the input's layout;
- ``restore_to_input(prepared, data, mode)``: a full model-grid stack (Z, [C,] H', W') -> input layout
  ([C,] z, y, x) as numpy (for feature / similarity maps).

Conventions
-----------
- Axial layout: the input array's axes are permuted and flipped (never resampled) so that array axes (0, 1, 2) run
  along the LPS axes S (inferior -> superior), P (anterior -> posterior) and L (right -> left), i.e. the layout of a
  standard CT with identity direction. Each array axis is matched to the LPS axis it is closest to (the permutation
  maximising the summed |cosines|), so oblique acquisitions are sliced along their nearest-to-axial axis.
- In-plane resampling keeps the field of view: the native (H, W) grid and the model (H', W') grid cover the same
  physical extent (pixel-area edges coincide; ``align_corners=False`` interpolation), H' = round(H * sy / ty). The
  effective model spacing (``prepared.model_spacing``) may therefore differ from the target by the rounding.
- Intensity schemes (``scheme``):
  - ``"ct_clip_zscore"``: clip to [clip_low, clip_high] then (x - mean) / std, with every number from the card.
    nnU-Net's CT normalisation stores the dataset's foreground 0.5/99.5 percentiles and mean/std this way
    (see ``ct_statistics``); the MedDINOv3 demo is the same formula with (-1000, 1000, 65.1084, 178.0166)
    (``PreprocessConfig.meddinov3_demo()``, the default).
  - ``"zscore"``: per-volume (x - mean) / std, statistics of the whole volume (``zscore_nonzero``: only voxels
    != 0, as for skull-stripped MRI), computed once per volume.
  - ``"none"``: the raw values as float32.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from MedDINOv3Core.card import DEMO_CT, SCHEMES, PreprocessConfig
from MedDINOv3Core.data.volume import Volume

log = logging.getLogger(__name__)


def ct_statistics(foreground_values: np.ndarray, spacing: tuple[float, ...] = ()) -> PreprocessConfig:
    """nnU-Net CT normalisation fitted to the foreground voxel values of a training set.

    Clip bounds are the 0.5 and 99.5 percentiles; mean/std are those of the clipped values.
    """
    values = np.asarray(foreground_values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size < 2:
        raise ValueError("ct_statistics needs at least two finite foreground values")
    lo, hi = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, lo, hi)
    std = float(clipped.std()) or 1.0
    if hi <= lo:
        hi = lo + 1.0
    return PreprocessConfig("ct_clip_zscore", float(lo), float(hi), float(clipped.mean()), std, False, spacing)


# ------------------------------------------------------------------------------------------- axial orientation


def axial_orientation(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Permutation and flips that bring a (z, y, x) array to the axial layout (S, P, L along axes 0, 1, 2).

    Args:
        direction: 3x3 matrix whose columns are the LPS directions of the index axes i, j, k (= array x, y, z).

    Returns:
        (axes, flips): ``np.transpose(array, axes)`` then flip axis n where ``flips[n]`` gives the axial layout.
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    # array axis a (0=z, 1=y, 2=x) runs along index axis (2 - a), i.e. direction column 2 - a.
    cols = {a: d[:, 2 - a] for a in range(3)}
    # target axis t (0=S, 1=P, 2=L) corresponds to LPS component 2 - t.
    best = max(itertools.permutations(range(3)), key=lambda p: sum(abs(cols[p[t]][2 - t]) for t in range(3)))
    flips = tuple(bool(cols[best[t]][2 - t] < 0) for t in range(3))
    return tuple(best), flips


@dataclass
class PreparedVolume:
    """A volume ready for slice-wise models; see the module docstring. Shapes: native axial (Z, H, W), model
    grid (Z, H', W'); ``spacing`` (x, y, z) of the axial layout, ``model_spacing`` (x, y) of the model grid."""

    volume: Volume
    config: PreprocessConfig
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]
    model_shape: tuple[int, int]
    model_spacing: tuple[float, float]
    intensity: tuple[float | None, float | None, float, float]  # clip_low, clip_high, mean, std

    @property
    def axial_shape(self) -> tuple[int, int, int]:
        return tuple(self.volume.array.shape[a] for a in self.axes)

    @property
    def native_shape(self) -> tuple[int, int]:
        """(H, W) of a native axial slice."""
        return self.axial_shape[1:]

    @property
    def resampled(self) -> bool:
        return self.model_shape != self.native_shape

    def __len__(self) -> int:
        return self.axial_shape[0]

    def axial_view(self, array: np.ndarray) -> np.ndarray:
        """A view of an input-layout array (z, y, x) in the axial layout (writes go through to ``array``).

        A leading channel axis (C, z, y, x) is kept in front.
        """
        lead = array.ndim - 3
        if array.shape[lead:] != self.volume.array.shape:
            raise ValueError(f"array shape {array.shape[lead:]} differs from the volume's {self.volume.array.shape}")
        view = np.transpose(array, tuple(range(lead)) + tuple(lead + a for a in self.axes))
        index = tuple([slice(None)] * lead + [slice(None, None, -1) if f else slice(None) for f in self.flips])
        return view[index]

    def from_axial(self, array: np.ndarray) -> np.ndarray:
        """Inverse of ``axial_view``: an axial-layout array ([C,] Z, H, W) -> input layout ([C,] z, y, x) (a view)."""
        lead = array.ndim - 3
        index = tuple([slice(None)] * lead + [slice(None, None, -1) if f else slice(None) for f in self.flips])
        inverse = np.argsort(self.axes)
        return np.transpose(array[index], tuple(range(lead)) + tuple(lead + int(a) for a in inverse))

    def normalise(self, values: np.ndarray) -> np.ndarray:
        """Intensity normalisation only (float32), any shape."""
        lo, hi, mean, std = self.intensity
        x = values.astype(np.float32, copy=True)
        if lo is not None:
            np.clip(x, lo, hi, out=x)
        x -= np.float32(mean)
        x /= np.float32(std)
        return x

    def slices(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Normalised axial slices ``start:stop`` on the model grid: (n, H', W') float32."""
        raw = self.axial_view(self.volume.array)[start:stop]
        x = torch.from_numpy(np.ascontiguousarray(self.normalise(raw)))
        if self.resampled and x.shape[0]:
            x = resample_inplane(x[:, None], self.model_shape, "bilinear")[:, 0]
        return x.numpy()

    def labels(self, label_array: np.ndarray, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Label slices ``start:stop`` of an input-layout labelmap on the model grid: (n, H', W') int64."""
        lab = torch.from_numpy(
            np.ascontiguousarray(self.axial_view(np.asarray(label_array))[start:stop]).astype(np.int64)
        )
        if self.resampled and lab.shape[0]:
            lab = resample_inplane(lab[:, None], self.model_shape, "nearest")[:, 0]
        return lab.numpy()

    def restore(self, data: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Model grid (n, C, H', W') -> native axial grid (n, C, H, W) (same device and dtype)."""
        if data.shape[-2:] != self.model_shape:
            raise ValueError(f"expected maps of in-plane size {self.model_shape}, got {tuple(data.shape[-2:])}")
        return resample_inplane(data, self.native_shape, mode) if self.resampled else data


def resample_inplane(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resample (N, C, h, w) to (N, C, *size) keeping the field of view (pixel edges coincide).

    mode: "bilinear" (images, logits, features) or "nearest" (labels; centre-based, i.e. nearest-exact).
    Integer tensors are resampled in float and cast back (nearest only).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        dtype = x.dtype
        out = F.interpolate(x if x.is_floating_point() else x.float(), size=size, mode="nearest-exact")
        return out.to(dtype)
    if mode != "bilinear":
        raise ValueError(f"resampling mode must be 'bilinear' or 'nearest', got {mode!r}")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def _volume_statistics(array: np.ndarray, nonzero: bool, chunk: int = 16) -> tuple[float, float]:
    """Mean and std of a (z, y, x) array, streaming over chunks of slices (float64 accumulation)."""
    n, total, total_sq = 0, 0.0, 0.0
    for k in range(0, array.shape[0], chunk):
        v = array[k : k + chunk].astype(np.float64).ravel()
        if nonzero:
            v = v[v != 0]
        n += v.size
        total += float(v.sum())
        total_sq += float(np.dot(v, v))
    if n == 0:
        raise ValueError("cannot z-score normalise: the volume has no (non-zero) voxels")
    mean = total / n
    std = float(np.sqrt(max(total_sq / n - mean * mean, 0.0)))
    return mean, std if std > 0 else 1.0


def prepare_volume(volume: Volume, config: PreprocessConfig | Mapping[str, Any]) -> PreparedVolume:
    """Plan the preprocessing of ``volume`` (axial layout, statistics, model grid); voxels are processed lazily.

    Args:
        volume: the input (z, y, x) volume with its geometry.
        config: a PreprocessConfig (or its dict, e.g. ``card.preprocessing``).

    Returns:
        a PreparedVolume; see the module docstring for its methods.
    """
    if not isinstance(config, PreprocessConfig):
        config = PreprocessConfig.from_dict(config)
    axes, flips = axial_orientation(volume.direction_matrix)
    index_spacing = volume.spacing  # (x, y, z) = spacing along array axes (2, 1, 0)
    sp = {a: index_spacing[2 - a] for a in range(3)}  # array axis -> spacing
    spacing = (sp[axes[2]], sp[axes[1]], sp[axes[0]])  # axial (x, y, z)
    h, w = (volume.array.shape[axes[1]], volume.array.shape[axes[2]])
    if config.spacing:
        tx, ty = config.spacing
        model_shape = (max(1, int(round(h * spacing[1] / ty))), max(1, int(round(w * spacing[0] / tx))))
    else:
        model_shape = (h, w)
    model_spacing = (spacing[0] * w / model_shape[1], spacing[1] * h / model_shape[0])
    if config.scheme == "ct_clip_zscore":
        intensity = (config.clip_low, config.clip_high, config.mean, config.std)
    elif config.scheme == "zscore":
        intensity = (None, None, *_volume_statistics(volume.array, config.zscore_nonzero))
    else:
        intensity = (None, None, 0.0, 1.0)
    log.debug(
        "prepared volume %s: axes %s flips %s, native %s at %s mm -> model %s at %s mm",
        volume.shape,
        axes,
        flips,
        (h, w),
        spacing[:2],
        model_shape,
        model_spacing,
    )
    return PreparedVolume(volume, config, axes, flips, spacing, model_shape, model_spacing, intensity)


def restore_to_input(prepared: PreparedVolume, data: np.ndarray | torch.Tensor, mode: str = "bilinear") -> np.ndarray:
    """A whole stack on the model grid -> the input volume's layout.

    Args:
        prepared: the PreparedVolume the stack was computed from.
        data: (Z, H', W') or (Z, C, H', W') on the model grid (Z = number of axial slices).
        mode: "bilinear" for continuous maps, "nearest" for labels.

    Returns:
        numpy (z, y, x) or (C, z, y, x) with the input volume's shape.
    """
    t = torch.as_tensor(data)
    squeeze = t.ndim == 3
    if squeeze:
        t = t[:, None]
    if t.ndim != 4 or t.shape[0] != len(prepared):
        raise ValueError(f"expected ({len(prepared)}, [C,] H', W') maps, got {tuple(torch.as_tensor(data).shape)}")
    native = prepared.restore(t, mode).cpu().numpy()  # (Z, C, H, W)
    out = prepared.from_axial(np.moveaxis(native, 1, 0))  # (C, z, y, x)
    out = np.ascontiguousarray(out)
    return out[0] if squeeze else out


__all__ = [
    "DEMO_CT",
    "SCHEMES",
    "PreparedVolume",
    "PreprocessConfig",
    "axial_orientation",
    "ct_statistics",
    "prepare_volume",
    "resample_inplane",
    "restore_to_input",
]
