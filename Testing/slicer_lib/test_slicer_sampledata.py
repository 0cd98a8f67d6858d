"""The "MedDINOv3 phantom" Sample Data source: registration as Slicer's SampleData module takes it, nothing made at
start-up, the cached phantom files (exact geometry, made once), and loading them into a real MRML scene.

Slicer's SampleData module cannot run here, so its interface is recorded as facts from the Slicer sources
(Modules/Scripted/SampleData/SampleData.py at tags v5.10.0 and v5.12.3):
- ``SampleDataLogic.registerCustomSampleDataSource`` is a staticmethod with the parameters below (same in both).
- It builds a ``SampleDataSource``: a ``str`` ``uris`` wraps ``fileNames``, ``nodeNames``, ``loadFiles``,
  ``loadFileTypes`` and ``checksums`` into one-item lists; a list ``uris`` needs lists of the same length; ``uris``
  None fails (``len(None)``).
- The SampleData widget calls ``source.customDownloader(source)`` when the sample's button is clicked (otherwise
  ``downloadFromSource``, which fetches each URI with ``urllib.request.urlretrieve``: ``file:`` URIs work).
- Sources are compared by their text (``SampleDataSource.__str__`` includes ``customDownloader``), so registering
  an equal source twice is ignored.
"""

from __future__ import annotations

import inspect
import struct
import types
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from MedDINOv3Core.data.phantom import make_phantom, phantom_label_table
from MedDINOv3Core.volume_io import read_volume
from MedDINOv3SlicerLib import sampledata
from MedDINOv3SlicerLib.sampledata import (
    CATEGORY,
    SAMPLE_NAME,
    PhantomDownloader,
    ensure_phantom,
    phantom_paths,
    register_sample_data,
)

ROOT = Path(__file__).resolve().parents[2]

# SampleData.SampleDataLogic.registerCustomSampleDataSource: parameter names in order (v5.10.0 line 510,
# v5.12.3 line 553 of Modules/Scripted/SampleData/SampleData.py)
REGISTER_PARAMETERS = {
    "v5.10.0": (
        "category",
        "sampleName",
        "uris",
        "fileNames",
        "nodeNames",
        "customDownloader",
        "thumbnailFileName",
        "loadFileTypes",
        "loadFiles",
        "loadFileProperties",
        "checksums",
        "loadFileType",
    ),
    "v5.12.3": (
        "category",
        "sampleName",
        "uris",
        "fileNames",
        "nodeNames",
        "customDownloader",
        "thumbnailFileName",
        "loadFileTypes",
        "loadFiles",
        "loadFileProperties",
        "checksums",
        "loadFileType",
    ),
}
LIST_FIELDS = ("fileNames", "nodeNames", "loadFiles", "loadFileTypes", "checksums")


def _slicer_register(
    category="Custom",
    sampleName=None,
    uris=None,
    fileNames=None,
    nodeNames=None,
    customDownloader=None,
    thumbnailFileName=None,
    loadFileTypes=None,
    loadFiles=None,
    loadFileProperties={},  # noqa: B006 (Slicer's signature)
    checksums=None,
    loadFileType=None,
):
    """registerCustomSampleDataSource's signature, with SampleDataSource's argument rules."""
    if loadFileType is not None and loadFileTypes is not None:
        raise ValueError("loadFileType and loadFileTypes cannot be specified at the same time")
    if isinstance(uris, (list, tuple)):
        for name, value in zip(LIST_FIELDS, (fileNames, nodeNames, loadFiles, loadFileTypes, checksums)):
            if not isinstance(value, (list, tuple)) or len(value) != len(uris):
                raise ValueError(f"{name} must be a list of the length of uris")
    elif not isinstance(uris, str):
        raise TypeError("SampleDataSource needs uris (a str or a list)")


