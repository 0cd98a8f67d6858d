"""Fixtures for the Slicer logic tests: a REAL MRML scene from slicer-core (CPython 3.11 x86_64 only)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "MedDINOv3Slicer") not in sys.path:
    sys.path.insert(0, str(ROOT / "MedDINOv3Slicer"))


@pytest.fixture
def scene():
    """A fresh vtkMRMLScene, also set as ``slicer.mrmlScene`` (some slicer.util helpers need it), restored after."""
    slicer = pytest.importorskip("slicer")
    previous = getattr(slicer, "mrmlScene", None)
    s = slicer.vtkMRMLScene()
    slicer.mrmlScene = s
    # as in the application, the subject hierarchy node exists from the start
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(s)
    yield s
    s.Clear(1)
    slicer.mrmlScene = previous
