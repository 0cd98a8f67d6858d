"""The "MedDINOv3 phantom" sample in Slicer's Sample Data module: a labelled synthetic CT, made on this computer.

A new user can try every button without data of their own: Segment (the embedded demo model was trained on phantoms
of this grid), Explore features, Fine-tune (the phantom's truth segmentation is loaded with it) and Export.

- Nothing is computed at Slicer start-up: ``register_sample_data`` only registers the source. The phantom is drawn
  (``MedDINOv3Core.data.phantom.make_phantom``, seeded, well under a second) the first time the user picks the
  sample, written once into a per-user cache folder as NRRD with its exact geometry (``write_volume``, atomic), and
  re-used after that.
- Slicer's SampleData module (5.10 and 5.12: ``SampleDataLogic.registerCustomSampleDataSource``, a staticmethod with
  the same parameters in both) calls a source's ``customDownloader(source)`` when its button is clicked; that is where
  the phantom is made and loaded. ``uris`` must be given all the same (SampleDataSource sizes its lists from it): it
  is the ``file:`` URI of the cached CT, which SampleData's own downloader (``urllib.request.urlretrieve``) can read
  once the file exists.
- Loading is Qt-free (``load_phantom`` adds the CT volume and the truth segmentation to a MRML scene), so it is tested
  against slicer-core's real scene; only showing the volume in the slice views needs the application.

The thumbnail ``Resources/Icons/MedDINOv3Phantom.png`` is axial slice 20 of this phantom (liver, spleen, kidneys,
vertebral column; window 400 / level 40 HU; radiological orientation) with its truth labels' colours blended in at
40 %, 256 x 256 pixels.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CATEGORY = "MedDINOv3"
SAMPLE_NAME = "MedDINOv3 phantom"
VOLUME_NODE_NAME = "MedDINOv3 phantom"
TRUTH_NODE_NAME = "MedDINOv3 phantom truth"
# The grid and seed of `python -m training demo` (training.demo.DEMO_SHAPE / DEMO_SEED): the embedded demo model was
# trained on phantoms of this grid, and this seed is not one of its training cases.
PHANTOM_SHAPE = (48, 192, 192)
PHANTOM_SEED = 2026
# Part of the cached file names: raise it when make_phantom draws differently, so that old cached files are not used.
PHANTOM_VERSION = 1
CT_FILE_NAME = f"MedDINOv3Phantom-v{PHANTOM_VERSION}-seed{PHANTOM_SEED}.nrrd"
LABELS_FILE_NAME = f"MedDINOv3Phantom-v{PHANTOM_VERSION}-seed{PHANTOM_SEED}-labels.nrrd"
THUMBNAIL_FILE_NAME = "MedDINOv3Phantom.png"
CT_WINDOW_LEVEL = (400.0, 40.0)  # abdominal soft-tissue window (HU)


def default_cache_dir() -> Path:
    """``~/.cache/meddinov3/sample-data`` (beside the feature cache, outside the Slicer install folder)."""
    return Path.home() / ".cache" / "meddinov3" / "sample-data"


def phantom_paths(cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Where the phantom's CT and truth labelmap are (or will be) cached: (ct.nrrd, labels.nrrd)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return folder / CT_FILE_NAME, folder / LABELS_FILE_NAME


def ensure_phantom(cache_dir: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """The cached phantom files, drawn and written first if either is missing.

    Each file is written atomically (a temporary name in the same folder, then a rename), labels first and the CT
    last, so a cached CT always has its labels and an interrupted run leaves nothing half-written.

    Returns:
        (ct_path, labels_path): int16 HU and uint8 labels, (z, y, x) = PHANTOM_SHAPE, the same exact geometry.
    """
    ct_path, labels_path = phantom_paths(cache_dir)
    if ct_path.is_file() and labels_path.is_file():
        return ct_path, labels_path
    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3Core.volume_io import write_volume

    ct_path.parent.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(PHANTOM_SHAPE, seed=PHANTOM_SEED)
    write_volume(phantom.labels, labels_path)
    write_volume(phantom.ct, ct_path)
    log.info("MedDINOv3 phantom written to %s", ct_path)
    return ct_path, labels_path


@dataclass
class LoadedPhantom:
    volume: Any  # vtkMRMLScalarVolumeNode
    segmentation: Any  # vtkMRMLSegmentationNode


def load_phantom(scene, cache_dir: str | os.PathLike | None = None) -> LoadedPhantom:
    """Add the phantom CT (soft-tissue window) and its truth segmentation (named, coloured segments) to ``scene``.

    The files are made first if they are not cached yet (``ensure_phantom``).
    """
    from MedDINOv3Core.data.phantom import phantom_label_table
    from MedDINOv3Core.volume_io import read_volume
    from MedDINOv3SlicerLib.geometry import add_volume_node
    from MedDINOv3SlicerLib.segmentation import labelmap_to_segmentation

    ct_path, labels_path = ensure_phantom(cache_dir)
    volume = add_volume_node(scene, read_volume(ct_path), VOLUME_NODE_NAME)
    display = volume.GetDisplayNode()
    if display is not None:
        display.AutoWindowLevelOff()
        display.SetWindowLevel(*CT_WINDOW_LEVEL)
    segmentation = labelmap_to_segmentation(
        scene, read_volume(labels_path), phantom_label_table(), volume, TRUTH_NODE_NAME
    )
    return LoadedPhantom(volume, segmentation)


class PhantomDownloader:
    """The sample's ``customDownloader``: SampleData calls it with the source when the user clicks the sample.

    Its ``repr`` is stable, so registering the source twice (SampleData compares sources by their text) is noticed
    by SampleData and ignored.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None) -> None:
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()

    def __repr__(self) -> str:
        return f"MedDINOv3SlicerLib.sampledata.PhantomDownloader(cache_dir={self.cache_dir!r})"

    def __call__(self, source=None) -> LoadedPhantom | None:
        import slicer

        if getattr(slicer, "app", None) is None:  # slicer-core (no application): no views, no dialogs
            return load_phantom(slicer.mrmlScene, self.cache_dir)
        try:
            # shows the error in a dialog, then re-raises
            with slicer.util.tryWithErrorDisplay("Could not make the MedDINOv3 phantom.", waitCursor=True):
                loaded = load_phantom(slicer.mrmlScene, self.cache_dir)
                slicer.util.setSliceViewerLayers(background=loaded.volume, fit=True)
        except Exception:
            return None
        return loaded


