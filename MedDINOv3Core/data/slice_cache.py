"""Unlabeled CT slices for pretraining: a one-time slice cache and the multi-crop dataset that streams from it.

The cache turns folders of CT volumes (NIfTI, NRRD, MHA/MHD, DICOM series) into one memory-mapped ``.npy`` shard
per volume holding its axial slices as int16 HU clamped to [-1000, 1000] and resized to ``size`` x ``size``, plus
``index.json`` listing the finished shards. Every shard and every index update is written atomically, so an
interrupted build resumes where it stopped and never leaves a half-written shard in the index. Training then reads
only the slices it needs from the page cache, so millions of slices stream without re-reading volumes.

Sampling is a pure function of (seed, step): the global batch of step s is the slice positions
[s * G, (s + 1) * G) of a per-cycle random permutation, and rank r takes its contiguous share. Each sample's crops
and masks come from a generator seeded by (seed, step, slice index). So resuming at step s reproduces the data
exactly, and 2 processes x batch 2 see the same samples and views as 1 process x batch 4.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from MedDINOv3Core.atomic import atomic_path, write_json
from MedDINOv3Core.data.crops import HU_RANGE, CropConfig, hu_to_unit, make_views
from MedDINOv3Core.data.masking import sample_view_masks
from MedDINOv3Core.progress import ProgressCallback, check_cancel, report

log = logging.getLogger(__name__)

CACHE_FORMAT = "meddinov3-slice-cache"
CACHE_VERSION = 1
INDEX_NAME = "index.json"
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
NNUNET_DATASET_JSON = "dataset.json"
NNUNET_LABEL_FOLDERS = "labels"  # labelsTr/, labelsTs/: label maps, not CT (skipped under a dataset.json)


# ------------------------------------------------------------------------------------------------ discovery


def _is_volume_file(path: Path) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in VOLUME_SUFFIXES)


def check_data_roots(inputs: Sequence[str | os.PathLike]) -> None:
    """Raise FileNotFoundError naming the first of ``inputs`` (files or folders) that does not exist."""
    for item in inputs:
        root = Path(item).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"pretraining data not found: {root}")


# Files beside volumes that are never DICOM slices (dataset.json, notes, previews): no GDCM scan for them.
NOT_DICOM_SUFFIXES = (".json", ".txt", ".md", ".csv", ".tsv", ".yaml", ".yml", ".png", ".jpg", ".jpeg", ".pdf", ".log")


def _series_ids(sitk, folder: Path) -> tuple[str, ...]:
    """The DICOM series in ``folder``; ITK's own "No Series were found" warning is not printed (an empty answer is
    one, handled by the caller)."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return tuple(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def discover_volumes(inputs: Sequence[str | os.PathLike]) -> list[str]:
    """Volume files and DICOM series directories under ``inputs`` (files or folders, searched recursively).

    A DICOM series is a directory whose files SimpleITK/GDCM recognises as one series (several series in one
    directory become ``dir::series_uid`` entries). In an nnU-Net raw dataset (a folder holding ``dataset.json``) only
    the images are read (imagesTr/, imagesTs/), never the label maps (``labels*`` folders: labelsTr/, labelsTs/).
    Sorted, so every process sees the same order.
    """
    import SimpleITK as sitk

    check_data_roots(inputs)
    found: list[str] = []
    for item in inputs:
        root = Path(item).expanduser()
        if root.is_file():
            found.append(str(root.resolve()))
            continue
        for directory, dirs, files in os.walk(root):
            d = Path(directory)
            if NNUNET_DATASET_JSON in files:
                skipped = sorted(x for x in dirs if x.lower().startswith(NNUNET_LABEL_FOLDERS))
                dirs[:] = [x for x in dirs if x not in skipped]
                if skipped:
                    log.info("%s is an nnU-Net dataset: pretraining reads its images, not %s", d, ", ".join(skipped))
            others = False
            for f in files:
                if _is_volume_file(d / f):
                    found.append(str((d / f).resolve()))
                elif not f.startswith(".") and not f.lower().endswith(NOT_DICOM_SUFFIXES):
                    others = True
            if others:
                series = _series_ids(sitk, d)
                if len(series) == 1:
                    found.append(str(d.resolve()))
                else:
                    found.extend(f"{d.resolve()}::{uid}" for uid in series)
    return sorted(set(found))


def read_ct_array(source: str) -> np.ndarray:
    """A CT volume as a (z, y, x) float32 HU array with z the axial (superior-inferior) axis.

    ``source`` is a volume file, a DICOM series directory, or ``dir::series_uid``, read by
    MedDINOv3Core/volume_io.py (the one reader: its checks refuse a truncated file or a series with a missing slice,
    which the caller then skips). The image is reoriented to LPS first, so axial slices are planes of constant z
    whatever the file's storage order.
    """
    import SimpleITK as sitk

    from MedDINOv3Core.volume_io import read_volume, to_sitk

    image = sitk.DICOMOrient(to_sitk(read_volume(source)), "LPS")
    return sitk.GetArrayFromImage(image).astype(np.float32)


