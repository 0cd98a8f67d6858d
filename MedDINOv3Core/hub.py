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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from MedDINOv3Core.atomic import write_text
from MedDINOv3Core.progress import report
from MedDINOv3Core.registry import COMMIT_RE, REPO_ID_RE, SHA256_RE, Registry, RegistryEntry, load_registry

log = logging.getLogger(__name__)

CARDS_DIRNAME = "meddinov3-cards"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
_HASH_CHUNK = 8 << 20

ProgressFn = Callable[..., None]


# ----------------------------------------------------------------------------------------------- errors


class HubError(RuntimeError):
    """A model could not be resolved; the message says why and what to do."""


class ModelNotFoundError(HubError):
    """The reference names no registry entry, Hub repo, revision, file or local path."""


class FileNotInRepoError(ModelNotFoundError):
    """The repo exists but lacks a file."""


class GatedModelError(HubError):
    """A gated repo refused the download (no token, or a token without access)."""


class ModelNotCachedError(HubError):
    """Offline (or the Hub unreachable) and the model is not in the cache."""


class HubUnreachableError(ModelNotCachedError):
    """The Hub (or the proxy in front of it) could not be reached and the model is not cached."""


class ChecksumMismatchError(HubError):
    """A downloaded file does not have the expected SHA-256, even after downloading it again."""


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


# ----------------------------------------------------------------------------------------------- caches


def cards_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted model cards are kept: ``<cache_dir>/meddinov3-cards``, else the HF assets cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / CARDS_DIRNAME
    from huggingface_hub import constants

    return Path(constants.HF_ASSETS_CACHE) / "meddinov3"


def file_sha256(path: str | os.PathLike, memo_dir: Path | None = None, progress: ProgressFn | None = None) -> str:
    """SHA-256 (hex) of a file, remembered in ``memo_dir`` by (real path, size, mtime) so a large file is hashed
    once and not again at every load."""
    real = Path(os.path.realpath(path))
    stat = real.stat()
    memo = None
    if memo_dir is not None:
        memo = memo_dir / "hashes" / (hashlib.sha1(str(real).encode()).hexdigest() + ".json")
        try:
            record = json.loads(memo.read_text(encoding="utf-8"))
            if record["size"] == stat.st_size and record["mtime_ns"] == stat.st_mtime_ns:
                return record["sha256"]
        except (OSError, ValueError, KeyError):
            pass
    digest = hashlib.sha256()
    done = 0
    with open(real, "rb") as fh:
        while chunk := fh.read(_HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            report(progress, f"verify {Path(path).name}", done, stat.st_size, "SHA-256")
    sha = digest.hexdigest()
    if memo is not None:
        record = {"path": str(real), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha}
        _write_text_atomic(memo, json.dumps(record))
    return sha


def _write_text_atomic(path: Path, text: str) -> None:
    try:
        write_text(path, text)
    except OSError as exc:  # a read-only cache only costs re-hashing next time
        log.debug("could not write %s: %s", path, exc)


def _commit_of(pointer: str | os.PathLike) -> str:
    """The commit hash in a HF cache pointer path ``.../snapshots/<commit>/<file>``."""
    parts = Path(pointer).parts
    idx = len(parts) - 1 - parts[::-1].index("snapshots")
    return parts[idx + 1]


def _etag_sha256(pointer: str | os.PathLike) -> str | None:
    """The Hub's LFS ETag of a cached file, when it is a SHA-256 (the blob is named after it)."""
    name = Path(os.path.realpath(pointer)).name
    return name if SHA256_RE.match(name) else None


# ----------------------------------------------------------------------------------------------- downloads


def _bar_class(progress: ProgressFn | None, stage: str) -> type:
    """A tqdm stand-in for hf_hub_download's ``tqdm_class`` that forwards byte counts to ``progress``."""

    class _Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            self.n = initial or 0
            self.total = total or 0
            report(progress, stage, self.n, self.total, "bytes")

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: Any) -> None:
            return None

        def update(self, n: int | float | None = 1) -> None:
            self.n += int(n or 0)
            report(progress, stage, self.n, max(self.total, self.n), "bytes")

        def close(self) -> None:
            return None

    return _Bar


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _network_advice(cause: BaseException | None) -> str:
    """What went wrong on the network and what to check. Proxy variables are named, never shown (credentials)."""
    what = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}" if cause else "no answer"
    proxies = [v for v in _PROXY_VARS if os.environ.get(v)]
    status = getattr(getattr(cause, "response", None), "status_code", None)
    if status == 407 or "407" in what:
        advice = (
            f"the proxy set in {'/'.join(proxies) or 'the environment'} requires authentication: put the credentials "
            "in the proxy URL (http://user:password@proxy:port)"
        )
    elif proxies:
        advice = f"requests go through the proxy in {'/'.join(proxies)}: check it, and NO_PROXY for local mirrors"
    else:
        advice = "check the network; behind a proxy set HTTPS_PROXY (http://[user:password@]proxy:port)"
    return f"{what}; {advice}; for a Hub mirror set HF_ENDPOINT"


