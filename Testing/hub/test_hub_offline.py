"""MedDINOv3Core.hub and .registry against a hand-made Hugging Face cache, with HF_HUB_OFFLINE=1 (Testing/conftest.py
sets it before huggingface_hub is imported): the real huggingface_hub cache look-up, no network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_hub import git_sha1, hand_made_cache, sha256, teacher_checkpoint_bytes, transformers_model_files  # noqa: E402

from MedDINOv3Core import hub  # noqa: E402
from MedDINOv3Core.card import load_model_card  # noqa: E402
from MedDINOv3Core.registry import FORMATS, Registry, RegistryError, entry_from_dict, load_registry  # noqa: E402
from MedDINOv3Core.weights import load_model  # noqa: E402

COMMIT = "a" * 40
RESOURCES = Path(__file__).resolve().parents[2] / "Resources"


def tiny_entry(**changes) -> dict:
    entry = {
        "repo_id": "test/tiny-teacher",
        "files": ["model.pth"],
        "weights": "model.pth",
        "format": "meddinov3_teacher",
        "task": "backbone",
        "license": "apache-2.0",
        "description": "tiny random teacher checkpoint",
        "architecture": {"num_heads": 2},
    }
    entry.update(changes)
    return entry


def registry_of(**entries) -> Registry:
    return Registry.from_dict({"format_version": 1, "models": entries})


@pytest.fixture(scope="module")
def teacher_bytes(tmp_path_factory) -> bytes:
    return teacher_checkpoint_bytes(tmp_path_factory.mktemp("teacher"))


def test_offline_flag_is_set_before_import():
    from huggingface_hub import constants

    assert constants.is_offline_mode()


# ----------------------------------------------------------------------------------------------- registry


def test_shipped_registry_is_valid_and_follows_its_schema():
    registry = load_registry()
    assert registry.source.endswith("models.json")
    repos = {e.repo_id: e for e in registry.values() if not e.bundled}
    teacher = repos["ricklisz123/MedDINOv3-ViTB-16-CT-3M"]
    assert (teacher.format, teacher.task, teacher.gated, teacher.license) == (
        "meddinov3_teacher",
        "backbone",
        False,
        "apache-2.0",
    )
    for size in "sbl":
        e = repos[f"facebook/dinov3-vit{size}16-pretrain-lvd1689m"]
        assert e.gated and e.format == "transformers" and set(e.files) == {"config.json", "model.safetensors"}
    schema = json.loads((RESOURCES / "models.schema.json").read_text(encoding="utf-8"))
    entry_schema = schema["$defs"]["entry"]
    assert set(entry_schema["properties"]) == set(hub.RegistryEntry.__dataclass_fields__) - {"name"}
    assert set(entry_schema["required"]) == {"task", "license", "description"}
    hub_required = {"repo_id", "files", "weights", "format"}
    assert set(entry_schema["allOf"][-1]["else"]["required"]) == hub_required
    assert tuple(entry_schema["properties"]["format"]["enum"]) == FORMATS
    raw = json.loads((RESOURCES / "models.json").read_text(encoding="utf-8"))
    for name, data in raw["models"].items():
        assert set(data) <= set(entry_schema["properties"]), name
        assert set(entry_schema["required"]) <= set(data), name
        if "path" in data:
            assert set(data) <= set(entry_schema["allOf"][-1]["then"]["propertyNames"]["enum"]), name
        else:
            assert hub_required <= set(data), name


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"repo_id": "no-slash"}, "repo_id must be org/name"),
        ({"weights": "other.pth"}, "is not one of files"),
        ({"format": "onnx"}, "format must be one of"),
        ({"sha256": {"model.pth": "ABC"}}, "64 lower-case hex"),
        ({"sha256": {"x.bin": "0" * 64}}, "not in files"),
        ({"task": "segmentation", "format": "model_card", "files": ["config.json", "model.pth"]}, "needs its labels"),
        ({"task": "segmentation", "labels": [{"value": 1, "name": "liver"}]}, "must be published as model cards"),
        ({"format": "transformers"}, "needs config.json"),
        ({"architecture": {"heads": 2}}, "unknown ViTConfig field(s) ['heads']"),
        ({"license": ""}, "license must not be empty"),
    ],
)
def test_registry_rejects_bad_entries(changes, message):
    with pytest.raises(RegistryError) as err:
        entry_from_dict("tiny", tiny_entry(**changes), "test.json")
    assert message in str(err.value) and "test.json: model 'tiny'" in str(err.value)


def test_registry_file_errors(tmp_path, monkeypatch):
    bad = tmp_path / "models.json"
    bad.write_text("{not json")
    with pytest.raises(RegistryError, match="not valid JSON"):
        load_registry(bad)
    bad.write_text(json.dumps({"format_version": 2, "models": {}}))
    with pytest.raises(RegistryError, match="format_version 2 is not understood"):
        load_registry(bad)
    monkeypatch.setenv("MEDDINOV3_REGISTRY", str(tmp_path / "missing.json"))
    with pytest.raises(RegistryError, match="unset MEDDINOV3_REGISTRY"):
        load_registry()


def test_parse_ref_kinds(tmp_path):
    registry = registry_of(tiny=tiny_entry())
    ref = hub.parse_ref("tiny", registry)
    assert (ref.kind, ref.repo_id, ref.revision, ref.entry.name) == ("hub", "test/tiny-teacher", "main", "tiny")
    ref = hub.parse_ref("Test/Tiny-Teacher@v1", registry)
    assert (ref.revision, ref.entry.name) == ("v1", "tiny")
    ref = hub.parse_ref("other/repo", registry, revision=COMMIT)
    assert (ref.repo_id, ref.revision, ref.entry) == ("other/repo", COMMIT, None)
    assert hub.parse_ref(tmp_path, registry).kind == "local"
    with pytest.raises(ValueError, match="two revisions"):
        hub.parse_ref("other/repo@v1", registry, revision="v2")
    with pytest.raises(hub.ModelNotFoundError, match=r"not a registry name \(tiny\)"):
        hub.parse_ref("tinyy", registry)
    with pytest.raises(hub.ModelNotFoundError, match="no such file or directory"):
        hub.parse_ref(str(tmp_path / "missing.pth"), registry)


# ----------------------------------------------------------------------------------------------- resolve from cache


def test_resolve_registry_model_from_hand_made_cache(tmp_path, teacher_bytes, monkeypatch):
    cache = tmp_path / "hub"
    hand_made_cache(cache, "test/tiny-teacher", {"model.pth": teacher_bytes}, COMMIT)
    registry = registry_of(tiny=tiny_entry(sha256={"model.pth": sha256(teacher_bytes)}))
    assert [s.cached for s in hub.list_models(registry, cache)] == [True]

    card_dir = hub.resolve_model("tiny", cache_dir=cache, registry=registry)
    assert card_dir.parent.parent == cache / "meddinov3-cards" / "models--test--tiny-teacher"
    assert card_dir.parent.name == COMMIT
    card = load_model_card(card_dir)
    assert card.name == "tiny" and card.license == "apache-2.0" and card.task == "backbone"
    assert card.provenance["commit"] == COMMIT and card.provenance["sha256"] == sha256(teacher_bytes)
    assert card.provenance["format"] == "meddinov3_teacher"
    assert card.backbone.num_heads == 2 and card.backbone.norm_eps == 1e-6 and card.backbone.rope_dtype == "bf16"

    # the converted card computes what the upstream weights compute
    model, _ = load_model(card_dir)
    from MedDINOv3Core.models.vit import VisionTransformer

    ckpt_path = tmp_path / "ckpt.pth"
    ckpt_path.write_bytes(teacher_bytes)
    upstream = torch.load(ckpt_path, weights_only=True)["teacher"]
    reference = VisionTransformer(card.backbone).eval()
    reference.load_state_dict({k[9:]: v for k, v in upstream.items() if k.startswith("backbone.")})
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(model.forward_features(x).patch_tokens, reference.forward_features(x).patch_tokens)

    # converted once: a second resolve reuses the card without reading or converting the checkpoint again
    def fail(*args, **kwargs):
        raise AssertionError("converted twice")

    monkeypatch.setattr(hub, "convert_to_card", fail)
    assert hub.resolve_model("tiny", cache_dir=cache, registry=registry) == card_dir
    assert hub.resolve_model(f"test/tiny-teacher@{COMMIT}", cache_dir=cache, registry=registry) == card_dir
    [status] = hub.list_models(registry, cache)
    assert status.cached and status.card == card_dir


def test_offline_and_not_cached_says_how_to_get_it(tmp_path):
    registry = registry_of(tiny=tiny_entry())
    with pytest.raises(hub.ModelNotCachedError) as err:
        hub.resolve_model("tiny", cache_dir=tmp_path / "hub", registry=registry)
    message = str(err.value)
    assert "HF_HUB_OFFLINE=1" in message and "python -m training download" in message
    assert "give that folder instead of the model name" in message
    assert "https://huggingface.co/test/tiny-teacher" in message
    assert [s.cached for s in hub.list_models(registry, tmp_path / "hub")] == [False]


def test_offline_checksum_mismatch_fails_loudly(tmp_path, teacher_bytes):
    cache = tmp_path / "hub"
    hand_made_cache(cache, "test/tiny-teacher", {"model.pth": teacher_bytes}, COMMIT)
    wrong = registry_of(tiny=tiny_entry(sha256={"model.pth": "0" * 64}))
    with pytest.raises(hub.ChecksumMismatchError, match="expected SHA-256 0000"):
        hub.resolve_model("tiny", cache_dir=cache, registry=wrong)

    # a corrupted blob: the file no longer matches its LFS ETag (the blob's name)
    blob = next((cache / "models--test--tiny-teacher" / "blobs").iterdir())
    blob.write_bytes(b"\0" + teacher_bytes[1:])
    with pytest.raises(hub.ChecksumMismatchError, match="cached copy is corrupt: delete"):
        hub.resolve_model("tiny", cache_dir=cache, registry=registry_of(tiny=tiny_entry()))


def test_transformers_repo_from_cache_and_local_directory(tmp_path):
    files = transformers_model_files(tmp_path)
    cache = tmp_path / "hub"
    hand_made_cache(cache, "test/tiny-hf", files, COMMIT)
    entry = tiny_entry(repo_id="test/tiny-hf", files=["config.json", "model.safetensors"], format="transformers")
    entry.update(weights="model.safetensors", license="dinov3-license", gated=True)
    del entry["architecture"]  # heads, eps and RoPE come from the transformers config.json
    registry = registry_of(hf=entry)
    card_dir = hub.resolve_model("hf", cache_dir=cache, registry=registry)
    model, card = load_model(card_dir)
    assert card.backbone.num_heads == 2 and card.backbone.depth == 2 and card.backbone.n_storage_tokens == 4
    assert card.license == "dinov3-license" and card.provenance["gated"] is True

    # the same files as a local directory (what a user downloaded by hand) convert to the same weights
    local = tmp_path / "downloaded"
    local.mkdir()
    for name, data in files.items():
        (local / name).write_bytes(data)
    local_card = hub.resolve_model(local, cache_dir=cache, registry=registry)
    assert local_card.parent == cache / "meddinov3-cards" / "local"
    other, _ = load_model(local_card)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))
    # and compute what transformers computes from them (an independent DINOv3 implementation)
    from transformers import DINOv3ViTModel

    reference = DINOv3ViTModel.from_pretrained(tmp_path / "hf-dinov3").eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        f = model.forward_features(x)
        ours = torch.cat([f.cls_token[:, None], f.registers, f.patch_tokens], dim=1)
        torch.testing.assert_close(ours, reference(pixel_values=x).last_hidden_state, atol=1e-5, rtol=1e-5)
    assert git_sha1(files["config.json"]) != sha256(files["config.json"])  # small files are not checked by ETag


def test_local_card_file_and_ambiguous_directory(tmp_path, teacher_bytes):
    registry = registry_of()
    ckpt = tmp_path / "model.pth"
    ckpt.write_bytes(teacher_bytes)
    # the number of heads is not in the weights: with the default head dim of 64, embed 64 gives one head
    card_dir = hub.resolve_model(ckpt, cache_dir=tmp_path / "hub", registry=registry)
    card = load_model_card(card_dir)
    assert card.provenance["source"] == str(ckpt) and card.license == "unknown"
    assert hub.resolve_model(card_dir, registry=registry) == card_dir  # a card directory is used as it is
    # a file the registry knows by its SHA-256 gets the entry's name, licence and architecture
    known = registry_of(tiny=tiny_entry(sha256={"model.pth": sha256(teacher_bytes)}))
    named = load_model_card(hub.resolve_model(ckpt, cache_dir=tmp_path / "hub2", registry=known))
    assert (named.name, named.license, named.backbone.num_heads) == ("tiny", "apache-2.0", 2)
    (tmp_path / "second.safetensors").write_bytes(b"x")
    with pytest.raises(hub.ModelNotFoundError, match="several checkpoints"):
        hub.resolve_model(tmp_path, cache_dir=tmp_path / "hub", registry=registry)


def test_file_sha256_is_remembered(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"abc" * 1000)
    memo = tmp_path / "memo"
    assert hub.file_sha256(f, memo) == sha256(b"abc" * 1000)
    assert len(list((memo / "hashes").iterdir())) == 1
    record = next((memo / "hashes").iterdir())
    data = json.loads(record.read_text(encoding="utf-8"))
    data["sha256"] = "remembered"
    record.write_text(json.dumps(data))
    assert hub.file_sha256(f, memo) == "remembered"  # same size and mtime: not hashed again
    f.write_bytes(b"abcd" * 1000)
    assert hub.file_sha256(f, memo) == sha256(b"abcd" * 1000)  # changed file: hashed again


def test_model_card_repos_are_used_as_they_are(tmp_path, tiny_vit_config):
    from MedDINOv3Core.card import ModelCard
    from MedDINOv3Core.models.vit import VisionTransformer
    from MedDINOv3Core.weights import save_model_card

    published = save_model_card(
        tmp_path / "published",
        ModelCard(task="backbone", backbone=tiny_vit_config, name="card"),
        VisionTransformer(tiny_vit_config),
    )
    files = {name: (published / name).read_bytes() for name in ("config.json", "model.safetensors")}
    cache = tmp_path / "hub"
    snapshot = hand_made_cache(cache, "test/card", files, COMMIT)
    entry = tiny_entry(repo_id="test/card", files=["config.json", "model.safetensors"], format="model_card")
    entry.update(weights="model.safetensors")
    registry = registry_of(card=entry)
    assert hub.resolve_model("card", cache_dir=cache, registry=registry) == snapshot
    # unregistered: discovered offline from the cached config.json
    assert hub.resolve_model("test/card", cache_dir=cache, registry=registry_of()) == snapshot
    model, card = load_model(snapshot)
    assert card.name == "card" and not (cache / "meddinov3-cards" / "models--test--card").exists()