def slices_from_volume(
    hu: np.ndarray, size: int | None, hu_range: tuple[float, float] = HU_RANGE, chunk: int = 32
) -> np.ndarray:
    """(z, y, x) HU -> (z, size, size) int16 HU clamped to ``hu_range`` (bilinear, antialiased resize)."""
    lo, hi = hu_range
    clamped = np.clip(hu, lo, hi).astype(np.float32)
    if not size or clamped.shape[1:] == (size, size):
        return np.rint(clamped).astype(np.int16)
    out = np.empty((clamped.shape[0], size, size), dtype=np.int16)
    for start in range(0, clamped.shape[0], chunk):
        t = torch.from_numpy(clamped[start : start + chunk]).unsqueeze(1)
        r = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        out[start : start + chunk] = np.rint(r[:, 0].clamp(lo, hi).numpy()).astype(np.int16)
    return out


# ------------------------------------------------------------------------------------------------ the cache


def _source_stamp(source: str) -> dict[str, Any]:
    p = Path(source.partition("::")[0])
    st = p.stat()
    return {"source": source, "mtime": st.st_mtime, "bytes": st.st_size if p.is_file() else None}


def build_slice_cache(
    inputs: Sequence[str | os.PathLike],
    cache_dir: str | os.PathLike,
    size: int | None = 256,
    hu_range: tuple[float, float] = HU_RANGE,
    min_slices: int = 1,
    progress: ProgressCallback | None = None,
    cancel=None,
) -> SliceCache:
    """Build (or resume building) the slice cache of all volumes under ``inputs`` in ``cache_dir``.

    Args:
        inputs: files or folders of CT volumes.
        cache_dir: where shards and index.json go (created).
        size: in-plane size of the cached slices (None or 0 keeps each volume's own size).
        hu_range: HU clamp.
        min_slices: volumes with fewer slices are skipped (e.g. scouts).
        progress, cancel: progress callback and cancel token.

    Returns the SliceCache. Volumes already in the index are not read again; unreadable ones are logged, listed
    under "failed" in the index and skipped.
    """
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    index_path = cache / INDEX_NAME
    settings = {"size": int(size or 0), "hu_range": [float(hu_range[0]), float(hu_range[1])]}
    if index_path.is_file():
        index = _read_index(index_path)
        if {k: index[k] for k in settings} != settings:
            raise ValueError(
                f"slice cache {cache} was built with { ({k: index[k] for k in settings}) }, not {settings}; "
                "use another cache directory"
            )
    else:
        index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, **settings, "shards": [], "failed": []}
    sources = discover_volumes(inputs)
    if not sources:
        raise ValueError(f"no CT volumes (NIfTI, NRRD, MHA, DICOM series) found under {list(map(str, inputs))}")
    done = {s["source"] for s in index["shards"]} | {f["source"] for f in index["failed"]}
    todo = [s for s in sources if s not in done]
    log.info("slice cache %s: %d volumes cached, %d to add", cache, len(sources) - len(todo), len(todo))
    for i, source in enumerate(todo):
        check_cancel(cancel)
        report(progress, "slice cache", i, len(todo), Path(source.partition("::")[0]).name)
        try:
            slices = slices_from_volume(read_ct_array(source), size, hu_range)
        except (RuntimeError, ValueError, OSError) as exc:
            log.warning("skipping %s: %s", source, exc)
            index["failed"].append({"source": source, "error": str(exc)})
            write_json(index_path, index, indent=1)
            continue
        if slices.shape[0] < min_slices:
            log.info("skipping %s: %d slices < %d", source, slices.shape[0], min_slices)
            index["failed"].append({"source": source, "error": f"only {slices.shape[0]} slices"})
            write_json(index_path, index, indent=1)
            continue
        name = f"shard_{len(index['shards']):06d}_{int(time.time() * 1e3) % 10**9:09d}.npy"
        with atomic_path(cache / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, slices)
        index["shards"].append({**_source_stamp(source), "file": name, "n_slices": int(slices.shape[0])})
        write_json(index_path, index, indent=1)
    report(progress, "slice cache", len(todo), len(todo), "")
    return SliceCache(cache)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); delete the cache directory and rebuild it") from exc
    if index.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path} is not a MedDINOv3 slice cache index")
    return index


