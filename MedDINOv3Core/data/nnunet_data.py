"""Labelled segmentation datasets: the nnU-Net v2 raw layout or plain image/label lists, checked, sliced, sampled.

Sources
-------
- ``load_nnunet_dataset(root)``: an nnU-Net v2 raw dataset folder: ``dataset.json`` (``channel_names``,
  ``labels`` {name: value} with ``background: 0``, ``numTraining``, ``file_ending``), ``imagesTr/<case>_0000<ending>``
  with ``labelsTr/<case><ending>``, and optionally ``imagesTs/<case>_0000<ending>``. Only single-channel images
  (CT, one MRI sequence) are supported; region-based labels are refused.
- ``dataset_from_lists(images, labels, classes)``: the same from explicit file lists.

Unlabelled voxels (nnU-Net v2's "ignore" label): ``"labels": {"background": 0, "liver": 1, ..., "ignore": K}`` with K
the highest value declares voxels of value K unlabelled. They become class IGNORED (-1) in the targets (int16 then),
which the Dice + CE loss leaves out (``ignore_index=-1``) and validation skips. In few-shot mode (``labelled_only``) a
slice is used when it holds at least one voxel that is not ignored, so a repainted slice that is all background
counts; without an ignore label a slice is used when it holds foreground (unpainted slices are all 0).

Checks (each a DatasetError saying what to fix): dataset.json consistent with the files (every label has its image
and vice versa, numTraining, file ending, channels), an empty training set, and, when a case is loaded, the label
file's geometry against its image (shape, spacing, origin, direction) and its values against the declared classes.

Training data
-------------
``SliceData.from_cases`` runs the ONE preprocess function (``prepare_volume``) on every case and keeps the
normalised axial slices on the model grid plus their labels as class indices (0 = background, c = c-th declared
foreground class), optionally memory-mapped from ``cache_dir``. ``SliceSampler`` draws 2D training batches:
``round(B x 0.33)`` of every batch is centred on a random foreground voxel of a random class (nnU-Net's foreground
oversampling), the rest are uniform random crops; the nnU-Net augmentations of MedDINOv3Core.data.augment are
applied. A batch is a pure function of (seed, step), so resuming at step s draws exactly what an uninterrupted run
would have.

Normalisation statistics: ``fit_ct_normalisation`` samples foreground (label > 0) voxels of the training cases and
returns nnU-Net's CT normalisation (0.5/99.5 percentiles, mean, std) as a PreprocessConfig for the model card.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MedDINOv3Core.atomic import atomic_path
from MedDINOv3Core.data.augment import AugmentConfig, augment_intensity, mirror, sample_affine, warp_patch
from MedDINOv3Core.data.nnunet_dataset import LABEL_PROPERTIES_KEY
from MedDINOv3Core.data.preprocess import PreparedVolume, PreprocessConfig, ct_statistics, prepare_volume
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.labelmaps import NotALabelMap, integer_labels, label_values, slabs
from MedDINOv3Core.volume_io import read_volume

log = logging.getLogger(__name__)

GEOMETRY_TOLERANCE = 1e-3  # mm (spacing, origin) and cosines (direction)
IGNORE_NAME = "ignore"  # nnU-Net v2's name for the label of unlabelled voxels
IGNORED = -1  # the class index of unlabelled voxels in the targets (DiceCELoss ignore_index)


class DatasetError(ValueError):
    """A dataset whose files or declarations are inconsistent."""


@dataclass(frozen=True)
class Case:
    """One image with its label file (None for unlabelled test images)."""

    name: str
    image: Path
    label: Path | None = None


@dataclass(frozen=True)
class SegmentationDataset:
    """Cases and declared classes.

    Attributes:
        name: dataset name.
        classes: foreground classes as ((value, name), ...) in channel order (channel c >= 1 is classes[c - 1]).
        training: labelled cases. test: unlabelled cases (imagesTs).
        modality: the single channel's name ("CT", "MRI", ...).
        label_properties: optional display properties per class, from dataset.json's extra key
            ``meddinov3_label_properties`` (nnU-Net ignores it): dicts with value, name, color [r, g, b] in 0..1 and
            optional SNOMED terminology, carried into the trained model card.
        ignore_value: the value of nnU-Net's "ignore" label (unlabelled voxels, class IGNORED), or None.
    """

    name: str
    classes: tuple[tuple[int, str], ...]
    training: tuple[Case, ...]
    test: tuple[Case, ...] = ()
    modality: str = "CT"
    label_properties: tuple[dict[str, Any], ...] = ()
    ignore_value: int | None = None

    @property
    def n_classes(self) -> int:
        """Logit channels including background."""
        return len(self.classes) + 1

    def lookup(self) -> np.ndarray:
        """Label value -> class index table (values not declared map to UNDECLARED, the ignore value to IGNORED)."""
        top = max([v for v, _ in self.classes] + [0, self.ignore_value or 0])
        table = np.full(top + 1, UNDECLARED, dtype=np.int64)
        table[0] = 0
        for index, (value, _) in enumerate(self.classes, start=1):
            table[value] = index
        if self.ignore_value is not None:
            table[self.ignore_value] = IGNORED
        return table

    def subset(self, names: Sequence[str]) -> SegmentationDataset:
        """The dataset restricted to the named training cases (order kept)."""
        by_name = {c.name: c for c in self.training}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DatasetError(f"cases {missing} are not in dataset {self.name!r} (it has {sorted(by_name)[:10]}...)")
        return SegmentationDataset(
            self.name,
            self.classes,
            tuple(by_name[n] for n in names),
            (),
            self.modality,
            self.label_properties,
            self.ignore_value,
        )


UNDECLARED = -2  # lookup() entry of a value dataset.json does not declare (an error when a label holds it)


def _ignore_value(labels: Any, where: str) -> int | None:
    """The value of the "ignore" label (nnU-Net v2: unlabelled voxels; the highest label value), or None."""
    if not isinstance(labels, Mapping) or IGNORE_NAME not in labels:
        return None
    value = labels[IGNORE_NAME]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DatasetError(f"{where}: the 'ignore' label must have a positive integer value, got {value!r}")
    others = [v for n, v in labels.items() if n != IGNORE_NAME and isinstance(v, int)]
    if others and value <= max(others):
        raise DatasetError(
            f"{where}: the 'ignore' label ({value}) must have the highest value (nnU-Net v2), above {max(others)}"
        )
    return value


def _declared_classes(labels: Any, where: str) -> tuple[tuple[int, str], ...]:
    """The foreground classes ((value, name), ...) of a 'labels' mapping; the "ignore" label is not a class."""
    if not isinstance(labels, Mapping) or not labels:
        raise DatasetError(f"{where}: 'labels' must be a mapping {{name: value}} that includes background: 0")
    out = []
    for name, value in labels.items():
        if name == IGNORE_NAME:
            continue
        if isinstance(value, (list, tuple)):
            raise DatasetError(
                f"{where}: label {name!r} is region-based ({value}); region-based training is not supported, "
                "declare one integer value per class"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DatasetError(f"{where}: label {name!r} must have a non-negative integer value, got {value!r}")
        out.append((value, str(name)))
    values = [v for v, _ in out]
    if len(set(values)) != len(values):
        raise DatasetError(f"{where}: label values must be unique, got {values}")
    if 0 not in values:
        raise DatasetError(f"{where}: 'labels' must declare background with value 0, got {dict(labels)}")
    classes = tuple(sorted((v, n) for v, n in out if v != 0))
    if not classes:
        raise DatasetError(f"{where}: no foreground class declared (only background)")
    return classes


def _strip_ending(name: str, ending: str) -> str | None:
    return name[: -len(ending)] if name.endswith(ending) else None


def load_nnunet_dataset(root: str | os.PathLike) -> SegmentationDataset:
    """Read and check an nnU-Net v2 raw dataset folder (see the module docstring)."""
    root = Path(root).expanduser()
    meta_path = root / "dataset.json"
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}")
    if not meta_path.is_file():
        raise DatasetError(f"{root} is not an nnU-Net dataset: it has no dataset.json")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DatasetError(f"{meta_path} is not valid JSON: {exc}") from exc
    where = str(meta_path)
    channels = meta.get("channel_names", meta.get("modality"))
    if not isinstance(channels, Mapping) or not channels:
        raise DatasetError(f'{where}: \'channel_names\' must map channel indices to names, e.g. {{"0": "CT"}}')
    if len(channels) != 1:
        raise DatasetError(
            f"{where}: {len(channels)} input channels {dict(channels)}; only single-channel images are supported"
        )
    ending = meta.get("file_ending")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DatasetError(f"{where}: 'file_ending' must be a file suffix such as '.nii.gz', got {ending!r}")
    classes = _declared_classes(meta.get("labels"), where)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (images_dir, labels_dir):
        if not d.is_dir():
            raise DatasetError(f"{root}: missing folder {d.name}/ (nnU-Net layout: imagesTr/, labelsTr/)")

    def images_in(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            stem = _strip_ending(p.name, ending)
            if stem is None or p.name.startswith("."):
                continue
            if len(stem) < 6 or stem[-5] != "_" or not stem[-4:].isdigit():
                raise DatasetError(f"{p}: image names must be <case>_0000{ending} (channel suffix missing)")
            if stem[-4:] != "0000":
                raise DatasetError(f"{p}: channel {stem[-4:]} but dataset.json declares a single channel (0000)")
            found[stem[:-5]] = p
        return found

    images = images_in(images_dir)
    labels = {s: p for p in sorted(labels_dir.iterdir()) if (s := _strip_ending(p.name, ending)) and p.name[0] != "."}
    other = [p.name for p in labels_dir.iterdir() if _strip_ending(p.name, ending) is None and p.name[0] != "."]
    if other:
        raise DatasetError(f"{labels_dir}: files without the declared ending {ending!r}: {sorted(other)[:5]}")
    no_image, no_label = sorted(set(labels) - set(images)), sorted(set(images) - set(labels))
    if no_image or no_label:
        raise DatasetError(
            f"{root}: dataset.json does not match the files: labels without an image {no_image[:10]}, images "
            f"without a label {no_label[:10]} (expected imagesTr/<case>_0000{ending} for labelsTr/<case>{ending})"
        )
    if not labels:
        raise DatasetError(f"{root}: the training set is empty (no labelsTr/*{ending}); add labelled cases")
    declared = meta.get("numTraining")
    if declared is not None and declared != len(labels):
        raise DatasetError(
            f"{where}: numTraining is {declared} but labelsTr holds {len(labels)} cases; fix numTraining or the files"
        )
    test = images_in(root / "imagesTs") if (root / "imagesTs").is_dir() else {}
    return SegmentationDataset(
        name=str(meta.get("name", root.name)),
        classes=classes,
        training=tuple(Case(n, images[n], labels[n]) for n in sorted(labels)),
        test=tuple(Case(n, p) for n, p in sorted(test.items())),
        modality=str(next(iter(channels.values()))),
        label_properties=_label_properties(meta.get(LABEL_PROPERTIES_KEY), classes, where),
        ignore_value=_ignore_value(meta.get("labels"), where),
    )


def _label_properties(entries: Any, classes: tuple[tuple[int, str], ...], where: str) -> tuple[dict[str, Any], ...]:
    """Validate dataset.json's optional per-class display properties against the declared classes."""
    from MedDINOv3Core.card import Label

    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise DatasetError(f"{where}: {LABEL_PROPERTIES_KEY} must be a list of label dicts")
    declared = dict(classes)
    out = []
    for i, entry in enumerate(entries):
        try:
            label = Label.from_dict(entry, where=f"{where}: {LABEL_PROPERTIES_KEY}[{i}]")
        except (TypeError, ValueError) as exc:
            raise DatasetError(str(exc)) from exc
        if declared.get(label.value) != label.name:
            raise DatasetError(
                f"{where}: {LABEL_PROPERTIES_KEY}[{i}] is {label.name!r} = {label.value}, but 'labels' declares "
                f"{declared.get(label.value)!r} for value {label.value}; make them agree"
            )
        out.append(label.to_dict())
    return tuple(out)


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def dataset_from_lists(
    images: Sequence[str | os.PathLike],
    labels: Sequence[str | os.PathLike],
    classes: Mapping[str, int] | Sequence[str],
    name: str = "dataset",
    modality: str = "CT",
) -> SegmentationDataset:
    """A dataset from explicit image and label files (paired by position).

    Args:
        images, labels: equally long lists of volume files (or DICOM folders for images).
        classes: {name: value} (background may be included as 0) or a list of names (values 1, 2, ...).
    """
    if len(images) != len(labels):
        raise DatasetError(f"{len(images)} images but {len(labels)} label files; they are paired by position")
    if not images:
        raise DatasetError("the training set is empty: give at least one image with its label file")
    mapping = dict(classes) if isinstance(classes, Mapping) else {n: i + 1 for i, n in enumerate(classes)}
    mapping.setdefault("background", 0)
    cases, seen = [], set()
    for image, label in zip(images, labels):
        image, label = Path(image).expanduser(), Path(label).expanduser()
        for p in (image, label):
            if not p.exists():
                raise DatasetError(f"file not found: {p}")
        case = _case_name(image)
        while case in seen:
            case += "_"
        seen.add(case)
        cases.append(Case(case, image, label))
    return SegmentationDataset(name, _declared_classes(mapping, "classes"), tuple(cases), (), modality)


