"""Resolve a model reference to a local model card: registry names, Hugging Face Hub repos, local files.

``resolve_model(ref)`` accepts

- a registry name (``meddinov3-vitb16-ct3m``; see ``Resources/models.json`` and MedDINOv3Core.registry),
- a Hub repo ``org/name`` or ``org/name@revision`` (registry metadata is used when the repo is registered),
- a local model-card directory (returned as is),
- a local checkpoint file, or a directory holding one (a Hugging Face transformers DINOv3 directory included),

and returns a directory holding ``config.json`` + ``model.safetensors`` that MedDINOv3Core.weights.load_model reads.

Downloads use ``huggingface_hub.hf_hub_download`` into the standard Hugging Face cache (``cache_dir`` overrides it),
so proxies (HTTPS_PROXY), mirrors (HF_ENDPOINT), tokens (HF_TOKEN, ``hf auth login``) and offline mode
(HF_HUB_OFFLINE=1) behave as in every other Hugging Face tool. A model already in the cache is used without any
request to the Hub (``check_updates=True`` asks the Hub whether a branch moved). Every downloaded file is checked
against the registry's SHA-256, or else against the Hub's LFS ETag (which is the file's SHA-256; the cache names
its blobs after it where it uses symlinks); a mismatch downloads the file once more and then fails loudly.

Upstream formats are converted once into a model card kept beside the Hugging Face cache: under
``<cache_dir>/meddinov3-cards`` when a cache directory is given, else under the Hugging Face assets cache
(``$HF_HOME/assets/meddinov3``), keyed by repo, commit and the weights' SHA-256, and reused afterwards.

Downloads, the cache layout and checksums live in MedDINOv3Core.hub_download, the conversion in
MedDINOv3Core.hub_convert; their public names are re-exported here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from MedDINOv3Core.hub_convert import _card_fields, _is_transformers_config, convert_to_card
from MedDINOv3Core.hub_download import (
    CARDS_DIRNAME,
    ChecksumMismatchError,
    FileNotInRepoError,
    GatedModelError,
    HubError,
    HubUnreachableError,
    ModelNotCachedError,
    ModelNotFoundError,
    _commit_of,
    cards_root,
    fetch_files,
    file_sha256,
)
from MedDINOv3Core.progress import ProgressCallback
from MedDINOv3Core.registry import REPO_ID_RE, Registry, RegistryEntry, load_registry

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")

__all__ = [
    "CARDS_DIRNAME",
    "ChecksumMismatchError",
    "FileNotInRepoError",
    "GatedModelError",
    "HubError",
    "HubUnreachableError",
    "ModelNotCachedError",
    "ModelNotFoundError",
    "ModelRef",
    "ModelStatus",
    "RegistryEntry",
    "cards_root",
    "convert_to_card",
    "fetch_files",
    "file_sha256",
    "list_models",
    "parse_ref",
    "resolve_model",
]


# ----------------------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference: ``kind`` is "local" (``path``) or "hub" (``repo_id``, ``revision``, ``entry``)."""

    kind: str
    path: Path | None = None
    repo_id: str = ""
    revision: str | None = None
    entry: RegistryEntry | None = None


