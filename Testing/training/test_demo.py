"""The offline demo end to end on a smaller phantom: every output file exists and holds what it should."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

from MedDINOv3Core.card import load_model_card
from MedDINOv3Core.dicom import read_rtstruct_labelmap, read_series
from MedDINOv3Core.volume_io import read_volume
from training.cli import main
from training.demo import default_model

DSC_MARGIN = 0.08  # a smaller, coarser phantom than the card's validation case


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert (
        main(["demo", "--out", str(out), "--shape", "24", "128", "128", "--device", "cpu", "--progress", "none"]) == 0
    )
    return out


def test_demo_summary_and_scores(demo_out):
    summary = json.loads((demo_out / "summary.json").read_text(encoding="utf-8"))
    card = load_model_card(default_model())
    recorded = card.provenance["history"]["val_dsc"]
    assert summary["reference_dice"] == pytest.approx(recorded)
    assert summary["mean_dice"] >= recorded - DSC_MARGIN, summary["dice"]
    assert set(summary["dice"]) == {label["name"] for label in card.labels}
    assert summary["click"]["organ"] == "liver"
    sim = summary["similarity"]
    assert sim["inside_organ"] > sim["rest_of_body"] + 0.2
    text = (demo_out / "summary.md").read_text(encoding="utf-8")
    assert "![overview](overview.png)" in text and f"{summary['mean_dice']:.3f}" in text


def test_demo_volumes_keep_the_ct_geometry(demo_out):
    ct = read_volume(demo_out / "ct.nii.gz")
    for name in ("truth", "segmentation", "similarity"):
        vol = read_volume(demo_out / f"{name}.nii.gz")
        assert vol.same_geometry(ct, tol=1e-5), name
    seg, truth = read_volume(demo_out / "segmentation.nii.gz"), read_volume(demo_out / "truth.nii.gz")
    assert seg.array.dtype == np.uint8 and set(np.unique(seg.array)) <= set(range(8))
    sim = read_volume(demo_out / "similarity.nii.gz").array
    z, y, x = json.loads((demo_out / "summary.json").read_text(encoding="utf-8"))["click"]["zyx"]
    assert sim.max() <= 1.0 + 1e-3 and sim[z, y, x] > 0.9  # the clicked patch is most similar to itself
    assert truth.array[z, y, x] == 1  # the click is in the liver


def test_demo_rtstruct_is_valid_and_matches_the_segmentation(demo_out):
    rt = demo_out / "dicom" / "RTSTRUCT.dcm"
    series = read_series(demo_out / "dicom" / "CT")
    labelmap, rois = read_rtstruct_labelmap(rt, series)
    seg = read_volume(demo_out / "segmentation.nii.gz")
    assert {r.name for r in rois} <= {label["name"] for label in load_model_card(default_model()).labels}
    for roi in rois:
        assert np.array_equal(labelmap.array == roi.value, seg.array == roi.value), roi.name
    if shutil.which("dciodvfy"):
        proc = subprocess.run(["dciodvfy", str(rt)], capture_output=True, text=True)
        assert not [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]
        assert (
            json.loads((demo_out / "summary.json").read_text(encoding="utf-8"))["rtstruct_validation"]
            == "dciodvfy: no errors"
        )


def test_demo_previews_are_real_images(demo_out):
    for name in ("slice", "segmentation", "pca", "similarity", "truth", "overview"):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_out / f"{name}.png")))
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, name
        assert image.std() > 10, f"{name}.png is nearly uniform"
    seg_png = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_out / "segmentation.png"))).astype(int)
    slice_png = sitk.GetArrayFromImage(sitk.ReadImage(str(demo_out / "slice.png"))).astype(int)
    assert np.abs(seg_png - slice_png).sum(axis=2).astype(bool).mean() > 0.05  # organs are coloured in


def test_demo_bad_inputs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "a"), "--input", str(tmp_path / "missing.nii.gz")]) == 1
    assert "missing.nii.gz" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "b"), "--shape", "4", "64", "64"])
    assert exc.value.code == 2
    assert main(["demo", "--out", str(tmp_path / "c"), "--model", str(tmp_path / "nowhere")]) == 1


def test_demo_on_data_the_model_does_not_know_warns_and_names_no_organ(tmp_path, caplog):
    """The embedded model was trained on phantoms: on another CT the demo says so (log, summary.md, summary.json),
    and the click is the body centre, not an organ the model would claim to see there."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from data_fetch import write_synthetic_ct

    ct = next(write_synthetic_ct(tmp_path / "ct", n_volumes=1, shape=(6, 64, 64)).glob("*.nii.gz"))
    out = tmp_path / "demo"
    with caplog.at_level("WARNING"):
        assert main(["demo", "--out", str(out), "--input", str(ct), "--device", "cpu", "--progress", "none"]) == 0
    assert any("trained on synthetic CT phantoms only" in r.getMessage() for r in caplog.records)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["warnings"]) == 1 and "trained on synthetic CT phantoms only" in summary["warnings"][0]
    assert (
        summary["click"]["where"] == "body centre" and summary["click"]["organ"] is None and not summary["similarity"]
    )
    text = (out / "summary.md").read_text(encoding="utf-8")
    assert "**Warning:**" in text and "liver" not in text.split("## Files")[0].split("Model:")[0]
