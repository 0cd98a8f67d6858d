"""PNG previews: windowing, colour maps, overlays and an exact PNG round trip."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from MedDINOv3Core import preview


def test_window_maps_the_window_to_0_255():
    out = preview.window(np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0]), center=40, width=400)
    assert out.tolist() == [0, 0, 128, 255, 255]


def test_colormap_endpoints_and_monotone_brightness():
    rgb = preview.colormap(np.linspace(0, 1, 50), 0.0, 1.0)
    assert rgb[0].tolist() == [0, 0, 4] and rgb[-1].tolist() == [252, 255, 164]
    brightness = rgb.astype(float).sum(axis=1)
    assert np.all(np.diff(brightness) > -1e-9)


def test_overlay_labels_colours_only_labelled_pixels():
    gray = np.full((20, 20), 100, dtype=np.uint8)
    labels = np.zeros((20, 20), dtype=np.uint8)
    labels[5:15, 5:15] = 1
    rgb = preview.overlay_labels(gray, labels, {1: (1.0, 0.0, 0.0)}, alpha=0.5)
    assert rgb[0, 0].tolist() == [100, 100, 100]
    assert rgb[10, 10].tolist() == [178, 50, 50]  # interior blended 50 %
    assert rgb[5, 10].tolist() == [255, 0, 0]  # outline fully coloured


def test_heatmap_threshold_and_mark():
    gray = np.zeros((10, 10), dtype=np.uint8)
    values = np.tile(np.linspace(0, 1, 10), (10, 1))
    rgb = preview.overlay_heatmap(gray, values, 0, 1, alpha=1.0, threshold=0.5)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, -1].tolist() == [252, 255, 164]
    marked = preview.mark(rgb, 5, 5, size=2)
    assert marked[5, 3].tolist() == [0, 255, 255] and marked[3, 5].tolist() == [0, 255, 255]


def test_png_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(13, 17, 3), dtype=np.uint8)
    path = preview.write_png(tmp_path / "a.png", rgb)
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.array_equal(back, rgb)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
    with pytest.raises(ValueError, match="needs an"):
        preview.write_png(tmp_path / "b.png", np.zeros((2, 2, 2, 3)))


def test_montage_and_aspect():
    tiles = [np.full((4, 6, 3), i, dtype=np.uint8) for i in range(3)]
    m = preview.montage(tiles, columns=2, pad=1)
    assert m.shape == (2 * 4 + 3, 2 * 6 + 3, 3)
    assert preview.aspect_correct(np.zeros((10, 10, 3), np.uint8), 2.0, 1.0).shape == (20, 10, 3)
    assert preview.aspect_correct(np.zeros((10, 10, 3), np.uint8), 1.0, 2.0).shape == (10, 20, 3)
    assert preview.upscale(np.zeros((2, 3, 3), np.uint8), 3).shape == (6, 9, 3)