class RecordingSampleDataLogic:
    """Stands in for SampleData.SampleDataLogic: checks each registration against Slicer's signature and rules and
    records the keyword arguments it was given."""

    calls: list[dict] = []

    @staticmethod
    def registerCustomSampleDataSource(*args, **kwargs):
        inspect.signature(_slicer_register).bind(*args, **kwargs)  # TypeError for an unknown argument
        _slicer_register(*args, **kwargs)
        assert not args, "pass keyword arguments (positions are not part of the recorded facts)"
        RecordingSampleDataLogic.calls.append(kwargs)


@pytest.fixture
def sample_data_logic():
    RecordingSampleDataLogic.calls = []
    return RecordingSampleDataLogic


def test_recorded_signatures_are_the_stand_in_signature():
    stand_in = tuple(inspect.signature(_slicer_register).parameters)
    for tag, parameters in REGISTER_PARAMETERS.items():
        assert stand_in == parameters, tag


def test_registration_matches_slicer_and_makes_no_files(tmp_path, sample_data_logic):
    cache = tmp_path / "cache"
    register_sample_data(sample_data_logic, cache_dir=cache)
    (call,) = sample_data_logic.calls
    for parameters in REGISTER_PARAMETERS.values():  # keyword arguments only, all known to 5.10 and 5.12
        assert set(call) <= set(parameters)
    assert call["category"] == CATEGORY == "MedDINOv3"
    assert call["sampleName"] == SAMPLE_NAME == "MedDINOv3 phantom"
    ct_path, _ = phantom_paths(cache)
    assert call["uris"] == ct_path.absolute().as_uri() and call["uris"].startswith("file:")
    assert call["fileNames"] == ct_path.name and call["fileNames"].endswith(".nrrd")
    assert call["loadFileTypes"] == "VolumeFile"
    assert "loadFileType" not in call  # the deprecated name is not used
    thumbnail = Path(call["thumbnailFileName"])
    assert thumbnail == ROOT / "MedDINOv3Slicer" / "Resources" / "Icons" / "MedDINOv3Phantom.png"
    downloader = call["customDownloader"]
    assert callable(downloader) and len(inspect.signature(downloader).parameters) == 1  # called with the source
    # start-up only registers: nothing is drawn or written until the user picks the sample
    assert not cache.exists()


def test_registering_twice_gives_the_same_source_text(tmp_path, sample_data_logic):
    """SampleData ignores a source equal (as text) to a registered one, e.g. after the module is reloaded."""
    register_sample_data(sample_data_logic, cache_dir=tmp_path)
    register_sample_data(sample_data_logic, cache_dir=tmp_path)
    first, second = sample_data_logic.calls
    assert {k: str(v) for k, v in first.items()} == {k: str(v) for k, v in second.items()}


def test_missing_thumbnail_is_left_out(tmp_path, sample_data_logic):
    register_sample_data(sample_data_logic, cache_dir=tmp_path, thumbnail=tmp_path / "none.png")
    assert sample_data_logic.calls[0]["thumbnailFileName"] is None


def test_thumbnail_is_a_png_of_the_size_sample_data_shows():
    data = (ROOT / "MedDINOv3Slicer" / "Resources" / "Icons" / sampledata.THUMBNAIL_FILE_NAME).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 128 <= width <= 300 and 128 <= height <= 300


def test_phantom_is_the_demo_phantom():
    """The grid the embedded demo model was trained on, and a seed that is not one of its training cases."""
    from training.demo import DEMO_SEED, DEMO_SHAPE

    assert tuple(sampledata.PHANTOM_SHAPE) == tuple(DEMO_SHAPE)
    assert sampledata.PHANTOM_SEED == DEMO_SEED


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    cache = tmp_path_factory.mktemp("sample-data")
    return cache, ensure_phantom(cache)


@pytest.fixture(scope="module")
def expected():
    return make_phantom(sampledata.PHANTOM_SHAPE, seed=sampledata.PHANTOM_SEED)


