"""Python packages the module needs in Slicer's Python, per action, checked by version and installed after asking.

- torch comes from the PyTorch extension (``PyTorchUtils.PyTorchUtilsLogic().installTorch``: it picks the CUDA build
  that fits the GPU driver). It is never imported here to check it: importing torch in Slicer's process can lock
  files of a broken install; the installed version is read from the package metadata.
- The other packages come from ``slicer.packaging.pip_ensure`` (Slicer >= 5.12; it raises RuntimeError when the
  user declines) or ``slicer.util.pip_install`` after a confirmation (Slicer 5.10).
- Each action asks only for what it needs: Export with SlicerRT needs nothing, Export with the built-in writer
  needs pydicom and scipy, Segment / Compute features / Fine-tune run the whole ``python -m training`` command.

``unmet`` and ``needs`` are pure (tested anywhere); ``ensure`` drives Slicer's installers (main thread only).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TORCH_REQUIREMENT = "torch>=2.4"
# import name -> pip requirement, the same versions as pyproject.toml (a static test keeps them in step)
PIP_REQUIREMENTS = {
    "huggingface_hub": "huggingface_hub>=2.4",
    "safetensors": "safetensors>=0.4",
    "pydicom": "pydicom>=2.4",
    "slicerio": "slicerio>=1.0",
    "SimpleITK": "SimpleITK>=2.3",
    "yaml": "PyYAML>=6.0",
    "tqdm": "tqdm>=4.60",
    "scipy": "scipy>=1.10",
}
ACTIONS = ("segment", "features", "finetune", "export", "export-slicerrt")
_BUILTIN_RTSTRUCT_WRITER = ("pydicom", "scipy")


def needs(action: str) -> tuple[bool, list[str]]:
    """(needs torch, pip requirements) of one action ("segment", "features", "finetune", "export",
    "export-slicerrt")."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {ACTIONS}")
    if action == "export-slicerrt":
        return False, []
    if action == "export":
        return False, [PIP_REQUIREMENTS[name] for name in _BUILTIN_RTSTRUCT_WRITER]
    return True, list(PIP_REQUIREMENTS.values())


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet(requirements: Iterable[str], version_of: Callable[[str], str | None] = _installed_version) -> list[str]:
    """The requirements that are not installed or whose installed version is outside the specifier.

    Versions come from package metadata (``version_of(distribution name)``); nothing is imported.
    """
    from packaging.requirements import Requirement

    out = []
    for text in requirements:
        requirement = Requirement(text)
        version = version_of(requirement.name)
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            out.append(text)
    return out


def describe(requirements: Iterable[str], version_of: Callable[[str], str | None] = _installed_version) -> str:
    """One line a requirement: "pydicom>=2.4 (installed: 2.3.1)" or "(not installed)"."""
    from packaging.requirements import Requirement

    lines = []
    for text in requirements:
        version = version_of(Requirement(text).name)
        lines.append(f"{text} ({'installed: ' + version if version else 'not installed'})")
    return "\n".join(lines)


@dataclass
class Installers:
    """How packages get installed: Slicer's installers (``from_slicer``), or any callables with their contracts.

    pip_ensure: ``slicer.packaging.pip_ensure(requirements, requester=)`` (Slicer >= 5.12; raises RuntimeError
        "User declined package installation" when the user says no), None on Slicer 5.10.
    confirm: ``(question) -> bool`` (``slicer.util.confirmOkCancelDisplay``), used with ``pip_install``.
    pip_install: ``(requirements as one string) -> None`` (``slicer.util.pip_install``).
    install_torch: ``(version specifier) -> torch module or None when declined`` (the PyTorch extension's
        ``installTorch(askConfirmation=True, torchVersionRequirement=...)``).
    """

    pip_ensure: Callable[..., Any] | None
    confirm: Callable[[str], bool]
    pip_install: Callable[[str], None]
    install_torch: Callable[[str], Any]

    @classmethod
    def from_slicer(cls) -> Installers:
        import slicer

        try:
            pip_ensure = importlib.import_module("slicer.packaging").pip_ensure
        except (ImportError, AttributeError):  # Slicer 5.10
            pip_ensure = None

        def install_torch(specifier: str):
            try:
                import PyTorchUtils
            except ImportError as exc:
                raise RuntimeError(
                    "MedDINOv3 needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, restart "
                    "Slicer and try again."
                ) from exc
            logic = PyTorchUtils.PyTorchUtilsLogic()
            return logic.installTorch(askConfirmation=True, torchVersionRequirement=specifier)

        return cls(
            pip_ensure=pip_ensure,
            confirm=lambda question: slicer.util.confirmOkCancelDisplay(
                question, windowTitle="Install Python packages"
            ),
            pip_install=slicer.util.pip_install,
            install_torch=install_torch,
        )


def ensure(
    action: str,
    installers: Installers | None = None,
    version_of: Callable[[str], str | None] = _installed_version,
) -> bool:
    """Install what ``action`` needs into Slicer's Python after asking; False when the user declined.

    Args:
        action: see ``needs``.
        installers: default ``Installers.from_slicer()`` (only built when something is missing).
        version_of: installed version of a distribution (package metadata; nothing is imported).

    Raises:
        RuntimeError: with what to do, when something cannot be installed (PyTorch extension missing, pip failed,
            still unmet afterwards).
    """
    needs_torch, requirements = needs(action)
    torch_missing = needs_torch and unmet([TORCH_REQUIREMENT], version_of)
    missing = unmet(requirements, version_of)
    if not torch_missing and not missing:
        return True
    installers = installers or Installers.from_slicer()
    if torch_missing:
        if installers.install_torch(TORCH_REQUIREMENT[len("torch") :]) is None:
            log.info("MedDINOv3: the user declined installing PyTorch")
            return False
        importlib.invalidate_caches()
        if unmet([TORCH_REQUIREMENT], version_of):
            raise RuntimeError(
                f"PyTorch {version_of('torch') or '(none)'} is installed, but MedDINOv3 needs {TORCH_REQUIREMENT}: "
                "open the PyTorch Utils module, uninstall PyTorch, restart Slicer and press the button again."
            )
    if not missing:
        return True
    if installers.pip_ensure is not None:  # Slicer >= 5.12
        try:
            installers.pip_ensure(missing, requester="MedDINOv3")
        except RuntimeError as exc:
            if "declined" not in str(exc).lower():
                raise
            log.info("MedDINOv3: the user declined installing %s", missing)
            return False
    else:  # Slicer 5.10
        question = (
            "MedDINOv3 needs these Python packages, which will be installed into Slicer's Python now:\n\n"
            + describe(missing, version_of)
        )
        if not installers.confirm(question):
            return False
        installers.pip_install(" ".join(missing))
    importlib.invalidate_caches()
    still = unmet(missing, version_of)
    if still:
        raise RuntimeError(
            f"Could not install {', '.join(still)}; install them from Slicer's Python console with "
            f"slicer.util.pip_install({' '.join(still)!r}) and restart Slicer."
        )
    return True


__all__ = ["Installers", "PIP_REQUIREMENTS", "TORCH_REQUIREMENT", "describe", "ensure", "needs", "unmet"]
