"""`python -m training explore`: outputs with the input's geometry, previews, cache reuse, usage errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MedDINOv3Core.card import ModelCard
from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.models.vit import VisionTransformer, vit_config
from MedDINOv3Core.volume_io import read_volume, write_volume
from MedDINOv3Core.weights import save_model_card
from training.cli import main

OBLIQUE = (0.0, -1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("explore_cli")
    torch.manual_seed(0)
    model = VisionTransformer(vit_config("vit_tiny", depth=2))
    for name, p in model.named_parameters():
        if name.endswith(".gamma"):
            p.data.fill_(1.0)
    card = ModelCard("backbone", model.config, name="tiny", preprocessing=PreprocessConfig().to_dict())
    save_model_card(root / "model", card, model)
    ct = make_phantom((5, 48, 40), spacing=(5.0, 6.0, 8.0), seed=2, direction=OBLIQUE).ct
    write_volume(ct, root / "ct.nrrd")
    return root, ct


def test_maps_region_and_preview_keep_the_input_geometry(files, capsys):
    root, ct = files
    point = ct.index_to_physical((20, 24, 2)) * np.array([-1, -1, 1])  # RAS
    args = ["explore", "--model", str(root / "model"), "--input", str(root / "ct.nrrd"), "--progress", "none"]
    args += ["--cache-dir", str(root / "cache"), "--similarity-at", ",".join(f"{v:.4f}" for v in point)]
    args += ["--out", str(root / "sim.nrrd"), "--pca", str(root / "pca.nrrd"), "--png", str(root / "view.png")]
    args += ["--region", str(root / "region.nrrd"), "--threshold", "0.5"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().endswith("cache")
    sim = read_volume(root / "sim.nrrd")
    assert sim.same_geometry(ct) and sim.array.dtype == np.float32
    assert sim.array[2, 24, 20] > 0.5
    region = read_volume(root / "region.nrrd")
    assert region.same_geometry(ct) and region.array[2, 24, 20] == 1
    assert set(np.unique(region.array)) <= {0, 1}
    pca = sitk.ReadImage(str(root / "pca.nrrd"))
    assert pca.GetNumberOfComponentsPerPixel() == 3 and pca.GetPixelID() == sitk.sitkVectorUInt8
    assert sitk.GetArrayFromImage(pca).shape == (*ct.shape, 3)
    assert pca.GetSpacing() == ct.spacing and pca.GetOrigin() == ct.origin and pca.GetDirection() == ct.direction
    png = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "view.png")))
    assert png.ndim == 3 and png.shape[-1] == 3 and png.std() > 0
    assert not [p.name for p in root.iterdir() if ".tmp-" in p.name]


def test_cache_only_run_prints_json_and_reuses_the_cache(files, capsys):
    root, _ = files
    args = ["explore", "--model", str(root / "model"), "--input", str(root / "ct.nrrd"), "--progress", "json"]
    args += ["--cache-dir", str(root / "cache2")]
    assert main(args) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1] == {"stage": "done", "cache": str((root / "cache2").resolve())}
    assert any(line.get("stage") == "features" and line["done"] == line["total"] for line in lines)
    mtime = (root / "cache2" / "features.npy").stat().st_mtime_ns
    assert main(args) == 0
    assert (root / "cache2" / "features.npy").stat().st_mtime_ns == mtime
    assert any(json.loads(x).get("message") == "cached" for x in capsys.readouterr().out.splitlines())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--out", "x.nrrd"], "need at least one --similarity-at"),
        (["--similarity-at", "1,2"], "three comma-separated numbers"),
        (["--similarity-at", "1,2,3", "--region", "r.nrrd"], "needs --threshold"),
        (["--pca", "pca.png"], "unsupported suffix"),
        (["--layers", "a,b"], "--layers"),
    ],
)
def test_bad_usage_exits_2(files, extra, message, capsys):
    root, _ = files
    with pytest.raises(SystemExit) as exc:
        main(["explore", "--model", str(root / "model"), "--input", str(root / "ct.nrrd"), *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_point_outside_the_volume_fails_with_one_line(files, capsys):
    root, _ = files
    args = ["explore", "--model", str(root / "model"), "--input", str(root / "ct.nrrd"), "--progress", "none"]
    args += ["--cache-dir", str(root / "cache"), "--similarity-at", "0,0,999", "--space", "ijk", "--out", "s.nrrd"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "outside the volume" in err and "Traceback" not in err