def parse_ref(ref: str | os.PathLike, registry: Registry, revision: str | None = None) -> ModelRef:
    """Classify ``ref``: an existing path, a registry name, or a Hub repo ``org/name[@revision]``.

    Raises:
        ModelNotFoundError: ``ref`` is none of these (the message lists the registry names).
        ValueError: two different revisions were given (``@rev`` and ``revision``).
    """
    text = os.fspath(ref)
    path = Path(text).expanduser()
    if path.exists():
        return ModelRef("local", path=path.resolve())
    if text in registry:
        entry = registry[text]
        if entry.bundled:
            if not Path(entry.path).is_dir():
                raise ModelNotFoundError(
                    f"bundled model {text!r} is missing its folder {entry.path}; reinstall from a full checkout"
                )
            return ModelRef("local", path=Path(entry.path), entry=entry)
        return ModelRef("hub", repo_id=entry.repo_id, revision=revision or entry.revision, entry=entry)
    repo_id, _, at_rev = text.partition("@")
    if REPO_ID_RE.match(repo_id):
        if at_rev and revision and at_rev != revision:
            raise ValueError(f"two revisions given for {repo_id}: @{at_rev} and revision={revision}; pass one")
        entry = registry.by_repo(repo_id)
        rev = at_rev or revision or (entry.revision if entry else "main")
        return ModelRef("hub", repo_id=entry.repo_id if entry else repo_id, revision=rev, entry=entry)
    looks_like_path = os.sep in text or text.startswith(".") or Path(text).suffix in WEIGHT_SUFFIXES
    raise ModelNotFoundError(
        f"no such file or directory: {path}"
        if looks_like_path
        else f"unknown model {text!r}: not a registry name ({', '.join(sorted(registry)) or 'registry is empty'}), "
        "not a Hub repo id (org/name[@revision]) and not an existing path. "
        "Run `python -m training models` for the list."
    )


def _cached_conversion(
    target: Path, weights: Path, sha: str, progress: ProgressCallback | None, **convert_kwargs: Any
) -> Path:
    """Reuse the card at ``target`` when it was converted from weights with the same SHA-256, else convert."""
    from MedDINOv3Core.card import is_model_card, load_model_card

    if is_model_card(target):
        try:
            if load_model_card(target).provenance.get("sha256") == sha:
                log.info("using the converted model card %s", target)
                return target
        except (OSError, ValueError):
            pass
        log.warning("converted card %s does not match its source; converting again", target)
    return convert_to_card(weights, target, progress=progress, **convert_kwargs)


# ----------------------------------------------------------------------------------------------- resolve


def _refuse_training_checkpoint(weights: Path) -> None:
    """Raise ModelNotFoundError, naming the model card to use instead, for a checkpoint written by our training
    loops: a finetuning run's ``checkpoint.pt`` (its cards are ``best/`` and ``last/`` beside it) or a pretraining
    run's ``checkpoints/*.pt`` (``export-backbone`` makes the card)."""
    from MedDINOv3Core.card import is_model_card

    run = weights.parent
    if weights.name == "checkpoint.pt":
        card = next((run / n for n in ("best", "last") if is_model_card(run / n)), None)
        raise ModelNotFoundError(
            f"{weights} is a training checkpoint; use {card} (a model card)"
            if card is not None
            else f"{weights} is a training checkpoint and {run} holds no best/ or last/ model card yet; let the run "
            "finish (or resume it), then use its best/ folder"
        )
    if run.name == "checkpoints" and re.fullmatch(r"last\.pt|step_\d{7}\.pt", weights.name):
        raise ModelNotFoundError(
            f"{weights} is a pretraining checkpoint; make it a model card first: "
            f"`python -m training export-backbone {weights} --output DIR`, then use DIR"
        )


def _resolve_local(path: Path, root: Path, registry: Registry, progress: ProgressCallback | None) -> Path:
    """A card for a local card directory (as is), checkpoint file, or directory holding one checkpoint. A file
    whose SHA-256 a registry entry records gets that entry's name, licence and architecture."""
    from MedDINOv3Core.card import is_model_card

    if path.is_dir():
        if is_model_card(path):
            return path
        config = path / "config.json"
        candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        if len(candidates) != 1:
            raise ModelNotFoundError(
                f"{path} is not a model card (no MedDINOv3 config.json) and holds "
                f"{'no checkpoint' if not candidates else f'several checkpoints ({[p.name for p in candidates]})'}: "
                "pass the checkpoint file itself"
            )
        weights = candidates[0]
    else:
        weights, config = path, path.parent / "config.json"
    _refuse_training_checkpoint(weights)
    is_hf = weights.suffix == ".safetensors" and config.is_file() and _is_transformers_config(config)
    hf_config = config if is_hf else None
    sha = file_sha256(weights, root, progress)
    known = next((e for e in registry.values() if sha in e.sha256.values() and e.format != "model_card"), None)
    if known is not None:
        log.info("%s is the weights file of the registered model %s", weights, known.name)
    target = root / "local" / f"{re.sub(r'[^A-Za-z0-9._-]', '_', weights.stem)}-{sha[:16]}"
    provenance = {"source": str(weights), "sha256": sha}
    return _cached_conversion(
        target,
        weights,
        sha,
        progress,
        fmt="transformers" if hf_config else (known.format if known else None),
        transformers_config=hf_config,
        architecture=known.architecture if known else None,
        card_fields=_card_fields(known, weights.stem, provenance),
    )