class SliceCache:
    """Read access to a built slice cache: ``cache[i]`` is slice i as a (H, W) int16 HU array (memory-mapped)."""

    def __init__(self, cache_dir: str | os.PathLike) -> None:
        self.root = Path(cache_dir).expanduser()
        index_path = self.root / INDEX_NAME
        if not index_path.is_file():
            raise FileNotFoundError(f"no slice cache at {self.root} (missing {INDEX_NAME}); build it first")
        self.index = _read_index(index_path)
        self.shards = self.index["shards"]
        if not self.shards:
            raise ValueError(f"slice cache {self.root} holds no slices (failed volumes: {len(self.index['failed'])})")
        self.hu_range = tuple(self.index["hu_range"])
        self._ends = np.cumsum([s["n_slices"] for s in self.shards])
        self._arrays: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _shard(self, k: int) -> np.ndarray:
        if k not in self._arrays:
            self._arrays[k] = np.load(self.root / self.shards[k]["file"], mmap_mode="r")
        return self._arrays[k]

    def __getitem__(self, i: int) -> np.ndarray:
        if not 0 <= i < len(self):
            raise IndexError(f"slice {i} out of range for a cache of {len(self)} slices")
        k = int(np.searchsorted(self._ends, i, side="right"))
        start = 0 if k == 0 else int(self._ends[k - 1])
        return np.asarray(self._shard(k)[i - start])

    def __getstate__(self) -> dict[str, Any]:  # memory maps are reopened in each DataLoader worker
        state = dict(self.__dict__)
        state["_arrays"] = {}
        return state


# ------------------------------------------------------------------------------------------------ sampling


def batch_indices(step: int, n_items: int, global_batch: int, seed: int, rank: int = 0, world: int = 1) -> list[int]:
    """The slice indices this rank trains on at ``step``: its contiguous share of the global batch.

    Positions step*G .. step*G+G-1 of an endless sequence of seeded permutations (one per pass over the data).
    """
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
    per_rank = global_batch // world
    start = step * global_batch + rank * per_rank
    out: list[int] = []
    perms: dict[int, np.ndarray] = {}
    for pos in range(start, start + per_rank):
        cycle, offset = divmod(pos, n_items)
        if cycle not in perms:
            perms[cycle] = np.random.default_rng([seed, cycle]).permutation(n_items)
        out.append(int(perms[cycle][offset]))
    return out


def step_crop_sizes(step: int, config: CropConfig, seed: int) -> tuple[int, int]:
    """The (global, local) crop sizes of ``step``, drawn from the resolution lists (same on every rank)."""
    rng = np.random.default_rng([seed, step, 7])
    return int(rng.choice(config.global_sizes)), int(rng.choice(config.local_sizes))


class StepBatchSampler:
    """Yields, for each step from ``start_step`` to ``total_steps``, this rank's list of sample keys.

    A key is (slice index, step, global size, local size); the dataset derives everything else from it.
    """

    def __init__(
        self,
        n_items: int,
        global_batch: int,
        crops: CropConfig,
        seed: int,
        total_steps: int,
        start_step: int = 0,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.n_items, self.global_batch, self.crops, self.seed = n_items, global_batch, crops, seed
        self.total_steps, self.start_step, self.rank, self.world = total_steps, start_step, rank, world

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        for step in range(self.start_step, self.total_steps):
            g, loc = step_crop_sizes(step, self.crops, self.seed)
            idx = batch_indices(step, self.n_items, self.global_batch, self.seed, self.rank, self.world)
            yield [(i, step, g, loc) for i in idx]


class PretrainDataset(torch.utils.data.Dataset):
    """Multi-crop views and iBOT masks of cached CT slices, indexed by keys from StepBatchSampler.

    Args:
        cache: the slice cache (int16 HU slices).
        crops: crop settings.
        patch_size: the backbone's patch size (mask grid = global size / patch size).
        seed: the run's seed.
        mask_probability: fraction of each sample's global crops that are masked.
        mask_ratio: range of the masked fraction of a masked crop.
        with_gram: also produce the Gram teacher's 2x crops.
    """

    def __init__(
        self,
        cache: SliceCache,
        crops: CropConfig,
        patch_size: int,
        seed: int,
        mask_probability: float = 0.5,
        mask_ratio: tuple[float, float] = (0.1, 0.5),
        with_gram: bool = False,
    ) -> None:
        self.cache, self.crops, self.patch_size, self.seed = cache, crops, patch_size, seed
        self.mask_probability, self.mask_ratio, self.with_gram = mask_probability, tuple(mask_ratio), with_gram
        for s in crops.global_sizes + crops.local_sizes:
            if s % patch_size:
                raise ValueError(f"crop size {s} is not a multiple of the patch size {patch_size}")

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, key: tuple[int, int, int, int]) -> dict[str, torch.Tensor]:
        index, step, gsize, lsize = key
        rng = np.random.default_rng([self.seed, step, index])
        unit = hu_to_unit(self.cache[index], self.cache.hu_range)
        views = make_views(unit, self.crops, gsize, lsize, rng, with_gram=self.with_gram)
        grid = (gsize // self.patch_size, gsize // self.patch_size)
        masks = sample_view_masks(grid, self.crops.n_global, rng, self.mask_probability, self.mask_ratio)
        views["masks"] = torch.from_numpy(masks)
        return views


def collate_views(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-sample views view-major: (n_views, C, H, W) each -> (n_views * B, C, H, W), masks likewise."""
    out = {}
    for key in samples[0]:
        stacked = torch.stack([s[key] for s in samples], dim=1)  # (n_views, B, ...)
        out[key] = stacked.reshape(-1, *stacked.shape[2:])
    out["batch_size"] = torch.tensor(len(samples))
    return out