def check_label_geometry(image: Volume, label: Volume, where: str = "label") -> None:
    """Raise DatasetError unless ``label`` lies on ``image``'s voxel grid (within GEOMETRY_TOLERANCE)."""
    if image.shape != label.shape:
        raise DatasetError(f"{where}: label shape {label.shape} differs from its image's {image.shape}")
    if not image.same_geometry(label, tol=GEOMETRY_TOLERANCE):
        raise DatasetError(
            f"{where}: label geometry differs from its image's (spacing {label.spacing} vs {image.spacing}, origin "
            f"{label.origin} vs {image.origin}, direction {label.direction} vs {image.direction}); resample the "
            "label onto the image grid"
        )


def label_to_classes(label: np.ndarray, lookup: np.ndarray, where: str = "label") -> np.ndarray:
    """Label values -> class indices via ``SegmentationDataset.lookup``; undeclared values raise.

    uint8/uint16 class indices, or int16 with IGNORED (-1) for the voxels of an "ignore" label when the lookup has one.
    """
    try:
        label = integer_labels(label)
    except NotALabelMap:
        raise DatasetError(f"{where}: label values must be integers; found non-integer values") from None
    values = label_values(label)
    bad = [int(v) for v in values if v < 0 or v >= lookup.size or lookup[int(v)] == UNDECLARED]
    if bad:
        declared = [int(v) for v in np.nonzero(lookup != UNDECLARED)[0]]
        raise DatasetError(f"{where}: label values {bad[:10]} are not among the declared classes {declared}")
    if (lookup == IGNORED).any():
        dtype = np.int16
    else:
        dtype = np.uint8 if lookup.max() < 256 else np.uint16
    table, out = lookup.astype(dtype), np.empty(label.shape, dtype=dtype)
    for part, source in zip(slabs(out), slabs(label)):  # numpy indexes with a 64-bit copy of the index array
        part[...] = table[source]
    return out


