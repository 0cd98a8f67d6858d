"""Where the project's Resources folder is: the model registry (models.json + schema), the embedded demo model,
the icon and screenshots.

In a checkout (and in the Slicer extension, which ships the folder beside the packages) it is ``Resources/`` next to
``MedDINOv3Core/``. A wheel installs the same files as the package ``MedDINOv3Core.Resources`` (pyproject maps the
folder onto that name), so ``pip install meddinov3`` users get the registry and the demo model too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

CHECKOUT_RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
INSTALLED_PACKAGE = "MedDINOv3Core.Resources"


def resources_dir() -> Path:
    """The Resources folder: the checkout's when it has the registry, else the installed package's.

    Raises:
        FileNotFoundError: neither exists (a partial copy of the library); the message says what to do.
    """
    if (CHECKOUT_RESOURCES / "models.json").is_file():
        return CHECKOUT_RESOURCES
    try:
        spec = importlib.util.find_spec(INSTALLED_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        if (Path(location) / "models.json").is_file():
            return Path(location)
    raise FileNotFoundError(
        f"MedDINOv3 resources (models.json, the demo model) not found in {CHECKOUT_RESOURCES} or as the installed "
        f"package {INSTALLED_PACKAGE}; reinstall MedDINOv3 (pip install meddinov3, or pip install -e . in a full "
        "checkout) or set MEDDINOV3_REGISTRY to a models.json"
    )


def resource_path(*parts: str) -> Path:
    """A path inside the Resources folder (it may not exist; callers check and explain)."""
    return resources_dir().joinpath(*parts)