def register_sample_data(
    sample_data_logic,
    cache_dir: str | os.PathLike | None = None,
    thumbnail: str | os.PathLike | None = None,
) -> None:
    """Register the "MedDINOv3 phantom" sample in Slicer's Sample Data module. Makes no files.

    Args:
        sample_data_logic: ``SampleData.SampleDataLogic`` (its staticmethod ``registerCustomSampleDataSource``).
        cache_dir: where the phantom files are cached; None: ``default_cache_dir()``.
        thumbnail: the PNG shown on the sample's button; None: ``Resources/Icons/MedDINOv3Phantom.png`` of this
            module (left out when missing: SampleData then shows the name only).
    """
    ct_path, _ = phantom_paths(cache_dir)
    if thumbnail is None:
        thumbnail = Path(__file__).resolve().parent.parent / "Resources" / "Icons" / THUMBNAIL_FILE_NAME
    thumbnail_file = os.fspath(thumbnail) if Path(thumbnail).is_file() else None
    sample_data_logic.registerCustomSampleDataSource(
        category=CATEGORY,
        sampleName=SAMPLE_NAME,
        uris=ct_path.absolute().as_uri(),
        fileNames=CT_FILE_NAME,
        nodeNames=VOLUME_NODE_NAME,
        customDownloader=PhantomDownloader(cache_dir),
        thumbnailFileName=thumbnail_file,
        loadFileTypes="VolumeFile",
    )


__all__ = [
    "CATEGORY",
    "SAMPLE_NAME",
    "LoadedPhantom",
    "PhantomDownloader",
    "default_cache_dir",
    "ensure_phantom",
    "load_phantom",
    "phantom_paths",
    "register_sample_data",
]