def load_case(case: Case, dataset: SegmentationDataset) -> tuple[Volume, Volume]:
    """Read a case; the label is checked against the image geometry and returned as class indices."""
    image = read_volume(case.image)
    if case.label is None:
        raise DatasetError(f"case {case.name} has no label file")
    label = read_volume(case.label)
    check_label_geometry(image, label, where=str(case.label))
    return image, label.with_array(label_to_classes(label.array, dataset.lookup(), where=str(case.label)))


def fit_ct_normalisation(
    pairs: Sequence[tuple[Volume, Volume]], spacing: tuple[float, ...] = (), per_case: int = 100_000, seed: int = 0
) -> PreprocessConfig:
    """nnU-Net CT normalisation from the foreground (label > 0) voxels of training (image, label) pairs.

    At most ``per_case`` foreground voxels of each case are sampled (seeded), as nnU-Net does.
    """
    rng = np.random.default_rng(seed)
    samples = []
    for image, label in pairs:
        values = image.array[label.array > 0]
        if values.size > per_case:
            values = rng.choice(values, per_case, replace=False)
        samples.append(values.astype(np.float64))
    values = np.concatenate(samples) if samples else np.zeros(0)
    if values.size < 2:
        raise DatasetError("cannot fit the CT normalisation: the training labels hold no foreground voxels")
    return ct_statistics(values, spacing)


