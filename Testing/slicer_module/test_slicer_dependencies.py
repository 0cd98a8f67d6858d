"""MedDINOv3SlicerLib.dependencies: what each action needs, checked by version (never by importing), and the
install conversation: declining anywhere returns False with nothing installed, an old torch is refused, and what is
still missing after an install is reported with what to do.

Slicer's installers are passed in as plain callables with the documented contracts (Slicer's
``slicer.packaging.pip_ensure`` raises RuntimeError("User declined package installation"); the PyTorch extension's
``installTorch`` returns None when declined); each test records how they were called.
"""

from __future__ import annotations

import pytest

from MedDINOv3SlicerLib.dependencies import (
    PIP_REQUIREMENTS,
    TORCH_REQUIREMENT,
    Installers,
    describe,
    ensure,
    needs,
    unmet,
)

ALL_INSTALLED = {"torch": "2.13.0", "huggingface-hub": "2.5.0", "huggingface_hub": "2.5.0", "safetensors": "0.6.2",
                 "pydicom": "2.4.4", "slicerio": "1.1.0", "SimpleITK": "2.5.0", "PyYAML": "6.0.2", "tqdm": "4.67.1",
                 "scipy": "1.14.1"}  # fmt: skip


class Calls:
    """Installers whose behaviour each test sets, recording their calls; ``installed`` is what metadata reports."""

    def __init__(self, installed: dict[str, str], decline_pip=False, decline_torch=False, slicer_512=True) -> None:
        self.installed = dict(installed)
        self.log: list[tuple] = []
        self.decline_pip, self.decline_torch, self.slicer_512 = decline_pip, decline_torch, slicer_512

    def version_of(self, name: str) -> str | None:
        return self.installed.get(name)

    def installers(self) -> Installers:
        def pip_ensure(requirements, requester=None):
            self.log.append(("pip_ensure", tuple(requirements), requester))
            if self.decline_pip:
                raise RuntimeError("User declined package installation")
            self._install(requirements)

        def confirm(question):
            self.log.append(("confirm", question))
            return not self.decline_pip

        def pip_install(text):
            self.log.append(("pip_install", text))
            self._install(text.split())

        def install_torch(specifier):
            self.log.append(("install_torch", specifier))
            if self.decline_torch:
                return None
            self.installed["torch"] = "2.13.0"
            return object()

        return Installers(pip_ensure if self.slicer_512 else None, confirm, pip_install, install_torch)

    def _install(self, requirements) -> None:
        from packaging.requirements import Requirement

        for text in requirements:
            self.installed[Requirement(text).name] = "99.0"


def test_each_action_asks_only_for_what_it_needs():
    assert needs("export-slicerrt") == (False, [])
    assert needs("export") == (False, [PIP_REQUIREMENTS["pydicom"], PIP_REQUIREMENTS["scipy"]])
    for action in ("segment", "features", "finetune"):
        assert needs(action) == (True, list(PIP_REQUIREMENTS.values()))
    with pytest.raises(ValueError, match="unknown action"):
        needs("paint")


def test_versions_are_checked_not_only_presence():
    versions = {"pydicom": "2.3.1", "scipy": "1.14.1", "torch": "2.5.0rc1"}.get
    assert unmet(["pydicom>=2.4", "scipy>=1.10", "tqdm>=4.60"], versions) == ["pydicom>=2.4", "tqdm>=4.60"]
    assert unmet([TORCH_REQUIREMENT], versions) == []  # a release candidate of an allowed version is fine
    assert describe(["pydicom>=2.4", "tqdm>=4.60"], versions) == (
        "pydicom>=2.4 (installed: 2.3.1)\ntqdm>=4.60 (not installed)"
    )


def test_nothing_is_asked_when_everything_is_installed():
    calls = Calls(ALL_INSTALLED)
    assert ensure("segment", calls.installers(), calls.version_of) and calls.log == []


def test_export_needs_no_torch():
    calls = Calls({"pydicom": "2.4.4", "scipy": "1.14.1"})
    assert ensure("export", calls.installers(), calls.version_of) and calls.log == []
    assert ensure("export-slicerrt", calls.installers(), Calls({}).version_of)


def test_declining_pip_ensure_on_slicer_5_12_returns_false():
    calls = Calls({**ALL_INSTALLED, "pydicom": "2.3.0"}, decline_pip=True)
    assert ensure("export", calls.installers(), calls.version_of) is False
    assert calls.log == [("pip_ensure", ("pydicom>=2.4",), "MedDINOv3")]


def test_a_pip_ensure_failure_that_is_not_a_decline_is_raised():
    calls = Calls({})
    installers = calls.installers()

    def broken(requirements, requester=None):
        raise RuntimeError("pip exited with status 1")

    installers.pip_ensure = broken
    with pytest.raises(RuntimeError, match="pip exited"):
        ensure("export", installers, calls.version_of)


def test_slicer_5_10_asks_then_installs_with_pip_install():
    calls = Calls({"pydicom": "2.3.0"}, slicer_512=False)
    assert ensure("export", calls.installers(), calls.version_of)
    assert [entry[0] for entry in calls.log] == ["confirm", "pip_install"]
    assert "pydicom>=2.4 (installed: 2.3.0)" in calls.log[0][1] and calls.log[1][1] == "pydicom>=2.4 scipy>=1.10"
    declined = Calls({}, slicer_512=False, decline_pip=True)
    assert ensure("export", declined.installers(), declined.version_of) is False
    assert [entry[0] for entry in declined.log] == ["confirm"]


def test_torch_comes_from_the_pytorch_extension_with_the_version_requirement():
    calls = Calls({k: v for k, v in ALL_INSTALLED.items() if k != "torch"})
    assert ensure("segment", calls.installers(), calls.version_of)
    assert calls.log == [("install_torch", ">=2.4")]
    declined = Calls({}, decline_torch=True)
    assert ensure("features", declined.installers(), declined.version_of) is False
    assert declined.log == [("install_torch", ">=2.4")]  # nothing else is asked after a no


def test_an_old_torch_is_refused_with_what_to_do():
    calls = Calls({**ALL_INSTALLED, "torch": "2.1.0"})
    installers = calls.installers()
    installers.install_torch = lambda specifier: object()  # ltt kept the old version
    with pytest.raises(RuntimeError, match=r"PyTorch 2\.1\.0 is installed, but MedDINOv3 needs torch>=2\.4"):
        ensure("segment", installers, calls.version_of)


def test_still_missing_after_install_says_what_to_do():
    calls = Calls({})
    installers = calls.installers()
    installers.pip_ensure = lambda requirements, requester=None: None  # installed nothing
    with pytest.raises(RuntimeError, match=r"Could not install pydicom>=2\.4, scipy>=1\.10; .*pip_install"):
        ensure("export", installers, calls.version_of)
