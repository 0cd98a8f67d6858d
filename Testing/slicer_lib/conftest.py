"""The Slicer Lib tests keep feature caches under pytest's temporary folder, never in the user's ~/.cache."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _features_in_tmp(tmp_path_factory):
    try:
        from MedDINOv3SlicerLib import logic
    except ImportError:  # the static tests run without slicer-core too
        yield
        return
    root = tmp_path_factory.mktemp("features")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(logic, "default_features_root", lambda: root)
        yield
