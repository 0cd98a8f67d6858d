"""Slicer's process never imports torch: every action the module runs in process (list models, Segment's result,
features' result, similarity clicks, PCA, opacity/threshold, RT export) goes through the controller in a fresh
interpreter, with the long work in background jobs, and torch must not be in sys.modules afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("slicer")

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys, time
from types import SimpleNamespace
import numpy as np
import slicer
from MedDINOv3Core.data.phantom import make_phantom
from MedDINOv3SlicerLib.controller import ModuleController
from MedDINOv3SlicerLib.geometry import add_volume_node, ijk_to_ras_array
from MedDINOv3SlicerLib.logic import MedDINOv3Logic

scene = slicer.vtkMRMLScene()
slicer.mrmlScene = scene
slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
phantom = make_phantom((8, 96, 96), seed=5)
node = add_volume_node(scene, phantom.ct, "CT")
params = SimpleNamespace(inputVolume=node, segmentation=None, model="meddinov3-phantom-tiny", device="cpu",
                         fineTuneMode="fewshot", fineTuneName="", exportDirectory=sys.argv[1])
errors = []
c = ModuleController(lambda: params, lambda: MedDINOv3Logic(scene, user_dir=sys.argv[2]),
                     show_error=lambda m, d: errors.append(m), ensure_dependencies=lambda action: True)

def run():
    while c.poll():
        time.sleep(0.05)

c.segment(); run()
c.compute_features(); run()
zyx = np.argwhere(phantom.labels.array == 1)[0]
c.point_node.AddControlPoint(*(ijk_to_ras_array(phantom.ct) @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3])
c.show_pca()
c.apply_overlay_settings(0.7, 0.2)
path = c.export()
assert not errors, errors
assert params.segmentation is not None and path is not None and c.logic.similarity_overlay.node is not None
print("torch" in sys.modules)
"""


def test_the_slicer_process_never_imports_torch(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "MedDINOv3Slicer")])}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "export"), str(tmp_path / "user")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
