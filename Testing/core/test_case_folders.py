"""A folder of cases (MedDINOv3Core.case_folders): case names, planning, and the case-by-case loop whose failed
cases leave nothing behind while the others are written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from MedDINOv3Core.card import Label
from MedDINOv3Core.case_folders import (
    DuplicateCaseError,
    PlannedCase,
    case_name,
    folder_cases,
    plan_cases,
    predict_cases,
)
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.inference import Prediction
from MedDINOv3Core.progress import Cancelled
from MedDINOv3Core.volume_io import read_segmentation, read_volume

LABELS = (Label(1, "liver"), Label(2, "left kidney"))


def _prediction() -> Prediction:
    labelmap = np.zeros((2, 4, 4), np.uint8)
    labelmap[0, 1:3, 1:3], labelmap[1, 0, 0] = 1, 2
    probabilities = np.stack([labelmap == c for c in range(3)]).astype(np.float32)
    return Prediction(Volume(labelmap), probabilities, LABELS, "cpu", 0.5)


def _touch(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")
    return [folder / n for n in names]


def test_case_name_drops_the_channel_tag_only():
    assert case_name(Path("case_0000.nii.gz")) == ("case", ".nii.gz")
    assert case_name(Path("liver_12_0003.NRRD")) == ("liver_12", ".nrrd")  # the suffix as listed
    assert case_name(Path("case_000.mha")) == ("case_000", ".mha")  # not a 4-digit tag
    assert case_name(Path("ct.mhd")) == ("ct", ".mhd")


def test_folder_cases_skips_hidden_segmentations_folders_and_other_files(tmp_path):
    _touch(tmp_path, "b_0000.nii.gz", "a_0000.nrrd", ".hidden_0000.nii.gz", "seg.seg.nrrd", "notes.txt", "c.mha")
    (tmp_path / "sub.nii.gz").mkdir()
    assert [p.name for p in folder_cases(tmp_path)] == ["a_0000.nrrd", "b_0000.nii.gz", "c.mha"]


def test_plan_keeps_the_input_suffix_or_takes_the_one_given(tmp_path):
    cases = _touch(tmp_path / "in", "a_0000.nii.gz", "b_0000.mha", "c.nii")
    out = tmp_path / "out"
    plan = plan_cases(cases, out)
    assert plan == [
        PlannedCase("a", cases[0], out / "a.nii.gz"),
        PlannedCase("b", cases[1], out / "b.mha"),
        PlannedCase("c", cases[2], out / "c.nii"),
    ]
    assert [c.target.name for c in plan_cases(cases, out, ".seg.nrrd")] == ["a.seg.nrrd", "b.seg.nrrd", "c.seg.nrrd"]


def test_two_inputs_of_one_case_are_refused(tmp_path):
    cases = _touch(tmp_path, "case_0000.nii.gz", "case_0001.nii.gz")
    with pytest.raises(DuplicateCaseError) as exc:
        plan_cases(cases, tmp_path / "out")
    assert isinstance(exc.value, ValueError)
    assert str(exc.value) == (
        "case_0000.nii.gz and case_0001.nii.gz are both case 'case' (one channel per case is supported)"
    )


def test_a_failing_case_is_reported_and_leaves_nothing_the_others_are_written(tmp_path):
    cases = _touch(tmp_path / "in", "a_0000.nii.gz", "bad_0000.nii.gz", "c_0000.nii.gz")
    out, probs = tmp_path / "out", tmp_path / "probs"
    plan = plan_cases(cases, out, ".seg.nrrd")
    seen, events = [], []

    def predict_one(source: Path) -> Prediction:
        if source.name.startswith("bad"):
            raise ValueError("cannot read it")
        return _prediction()

    def on_case(i, case, prediction, error):
        seen.append((i, case.name, prediction is not None, str(error) if error else None))

    failed = predict_cases(plan, predict_one, probs, on_case=on_case, progress=lambda *a: events.append(a))
    assert [(f.name, str(f.error)) for f in failed] == [("bad", "cannot read it")]
    assert seen == [(0, "a", True, None), (1, "bad", False, "cannot read it"), (2, "c", True, None)]
    assert events == [("case", 0, 3, "a"), ("case", 1, 3, "bad"), ("case", 2, 3, "c"), ("case", 3, 3, "")]
    assert sorted(p.name for p in out.iterdir()) == ["a.seg.nrrd", "c.seg.nrrd"]
    assert sorted(p.name for p in probs.iterdir()) == ["a", "c"]  # no folder, no temporary, for "bad"
    maps = ["00_background.nrrd", "01_liver.nrrd", "02_left_kidney.nrrd"]
    assert sorted(p.name for p in (probs / "a").iterdir()) == maps
    labelmap, segments = read_segmentation(out / "a.seg.nrrd")
    assert [s["name"] for s in segments] == ["liver", "left kidney"]
    np.testing.assert_array_equal(labelmap.array, _prediction().labelmap.array)
    np.testing.assert_array_equal(read_volume(probs / "c" / "01_liver.nrrd").array, _prediction().probabilities[1])


def test_a_case_whose_labelmap_fails_to_write_leaves_no_probability_maps(tmp_path):
    out, probs = tmp_path / "out", tmp_path / "probs"
    plan = [
        PlannedCase("x", tmp_path / "x.nii.gz", out / "x.txt"),
        PlannedCase("y", tmp_path / "y.nii", out / "y.nrrd"),
    ]
    failed = predict_cases(plan, lambda source: _prediction(), probs)
    assert [f.name for f in failed] == ["x"] and "unsupported file type" in str(failed[0].error)
    assert sorted(p.name for p in out.iterdir()) == ["y.nrrd"]
    assert sorted(p.name for p in probs.iterdir()) == ["y"]  # x's maps were written, then removed with its temporary


def test_cancel_stops_the_loop(tmp_path):
    plan = plan_cases(_touch(tmp_path / "in", "a.nii.gz", "b.nii.gz"), tmp_path / "out")
    calls = []

    def predict_one(source: Path) -> Prediction:
        calls.append(source.name)
        raise Cancelled("cancelled by the user")

    with pytest.raises(Cancelled):
        predict_cases(plan, predict_one)
    assert calls == ["a.nii.gz"] and list((tmp_path / "out").iterdir()) == []