def _how_to_fetch_elsewhere(repo_id: str, revision: str, files: tuple[str, ...]) -> str:
    return (
        f"On a machine with internet access run `python -m training download {repo_id}@{revision} --cache-dir DIR` "
        "and copy DIR here (then pass --cache-dir DIR), or download the files "
        f"({', '.join(files)}) from https://huggingface.co/{repo_id} and pass --model /path/to/that/folder"
    )


def _download_one(
    repo_id: str,
    filename: str,
    revision: str,
    *,
    cache_dir: str | os.PathLike | None,
    token: str | bool | None,
    local_only: bool,
    force: bool = False,
    progress: ProgressFn | None = None,
    all_files: tuple[str, ...] = (),
) -> str:
    """hf_hub_download with the Hub's errors turned into HubErrors that say what to do."""
    try:  # huggingface_hub's HTTP client: httpx2 from huggingface_hub 2.x, httpx before
        import httpx2
    except ImportError:  # pragma: no cover
        import httpx as httpx2
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}"
    try:
        return hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            token=token,
            local_files_only=local_only,
            force_download=force,
            tqdm_class=_bar_class(progress, f"download {filename}"),
        )
    except GatedRepoError as exc:
        page = f"https://huggingface.co/{repo_id}"
        status = exc.response.status_code if exc.response is not None else None
        if status == 403:
            raise GatedModelError(
                f"{repo_id} is gated and the token given has no access to it: accept the licence on {page} while "
                "logged in as the token's owner (approval can take a while), then try again"
            ) from None
        raise GatedModelError(
            f"{repo_id} is gated: accept the licence on the model page {page} (logged in to Hugging Face), then pass "
            "your access token with --token or the HF_TOKEN environment variable (or run `hf auth login`)"
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"repository {repo_id} not found on {_endpoint()}: check the name; a private repo needs a token "
            "(--token or HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(
            f"revision {revision!r} not found in {repo_id}: check the branch, tag or commit"
        ) from None
    except RemoteEntryNotFoundError:
        raise FileNotInRepoError(f"file {filename!r} not found in {where}") from None
    except LocalEntryNotFoundError as exc:
        from huggingface_hub import constants

        files = all_files or (filename,)
        if local_only or constants.is_offline_mode():
            why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.is_offline_mode() else "offline mode was asked"
            raise ModelNotCachedError(
                f"{filename} of {where} is not in the Hugging Face cache ({cache_dir or constants.HF_HUB_CACHE}) and "
                f"{why}. {_how_to_fetch_elsewhere(repo_id, revision, files)}"
            ) from None
        cause = exc.__cause__ or exc.__context__
        raise HubUnreachableError(
            f"could not reach {_endpoint()} to download {filename} of {where}, and it is not cached "
            f"({_network_advice(cause)}). {_how_to_fetch_elsewhere(repo_id, revision, files)}"
        ) from None
    except httpx2.ProxyError as exc:
        raise HubUnreachableError(
            f"the proxy refused the connection to {_endpoint()} for {where} ({_network_advice(exc)}). "
            f"{_how_to_fetch_elsewhere(repo_id, revision, all_files or (filename,))}"
        ) from None
    except HfHubHTTPError as exc:
        raise HubError(f"the Hub ({_endpoint()}) refused {filename} of {where}: {str(exc).strip()}") from None


