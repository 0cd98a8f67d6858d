"""Segmentation datasets: nnU-Net v2 raw layout and lists, the checks (each a clear error), CT statistics, and the
2D slice sampler (determinism, foreground oversampling, exact crops)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from MedDINOv3Core.data.augment import AugmentConfig
from MedDINOv3Core.data.nnunet_data import (
    DatasetError,
    SliceData,
    SliceSampler,
    dataset_from_lists,
    fit_ct_normalisation,
    load_case,
    load_nnunet_dataset,
)
from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.data.preprocess import PreprocessConfig, ct_statistics
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.volume_io import write_volume

SHAPE = (6, 32, 32)


def write_dataset(root: Path, seeds=(0, 1), test_seeds=(5,), shape=SHAPE, meta: dict | None = None) -> dict:
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(exist_ok=True)
    from MedDINOv3Core.data.phantom import phantom_label_table

    table = phantom_label_table()
    for s in seeds:
        p = make_phantom(shape, seed=s)
        table = p.label_table
        write_volume(p.ct, root / "imagesTr" / f"case{s}_0000.nii.gz")
        write_volume(p.labels, root / "labelsTr" / f"case{s}.nii.gz")
    if test_seeds:
        (root / "imagesTs").mkdir(exist_ok=True)
        for s in test_seeds:
            write_volume(make_phantom(shape, seed=s).ct, root / "imagesTs" / f"test{s}_0000.nii.gz")
    data = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{d["name"]: d["value"] for d in table}},
        "numTraining": len(seeds),
        "file_ending": ".nii.gz",
        "name": "phantom",
    }
    data.update(meta or {})
    (root / "dataset.json").write_text(json.dumps(data))
    return data


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds")
    return tmp_path / "ds"


def test_loads_the_nnunet_layout(dataset_dir: Path):
    ds = load_nnunet_dataset(dataset_dir)
    assert ds.name == "phantom" and ds.modality == "CT"
    assert [c.name for c in ds.training] == ["case0", "case1"]
    assert [c.name for c in ds.test] == ["test5"] and ds.test[0].label is None
    assert ds.classes[0] == (1, "liver") and ds.n_classes == 8
    image, label = load_case(ds.training[0], ds)
    assert image.shape == label.shape == SHAPE
    assert label.array.max() <= 7 and label.array.dtype == np.uint8


def test_label_values_are_mapped_to_channel_order(tmp_path: Path):
    vol = make_phantom(SHAPE, seed=0)
    label = np.where(vol.labels.array == 5, 9, 0).astype(np.uint8)  # bone stored as value 9
    write_volume(vol.ct, tmp_path / "img.nii.gz")
    write_volume(vol.labels.with_array(label), tmp_path / "lab.nii.gz")
    ds = dataset_from_lists([tmp_path / "img.nii.gz"], [tmp_path / "lab.nii.gz"], {"background": 0, "bone": 9})
    _, classes = load_case(ds.training[0], ds)
    assert set(np.unique(classes.array)) == {0, 1}
    assert np.array_equal(classes.array == 1, label == 9)


def test_geometry_mismatch_is_a_clear_error(dataset_dir: Path):
    path = dataset_dir / "labelsTr" / "case1.nii.gz"
    p = make_phantom(SHAPE, seed=1)
    shifted = Volume(p.labels.array, p.labels.spacing, tuple(o + 2.0 for o in p.labels.origin), p.labels.direction)
    write_volume(shifted, path)
    ds = load_nnunet_dataset(dataset_dir)
    with pytest.raises(DatasetError, match="label geometry differs from its image"):
        load_case(ds.training[1], ds)
    write_volume(Volume(np.zeros((6, 32, 31), np.uint8), p.labels.spacing), path)
    with pytest.raises(DatasetError, match=r"label shape \(6, 32, 31\) differs"):
        load_case(ds.training[1], ds)


def test_labels_outside_declared_classes_are_a_clear_error(tmp_path: Path):
    write_dataset(tmp_path / "ds", meta={"labels": {"background": 0, "liver": 1, "spleen": 2}})
    ds = load_nnunet_dataset(tmp_path / "ds")
    with pytest.raises(DatasetError, match=r"label values \[3, 4, 5, 6, 7\] are not among the declared classes"):
        load_case(ds.training[0], ds)


def test_empty_training_set_is_a_clear_error(tmp_path: Path):
    root = tmp_path / "empty"
    write_dataset(root, seeds=(), test_seeds=(), meta={"labels": {"background": 0, "liver": 1}})
    with pytest.raises(DatasetError, match="training set is empty"):
        load_nnunet_dataset(root)
    with pytest.raises(DatasetError, match="training set is empty"):
        dataset_from_lists([], [], ["liver"])


def test_dataset_json_that_does_not_match_the_files(dataset_dir: Path):
    meta = json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8"))
    (dataset_dir / "dataset.json").write_text(json.dumps({**meta, "numTraining": 5}))
    with pytest.raises(DatasetError, match="numTraining is 5 but labelsTr holds 2 cases"):
        load_nnunet_dataset(dataset_dir)
    (dataset_dir / "dataset.json").write_text(json.dumps(meta))
    (dataset_dir / "imagesTr" / "case1_0000.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"labels without an image \['case1'\]"):
        load_nnunet_dataset(dataset_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"channel_names": {"0": "T1", "1": "T2"}}, "only single-channel images are supported"),
        ({"labels": {"background": 0, "tumor": [1, 2]}}, "region-based"),
        ({"labels": {"liver": 1}}, "must declare background with value 0"),
        ({"file_ending": "nii"}, "file_ending"),
    ],
)
def test_bad_dataset_json(dataset_dir: Path, change: dict, message: str):
    meta = json.loads((dataset_dir / "dataset.json").read_text(encoding="utf-8"))
    (dataset_dir / "dataset.json").write_text(json.dumps({**meta, **change}))
    with pytest.raises(DatasetError, match=message):
        load_nnunet_dataset(dataset_dir)


def test_missing_dataset_json(tmp_path: Path):
    (tmp_path / "x").mkdir()
    with pytest.raises(DatasetError, match="no dataset.json"):
        load_nnunet_dataset(tmp_path / "x")


def test_ct_normalisation_statistics_from_the_training_foreground():
    pairs = [(p.ct, p.labels) for p in (make_phantom(SHAPE, seed=s) for s in (0, 1))]
    fitted = fit_ct_normalisation(pairs, spacing=(2.0, 2.0), per_case=10**9)
    values = np.concatenate([ct.array[lab.array > 0] for ct, lab in pairs])
    expected = ct_statistics(values, (2.0, 2.0))
    assert fitted == expected
    assert fitted.clip_low < -800 and fitted.clip_high > 600  # lungs and bone are foreground
    with pytest.raises(DatasetError, match="no foreground"):
        fit_ct_normalisation([(pairs[0][0], pairs[0][1].with_array(np.zeros(SHAPE, np.uint8)))])


def _slice_data(seeds=(0, 1), labelled_only=False) -> SliceData:
    triples = []
    for s in seeds:
        p = make_phantom((8, 48, 48), seed=s)
        triples.append((f"c{s}", p.ct, p.labels))
    return SliceData.from_cases(triples, PreprocessConfig.meddinov3_demo(), 8, labelled_only=labelled_only)


def test_sampler_is_a_pure_function_of_the_step():
    data = _slice_data()
    a = SliceSampler(data, (32, 32), 4, augment=AugmentConfig(), seed=3)
    b = SliceSampler(data, (32, 32), 4, augment=AugmentConfig(), seed=3)
    x1, y1 = a.batch(7)
    a.batch(8)
    x2, y2 = b.batch(7)
    assert x1.shape == (4, 1, 32, 32) and y1.shape == (4, 32, 32) and y1.dtype == torch.int64
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(a.batch(9)[0], x1)


def test_foreground_oversampling():
    data = _slice_data()
    sampler = SliceSampler(data, (16, 16), 3, oversample_foreground=0.33, seed=0)
    assert sampler.n_forced == 1
    for step in range(20):
        _, y = sampler.batch(step)
        assert (y[-1] > 0).any()  # the forced item always holds foreground
    # without oversampling, small patches often miss every organ
    plain = SliceSampler(data, (16, 16), 3, oversample_foreground=0.0, seed=0)
    empty = sum(int(not (plain.batch(s)[1][i] > 0).any()) for s in range(20) for i in range(3))
    assert empty > 0


def test_plain_patches_are_crops_of_the_preprocessed_slices():
    data = _slice_data(seeds=(0,))
    sampler = SliceSampler(data, (48, 48), 2, oversample_foreground=0.0, augment=None, seed=1)
    x, y = sampler.batch(0)
    stack = torch.from_numpy(data.cases[0].images)
    hits = [int(torch.argmin((stack - x[i, 0]).abs().flatten(1).amax(1))) for i in range(2)]
    for i, z in enumerate(hits):
        assert torch.allclose(x[i, 0], stack[z], atol=1e-4)
        assert torch.equal(y[i], torch.from_numpy(data.cases[0].targets[z].astype(np.int64)))


def test_labelled_only_keeps_painted_slices(tmp_path: Path):
    p = make_phantom((8, 48, 48), seed=0)
    painted = np.zeros_like(p.labels.array)
    painted[[2, 5]] = p.labels.array[[2, 5]]
    data = SliceData.from_cases(
        [("c", p.ct, p.labels.with_array(painted))], PreprocessConfig.meddinov3_demo(), 8, tmp_path, labelled_only=True
    )
    assert len(data) == 2 and isinstance(data.cases[0].images, np.memmap)
