"""The model registry: named models with their Hub repo, pinned revision, files, format, licence and checksums.

The registry is a JSON file (``Resources/models.json``, schema ``Resources/models.schema.json``)::

    {"format_version": 1, "models": {"NAME": {"repo_id": "org/name", "revision": "main", "files": [...], ...}}}

Every entry is validated strictly when the file is read (unknown keys raise, with the file and entry named), so a
typo in a registry never turns into a silent download of the wrong thing. The file actually read is, in order: the
``path`` argument, the ``MEDDINOV3_REGISTRY`` environment variable, or ``Resources/models.json`` beside the package.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REGISTRY_VERSION = 1
REGISTRY_ENV = "MEDDINOV3_REGISTRY"

# Upstream formats a registry entry may declare. "model_card" is a repo that already is a MedDINOv3 model card
# (config.json + model.safetensors); the others are converted by MedDINOv3Core.convert.convert_checkpoint.
FORMATS = ("model_card", "meddinov3_teacher", "transformers", "dinov3", "timm")
TASKS = ("backbone", "segmentation")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


class RegistryError(ValueError):
    """A registry file that is missing, not JSON, or has an invalid entry."""


@dataclass(frozen=True)
class RegistryEntry:
    """One named model of the registry.

    Args:
        name: the registry name (lower case, ``[a-z0-9._-]``), what users type after ``--model``.
        repo_id: the Hugging Face Hub repository, ``org/name``.
        revision: branch, tag or 40-hex commit to download; a commit pins the files exactly (and lets a cached
            model load without any request to the Hub).
        files: every file to fetch from the repo (weights and, for transformers repos, config.json).
        weights: the file among ``files`` holding the weights.
        format: upstream format (see FORMATS).
        task: "backbone" or "segmentation".
        license: SPDX id or licence name of the weights; license_url where to read it.
        gated: whether the Hub repo requires accepting the licence (then a token is needed).
        sha256: known SHA-256 (lower-case hex) by file name; files without one are checked against the Hub's
            LFS ETag when that is a SHA-256.
        description: one line.
        labels: for segmentation models, one dict per class (value, name, color).
        architecture: ViTConfig fields that cannot be read from the weights (num_heads, norm_eps, rope_dtype, ...).
        preprocessing: copied into the converted model card (owned by MedDINOv3Core.data.preprocess).
        notes: free text (licence caveats, provenance).
        path: for a model card shipped with this project (bundled), its folder relative to the registry file;
            bundled entries have no Hub repository (repo_id is empty) and are never downloaded.
    """

    name: str
    repo_id: str
    files: tuple[str, ...]
    weights: str
    format: str
    task: str
    license: str
    description: str
    revision: str = "main"
    gated: bool = False
    license_url: str = ""
    sha256: Mapping[str, str] = field(default_factory=dict)
    labels: tuple[dict[str, Any], ...] = ()
    architecture: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    notes: str = ""
    path: str = ""

    @property
    def bundled(self) -> bool:
        """A model card shipped with this project (no download)."""
        return bool(self.path)

    def to_dict(self) -> dict[str, Any]:
        if self.bundled:
            keys = ("path", "task", "license", "license_url", "description", "labels", "notes")
            data = {
                "path": self.path,
                "task": self.task,
                "license": self.license,
                "license_url": self.license_url,
                "description": self.description,
                "labels": [dict(x) for x in self.labels],
                "notes": self.notes,
            }
            return {k: data[k] for k in keys}
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "files": list(self.files),
            "weights": self.weights,
            "format": self.format,
            "task": self.task,
            "license": self.license,
            "license_url": self.license_url,
            "gated": self.gated,
            "sha256": dict(self.sha256),
            "description": self.description,
            "labels": [dict(x) for x in self.labels],
            "architecture": dict(self.architecture),
            "preprocessing": dict(self.preprocessing),
            "notes": self.notes,
        }


_REQUIRED = ("repo_id", "files", "weights", "format", "task", "license", "description")
_OPTIONAL = (
    "revision",
    "gated",
    "license_url",
    "sha256",
    "labels",
    "architecture",
    "preprocessing",
    "notes",
    "path",
)
_BUNDLED_KEYS = ("path", "task", "license", "license_url", "description", "labels", "notes")


def _check(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise RegistryError(f"{where}: {message}")


def entry_from_dict(name: str, data: Mapping[str, Any], where: str = "registry") -> RegistryEntry:
    """Validate one registry entry (the rules of models.schema.json) and build it.

    Raises:
        RegistryError: naming the entry and what is wrong with it.
    """
    w = f"{where}: model {name!r}"
    _check(isinstance(data, Mapping), w, "must be an object")
    _check(bool(NAME_RE.match(name)), w, "names are lower case letters, digits, '.', '_' and '-'")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    _check(not unknown, w, f"unknown key(s) {unknown}; valid keys are {sorted(_REQUIRED + _OPTIONAL)}")
    if "path" in data:
        return _bundled_entry(name, data, w)
    missing = [k for k in _REQUIRED if k not in data]
    _check(not missing, w, f"missing required key(s) {missing}")
    _check(isinstance(data["repo_id"], str) and bool(REPO_ID_RE.match(data["repo_id"])), w, "repo_id must be org/name")
    revision = data.get("revision", "main")
    _check(isinstance(revision, str) and revision != "", w, "revision must be a non-empty string")
    files = data["files"]
    _check(
        isinstance(files, list) and files and all(isinstance(f, str) and f for f in files), w, "files: a list of names"
    )
    _check(len(set(files)) == len(files), w, "files lists a name twice")
    _check(data["weights"] in files, w, f"weights {data['weights']!r} is not one of files {files}")
    _check(data["format"] in FORMATS, w, f"format must be one of {FORMATS}, got {data['format']!r}")
    if data["format"] in ("model_card", "transformers"):
        _check("config.json" in files, w, f"format {data['format']!r} needs config.json in files")
    _check(data["task"] in TASKS, w, f"task must be one of {TASKS}, got {data['task']!r}")
    for key in ("license", "description", "license_url", "notes"):
        _check(isinstance(data.get(key, ""), str), w, f"{key} must be a string")
    _check(bool(data["license"]), w, "license must not be empty (say 'unknown' if it is)")
    _check(isinstance(data.get("gated", False), bool), w, "gated must be true or false")
    sha = data.get("sha256", {})
    _check(isinstance(sha, Mapping), w, "sha256 must map file names to hex digests")
    for fname, digest in sha.items():
        _check(fname in files, w, f"sha256 given for {fname!r}, which is not in files")
        _check(isinstance(digest, str) and bool(SHA256_RE.match(digest)), w, f"sha256 of {fname!r}: 64 lower-case hex")
    labels = data.get("labels", [])
    _check(isinstance(labels, list) and all(isinstance(x, Mapping) for x in labels), w, "labels: a list of objects")
    for label in labels:
        _check("value" in label and "name" in label, w, "each label needs a value and a name")
    if data["task"] == "segmentation":
        _check(bool(labels), w, "a segmentation model needs its labels")
        _check(
            data["format"] == "model_card",
            w,
            "segmentation models must be published as model cards: upstream formats only hold backbones",
        )
    for key in ("architecture", "preprocessing"):
        _check(isinstance(data.get(key, {}), Mapping), w, f"{key} must be an object")
    if data.get("architecture"):
        from MedDINOv3Core.architecture import ViTConfig

        valid = set(ViTConfig.__dataclass_fields__)
        bad = sorted(set(data["architecture"]) - valid)
        _check(not bad, w, f"architecture: unknown ViTConfig field(s) {bad}")
    return RegistryEntry(
        name=name,
        repo_id=data["repo_id"],
        revision=revision,
        files=tuple(files),
        weights=data["weights"],
        format=data["format"],
        task=data["task"],
        license=data["license"],
        license_url=data.get("license_url", ""),
        gated=data.get("gated", False),
        sha256=dict(sha),
        description=data["description"],
        labels=tuple(dict(x) for x in labels),
        architecture=dict(data.get("architecture", {})),
        preprocessing=dict(data.get("preprocessing", {})),
        notes=data.get("notes", ""),
    )


def _bundled_entry(name: str, data: Mapping[str, Any], w: str) -> RegistryEntry:
    """A model card shipped with the project: ``path`` (relative to the registry file) instead of a Hub repo."""
    extra = sorted(set(data) - set(_BUNDLED_KEYS))
    _check(not extra, w, f"a bundled model (with 'path') takes only {list(_BUNDLED_KEYS)}; remove {extra}")
    missing = [k for k in ("task", "license", "description") if k not in data]
    _check(not missing, w, f"missing required key(s) {missing}")
    path = data["path"]
    _check(isinstance(path, str) and path != "" and not Path(path).is_absolute(), w, "path: a relative folder name")
    _check(data["task"] in TASKS, w, f"task must be one of {TASKS}, got {data['task']!r}")
    for key in ("license", "description", "license_url", "notes"):
        _check(isinstance(data.get(key, ""), str), w, f"{key} must be a string")
    labels = data.get("labels", [])
    _check(isinstance(labels, list) and all(isinstance(x, Mapping) for x in labels), w, "labels: a list of objects")
    return RegistryEntry(
        name=name,
        repo_id="",
        files=("config.json", "model.safetensors"),
        weights="model.safetensors",
        format="model_card",
        task=data["task"],
        license=data["license"],
        license_url=data.get("license_url", ""),
        description=data["description"],
        labels=tuple(dict(x) for x in labels),
        notes=data.get("notes", ""),
        path=path,
    )


class Registry(Mapping[str, RegistryEntry]):
    """The registry's entries by name (a read-only mapping), with look-up by repo id."""

    def __init__(self, entries: Mapping[str, RegistryEntry], source: str = "<memory>") -> None:
        self._entries = dict(entries)
        self.source = source

    def __getitem__(self, name: str) -> RegistryEntry:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def by_repo(self, repo_id: str) -> RegistryEntry | None:
        """The first entry for ``repo_id`` (case-insensitive, as on the Hub), or None."""
        for entry in self._entries.values():
            if entry.repo_id.lower() == repo_id.lower():
                return entry
        return None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<memory>") -> Registry:
        _check(isinstance(data, Mapping), source, "the registry must be a JSON object")
        unknown = sorted(set(data) - {"$schema", "format_version", "models"})
        _check(not unknown, source, f"unknown top-level key(s) {unknown}")
        version = data.get("format_version")
        _check(
            isinstance(version, int) and 1 <= version <= REGISTRY_VERSION,
            source,
            f"format_version {version!r} is not understood by this library (expects {REGISTRY_VERSION}); upgrade it",
        )
        models = data.get("models")
        _check(isinstance(models, Mapping), source, "'models' must be an object of name -> entry")
        entries = {name: entry_from_dict(name, entry, source) for name, entry in models.items()}
        base = Path(source).parent if source != "<memory>" else Path.cwd()
        for name, entry in entries.items():  # bundled paths are relative to the registry file
            if entry.bundled:
                entries[name] = dataclasses.replace(entry, path=str((base / entry.path).resolve()))
        return cls(entries, source)