def test_phantom_files_keep_voxels_and_exact_geometry(cached, expected):
    cache, (ct_path, labels_path) = cached
    assert (ct_path, labels_path) == phantom_paths(cache)
    assert ct_path.suffix == labels_path.suffix == ".nrrd"
    for path, truth in ((ct_path, expected.ct), (labels_path, expected.labels)):
        volume = read_volume(path)
        assert volume.array.dtype == truth.array.dtype
        np.testing.assert_array_equal(volume.array, truth.array)
        assert volume.spacing == truth.spacing  # NRRD keeps the geometry exactly
        assert volume.origin == truth.origin
        assert volume.direction == truth.direction
    assert sorted(p.name for p in cache.iterdir()) == sorted([ct_path.name, labels_path.name])  # no temporary left


def test_phantom_is_made_once(cached, monkeypatch):
    cache, paths = cached
    mtimes = [p.stat().st_mtime_ns for p in paths]

    def must_not_draw(*args, **kwargs):
        raise AssertionError("the cached phantom was drawn again")

    monkeypatch.setattr("MedDINOv3Core.data.phantom.make_phantom", must_not_draw)
    assert ensure_phantom(cache) == paths
    assert [p.stat().st_mtime_ns for p in paths] == mtimes


def test_a_missing_labels_file_is_made_again(tmp_path, expected):
    ct_path, labels_path = ensure_phantom(tmp_path)
    labels_path.unlink()
    assert ensure_phantom(tmp_path) == (ct_path, labels_path)
    np.testing.assert_array_equal(read_volume(labels_path).array, expected.labels.array)


def test_sample_data_own_download_reads_the_cached_file(cached, tmp_path):
    """What SampleData's downloadFile does with the registered URI (urllib.request.urlretrieve) once it exists."""
    cache, (ct_path, _) = cached
    copy = tmp_path / "copy.nrrd"
    urllib.request.urlretrieve(ct_path.absolute().as_uri(), copy)
    assert copy.read_bytes() == ct_path.read_bytes()


# --------------------------------------------------------------------------------- loading into a real scene


def test_downloader_loads_ct_and_truth_into_the_scene(scene, tmp_path, sample_data_logic, expected):
    """The button's action: the CT (soft-tissue window) and the named truth segments on the CT's grid."""
    slicer = pytest.importorskip("slicer")
    from MedDINOv3SlicerLib.geometry import volume_from_node
    from MedDINOv3SlicerLib.segmentation import segmentation_to_labelmap

    register_sample_data(sample_data_logic, cache_dir=tmp_path)
    call = sample_data_logic.calls[0]
    source = types.SimpleNamespace(sampleName=call["sampleName"], customDownloader=call["customDownloader"])
    loaded = source.customDownloader(source)  # what the SampleData widget does on click
    assert slicer.mrmlScene is scene

    assert loaded.volume.GetName() == sampledata.VOLUME_NODE_NAME
    assert scene.GetNodesByClass("vtkMRMLScalarVolumeNode").GetNumberOfItems() == 1  # no stray nodes
    ct = volume_from_node(loaded.volume)
    np.testing.assert_array_equal(ct.array, expected.ct.array)
    np.testing.assert_allclose(ct.spacing, expected.ct.spacing)
    np.testing.assert_allclose(ct.origin, expected.ct.origin, atol=1e-9)
    np.testing.assert_allclose(ct.direction, expected.ct.direction, atol=1e-12)
    display = loaded.volume.GetDisplayNode()
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == sampledata.CT_WINDOW_LEVEL

    seg = loaded.segmentation
    assert seg.GetName() == sampledata.TRUTH_NODE_NAME
    labelmap, table = segmentation_to_labelmap(seg, loaded.volume)
    names = {e["value"]: e["name"] for e in phantom_label_table()}
    present = [int(v) for v in np.unique(expected.labels.array) if v > 0]
    assert [e["name"] for e in table] == [names[v] for v in present]
    # segment n of the export is label present[n - 1]: the same voxels as the phantom's truth
    relabel = np.zeros(256, np.uint8)
    relabel[present] = np.arange(1, len(present) + 1)
    np.testing.assert_array_equal(labelmap.array, relabel[expected.labels.array])


def test_downloader_repr_is_stable(tmp_path):
    assert repr(PhantomDownloader(tmp_path)) == repr(PhantomDownloader(str(tmp_path)))
    assert "PhantomDownloader" in repr(PhantomDownloader())
