"""Hugging Face Hub downloads for MedDINOv3Core.hub: the errors, the cache layout, hashing and verified fetches.

``fetch_files`` finds files in the Hugging Face cache (or downloads them with ``huggingface_hub.hf_hub_download``)
and checks each against the registry's SHA-256 or the Hub's LFS ETag, downloading once more on a mismatch. The
Hub's exceptions become HubErrors whose message says what to do (proxy, token, offline copy).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from MedDINOv3Core.atomic import write_text
from MedDINOv3Core.progress import ProgressCallback, report
from MedDINOv3Core.registry import COMMIT_RE, SHA256_RE

log = logging.getLogger(__name__)

CARDS_DIRNAME = "meddinov3-cards"
_HASH_CHUNK = 8 << 20


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


# ----------------------------------------------------------------------------------------------- caches


def cards_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted model cards are kept: ``<cache_dir>/meddinov3-cards``, else the HF assets cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser() / CARDS_DIRNAME
    from huggingface_hub import constants

    return Path(constants.HF_ASSETS_CACHE) / "meddinov3"


def file_sha256(path: str | os.PathLike, memo_dir: Path | None = None, progress: ProgressCallback | None = None) -> str:
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


def _bar_class(progress: ProgressCallback | None, stage: str) -> type:
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
        "and copy DIR here (then set HF_HUB_CACHE=DIR), or download the files "
        f"({', '.join(files)}) from https://huggingface.co/{repo_id} into a folder and give that folder instead of "
        "the model name"
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
    progress: ProgressCallback | None = None,
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
    progress: ProgressCallback | None = None,
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
