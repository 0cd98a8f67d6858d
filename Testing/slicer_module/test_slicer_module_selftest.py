"""The module's in-Slicer self-test (MedDINOv3SlicerTest), run against slicer-core's real MRML scene.

The Slicer application cannot be installed here, and the module file imports qt and ScriptedLoadableModule, which
slicer-core lacks. So:
- the self-test's body, ``MedDINOv3SlicerLib.selftest.segment_explore_export``, runs unchanged on a real scene: the
  embedded demo model segments a phantom in a background ``python -m training predict`` job (liver Dice > 0.8),
  features come from a background explore job, one similarity click and a PCA map update the overlays, and the RT
  Structure Set is written (the core writer: SlicerRT is not in slicer-core);
- the test class itself is taken from the module file's source (ast) and its ``runTest`` executed unchanged on a
  unittest.TestCase that supplies what it uses of ScriptedLoadableModuleTest (``delayDisplay``, recorded here):
  "Reload and Test" calls runTest, which must report missing packages instead of raising unittest.SkipTest
  (Slicer counts that as a failure).
"""

from __future__ import annotations

import ast
import sys
import unittest
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE_FILE = ROOT / "MedDINOv3Slicer" / "MedDINOv3Slicer.py"


class _ScriptedLoadableModuleTestStandIn(unittest.TestCase):
    """What the self-test uses of ScriptedLoadableModuleTest besides unittest: delayDisplay (recorded)."""

    __test__ = False  # a base class, not a test of its own

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[str] = []

    def delayDisplay(self, message: str, msec: int = 0) -> None:  # noqa: N802 (Slicer's name)
        self.messages.append(message)

    def runTest(self) -> None:  # noqa: N802 (unittest's name)
        """Replaced by the module file's own runTest."""


def _module_test_class(slicer):
    """MedDINOv3SlicerTest from the module file, unchanged, on the stand-in base; the module-level helpers it calls
    are the module file's own functions where they run without Qt (the version check needs slicer.app: Slicer 5.12
    is what the application would report)."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "MedDINOv3SlicerTest")
    cls.bases = [ast.Name("_Base", ast.Load())]
    helper = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "_add_bundled_packages_to_path")
    module = ast.fix_missing_locations(ast.Module(body=[helper, cls], type_ignores=[]))
    namespace = {
        "_Base": _ScriptedLoadableModuleTestStandIn,
        "slicer": slicer,
        "sys": sys,
        "Path": Path,
        "__file__": str(MODULE_FILE),
        "slicerVersionProblem": lambda: "",
    }
    exec(compile(module, str(MODULE_FILE), "exec"), namespace)  # the module file's own code, unchanged
    return namespace["MedDINOv3SlicerTest"]


@pytest.mark.slow
def test_module_selftest_runs_on_slicer_core(scene):
    import slicer

    test = _module_test_class(slicer)("runTest")
    test.runTest()  # what "Reload and Test" calls: set-up, then the real computation
    assert test.messages[-1] == "MedDINOv3 test passed", test.messages
    assert any(message.startswith("Liver Dice ") for message in test.messages)


def test_reload_and_test_reports_missing_packages_instead_of_failing(scene, monkeypatch):
    import slicer

    from MedDINOv3SlicerLib import dependencies

    monkeypatch.setattr(dependencies, "unmet", lambda requirements, version_of=None: ["torch>=2.4"])
    test = _module_test_class(slicer)("runTest")
    with pytest.raises(unittest.SkipTest):  # what a plain test runner (ctest, pytest) sees: a skip
        test.test_segment_explore_export()
    test.runTest()  # what Slicer's "Reload and Test" calls: no exception, a message
    assert len(test.messages) == 1 and test.messages[0].startswith("MedDINOv3 test skipped: Python packages missing")
    assert "torch>=2.4" in test.messages[0]


def test_module_file_imports_on_python_3_9():
    """Slicer 5.8 (Python 3.9) must load the module file and show the version message: no syntax and no evaluated
    annotation that needs Python >= 3.10, and the Lib (which may use newer Python) only imported after the check."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"), feature_version=(3, 9))
    evaluated = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            evaluated += [a.annotation for a in node.args.args + node.args.kwonlyargs if a.annotation] + [node.returns]
        elif isinstance(node, ast.AnnAssign):
            evaluated.append(node.annotation)
    pep604 = [ast.unparse(a) for a in evaluated if a is not None and any(isinstance(n, ast.BinOp) for n in ast.walk(a))]
    assert not pep604, f"annotations evaluated at import that Python 3.9 cannot evaluate: {pep604}"
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [getattr(n, "module", None) or n.names[0].name for n in top_imports]
    assert not [name for name in names if name.startswith(("MedDINOv3", "training"))], names
    assert not any(isinstance(n, ast.ImportFrom) and n.module == "__future__" for n in top_imports)
