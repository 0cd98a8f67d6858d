"""Test doubles for the Hugging Face Hub: a loopback HTTP server speaking the endpoints huggingface_hub 2.x calls,
a hand-made HF cache layout, and tiny upstream checkpoints.

What ``hf_hub_download`` does (huggingface_hub 2.4, file_download.py / utils/_http.py), and what the server mimics:

- ``HEAD {endpoint}/{repo_id}/resolve/{revision}/{filename}`` (revision URL-quoted), redirects followed only on the
  same origin. The answer must carry ``X-Repo-Commit`` and an ``ETag``. Large (LFS) files are answered, as on the
  Hub, with a 302 to a CDN on another origin carrying ``X-Linked-Etag`` (the SHA-256), ``X-Linked-Size`` and
  ``Location``; the client then GETs the CDN URL without the Authorization header. Small files: 200 with a git-SHA-1
  ETag and Content-Length.
- ``GET`` of the file (CDN URL or resolve URL), streamed; on a dropped connection it retries with
  ``Range: bytes=N-`` and expects 206 + Content-Range.
- Errors are read from ``X-Error-Code``: RepoNotFound (404/401), RevisionNotFound, EntryNotFound (404, with
  X-Repo-Commit), GatedRepo (401 without a token, 403 with a token lacking access).

The server runs in the test process (thread); the client runs in a subprocess, since huggingface_hub reads
HF_ENDPOINT / HF_HUB_OFFLINE when imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import torch

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


# ----------------------------------------------------------------------------------------------- tiny checkpoints


def teacher_checkpoint_bytes(tmp: Path, config=None, seed: int = 0, pad_floats: int = 0) -> bytes:
    """A MedDINOv3 ``model.pth`` teacher checkpoint (tensors only) of a tiny random ViT, as bytes.

    ``pad_floats`` adds a projection-head tensor of that many floats (dropped by the conversion) to make the file
    larger than huggingface_hub's 10 MiB download chunk, so that an interrupted transfer resumes with a Range.
    """
    from MedDINOv3Core.models.vit import VisionTransformer, vit_config

    torch.manual_seed(seed)
    config = config or vit_config("vit_tiny").replace(qkv_bias="none", norm_eps=1e-6, rope_dtype="bf16")
    model = VisionTransformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    teacher = {f"backbone.{k}": v for k, v in model.state_dict().items()}
    teacher["dino_head.mlp.0.weight"] = torch.randn(8, config.embed_dim)
    if pad_floats:
        teacher["dino_head.last_layer.weight"] = torch.randn(pad_floats)
    path = tmp / f"teacher-{seed}.pth"
    torch.save({"teacher": teacher}, path)
    return path.read_bytes()


def transformers_model_files(tmp: Path) -> dict[str, bytes]:
    """config.json + model.safetensors of a tiny random transformers DINOv3ViTModel."""
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(1)
    cfg = DINOv3ViTConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                          num_register_tokens=4, image_size=64)  # fmt: skip
    model = DINOv3ViTModel(cfg).eval()
    out = tmp / "hf-dinov3"
    model.save_pretrained(out)
    return {
        "config.json": (out / "config.json").read_bytes(),
        "model.safetensors": (out / "model.safetensors").read_bytes(),
    }


# ----------------------------------------------------------------------------------------------- hand-made cache


def hand_made_cache(
    cache_dir: Path, repo_id: str, files: dict[str, bytes], commit: str, revision: str = "main"
) -> Path:
    """Write the Hugging Face cache layout for one repo revision: blobs named by ETag (SHA-256 for .pth /
    .safetensors, as LFS files on the Hub; git SHA-1 otherwise), snapshot symlinks and refs/<revision>."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        etag = sha256(data) if name.endswith((".pth", ".safetensors")) else git_sha1(data)
        (repo / "blobs" / etag).write_bytes(data)
        (snap / name).symlink_to(Path("..") / ".." / "blobs" / etag)
    if revision != commit:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / revision).write_text(commit)
    return snap


# ----------------------------------------------------------------------------------------------- loopback Hub


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    commit: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False
    allowed_tokens: tuple[str, ...] = ()
    # file name -> number of the next GETs that are cut after half the body / that serve corrupted bytes
    drop_next: dict[str, int] = field(default_factory=dict)
    corrupt_next: dict[str, int] = field(default_factory=dict)
    drop_after: int | None = None  # bytes sent before a drop (default: half the body)

    def is_lfs(self, name: str) -> bool:
        return name.endswith((".pth", ".safetensors"))


