"""The Slicer ExtensionsIndex entry ``Resources/ExtensionsIndex/MedDINOv3.json``: valid JSON, valid per the extension
catalog entry schema, and in agreement with the top-level CMakeLists.txt (the file that is submitted to
https://github.com/Slicer/ExtensionsIndex as ``MedDINOv3.json`` when the extension is published).

The schema's rules are recorded below as facts (no copy of the schema file): Slicer/Slicer
``Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json`` (identical at tags v5.10.0 and v5.12.3), a draft-07
JSON schema. ``check_entry`` applies exactly those rules; ``jsonschema`` is not needed for this small a schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "Resources" / "ExtensionsIndex" / "MedDINOv3.json"

SCHEMA_URL = (
    "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
)
# Facts of schema v1.0.1: "required", "additionalProperties": false, and each property's type and constraints.
REQUIRED = ("$schema", "category", "scm_url")
PROPERTIES = {
    "$schema": {"type": str},
    "category": {"type": str},
    "scm_url": {"type": str},
    "scm_revision": {"type": str},
    "scm_type": {"type": str, "enum": ("git", "local")},
    "build_dependencies": {"type": list, "items": str},
    "build_subdirectory": {"type": str},
    "enabled": {"type": bool},
    "tier": {"type": int, "minimum": 1, "maximum": 5},
}


def check_entry(entry) -> list[str]:
    """What in ``entry`` breaks the catalog entry schema v1.0.1 (empty when nothing does)."""
    if not isinstance(entry, dict):
        return ["the entry must be a JSON object"]
    problems = [f"required property {name!r} is missing" for name in REQUIRED if name not in entry]
    for name, value in entry.items():
        rule = PROPERTIES.get(name)
        if rule is None:
            problems.append(f"property {name!r} is not allowed (additionalProperties: false)")
            continue
        kind = rule["type"]
        # JSON booleans are not integers, and integers are not booleans
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"{name!r} must be a {kind.__name__}, got {value!r}")
            continue
        if "enum" in rule and value not in rule["enum"]:
            problems.append(f"{name!r} must be one of {rule['enum']}, got {value!r}")
        if "items" in rule and not all(isinstance(item, rule["items"]) for item in value):
            problems.append(f"{name!r} items must be {rule['items'].__name__}s")
        if "minimum" in rule and value < rule["minimum"]:
            problems.append(f"{name!r} must be >= {rule['minimum']}")
        if "maximum" in rule and value > rule["maximum"]:
            problems.append(f"{name!r} must be <= {rule['maximum']}")
    return problems


def _entry() -> dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def _top_cmake() -> str:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    return " ".join(line.split("#", 1)[0] for line in text.splitlines())


def _cmake_setting(name: str) -> str:
    match = re.search(rf'\bset\(\s*{name}\s+"([^"]*)"\s*\)', _top_cmake())
    assert match, f"top-level CMakeLists.txt does not set {name}"
    return match.group(1)


def test_entry_is_json_following_the_catalog_schema():
    entry = _entry()
    assert check_entry(entry) == []
    assert entry["$schema"] == SCHEMA_URL


def test_entry_is_named_after_the_extension():
    project = re.search(r"\bproject\(\s*(\w+)", _top_cmake()).group(1)
    assert ENTRY.name == f"{project}.json"


def test_entry_agrees_with_the_top_level_cmake():
    entry = _entry()
    assert entry["category"] == _cmake_setting("EXTENSION_CATEGORY")
    depends = [d for d in _cmake_setting("EXTENSION_DEPENDS").split() if d != "NA"]
    # the extensions build system builds (and the Extensions Manager installs) these first
    assert sorted(entry.get("build_dependencies", [])) == sorted(depends)
    homepage = _cmake_setting("EXTENSION_HOMEPAGE")
    assert entry["scm_url"] in (homepage, homepage + ".git")
    assert entry["scm_url"].startswith("https://github.com/") and entry["scm_url"].endswith("/SlicerMedDINOv3.git")
    assert entry.get("scm_type", "git") == "git"
    assert entry.get("build_subdirectory", ".") == "."  # not a superbuild extension
    assert entry.get("scm_revision"), "pin a branch, tag or commit"


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"category": "Segmentation", "scm_url": "u"}, "'$schema' is missing"),
        ({"$schema": SCHEMA_URL, "category": "S", "scm_url": "u", "depends": []}, "'depends' is not allowed"),
        ({"$schema": SCHEMA_URL, "category": "S", "scm_url": "u", "tier": 6}, "'tier' must be <= 5"),
        ({"$schema": SCHEMA_URL, "category": "S", "scm_url": "u", "tier": True}, "'tier' must be a int"),
        ({"$schema": SCHEMA_URL, "category": "S", "scm_url": "u", "scm_type": "svn"}, "'scm_type' must be one of"),
        ({"$schema": SCHEMA_URL, "category": "S", "scm_url": "u", "build_dependencies": "PyTorch"}, "must be a list"),
        ({"$schema": SCHEMA_URL, "category": "S", "scm_url": "u", "build_dependencies": [1]}, "items must be str"),
    ],
)
def test_schema_check_catches_bad_entries(entry, problem):
    assert any(problem in p for p in check_entry(entry)), check_entry(entry)
