"""The real huggingface_hub download code against a loopback Hub (127.0.0.1 only, Testing/hub/fake_hub.py).

The Hub and its CDN run as threads in this process and record every request; the client (MedDINOv3Core.hub) runs in
a subprocess with HF_ENDPOINT pointing at the loopback Hub and HF_HUB_OFFLINE=0, because huggingface_hub reads
both when it is imported (and this test process has it imported offline).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_hub import (  # noqa: E402
    FakeHub,
    FakeRepo,
    hub_env,
    run_client,
    sha256,
    teacher_checkpoint_bytes,
    transformers_model_files,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"

CLIENT = r"""
import json, os, sys, urllib.request
from MedDINOv3Core.hub import resolve_model
from MedDINOv3Core.weights import load_model
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
results = []
for i, (ref, kwargs) in enumerate(json.loads(sys.argv[1])):
    if i:
        try:  # tell the loopback Hub that a new step starts
            opener.open(os.environ["HF_ENDPOINT"] + "/__mark__")
        except Exception:
            pass
    try:
        path = resolve_model(ref, **kwargs)
        model, card = load_model(path)
        results.append({"path": str(path), "name": card.name, "provenance": card.provenance,
                        "heads": card.backbone.num_heads, "license": card.license})
    except Exception as exc:
        results.append({"error": type(exc).__name__, "message": str(exc)})