def registry_path(path: str | os.PathLike | None = None) -> Path:
    """The registry file to read: ``path``, else $MEDDINOV3_REGISTRY, else Resources/models.json."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV]).expanduser()
    from MedDINOv3Core.resource_files import CHECKOUT_RESOURCES, resources_dir

    try:
        return resources_dir() / "models.json"
    except FileNotFoundError:
        return CHECKOUT_RESOURCES / "models.json"  # load_registry explains what is missing


def load_registry(path: str | os.PathLike | None = None) -> Registry:
    """Read and validate the registry (see registry_path for which file).

    Raises:
        RegistryError: the file is missing, not JSON, or has an invalid entry (the message names it).
    """
    p = registry_path(path)
    if not p.is_file():
        raise RegistryError(
            f"model registry {p} not found; pass an existing models.json or unset {REGISTRY_ENV}"
            if path is not None or os.environ.get(REGISTRY_ENV)
            else f"model registry {p} not found; reinstall MedDINOv3 (pip install meddinov3, or pip install -e . in a "
            f"full checkout) or set {REGISTRY_ENV} to a models.json"
        )
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RegistryError(f"model registry {p} is not valid JSON: {exc}") from exc
    registry = Registry.from_dict(data, source=str(p))
    log.debug("read %d registry entries from %s", len(registry), p)
    return registry
