"""MedDINOv3Logic on a real MRML scene with real background jobs on the embedded tiny model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedDINOv3Core.data.phantom import make_phantom  # noqa: E402
from MedDINOv3Core.metrics import dice  # noqa: E402
from MedDINOv3Core.resource_files import resource_path  # noqa: E402
from MedDINOv3SlicerLib.geometry import add_volume_node, ijk_to_ras_array, volume_from_node  # noqa: E402
from MedDINOv3SlicerLib.jobs import JobError  # noqa: E402
from MedDINOv3SlicerLib.logic import MedDINOv3Logic  # noqa: E402
from MedDINOv3SlicerLib.segmentation import (  # noqa: E402
    labelmap_to_segmentation,
    list_segment_ids,
    parse_terminology_tag,
    segmentation_to_labelmap,
)

MODEL = "meddinov3-phantom-tiny"
LIVER = 1


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((8, 96, 96), seed=5)


@pytest.fixture
def logic(scene, tmp_path):
    lg = MedDINOv3Logic(scene, work_dir=tmp_path / "work", user_dir=tmp_path / "user")
    yield lg
    lg.cleanup()


@pytest.fixture
def ct_node(scene, phantom):
    """The phantom CT under a patient/study in the subject hierarchy."""
    node = add_volume_node(scene, phantom.ct, "phantom CT")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "patient"), "study")
    # outside the application nothing adds subject-hierarchy items for new nodes (Slicer's Qt plugin logic does)
    sh.CreateItem(study, node)
    return node


def _ras(volume, zyx) -> np.ndarray:
    z, y, x = zyx
    return (ijk_to_ras_array(volume) @ np.array([x, y, z, 1.0]))[:3]


def test_list_models_registry_and_local(logic, tmp_path):
    names = {m["name"]: m for m in logic.list_models()}
    assert MODEL in names and names[MODEL]["task"] == "segmentation" and names[MODEL]["license"]
    assert {"name", "task", "description", "license", "source"} <= set(names[MODEL])
    card = shutil.copytree(resource_path("models") / MODEL, tmp_path / "my-card")
    entry = logic.register_model(card, "my-local-model")
    listed = {m["name"]: m for m in logic.list_models(task="segmentation")}
    assert listed["my-local-model"] == entry and entry["source"] == "local"
    assert logic.model_reference("my-local-model") == str(card.resolve())
    assert json.loads(logic.local_models_path.read_text(encoding="utf-8"))["models"]["my-local-model"]
    # a second logic with the same user folder sees it (persisted)
    assert "my-local-model" in {m["name"] for m in MedDINOv3Logic(logic.scene, user_dir=logic.user_dir).list_models()}
    shutil.rmtree(card)
    assert "my-local-model" not in {m["name"] for m in logic.list_models()}


def test_segment_phantom_through_the_real_job(scene, logic, ct_node, phantom):
    stages = []
    seg = logic.segment(ct_node, MODEL, device="cpu", progress=lambda s, d, t, m: stages.append(s))
    assert "predict" in stages
    assert seg.IsA("vtkMRMLSegmentationNode") and seg.GetName() == "phantom CT segmentation"
    labelmap, labels = segmentation_to_labelmap(seg, ct_node)
    assert labelmap.same_geometry(volume_from_node(ct_node))  # exactly the volume's grid
    by_name = {label["name"]: label["value"] for label in labels}
    assert "liver" in by_name
    liver = labelmap.array == by_name["liver"]
    dsc = dice(liver.astype(np.uint8), (phantom.labels.array == LIVER).astype(np.uint8), labels=[1])[1]
    assert dsc > 0.8, dsc
    liver_segment = seg.GetSegmentation().GetSegment(list_segment_ids(seg)[labels[0]["value"] - 1])
    assert parse_terminology_tag(liver_segment.GetTerminology())["type"][1] == "10200004"  # SNOMED Liver
    # placed under the volume's study
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == sh.GetItemParent(sh.GetItemByDataNode(ct_node))
    assert sh.GetItemLevel(sh.GetItemParent(sh.GetItemByDataNode(seg))) == "Study"


def test_segment_volume_under_a_linear_transform(scene, logic, phantom):
    """The segmentation follows the volume's parent transform: same voxels as without it, same world geometry."""
    import vtk

    plain = add_volume_node(scene, phantom.ct, "plain")
    moved = add_volume_node(scene, phantom.ct, "moved")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "move")
    matrix = vtk.vtkMatrix4x4()
    c, s = np.cos(0.4), np.sin(0.4)
    for r, row in enumerate([[c, -s, 0, 12.5], [s, c, 0, -7.0], [0, 0, 1, 30.0]]):
        for col, value in enumerate(row):
            matrix.SetElement(r, col, value)
    transform.SetMatrixTransformToParent(matrix)
    moved.SetAndObserveTransformNodeID(transform.GetID())
    seg_plain = logic.segment(plain, MODEL, device="cpu")
    seg_moved = logic.segment(moved, MODEL, device="cpu")
    assert seg_moved.GetTransformNodeID() == transform.GetID()
    a, _ = segmentation_to_labelmap(seg_plain, plain)
    b, _ = segmentation_to_labelmap(seg_moved, moved)
    assert b.same_geometry(volume_from_node(moved))  # world geometry of the moved volume
    assert not b.same_geometry(a, tol=1e-3)
    np.testing.assert_array_equal(a.array, b.array)