print(json.dumps(results))
"""


def resolve(hub: FakeHub, tmp: Path, registry: Path, *steps: tuple[str, dict]) -> tuple[list[dict], str]:
    """Run the resolve steps ``(ref, kwargs)`` in one client process; returns (one result per step, stderr)."""
    proc = run_client(CLIENT, hub_env(hub, tmp, registry), args=(json.dumps(steps),))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def teacher_entry(repo_id: str) -> dict:
    return {
        "repo_id": repo_id,
        "files": ["model.pth"],
        "weights": "model.pth",
        "format": "meddinov3_teacher",
        "task": "backbone",
        "license": "apache-2.0",
        "description": "tiny test teacher",
        "architecture": {"num_heads": 2},
    }


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> bytes:
    return teacher_checkpoint_bytes(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Path:
    models = {
        "tiny": teacher_entry("test/tiny-teacher"),
        "corrupt-once": teacher_entry("test/corrupt-once"),
        "corrupt-always": teacher_entry("test/corrupt-always"),
        "stale-sha": {**teacher_entry("test/stale"), "sha256": {"model.pth": "0" * 64}},
        "tiny-gated": {
            "repo_id": "test/tiny-gated",
            "files": ["config.json", "model.safetensors"],
            "weights": "model.safetensors",
            "format": "transformers",
            "task": "backbone",
            "license": "dinov3-license",
            "gated": True,
            "description": "tiny gated transformers DINOv3",
        },
    }
    path = tmp_path_factory.mktemp("registry") / "models.json"
    path.write_text(json.dumps({"format_version": 1, "models": models}))
    return path


def brief(requests) -> list[tuple[str, str, str]]:
    return [(server, method, path.split("?")[0]) for server, method, path, _ in requests]


def test_fresh_download_then_cached_call_sends_no_request(tmp_path, teacher, registry):
    repo = FakeRepo({"model.pth": teacher}, commit=COMMIT)
    with FakeHub({"test/tiny-teacher": repo}) as hub:
        (first, second, pinned, update), _ = resolve(
            hub,
            tmp_path,
            registry,
            ("tiny", {}),
            ("tiny", {}),
            (f"test/tiny-teacher@{COMMIT}", {"check_updates": True}),
            ("tiny", {"check_updates": True}),
        )
        steps = hub.steps()
    assert "error" not in first, first
    assert first["name"] == "tiny" and first["heads"] == 2 and first["license"] == "apache-2.0"
    assert first["provenance"]["commit"] == COMMIT and first["provenance"]["sha256"] == sha256(teacher)
    # HEAD on the Hub (302 to the CDN on another origin, not followed), then GET from the CDN without the token
    assert brief(steps[0]) == [
        ("hub", "HEAD", "/test/tiny-teacher/resolve/main/model.pth"),
        ("cdn", "GET", "/test/tiny-teacher/model.pth"),
    ]
    assert second["path"] == first["path"] and steps[1] == []  # cached: not a single request
    assert pinned["path"] == first["path"] and steps[2] == []  # a pinned commit never needs a check
    assert update["path"] == first["path"]
    assert brief(steps[3]) == [("hub", "HEAD", "/test/tiny-teacher/resolve/main/model.pth")]  # checked, no GET


def test_interrupted_transfer_resumes_with_a_range_request(tmp_path, registry):
    # larger than huggingface_hub's 10 MiB download chunk, cut after 12 MiB: the retry asks for the rest
    big = teacher_checkpoint_bytes(tmp_path, pad_floats=4_000_000)
    repo = FakeRepo({"model.pth": big}, commit=COMMIT, drop_next={"model.pth": 1}, drop_after=12 << 20)
    with FakeHub({"test/tiny-teacher": repo}) as hub:
        [result], stderr = resolve(hub, tmp_path, registry, ("tiny", {}))
    assert "error" not in result, result
    assert result["provenance"]["sha256"] == sha256(big)
    gets = [headers.get("range") for server, method, path, headers in hub.requests if method == "GET"]
    assert gets == [None, f"bytes={10 << 20}-"]  # resumed after the first complete 10 MiB chunk
    assert "Trying to resume download" in stderr


def test_checksum_mismatch_downloads_again_once_then_fails_loudly(tmp_path, teacher, registry):
    repos = {
        "test/corrupt-once": FakeRepo({"model.pth": teacher}, commit=COMMIT, corrupt_next={"model.pth": 1}),
        "test/corrupt-always": FakeRepo({"model.pth": teacher}, commit=COMMIT, corrupt_next={"model.pth": 2}),
    }
    repos["test/stale"] = FakeRepo({"model.pth": teacher}, commit=COMMIT)
    with FakeHub(repos) as hub:
        (healed, failed, stale), stderr = resolve(
            hub, tmp_path, registry, ("corrupt-once", {}), ("corrupt-always", {}), ("stale-sha", {})
        )
        steps = hub.steps()
    assert "error" not in healed, healed
    assert healed["provenance"]["sha256"] == sha256(teacher) and "downloading it again" in stderr
    assert [m for s, m, p in brief(steps[0])].count("GET") == 2
    assert failed["error"] == "ChecksumMismatchError"
    assert f"expected SHA-256 {sha256(teacher)}" in failed["message"]
    assert "downloaded twice" in failed["message"] and "do not use this file" in failed["message"]
    assert [m for s, m, p in brief(steps[1])].count("GET") == 2  # exactly one second attempt
    assert "removed from the cache" in failed["message"]
    assert not list((tmp_path / "hub" / "models--test--corrupt-always" / "blobs").iterdir())
    # the registry's SHA-256 differs from the file the Hub serves (and vouches for): no second download
    assert stale["error"] == "ChecksumMismatchError"
    assert f"the Hub now serves a different file (SHA-256 {sha256(teacher)})" in stale["message"]
    assert [m for s, m, p in brief(steps[2])] == ["HEAD", "GET"]


def test_not_found_errors(tmp_path, teacher, registry):
    with FakeHub({"test/tiny-teacher": FakeRepo({"other.pth": teacher}, commit=COMMIT)}) as hub:
        (missing_file, missing_repo, bad_revision), _ = resolve(
            hub, tmp_path, registry, ("tiny", {}), ("nobody/nothing", {}), ("tiny", {"revision": "v9"})
        )
    assert missing_file["error"] == "FileNotInRepoError"
    assert "'model.pth' not found in test/tiny-teacher@main" in missing_file["message"]
    assert missing_repo["error"] == "ModelNotFoundError"
    assert "repository nobody/nothing not found on http://127.0.0.1" in missing_repo["message"]
    assert bad_revision["error"] == "ModelNotFoundError" and "revision 'v9' not found" in bad_revision["message"]


def test_gated_repo_needs_an_accepted_licence_and_a_token(tmp_path, registry):
    files = transformers_model_files(tmp_path)
    repo = FakeRepo(files, commit=COMMIT, gated=True, allowed_tokens=("hf_accepted",))
    with FakeHub({"test/tiny-gated": repo}) as hub:
        (anonymous, refused, granted), _ = resolve(
            hub,
            tmp_path,
            registry,
            ("tiny-gated", {}),
            ("tiny-gated", {"token": "hf_not_accepted"}),
            ("tiny-gated", {"token": "hf_accepted"}),
        )
        steps = hub.steps()
    assert anonymous["error"] == "GatedModelError"
    assert "accept the licence on the model page https://huggingface.co/test/tiny-gated" in anonymous["message"]
    assert "--token" in anonymous["message"] and "HF_TOKEN" in anonymous["message"]
    assert [h.get("authorization") for s, m, p, h in steps[0]] == [None]
    assert refused["error"] == "GatedModelError" and "token given has no access" in refused["message"]
    assert [h.get("authorization") for s, m, p, h in steps[1]] == ["Bearer hf_not_accepted"]
    assert "error" not in granted, granted
    assert granted["license"] == "dinov3-license" and granted["heads"] == 2
    assert granted["provenance"]["format"] == "transformers"
    auth = {(s, m, p.split("?")[0]): h.get("authorization") for s, m, p, h in steps[2]}
    assert auth[("hub", "HEAD", "/test/tiny-gated/resolve/main/model.safetensors")] == "Bearer hf_accepted"
    assert auth[("cdn", "GET", "/test/tiny-gated/model.safetensors")] is None  # the token never leaves the Hub


def test_unregistered_repo_is_discovered_from_its_files(tmp_path, teacher, registry):
    with FakeHub({"someone/teacher": FakeRepo({"model.pth": teacher}, commit=COMMIT)}) as hub:
        (first, again), _ = resolve(hub, tmp_path, registry, ("someone/teacher", {}), ("someone/teacher", {}))
        steps = hub.steps()
    assert "error" not in first, first
    assert first["license"] == "unknown" and first["provenance"]["format"] == "meddinov3_teacher"
    tried = [p for s, m, p in brief(steps[0]) if s == "hub"]
    assert tried == [
        "/someone/teacher/resolve/main/config.json",
        "/someone/teacher/resolve/main/model.safetensors",
        "/someone/teacher/resolve/main/model.pth",
    ]
    # the Hub's "no such file" answers are cached too: the second call sends nothing
    assert again["path"] == first["path"] and steps[1] == []


def test_proxy_requiring_authentication_is_named_without_its_credentials(tmp_path, registry):
    with FakeHub({}) as proxy:
        proxy.proxy_status = 407
        env = hub_env(proxy, tmp_path, registry)
        secret = proxy.endpoint.replace("http://", "http://user:secret@")
        env.update({"HF_ENDPOINT": "http://hub.invalid", "HTTP_PROXY": secret, "NO_PROXY": ""})
        proc = run_client(CLIENT, env, args=(json.dumps([["tiny", {}]]),))
    [result] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] == "HubUnreachableError"
    assert "407 Proxy Authentication Required" in result["message"]
    assert "proxy set in HTTP_PROXY requires authentication" in result["message"]
    assert "secret" not in result["message"] and "python -m training download" in result["message"]
    assert [(s, m, p) for s, m, p, h in proxy.requests] == [
        ("proxy", "HEAD", "http://hub.invalid/test/tiny-teacher/resolve/main/model.pth")
    ]
