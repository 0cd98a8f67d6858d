"""Runs the module's in-Slicer self-test (MedDINOv3SlicerTest) against slicer-core's real MRML scene.

The Slicer application cannot be installed here, and the module file imports qt and ScriptedLoadableModule, which
slicer-core lacks. So the self-test's methods are taken from the module file's source (ast) and executed unchanged on
a unittest.TestCase that supplies the one ScriptedLoadableModuleTest method they use (``delayDisplay``, here a log
line), with the real ``slicer`` (slicer-core), ``vtk`` and the module's own constants. The computation is the real
one: the embedded demo model segments a phantom in a background ``python -m training predict`` job (liver Dice >
0.8), features are extracted by a background explore job, one similarity click and a PCA map update the overlays, and
the RT Structure Set is written (the core writer: SlicerRT is not in slicer-core).
"""

from __future__ import annotations

import ast
import importlib.util
import logging
import sys
import tempfile
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MedDINOv3Slicer" / "MedDINOv3Slicer.py"
CONSTANTS = ("DEFAULT_MODEL", "PIP_REQUIREMENTS")


class _ScriptedLoadableModuleTestStandIn(unittest.TestCase):
    """What the self-test uses of ScriptedLoadableModuleTest besides unittest: delayDisplay (a message)."""

    __test__ = False  # a base class, not a test of its own

    def delayDisplay(self, message: str, msec: int = 0) -> None:  # noqa: N802 (Slicer's name)
        logging.getLogger("MedDINOv3SlicerTest").info(message)

    def runTest(self) -> None:  # noqa: N802 (unittest's name)
        """Not used: the test below calls the self-test's own methods."""


def _selftest_class(slicer, vtk):
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedDINOv3SlicerTest")
    cls.bases = [ast.Name("_Base", ast.Load())]
    constants = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id in CONSTANTS for t in n.targets)
    ]
    module = ast.fix_missing_locations(ast.Module(body=[*constants, cls], type_ignores=[]))
    from MedDINOv3SlicerLib.logic import MedDINOv3Logic

    namespace = {
        "_Base": _ScriptedLoadableModuleTestStandIn,
        "importlib": importlib,
        "slicer": slicer,
        "vtk": vtk,
        "tempfile": tempfile,
        "Path": Path,
        "MedDINOv3Logic": MedDINOv3Logic,
    }
    exec(compile(module, str(MODULE_FILE), "exec"), namespace)  # the module file's own code, unchanged
    return namespace["MedDINOv3SlicerTest"]


@pytest.mark.slow
def test_module_selftest_runs_on_slicer_core():
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip("slicer-core is not installed (CPython 3.11 x86_64 only)")
    import vtk

    module_dir = str(ROOT / "MedDINOv3Slicer")
    if module_dir not in sys.path:
        sys.path.insert(0, module_dir)
    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    try:
        test = _selftest_class(slicer, vtk)("runTest")
        test.setUp()
        slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)  # as in the application after Clear()
        test.test_segment_explore_export()
    finally:
        scene.Clear(1)
        slicer.mrmlScene = previous
