"""`python -m training evaluate`: matching by name across formats, CSV and Table-2 summary, conventions, errors."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.data.volume import Volume
from MedDINOv3Core.metrics import evaluate_case
from MedDINOv3Core.volume_io import write_segmentation, write_volume
from training.cli import main

SHAPE, SPACING = (16, 64, 64), (5.0, 5.0, 14.0)


def _labels(seed: int, deformation_mm: float = 6.0) -> Volume:
    return make_phantom(SHAPE, spacing=SPACING, seed=seed, noise_sigma=0.0, deformation_mm=deformation_mm).labels


@pytest.fixture
def dataset(tmp_path):
    """Three cases: references as .nii.gz, predictions (the same anatomy, deformed more) as .nrrd, .mha, .seg.nrrd."""
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    cases = {}
    table = make_phantom((4, 8, 8)).label_table
    for case, seed, suffix in (("case_a", 0, ".nrrd"), ("case_b", 1, ".mha"), ("case_c", 2, ".seg.nrrd")):
        gt, pred = _labels(seed), _labels(seed, deformation_mm=10.0)
        write_volume(gt, gt_dir / f"{case}.nii.gz")
        if suffix == ".seg.nrrd":
            write_segmentation(pred, pred_dir / f"{case}{suffix}", table)
        else:
            write_volume(pred, pred_dir / f"{case}{suffix}")
        cases[case] = (pred.array, gt.array)
    labels_file = tmp_path / "labels.json"
    labels_file.write_text(json.dumps({"labels": table}))
    return {
        "gt": gt_dir,
        "pred": pred_dir,
        "labels": labels_file,
        "table": table,
        "cases": cases,
        "out": tmp_path / "out",
    }


def _run(ds, *extra: str) -> int:
    """evaluate into ds["out"]; a test that evaluates again replaces its report, as a user does with --overwrite."""
    args = ["evaluate", "--pred", str(ds["pred"]), "--gt", str(ds["gt"]), "--out", str(ds["out"]), "--progress", "none"]
    return main([*args, *extra, *(["--overwrite"] if ds["out"].exists() else [])])


def _rows(ds) -> list[dict[str, str]]:
    with open(ds["out"] / "per_case.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_scores_match_the_library_and_summary_has_table_2_shape(dataset, capsys):
    assert (
        _run(
            dataset,
            "--labels",
            str(dataset["labels"]),
            "--tolerance",
            "3",
            "--tolerance",
            "liver=6",
            "--tolerance",
            "5=2.5",
            "--name",
            "tiny model",
        )
        == 0
    )
    rows = _rows(dataset)
    assert len(rows) == 3 * 7
    assert {r["case"] for r in rows} == {"case_a", "case_b", "case_c"}
    tolerances = {1: 6.0, 2: 3.0, 3: 3.0, 4: 3.0, 5: 2.5, 6: 3.0, 7: 3.0}
    for case, (pred, gt) in dataset["cases"].items():
        expected = {s.label: s for s in evaluate_case(pred, gt, SPACING, tolerances, range(1, 8))}
        for row in (r for r in rows if r["case"] == case):
            s = expected[int(row["label"])]
            assert float(row["dice"]) == pytest.approx(s.dice, abs=1e-6)
            assert float(row["nsd"]) == pytest.approx(s.nsd, abs=1e-6)
            assert float(row["tolerance_mm"]) == tolerances[s.label]
            assert float(row["gt_volume_ml"]) == pytest.approx(s.gt_volume_mm3 / 1000, abs=1e-3)
    assert rows[0]["name"] == "liver"

    summary = json.loads((dataset["out"] / "summary.json").read_text(encoding="utf-8"))
    liver = summary["classes"][0]
    dices = [float(r["dice"]) for r in rows if r["label"] == "1"]
    assert liver["name"] == "liver" and liver["n"] == 3 and liver["dice"] == pytest.approx(np.mean(dices), abs=1e-6)
    assert summary["dice"] == pytest.approx(np.mean([c["dice"] for c in summary["classes"]]))

    md = (dataset["out"] / "summary.md").read_text(encoding="utf-8")
    assert "| Method | DSC (%) | NSD (%) |" in md
    assert f"| tiny model | {100 * summary['dice']:.2f} | {100 * summary['nsd']:.2f} |" in md
    assert "| liver | 1 | 3 | 6 |" in md and "| vertebral column | 5 | 3 | 2.5 |" in md
    assert f"| **Mean** | | | | **{100 * summary['dice']:.2f}** |" in md
    assert md in capsys.readouterr().out
    # Atomic writes leave no temporary files behind.
    assert sorted(p.name for p in dataset["out"].iterdir()) == ["per_case.csv", "summary.json", "summary.md"]


def test_perfect_prediction_and_absent_class_convention(dataset):
    for case, (_, gt) in dataset["cases"].items():
        pred = gt.copy()
        write_volume(Volume(pred, SPACING, *_geometry(dataset, case)), next(dataset["pred"].glob(f"{case}.*")))
    # A class no map holds: NaN in the CSV, n = 0 and "n/a" in the summary.
    extra = {"labels": [*dataset["table"], {"value": 9, "name": "tumour", "color": [1, 0, 0]}]}
    dataset["labels"].write_text(json.dumps(extra))
    assert _run(dataset, "--labels", str(dataset["labels"])) == 0
    rows = _rows(dataset)
    assert all(float(r["dice"]) == 1.0 and float(r["nsd"]) == 1.0 for r in rows if r["label"] != "9")
    assert all(math.isnan(float(r["dice"])) and r["nsd"] == "nan" for r in rows if r["label"] == "9")
    md = (dataset["out"] / "summary.md").read_text(encoding="utf-8")
    assert "| tumour | 9 | 0 | 2 | n/a | n/a |" in md
    assert "| **Mean** | | | | **100.00** | **100.00** |" in md


def _geometry(dataset, case):
    from MedDINOv3Core.volume_io import read_volume

    gt = read_volume(dataset["gt"] / f"{case}.nii.gz")
    return gt.origin, gt.direction


def test_labels_inferred_or_from_dataset_json_and_model_card_dir(dataset, tmp_path):
    assert _run(dataset) == 0
    rows = _rows(dataset)
    assert {r["name"] for r in rows} == {f"label {v}" for v in range(1, 8)}

    nnunet = tmp_path / "dataset.json"
    declared = {"background": 0, **{e["name"]: e["value"] for e in dataset["table"]}}
    nnunet.write_text(json.dumps({"labels": declared, "file_ending": ".nii.gz"}))
    assert _run(dataset, "--labels", str(nnunet), "--tolerance", "left lung=4") == 0
    rows = _rows(dataset)
    assert rows[1]["name"] == "spleen" and rows[5]["tolerance_mm"] == "4"

    card_dir = tmp_path / "card"
    card_dir.mkdir()
    (card_dir / "config.json").write_text(json.dumps({"labels": dataset["table"]}))
    assert _run(dataset, "--labels", str(card_dir)) == 0
    assert _rows(dataset)[4]["name"] == "vertebral column"


def test_progress_json_lines(dataset, capsys):
    args = ["evaluate", "--pred", str(dataset["pred"]), "--gt", str(dataset["gt"]), "--out", str(dataset["out"])]
    assert main([*args, "--progress", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {"stage", "done", "total", "message"} <= set(lines[0])
    assert lines[-1]["stage"] == "done" and lines[-1]["path"] == str(dataset["out"])


# ----------------------------------------------------------------------------------------------- bad inputs


def _error(capsys) -> str:
    return capsys.readouterr().err.strip()


def test_geometry_mismatch_is_a_clear_error(dataset, capsys):
    pred, _ = dataset["cases"]["case_b"]
    origin, direction = _geometry(dataset, "case_b")
    write_volume(Volume(pred, (5.0, 5.0, 10.0), origin, direction), dataset["pred"] / "case_b.mha")
    assert _run(dataset) == 1
    err = _error(capsys)
    assert "case 'case_b'" in err and "spacing" in err and "same voxel grid" in err

    write_volume(Volume(pred[:-1], SPACING, origin, direction), dataset["pred"] / "case_b.mha")
    assert _run(dataset) == 1
    assert "shape" in _error(capsys)


def test_missing_prediction_undeclared_labels_and_bad_tolerance(dataset, capsys):
    (dataset["pred"] / "case_a.nrrd").unlink()
    assert _run(dataset) == 1
    err = _error(capsys)
    assert "1 reference case(s) have no prediction" in err and "case_a" in err

    write_volume(_labels(0, deformation_mm=10.0), dataset["pred"] / "case_a.nrrd")
    short = dataset["out"].parent / "short.json"
    short.write_text(json.dumps([{"value": 1, "name": "liver"}]))
    assert _run(dataset, "--labels", str(short)) == 1
    assert "does not declare" in _error(capsys)

    with pytest.raises(SystemExit) as exc:
        _run(dataset, "--labels", str(dataset["labels"]), "--tolerance", "pancreas=3")
    assert exc.value.code == 2
    assert "no class 'pancreas'" in _error(capsys)
    with pytest.raises(SystemExit):
        _run(dataset, "--tolerance", "-1")


def test_empty_or_duplicate_folders(dataset, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--pred", str(dataset["pred"]), "--gt", str(empty), "--out", str(tmp_path / "o")]) == 1
    assert "no label maps" in _error(capsys)
    write_volume(_labels(0), dataset["gt"] / "case_a.nrrd")
    assert _run(dataset) == 1
    assert "two files for case 'case_a'" in _error(capsys)


def test_readme_form_names_classes_from_the_nnunet_dataset_or_a_model_name(dataset, tmp_path, capsys):
    """`evaluate --pred preds/ --gt labelsTs/ --out eval/ --tolerance 2 --tolerance liver=5` (the README's form): the
    class names come from the dataset.json beside labelsTs/; --labels also takes a registry name."""
    root = tmp_path / "Dataset001_Phantom"
    root.mkdir()
    dataset["gt"].rename(root / "labelsTs")
    dataset["gt"] = root / "labelsTs"
    declared = {"background": 0, **{e["name"]: e["value"] for e in dataset["table"]}}
    (root / "dataset.json").write_text(json.dumps({"labels": declared, "file_ending": ".nii.gz"}))
    assert _run(dataset, "--tolerance", "2", "--tolerance", "liver=5") == 0
    rows = _rows(dataset)
    assert rows[0]["name"] == "liver" and rows[0]["tolerance_mm"] == "5" and rows[1]["tolerance_mm"] == "2"
    assert "np." not in capsys.readouterr().out

    assert _run(dataset, "--labels", "meddinov3-phantom-tiny", "--tolerance", "spleen=3") == 0
    assert _rows(dataset)[1]["name"] == "spleen" and _rows(dataset)[1]["tolerance_mm"] == "3"
    assert _run(dataset, "--labels", "no-such-model") == 1
    err = _error(capsys)
    assert "--labels 'no-such-model' is neither a file or folder nor a model name" in err


def test_out_naming_a_file_says_so(dataset, capsys):
    dataset["out"].write_text("not a folder")
    with pytest.raises(SystemExit) as exc:
        _run(dataset)
    assert exc.value.code == 2
    assert f"--out {dataset['out']} is a file; give a folder" in _error(capsys)