class FakeHub:
    """A Hub at http://127.0.0.1:PORT and its CDN at http://127.0.0.1:PORT2 (a different origin, as on the Hub).

    ``requests`` records (server, method, path, lower-cased headers) of every request, for asserting what the
    client sent; ``marks`` the number of requests seen when the client requested ``/__mark__`` (between steps).
    """

    def steps(self) -> list[list[tuple[str, str, str, dict[str, str]]]]:
        """The requests split at the client's marks: one list per step."""
        bounds = [0, *self.marks, len(self.requests)]
        return [self.requests[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def __init__(self, repos: dict[str, FakeRepo]) -> None:
        self.repos = repos
        self.requests: list[tuple[str, str, str, dict[str, str]]] = []
        self.marks: list[int] = []
        self.proxy_status: int | None = None  # when set, requests in proxy form (absolute URL) get this status
        self.lock = threading.Lock()
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        self.threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (self.hub, self.cdn)]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self.cdn.server_address[1]}"

    def __enter__(self) -> FakeHub:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        for s in (self.hub, self.cdn):
            s.shutdown()
            s.server_close()

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if method is None or r[1] == method)

    def _handler(self, server: str):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
                self.send_response(status)
                self.send_header("X-Error-Code", code)
                self.send_header("X-Error-Message", message)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                body = json.dumps({"error": message}).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)

            def _serve(self, body: bool) -> None:
                if self.path.startswith("http://") and hub.proxy_status is not None:  # used as an HTTP proxy
                    with hub.lock:
                        hub.requests.append(("proxy", self.command, self.path, dict(self.headers.items())))
                    return self._error(hub.proxy_status, "Proxy", "Proxy Authentication Required")
                if self.path == "/__mark__":  # a client-side step boundary, not a Hub request
                    with hub.lock:
                        hub.marks.append(len(hub.requests))
                    return self._error(404, "Mark", "mark")
                with hub.lock:
                    hub.requests.append(
                        (server, self.command, self.path, {k.lower(): v for k, v in self.headers.items()})
                    )
                if server == "cdn":
                    return self._serve_cdn(body)
                parts = self.path.split("?")[0].lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._error(404, "RepoNotFound", "Repository not found")
                repo_id, revision, filename = "/".join(parts[:2]), unquote(parts[3]), unquote("/".join(parts[4:]))
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(401, "RepoNotFound", "Repository not found")
                if repo.gated:
                    auth = self.headers.get("Authorization", "")
                    if not auth:
                        return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. Please log in.")
                    if auth.removeprefix("Bearer ") not in repo.allowed_tokens:
                        return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are "
                                           "not in the authorized list.")  # fmt: skip
                if revision not in ("main", repo.commit):
                    return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                if filename not in repo.files:
                    return self._error(404, "EntryNotFound", f"{filename} does not exist", commit=repo.commit)
                data = repo.files[filename]
                if repo.is_lfs(filename):
                    self.send_response(302)
                    self.send_header("X-Repo-Commit", repo.commit)
                    self.send_header("ETag", f'"{git_sha1(data)}"')
                    self.send_header("X-Linked-Etag", f'"{sha256(data)}"')
                    self.send_header("X-Linked-Size", str(len(data)))
                    self.send_header("Location", f"{hub.cdn_url}/{repo_id}/{quote(filename)}?sig=abc")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self._send_file(repo, filename, data, body, etag=git_sha1(data))
                return None

            def _serve_cdn(self, body: bool) -> None:
                parts = self.path.split("?")[0].lstrip("/").split("/")
                repo = hub.repos[f"{parts[0]}/{parts[1]}"]
                filename = unquote("/".join(parts[2:]))
                self._send_file(repo, filename, repo.files[filename], body, etag=sha256(repo.files[filename]))

            def _send_file(self, repo: FakeRepo, name: str, data: bytes, body: bool, etag: str) -> None:
                drop = corrupt = False
                if body:
                    with hub.lock:
                        if repo.drop_next.get(name, 0) > 0:
                            repo.drop_next[name] -= 1
                            drop = True
                        if repo.corrupt_next.get(name, 0) > 0:
                            repo.corrupt_next[name] -= 1
                            corrupt = True
                if corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                start, status = 0, 200
                rng = self.headers.get("Range")  # case-insensitive
                if rng and body:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    status = 206
                self.send_response(status)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Repo-Commit", repo.commit)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                if drop:
                    self.send_header("Connection", "close")
                self.end_headers()
                if not body:
                    return
                if drop:
                    cut = repo.drop_after if repo.drop_after is not None else (len(data) - start) // 2
                    self.wfile.write(data[start : start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        return Handler


# ----------------------------------------------------------------------------------------------- client subprocess


def run_client(
    code: str, env: dict[str, str], args: tuple[str, ...] = (), timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a fresh interpreter (huggingface_hub reads HF_ENDPOINT/HF_HUB_OFFLINE on import)."""
    drop = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    full_env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and k not in drop}
    full_env.update({"PYTHONPATH": str(ROOT), "NO_PROXY": "127.0.0.1,localhost", "HF_HUB_DISABLE_TELEMETRY": "1"})
    full_env.update(env)
    return subprocess.run([PYTHON, "-c", code, *args], env=full_env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(ROOT))  # fmt: skip


def hub_env(hub: FakeHub, cache_dir: Path, registry: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a client talking to ``hub`` with its own caches (no token of the user leaks in)."""
    env = {
        "HF_ENDPOINT": hub.endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(cache_dir / "hf-home"),
        "HF_HUB_CACHE": str(cache_dir / "hub"),
        "HF_ASSETS_CACHE": str(cache_dir / "hf-home" / "assets"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "10",
    }
    if registry is not None:
        env["MEDDINOV3_REGISTRY"] = str(registry)
    env.update(extra)
    return env
