"""The slice cache (build, resume, read) and the multi-crop dataset with its step sampler."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDINOv3Core.data.crops import CropConfig
from MedDINOv3Core.data.slice_cache import (
    PretrainDataset,
    SliceCache,
    StepBatchSampler,
    batch_indices,
    build_slice_cache,
    collate_views,
    discover_volumes,
    read_ct_array,
)


def _write_volume(path, z=5, hw=24, value=0, flip_z=False):
    arr = (np.arange(z)[:, None, None] * 100 + value + np.zeros((z, hw, hw))).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.8, 0.8, 2.0))
    if flip_z:  # stored inferior-first: reorientation must put it back
        img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, -1))
    sitk.WriteImage(img, str(path))
    return arr


def _write_dicom_series(directory, z=3, hw=16):
    directory.mkdir()
    arr = (np.arange(z)[:, None, None] * 50 + np.zeros((z, hw, hw))).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(z):
        s = img[:, :, k]
        for tag, value in (
            ("0020|000e", uid + ".1"),
            ("0020|000d", uid + ".2"),
            ("0008|0060", "CT"),
            ("0020|0032", f"0\\0\\{k * 2.0}"),
            ("0020|0013", str(k + 1)),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
        ):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"im{k}.dcm"))
        writer.Execute(s)


def test_discover_and_read_formats(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_volume(data / "a.nii.gz")
    _write_volume(data / "b.nrrd", z=4)
    _write_volume(data / "c.mha", z=3)
    _write_dicom_series(data / "series")
    (data / "notes.txt").write_text("not an image")
    sources = discover_volumes([data])
    names = sorted(s.split("/")[-1] for s in sources)
    assert names == ["a.nii.gz", "b.nrrd", "c.mha", "series"]
    assert read_ct_array(str(data / "series")).shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match="not found"):
        discover_volumes([tmp_path / "missing"])


def test_read_reorients_to_axial_lps(tmp_path):
    arr = _write_volume(tmp_path / "v.nii.gz", flip_z=True)
    out = read_ct_array(str(tmp_path / "v.nii.gz"))
    assert np.array_equal(out[:, 0, 0], arr[::-1, 0, 0])


def test_cache_build_resume_and_read(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_volume(data / "a.nii.gz", z=5, value=-2000)
    cache = build_slice_cache([data], tmp_path / "cache", size=16)
    assert len(cache) == 5
    first = cache[0]
    assert first.shape == (16, 16) and first.dtype == np.int16 and first.min() == -1000  # clamped
    _write_volume(data / "b.nii.gz", z=3, value=500)
    (data / "broken.nii.gz").write_bytes(b"not a nifti")
    calls = []
    cache = build_slice_cache([data], tmp_path / "cache", size=16, progress=lambda *a: calls.append(a))
    assert len(cache) == 8
    assert calls[0][2] == 2  # only the two new volumes were processed
    index = json.loads((tmp_path / "cache" / "index.json").read_text(encoding="utf-8"))
    assert len(index["shards"]) == 2 and len(index["failed"]) == 1
    assert cache[7][0, 0] == 700
    with pytest.raises(IndexError):
        cache[8]
    with pytest.raises(ValueError, match="built with"):
        build_slice_cache([data], tmp_path / "cache", size=32)
    with pytest.raises(FileNotFoundError, match="build it first"):
        SliceCache(tmp_path / "nothing")


def test_batch_indices_shard_the_global_batch():
    full = batch_indices(3, 10, 4, seed=1)
    parts = batch_indices(3, 10, 4, seed=1, rank=0, world=2) + batch_indices(3, 10, 4, seed=1, rank=1, world=2)
    assert full == parts
    seen = [i for s in range(5) for i in batch_indices(s, 10, 2, seed=1)]
    assert sorted(seen) == list(range(10))  # one pass visits every slice once
    with pytest.raises(ValueError, match="divisible"):
        batch_indices(0, 10, 3, seed=0, world=2)


def test_dataset_split_matches_single_process(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_volume(data / "a.nii.gz", z=6, hw=40)
    cache = build_slice_cache([data], tmp_path / "cache", size=32)
    crops = CropConfig(global_sizes=(32,), local_sizes=(16,), n_local=2)
    ds = PretrainDataset(cache, crops, patch_size=16, seed=0, with_gram=True)

    def batch(rank, world, gb):
        keys = next(iter(StepBatchSampler(len(ds), gb, crops, 0, 1, 0, rank, world)))
        return collate_views([ds[k] for k in keys])

    one = batch(0, 1, 4)
    a, b = batch(0, 2, 4), batch(1, 2, 4)
    assert one["global"].shape == (8, 3, 32, 32) and one["local"].shape == (8, 3, 16, 16)
    assert one["gram"].shape == (8, 3, 64, 64) and one["masks"].shape == (8, 4)
    g1 = one["global"].reshape(2, 4, 3, 32, 32)
    g2 = torch.cat((a["global"].reshape(2, 2, 3, 32, 32), b["global"].reshape(2, 2, 3, 32, 32)), dim=1)
    assert torch.equal(g1, g2)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        PretrainDataset(cache, CropConfig(global_sizes=(30,)), patch_size=16, seed=0)


def test_dataloader_workers_give_the_same_batches(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    _write_volume(data / "a.nii.gz", z=6, hw=40)
    cache = build_slice_cache([data], tmp_path / "cache", size=32)
    crops = CropConfig(global_sizes=(32,), local_sizes=(16,), n_local=1)
    ds = PretrainDataset(cache, crops, patch_size=16, seed=3)

    def batches(workers):
        sampler = StepBatchSampler(len(ds), 2, crops, 3, total_steps=2)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate_views, num_workers=workers)
        return list(loader)

    for a, b in zip(batches(0), batches(1), strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_discovery_reads_only_the_images_of_an_nnunet_dataset(tmp_path):
    """Pretraining given an nnU-Net dataset root reads imagesTr/ and imagesTs/, never the label maps."""
    for rel in ("imagesTr/a_0000.nii.gz", "imagesTs/b_0000.nii.gz", "labelsTr/a.nii.gz", "labelsTs/b.nii.gz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "dataset.json").write_text("{}", encoding="utf-8")
    found = [Path(p).relative_to(tmp_path.resolve()).as_posix() for p in discover_volumes([tmp_path])]
    assert found == ["imagesTr/a_0000.nii.gz", "imagesTs/b_0000.nii.gz"]


def test_discovery_prints_no_itk_warning_for_files_beside_the_volumes(tmp_path, capfd):
    """dataset.json, notes and a file without a suffix beside the volumes: no 'No Series were found' from GDCM on
    the terminal (the folder is scanned for DICOM only for files that may be slices, and quietly)."""
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "imagesTr" / "a_0000.nii.gz").write_bytes(b"")
    (tmp_path / "dataset.json").write_text("{}", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / "README").write_text("x", encoding="utf-8")  # no suffix: may be DICOM, so GDCM looks
    found = [Path(p).relative_to(tmp_path.resolve()).as_posix() for p in discover_volumes([tmp_path])]
    assert found == ["imagesTr/a_0000.nii.gz"]
    assert "No Series" not in capfd.readouterr().err