def median_inplane_spacing(volumes: Sequence[Volume]) -> tuple[float, float]:
    """Median (x, y) spacing of the axial layout over ``volumes`` (nnU-Net's 2D target spacing)."""
    config = PreprocessConfig("none", None, None, None, None)
    spacings = np.array([prepare_volume(v, config).spacing[:2] for v in volumes])
    return float(np.median(spacings[:, 0])), float(np.median(spacings[:, 1]))


@dataclass
class CaseSlices:
    """One case on the model grid: images (Z, H, W) float32 and class-index targets (Z, H, W) uint8/uint16 (int16
    with IGNORED voxels); ``indices``: the axial slice index in the case's volume of each kept slice (Z,) (None: all
    slices in order)."""

    name: str
    images: np.ndarray
    targets: np.ndarray
    indices: np.ndarray | None = None

    def slice_index(self, z: int) -> int:
        """The axial slice of the volume that kept slice ``z`` is."""
        return int(self.indices[z]) if self.indices is not None else int(z)


class SliceData:
    """Preprocessed axial slices of several cases, with an index of the slices holding each class.

    Args:
        cases: CaseSlices; in-plane sizes may differ between cases.
        n_classes: logit channels (background included).
    """

    def __init__(self, cases: Sequence[CaseSlices], n_classes: int) -> None:
        if not cases:
            raise DatasetError("no training cases: the slice set is empty")
        self.cases = list(cases)
        self.n_classes = n_classes
        self.slices = [(c, z) for c, case in enumerate(self.cases) for z in range(case.images.shape[0])]
        if not self.slices:
            raise DatasetError("the training cases hold no slices")
        # class -> array of indices into self.slices whose label slice contains that class
        per_class: dict[int, list[int]] = {k: [] for k in range(1, n_classes)}
        for i, (c, z) in enumerate(self.slices):
            for k in np.unique(self.cases[c].targets[z]):
                if k > 0:
                    per_class[int(k)].append(i)
        self.class_slices = {k: np.asarray(v, dtype=np.int64) for k, v in per_class.items() if v}

    def __len__(self) -> int:
        return len(self.slices)

    @classmethod
    def from_cases(
        cls,
        pairs: Sequence[tuple[str, Volume, Volume]],
        preprocessing: PreprocessConfig,
        n_classes: int,
        cache_dir: str | os.PathLike | None = None,
        labelled_only: bool = False,
        ignore_label: bool = False,
    ) -> SliceData:
        """Preprocess (name, image, class-index label) triples onto the model grid.

        Args:
            cache_dir: write each case's arrays there as .npy and memory-map them (datasets larger than memory).
            labelled_only: keep only the labelled slices (few-shot: unpainted slices are unlabelled, not background):
                with ``ignore_label`` those holding a voxel that is not IGNORED (a slice painted all background
                counts), else those holding foreground.
            ignore_label: the dataset declares an "ignore" label (the labels hold IGNORED voxels).
        """
        out = []
        for name, image, label in pairs:
            prepared = prepare_volume(image, preprocessing)
            targets = _model_grid_labels(prepared, label.array)
            indices = None
            if labelled_only:  # only the kept slices are normalised (a few of hundreds when painting)
                flat = targets.reshape(targets.shape[0], -1)
                keep = (flat >= 0).any(axis=1) if ignore_label else (flat > 0).any(axis=1)
                if not keep.any():
                    continue
                targets, indices = targets[keep], np.flatnonzero(keep)
                images = np.stack([prepared.slices(int(k), int(k) + 1)[0] for k in indices])
            else:
                images = prepared.slices()
            if cache_dir is not None:
                images, targets = _memmap(Path(cache_dir), name, images, targets)
            out.append(CaseSlices(name, images, targets, indices))
        if not out:
            what = "every voxel is ignored" if ignore_label else "every training label is empty"
            raise DatasetError(f"no labelled slices: {what}; paint at least one slice")
        return cls(out, n_classes)