def test_segment_job_errors_carry_the_cli_message(logic, ct_node):
    job = logic.segment_job(ct_node, "no-such-model", device="cpu")
    with pytest.raises(JobError, match="unknown model 'no-such-model'"):
        job.start().wait()


def test_explore_similarity_and_pca(scene, logic, ct_node, phantom, tmp_path):
    with pytest.raises(RuntimeError, match="run feature extraction"):
        logic.show_pca(ct_node)
    cache = logic.explore_job(ct_node, MODEL, device="cpu").start().wait()
    assert cache.shape == phantom.ct.shape and logic.has_features(ct_node)
    liver = phantom.labels.array == LIVER
    zyx = np.argwhere(liver)
    seed = zyx[len(zyx) // 2]
    n_nodes = None
    for k in range(5):
        node = logic.show_similarity(ct_node, _ras(phantom.ct, zyx[(len(zyx) // 2 + 37 * k) % len(zyx)]))
        n_nodes = n_nodes or scene.GetNumberOfNodes()
        assert scene.GetNumberOfNodes() == n_nodes  # one reused node
    node = logic.show_similarity(ct_node, _ras(phantom.ct, seed))
    sim = volume_from_node(node)
    assert sim.same_geometry(phantom.ct) and sim.array.dtype == np.float32
    body = phantom.ct.array > -500
    inside, outside = sim.array[liver].mean(), sim.array[body & ~liver].mean()
    assert inside > outside + 0.1, (inside, outside)
    pca = logic.show_pca(ct_node)
    image = pca.GetImageData()
    assert pca.IsA("vtkMRMLVectorVolumeNode") and image.GetNumberOfScalarComponents() == 3
    assert image.GetScalarTypeAsString() == "unsigned char" and image.GetDimensions() == phantom.ct.shape[::-1]
    assert slicer.util.arrayFromVolume(pca).max() > 0
    n_nodes = scene.GetNumberOfNodes()
    assert logic.show_pca(ct_node) is pca and scene.GetNumberOfNodes() == n_nodes

    # a later session re-uses the cache on disk (no extraction); another volume's geometry is refused
    again = MedDINOv3Logic(scene, work_dir=tmp_path / "work2", user_dir=tmp_path / "user")
    again.attach_features(ct_node, cache.path)
    reused = volume_from_node(again.show_similarity(ct_node, _ras(phantom.ct, seed)))
    assert np.array_equal(reused.array, sim.array)
    moved = phantom.ct.with_array(phantom.ct.array)
    moved = type(moved)(moved.array, moved.spacing, (moved.origin[0] + 5.0, *moved.origin[1:]), moved.direction)
    other = add_volume_node(scene, moved, "shifted CT")
    with pytest.raises(RuntimeError, match="extracted from another volume or geometry"):
        again.attach_features(other, cache.path)
    assert not again.has_features(other)
    again.cleanup()


@pytest.mark.slow
def test_fewshot_finetune_on_three_painted_slices(scene, logic, ct_node, phantom, tmp_path):
    painted = np.zeros_like(phantom.labels.array)
    for k in (2, 4, 6):
        painted[k] = np.where(np.isin(phantom.labels.array[k], (1, 2)), phantom.labels.array[k], 0)
    table = [label for label in phantom.label_table if label["value"] in (1, 2)]
    seg = labelmap_to_segmentation(scene, phantom.labels.with_array(painted), table, ct_node, "painted")
    job = logic.finetune_job(
        ct_node,
        seg,
        MODEL,
        name="phantom-fewshot",
        extra_overrides=["iterations_per_epoch=15", "fewshot_pixels=2048", "batch_size=2"],
    )
    card = job.start().wait(timeout=120)
    assert (card / "config.json").is_file() and (card / "model.safetensors").is_file()
    config = json.loads((card / "config.json").read_text(encoding="utf-8"))
    assert [label["name"] for label in config["labels"]] == ["liver", "spleen"]
    assert config["labels"][0]["terminology"]["type"][1] == "10200004"  # the segment's terminology travelled
    listed = {m["name"]: m for m in logic.list_models()}
    assert listed["phantom-fewshot"]["path"] == str(card.resolve())
    # the new model segments through the same path
    seg2 = logic.segment(ct_node, "phantom-fewshot", device="cpu")
    labelmap, labels = segmentation_to_labelmap(seg2, ct_node)
    assert {label["name"] for label in labels} <= {"liver", "spleen"} and labelmap.array.any()


def test_rtstruct_export_core_writer(scene, logic, ct_node, phantom, tmp_path, dciodvfy):
    from MedDINOv3Core.dicom.rtstruct import read_rtstruct_rois

    seg = labelmap_to_segmentation(scene, phantom.labels, phantom.label_table, ct_node, "truth")
    path = logic.export_rtstruct(ct_node, seg, tmp_path / "rt", use_slicerrt=None)  # no SlicerRT in slicer-core
    assert path.name == "RTSTRUCT.dcm" and len(list((tmp_path / "rt" / "CT").glob("*.dcm"))) == phantom.ct.shape[0]
    assert dciodvfy(path) == []
    rois = read_rtstruct_rois(path)
    present = sorted(int(v) for v in np.unique(phantom.labels.array) if v > 0)
    names = {label["value"]: label["name"] for label in phantom.label_table}
    assert [r.name for r in rois] == [names[v] for v in present]
    liver = next(r for r in rois if r.name == "liver")
    assert liver.code is not None and liver.code[1] == "10200004"  # coded terminology travels
    with pytest.raises(RuntimeError, match="SlicerRT is not installed"):
        logic.export_rtstruct(ct_node, seg, tmp_path / "rt2", use_slicerrt=True)


def test_bad_inputs_give_clear_errors(scene, logic, ct_node, tmp_path):
    """No volume, no segmentation, an empty or unpainted segmentation, a folder that is not a model: each a
    message that says what to do, before any job starts."""
    from MedDINOv3SlicerLib.geometry import GeometryError
    from MedDINOv3SlicerLib.segmentation import SegmentationError

    with pytest.raises(GeometryError, match="select a volume first"):
        logic.segment_job(None, MODEL)
    with pytest.raises(SegmentationError, match="select \\(or create\\) a segmentation first"):
        logic.finetune_job(ct_node, None, MODEL)
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    with pytest.raises(SegmentationError, match="has no segments to export"):
        logic.finetune_job(ct_node, empty, MODEL)
    with pytest.raises(SegmentationError, match="has no segments to export"):
        logic.export_rtstruct(ct_node, empty, tmp_path / "rt")
    empty.GetSegmentation().AddEmptySegment("liver", "liver", [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="paint a few slices first"):
        logic.finetune_job(ct_node, empty, MODEL)
    with pytest.raises(ValueError, match="no voxels for any ROI; nothing to export"):
        logic.export_rtstruct(ct_node, empty, tmp_path / "rt")
    with pytest.raises(FileNotFoundError, match="is not a model card"):
        logic.register_model(tmp_path)
    assert not (tmp_path / "rt" / "RTSTRUCT.dcm").exists()