def _discover_entry(
    ref: ModelRef, fetch: Callable[[tuple[str, ...]], dict[str, Path]], cache_dir: str | os.PathLike | None
) -> RegistryEntry:
    """A registry entry for an unregistered repo, from its files: a model card, a transformers DINOv3 repo, or a
    single checkpoint (model.safetensors, then model.pth). What the cache already knows (a cached file, or one the
    Hub said does not exist) is used without a request."""
    from huggingface_hub import _CACHED_NO_EXIST, try_to_load_from_cache

    from MedDINOv3Core.card import is_model_card

    revision = ref.revision or "main"
    errors: list[HubError] = []

    def probe(name: str) -> Path | None:
        cached = try_to_load_from_cache(
            ref.repo_id, name, cache_dir=None if cache_dir is None else os.fspath(cache_dir), revision=revision
        )
        if isinstance(cached, str):
            return Path(cached)
        if cached is _CACHED_NO_EXIST:
            return None
        try:
            return fetch((name,))[name]
        except HubUnreachableError:
            raise  # no use trying other file names through a broken connection
        except (FileNotInRepoError, ModelNotCachedError) as exc:
            errors.append(exc)
            return None

    base = dict(repo_id=ref.repo_id, revision=revision, task="backbone", license="unknown")
    base["description"] = f"{ref.repo_id} (not in the registry)"
    config = probe("config.json")
    if config is not None and (is_model_card(config.parent) or _is_transformers_config(config)):
        fmt = "model_card" if is_model_card(config.parent) else "transformers"
        return RegistryEntry(name=ref.repo_id, files=("config.json", "model.safetensors"), weights="model.safetensors",
                             format=fmt, **base)  # fmt: skip
    for weights in ("model.safetensors", "model.pth"):
        if probe(weights) is not None:
            return RegistryEntry(name=ref.repo_id, files=(weights,), weights=weights, format="auto", **base)
    not_cached = [e for e in errors if isinstance(e, ModelNotCachedError)]
    if not_cached:
        raise not_cached[-1]
    raise ModelNotFoundError(
        f"{ref.repo_id}@{revision} holds no MedDINOv3 model card, no transformers DINOv3 model and no "
        "model.safetensors or model.pth; pass a registry name or a local checkpoint instead"
    )