def _model_grid_labels(prepared: PreparedVolume, label: np.ndarray, step: int = 16) -> np.ndarray:
    """``prepared.labels`` of every slice in the label's own dtype, ``step`` slices at a time (it works in int64:
    630 MB for a 300 x 512 x 512 volume at once)."""
    out = np.empty((len(prepared), *prepared.model_shape), dtype=label.dtype)
    for k in range(0, len(prepared), step):
        out[k : k + step] = prepared.labels(label, k, k + step)
    return out


def _memmap(folder: Path, name: str, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for suffix, array in (("image", images), ("target", targets)):
        path = folder / f"{name}_{suffix}.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)
        arrays.append(np.load(path, mmap_mode="r"))
    return arrays[0], arrays[1]


class SliceSampler:
    """2D training batches with nnU-Net foreground oversampling and augmentation; batch(step) is deterministic.

    Args:
        data: the SliceData.
        patch_size: (h, w) of the patches.
        batch_size: patches per batch.
        oversample_foreground: fraction of each batch forced to be centred on foreground (nnU-Net: 0.33; the last
            ``round(B x fraction)`` items of the batch, at least one when the fraction is positive and B > 1).
        augment: the augmentation settings (None or enabled=False: plain crops).
        seed: base seed; batch ``step`` uses a generator seeded from (seed, step).
    """

    def __init__(
        self,
        data: SliceData,
        patch_size: tuple[int, int],
        batch_size: int,
        oversample_foreground: float = 0.33,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0.0 <= oversample_foreground <= 1.0:
            raise ValueError(f"oversample_foreground must be in [0, 1], got {oversample_foreground}")
        self.data = data
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.batch_size = batch_size
        self.augment = augment or AugmentConfig(enabled=False)
        self.seed = int(seed)
        n_forced = int(round(batch_size * oversample_foreground))
        if oversample_foreground > 0 and batch_size > 1:
            n_forced = max(1, n_forced)
        self.n_forced = n_forced

    def _generator(self, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + int(step)) % (2**63))

    def _center(self, forced: bool, g: torch.Generator) -> tuple[int, tuple[float, float]]:
        h, w = self.patch_size
        classes = sorted(self.data.class_slices)
        if forced and classes:
            k = classes[int(torch.randint(len(classes), (1,), generator=g))]
            candidates = self.data.class_slices[k]
            index = int(candidates[int(torch.randint(len(candidates), (1,), generator=g))])
            c, z = self.data.slices[index]
            ys, xs = np.nonzero(np.asarray(self.data.cases[c].targets[z]) == k)
            j = int(torch.randint(len(ys), (1,), generator=g))
            # the voxel lies somewhere in the central half of the patch
            jitter = (torch.rand(2, generator=g, dtype=torch.float64) - 0.5) * torch.tensor([h / 2, w / 2])
            return index, (float(ys[j] + jitter[0]), float(xs[j] + jitter[1]))
        index = int(torch.randint(len(self.data), (1,), generator=g))
        c, z = self.data.slices[index]
        H, W = self.data.cases[c].images.shape[1:]
        top = int(torch.randint(max(1, H - h + 1), (1,), generator=g)) if H > h else (H - h) // 2
        left = int(torch.randint(max(1, W - w + 1), (1,), generator=g)) if W > w else (W - w) // 2
        return index, (top + (h - 1) / 2, left + (w - 1) / 2)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch number ``step``: images (B, 1, h, w) float32 and targets (B, h, w) int64 class indices."""
        g = self._generator(step)
        matrices = sample_affine(self.batch_size, self.augment, g)
        images, targets = [], []
        for b in range(self.batch_size):
            forced = b >= self.batch_size - self.n_forced
            index, center = self._center(forced, g)
            c, z = self.data.slices[index]
            case = self.data.cases[c]
            image = torch.from_numpy(np.asarray(case.images[z], dtype=np.float32))
            label = torch.from_numpy(np.asarray(case.targets[z]).astype(np.int64))
            img, lab = warp_patch(image, label, center, matrices[b], self.patch_size)
            images.append(img)
            targets.append(lab)
        x, y = torch.stack(images), torch.stack(targets)
        x = augment_intensity(x, self.augment, g)
        return mirror(x, y, self.augment, g)


__all__ = [
    "IGNORED",
    "IGNORE_NAME",
    "Case",
    "CaseSlices",
    "DatasetError",
    "SegmentationDataset",
    "SliceData",
    "SliceSampler",
    "check_label_geometry",
    "dataset_from_lists",
    "fit_ct_normalisation",
    "label_to_classes",
    "load_case",
    "load_nnunet_dataset",
    "median_inplane_spacing",
]