def fetch_files(
    repo_id: str,
    files: tuple[str, ...],
    revision: str = "main",
    *,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    offline: bool | None = None,
    check_updates: bool = False,
    sha256: Mapping[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> tuple[dict[str, Path], str]:
    """Download (or find in the cache) ``files`` of ``repo_id`` at ``revision`` and verify them.

    A complete cached copy is used without contacting the Hub unless ``check_updates`` (a commit-hash revision
    never needs a check). Each file is checked against ``sha256[name]`` when given, else against its LFS ETag
    when that is a SHA-256; on a mismatch it is downloaded once more, and a second mismatch raises.

    Returns:
        ({file name: path in the cache snapshot}, commit hash).

    Raises:
        ModelNotCachedError, GatedModelError, ModelNotFoundError, ChecksumMismatchError, HubError.
    """
    from huggingface_hub import constants

    offline = constants.is_offline_mode() if offline is None else offline
    sha256 = dict(sha256 or {})
    kwargs = dict(cache_dir=cache_dir, token=token, progress=progress, all_files=files)
    paths: dict[str, str] = {}
    if offline or not check_updates or COMMIT_RE.match(revision):
        try:
            paths = {f: _download_one(repo_id, f, revision, local_only=True, **kwargs) for f in files}
            log.info("using cached %s@%s (commit %s)", repo_id, revision, _commit_of(next(iter(paths.values()))))
        except ModelNotCachedError:
            if offline:
                raise
            paths = {}
    if not paths:
        log.info("downloading %s from %s@%s", ", ".join(files), repo_id, revision)
        paths = {f: _download_one(repo_id, f, revision, local_only=False, **kwargs) for f in files}
    commits = {_commit_of(p) for p in paths.values()}
    if len(commits) != 1:
        raise HubError(f"files of {repo_id}@{revision} come from different commits {sorted(commits)}; download again")
    commit = commits.pop()
    memo = cards_root(cache_dir)
    for name, pointer in paths.items():
        expected = sha256.get(name) or _etag_sha256(pointer)
        if expected is None:
            continue
        actual = file_sha256(pointer, memo, progress)
        if actual == expected:
            continue
        if offline or actual == _etag_sha256(pointer):  # a corrupt cached copy, or the Hub's file changed
            raise ChecksumMismatchError(_mismatch_message(repo_id, revision, name, pointer, expected, actual, offline))
        log.warning("%s of %s@%s has SHA-256 %s, expected %s: downloading it again", name, repo_id, revision, actual,
                    expected)  # fmt: skip
        pointer = _download_one(repo_id, name, commit, local_only=False, force=True, **kwargs)
        paths[name] = pointer
        actual = file_sha256(pointer, memo, progress)
        expected = sha256.get(name) or _etag_sha256(pointer)
        if actual != expected:
            message = _mismatch_message(repo_id, revision, name, pointer, expected, actual, False)
            _evict(pointer)  # nothing else (transformers, a later run) may pick up a file known to be wrong
            raise ChecksumMismatchError(message + "; it was removed from the cache")
    return {k: Path(v) for k, v in paths.items()}, commit


def _evict(pointer: str | os.PathLike) -> None:
    """Remove a cached file (its blob and snapshot link)."""
    for path in {os.path.realpath(pointer), os.fspath(pointer)}:
        try:
            os.unlink(path)
        except OSError as exc:
            log.warning("could not remove %s from the cache: %s", path, exc)


def _mismatch_message(repo: str, rev: str, name: str, path: str, expected: str, actual: str, offline: bool) -> str:
    etag = _etag_sha256(path)
    if etag and etag != expected:
        why = (
            f"the Hub now serves a different file (SHA-256 {etag}): the repo changed since the registry was written; "
            "pin the registry's revision to the intended commit or update its sha256"
        )
    elif offline:
        why = f"the cached copy is corrupt: delete {os.path.realpath(path)} and download it again with network access"
    else:
        why = (
            "downloaded twice with the same result: a proxy or mirror (HF_ENDPOINT) is altering the file, or the "
            "registry's sha256 is wrong; do not use this file"
        )
    return f"checksum mismatch for {name} of {repo}@{rev}: expected SHA-256 {expected}, got {actual}. {why}"


# ----------------------------------------------------------------------------------------------- conversion


def _transformers_overrides(config_path: Path) -> dict[str, Any]:
    """ViTConfig fields from a transformers DINOv3ViTConfig config.json (what the weights cannot tell)."""
    try:
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the transformers config {config_path}: {exc}") from exc
    if cfg.get("use_gated_mlp"):
        raise ValueError(f"{config_path}: DINOv3 models with a gated (SwiGLU) MLP are not supported")
    mapping = {
        "num_attention_heads": "num_heads",
        "layer_norm_eps": "norm_eps",
        "rope_theta": "rope_base",
        "pos_embed_rescale": "rope_rescale",
        "pos_embed_shift": "rope_shift",
        "pos_embed_jitter": "rope_jitter",
    }
    return {ours: cfg[theirs] for theirs, ours in mapping.items() if theirs in cfg}


def _is_transformers_config(path: Path) -> bool:
    try:
        return str(json.loads(path.read_text(encoding="utf-8")).get("model_type", "")).startswith("dinov3")
    except (OSError, ValueError, AttributeError):
        return False


def convert_to_card(
    weights: Path,
    target: Path,
    *,
    fmt: str | None = None,
    transformers_config: Path | None = None,
    architecture: Mapping[str, Any] | None = None,
    card_fields: Mapping[str, Any] | None = None,
    progress: ProgressFn | None = None,
) -> Path:
    """Convert an upstream checkpoint into a model card at ``target`` (written atomically).

    Args:
        weights: the checkpoint (safetensors or a weights-only torch file; never unpickled).
        target: the card directory to write.
        fmt: upstream format (None: detected from the keys).
        transformers_config: a transformers config.json giving heads, norm eps and RoPE settings.
        architecture: ViTConfig overrides (take precedence).
        card_fields: ModelCard fields (name, description, license, provenance, labels, preprocessing).
    """
    from MedDINOv3Core.weights import ModelCard, convert_checkpoint, read_checkpoint, save_model_card

    report(progress, "convert", 0, 1, weights.name)
    overrides = _transformers_overrides(transformers_config) if transformers_config else {}
    overrides.update(architecture or {})
    state_dict, vit_config, detected = convert_checkpoint(read_checkpoint(weights), fmt, **overrides)
    fields = dict(card_fields or {})
    fields["provenance"] = {**fields.get("provenance", {}), "format": detected}
    fields["labels"] = tuple(fields.get("labels", ()))
    card = ModelCard(task="backbone", backbone=vit_config, **fields)
    save_model_card(target, card, state_dict)
    report(progress, "convert", 1, 1, weights.name)
    log.info("converted %s (%s) into the model card %s", weights, detected, target)
    return target


def _card_fields(entry: RegistryEntry | None, name: str, provenance: dict[str, Any]) -> dict[str, Any]:
    if entry is None:
        return {"name": name, "license": "unknown", "provenance": provenance}
    return {
        "name": entry.name,
        "description": entry.description,
        "license": entry.license,
        "provenance": {**provenance, "license_url": entry.license_url, "gated": entry.gated},
        "labels": entry.labels,
        "preprocessing": dict(entry.preprocessing),
    }


def _cached_conversion(
    target: Path, weights: Path, sha: str, progress: ProgressFn | None, **convert_kwargs: Any
) -> Path:
    """Reuse the card at ``target`` when it was converted from weights with the same SHA-256, else convert."""
    from MedDINOv3Core.weights import is_model_card, load_model_card

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


def _resolve_local(path: Path, root: Path, registry: Registry, progress: ProgressFn | None) -> Path:
    """A card for a local card directory (as is), checkpoint file, or directory holding one checkpoint. A file
    whose SHA-256 a registry entry records gets that entry's name, licence and architecture."""
    from MedDINOv3Core.weights import is_model_card

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

    from MedDINOv3Core.weights import is_model_card

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
    progress: ProgressFn | None = None,
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
        from MedDINOv3Core.weights import is_model_card

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

    from MedDINOv3Core.weights import is_model_card

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