def resolve_model(
    ref: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    offline: bool | None = None,
    progress: ProgressCallback | None = None,
    registry: Registry | str | os.PathLike | None = None,
    check_updates: bool = False,
) -> Path:
    """A local model-card directory for ``ref``, downloading, verifying and converting as needed.

    Args:
        ref: registry name, ``org/name[@revision]``, model-card directory, checkpoint file or directory.
        cache_dir: the Hugging Face hub cache to use (default: HF_HUB_CACHE, ~/.cache/huggingface/hub).
        token: Hugging Face token for gated/private repos (None: HF_TOKEN or the stored login).
        revision: branch, tag or commit, overriding the registry's.
        offline: never touch the network (None: follow HF_HUB_OFFLINE).
        progress: callback ``(stage, done, total, message)`` for download, verification and conversion.
        registry: a Registry, or the path of a registry JSON (default: see MedDINOv3Core.registry).
        check_updates: ask the Hub whether a branch revision moved even when the model is cached.

    Returns:
        A directory with config.json + model.safetensors (load it with MedDINOv3Core.weights.load_model).

    Raises:
        ModelNotFoundError, GatedModelError, ModelNotCachedError, ChecksumMismatchError, HubError (all
        RuntimeErrors whose message names the way out), ValueError / CheckpointFormatError for unreadable files.
    """
    if not isinstance(registry, Registry):
        registry = load_registry(registry)
    cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
    root = cards_root(cache_dir)
    parsed = parse_ref(ref, registry, revision)
    if parsed.kind == "local":
        assert parsed.path is not None
        return _resolve_local(parsed.path, root, registry, progress)

    revision = parsed.revision or "main"

    def fetch(files: tuple[str, ...], sha: Mapping[str, str] | None = None) -> dict[str, Path]:
        return fetch_files(parsed.repo_id, files, revision, cache_dir=cache_dir, token=token, offline=offline,
                           check_updates=check_updates, sha256=sha, progress=progress)[0]  # fmt: skip

    entry = parsed.entry
    if entry is None:
        entry = _discover_entry(parsed, fetch, cache_dir)
    entry = replace(entry, revision=revision)
    paths, commit = fetch_files(parsed.repo_id, entry.files, revision, cache_dir=cache_dir, token=token,
                                offline=offline, check_updates=check_updates, sha256=entry.sha256,
                                progress=progress)  # fmt: skip
    weights = paths[entry.weights]
    if entry.format == "model_card":
        from MedDINOv3Core.card import is_model_card

        if not is_model_card(weights.parent):
            raise HubError(f"{entry.repo_id}@{revision} is registered as a model card, but its config.json is not one")
        return weights.parent
    from huggingface_hub.file_download import repo_folder_name

    sha = file_sha256(weights, root, progress)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", entry.weights.replace("/", "--"))
    target = root / repo_folder_name(repo_id=entry.repo_id, repo_type="model") / commit / f"{stem}-{sha[:16]}"
    provenance = {"repo_id": entry.repo_id, "revision": revision, "commit": commit, "file": entry.weights}
    provenance["sha256"] = sha
    return _cached_conversion(
        target,
        weights,
        sha,
        progress,
        fmt=None if entry.format == "auto" else entry.format,
        transformers_config=paths.get("config.json") if entry.format == "transformers" else None,
        architecture=entry.architecture,
        card_fields=_card_fields(entry if parsed.entry is not None else None, entry.name, provenance),
    )


# ----------------------------------------------------------------------------------------------- listing


@dataclass(frozen=True)
class ModelStatus:
    """A registry entry and whether its files are in the local cache (``card``: its converted card, if any)."""

    entry: RegistryEntry
    cached: bool
    card: Path | None


def list_models(
    registry: Registry | str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> list[ModelStatus]:
    """Every registry entry with its cache state; never touches the network."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.file_download import repo_folder_name

    from MedDINOv3Core.card import is_model_card

    if not isinstance(registry, Registry):
        registry = load_registry(registry)
    cache_dir = None if cache_dir is None else Path(cache_dir).expanduser()
    root = cards_root(cache_dir)
    out = []
    for entry in registry.values():
        if entry.bundled:
            present = is_model_card(entry.path)
            out.append(ModelStatus(entry=entry, cached=present, card=Path(entry.path) if present else None))
            continue
        found = {
            f: try_to_load_from_cache(
                entry.repo_id, f, cache_dir=None if cache_dir is None else os.fspath(cache_dir), revision=entry.revision
            )
            for f in entry.files
        }
        cached = all(isinstance(p, str) for p in found.values())
        card = None
        if cached:
            weights = Path(found[entry.weights])
            if entry.format == "model_card":
                card = weights.parent
            else:
                commit_dir = root / repo_folder_name(repo_id=entry.repo_id, repo_type="model") / _commit_of(weights)
                cards = sorted(commit_dir.glob("*/config.json")) if commit_dir.is_dir() else []
                card = cards[0].parent if cards else None
        out.append(ModelStatus(entry=entry, cached=cached, card=card))
    return out
