"""`python -m training cache list|clean` on real caches made by `python -m training explore`."""

from __future__ import annotations

import os
import time

import pytest
import torch

from MedDINOv3Core.card import ModelCard
from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3Core.data.preprocess import PreprocessConfig
from MedDINOv3Core.models.vit import VisionTransformer, vit_config
from MedDINOv3Core.volume_io import write_volume
from MedDINOv3Core.weights import save_model_card
from training.cli import main


@pytest.fixture
def caches(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer(vit_config("vit_tiny", depth=2))
    save_model_card(
        tmp_path / "model",
        ModelCard("backbone", model.config, name="tiny", preprocessing=PreprocessConfig().to_dict()),
        model,
    )
    root = tmp_path / "caches"
    for i in range(2):
        write_volume(make_phantom((4, 32, 32), spacing=(5.0, 6.0, 8.0), seed=i).ct, tmp_path / f"ct{i}.nrrd")
        args = ["explore", "--model", str(tmp_path / "model"), "--input", str(tmp_path / f"ct{i}.nrrd")]
        assert main([*args, "--cache-dir", str(root / f"c{i}"), "--progress", "none"]) == 0
    (root / "notes").mkdir()
    (root / "notes" / "header.json").write_text('{"format": "something else"}')
    (root / "keep.txt").write_text("mine")
    return root


def test_list_and_clean_older_than(caches, capsys):
    capsys.readouterr()
    old = time.time() - 10 * 86400
    os.utime(caches / "c0" / "header.json", (old, old))
    assert main(["cache", "list", "--cache-dir", str(caches)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["MODEL", "VOLUME", "SIZE", "DATE", "PATH"]
    assert lines[1].startswith("tiny") and "4x32x32" in lines[1] and lines[1].endswith(str(caches / "c0"))
    assert lines[2].endswith(str(caches / "c1")) and " KB" in lines[2]
    assert lines[-1].startswith("2 feature caches,") and str(caches) in lines[-1]

    assert main(["cache", "clean", "--cache-dir", str(caches), "--older-than", "5", "--dry-run"]) == 0
    assert "would remove " + str(caches / "c0") in capsys.readouterr().out and (caches / "c0").is_dir()
    assert main(["cache", "clean", "--cache-dir", str(caches), "--older-than", "5"]) == 0
    out = capsys.readouterr().out
    assert f"removed {caches / 'c0'} (tiny, 4x32x32" in out and "removed 1 feature cache, freed" in out
    assert "1 left" in out
    assert sorted(p.name for p in caches.iterdir()) == ["c1", "keep.txt", "notes"]

    assert main(["cache", "clean", "--cache-dir", str(caches), "--all"]) == 0
    assert "removed 1 feature cache" in capsys.readouterr().out
    assert sorted(p.name for p in caches.iterdir()) == ["keep.txt", "notes"]  # nothing else is touched
    assert main(["cache", "list", "--cache-dir", str(caches)]) == 0
    assert capsys.readouterr().out.startswith("no feature caches in")


def test_default_root_a_cache_dir_itself_and_foreign_files(caches, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert main(["cache", "list"]) == 0
    assert (
        "no feature caches in " + str(tmp_path / "home" / ".cache" / "meddinov3" / "features")
        in capsys.readouterr().out
    )
    (caches / "c1" / "my.txt").write_text("not cache data")
    assert main(["cache", "list", "--cache-dir", str(caches / "c1")]) == 0
    assert "(also holds other files)" in capsys.readouterr().out
    assert main(["cache", "clean", "--all", "--cache-dir", str(caches / "c1")]) == 1
    assert "left alone" in capsys.readouterr().out and (caches / "c1" / "my.txt").is_file()
    with pytest.raises(SystemExit) as exc:
        main(["cache", "clean", "--cache-dir", str(caches)])
    assert exc.value.code == 2 and "--older-than DAYS or --all" in capsys.readouterr().err
