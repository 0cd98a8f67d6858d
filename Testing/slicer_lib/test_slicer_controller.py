"""ModuleController (the module's state machine) on a real MRML scene with real background jobs.

Each test is a behaviour the user sees in the module panel: which buttons are enabled, what the status line says,
that a failure ends in a defined state (one error message, idle again), that a result lands in the parameter node,
that a closed scene forgets its job, that markups events without call data work, that leaving the module stops
point placement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

slicer = pytest.importorskip("slicer")

from MedDINOv3Core.data.phantom import make_phantom  # noqa: E402
from MedDINOv3SlicerLib.controller import ModuleController, export_folder  # noqa: E402
from MedDINOv3SlicerLib.geometry import add_volume_node, ijk_to_ras_array  # noqa: E402
from MedDINOv3SlicerLib.logic import MedDINOv3Logic  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODEL = "meddinov3-phantom-tiny"
LIVER = 1


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((8, 96, 96), seed=5)


class Panel:
    """What the module panel would show: the parameter node's fields, the errors shown, the change count."""

    def __init__(self, tmp_path: Path) -> None:
        self.params = SimpleNamespace(
            inputVolume=None,
            segmentation=None,
            model=MODEL,
            device="cpu",
            fineTuneMode="fewshot",
            fineTuneName="",
            exportDirectory=tmp_path / "export",
        )
        self.errors: list[tuple[str, str]] = []
        self.changes = 0


@pytest.fixture
def panel(tmp_path):
    return Panel(tmp_path)


@pytest.fixture
def controller(scene, panel, tmp_path):
    def new_logic():  # each logic makes (and on cleanup removes) its own work folder
        return MedDINOv3Logic(scene, user_dir=tmp_path / "user")

    def changed():
        panel.changes += 1

    c = ModuleController(
        params=lambda: panel.params,
        logic_factory=new_logic,
        on_change=changed,
        show_error=lambda message, details: panel.errors.append((message, details)),
        ensure_dependencies=lambda action: True,
    )
    yield c
    c.cleanup()


@pytest.fixture
def ct_node(scene, phantom, panel):
    node = add_volume_node(scene, phantom.ct, "phantom CT")
    panel.params.inputVolume = node
    return node


def _run(controller, timeout: float = 300) -> None:
    """What the Widget's QTimer does: poll until the job has ended."""
    deadline = time.monotonic() + timeout
    while controller.poll():
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.05)


def test_enabled_actions_follow_the_inputs(controller, panel, ct_node):
    panel.params.inputVolume = None
    state = controller.state()
    assert state.status == "Select a volume." and not any(state.enabled.values())
    panel.params.inputVolume = ct_node
    state = controller.state()
    assert state.enabled["segment"] and state.enabled["features"] and state.status == "Ready."
    assert not (state.enabled["finetune"] or state.enabled["export"] or state.enabled["pca"] or state.enabled["cancel"])
    panel.params.model = "dinov3-vits16-lvd1689m"  # a backbone: explores and fine-tunes, does not segment
    state = controller.state()
    assert state.enabled["features"] and not state.enabled["segment"]
    panel.params.model = "not-a-listed-model"
    assert not controller.state().enabled["features"]


def test_segment_writes_into_the_selected_segmentation_and_lands_in_the_parameter_node(
    scene, controller, panel, ct_node
):
    chosen = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "my segmentation")
    chosen.GetSegmentation().AddEmptySegment("old", "old")
    panel.params.segmentation = chosen
    controller.segment()
    state = controller.state()
    assert state.busy and state.enabled == {
        "segment": False, "features": False, "similarity": False, "pca": False, "region": False,
        "finetune": False, "preview": False, "export": False, "cancel": True,
    }  # fmt: skip
    assert state.progress is not None
    _run(controller)
    assert panel.errors == []
    assert panel.params.segmentation is chosen  # written where the module said, not into a new node
    names = [
        chosen.GetSegmentation().GetNthSegment(i).GetName()
        for i in range(chosen.GetSegmentation().GetNumberOfSegments())
    ]
    assert "liver" in names and "old" not in names
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    state = controller.state()
    assert not state.busy and state.progress is None and state.status.startswith("Segmented:")


def test_a_failed_job_ends_failed_with_one_message_and_idle_buttons(controller, panel, ct_node):
    panel.params.model = "no-such-model"
    controller.models["no-such-model"] = {"name": "no-such-model", "task": "segmentation"}
    controller.segment()
    _run(controller)
    assert len(panel.errors) == 1 and "unknown model 'no-such-model'" in panel.errors[0][0]
    state = controller.state()
    assert state.status.startswith("Segment failed: ") and not state.busy
    assert state.enabled["segment"] and not state.enabled["cancel"]


def test_a_failure_before_the_job_starts_is_shown_not_raised(scene, controller, panel, ct_node):
    empty = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    panel.params.segmentation = empty
    controller.finetune()  # nothing painted: the logic refuses before starting anything
    assert len(panel.errors) == 1 and "has no segments to export" in panel.errors[0][0]
    assert not controller.busy and controller.state().status.startswith("Starting 'Fine-tune' failed")


def test_declining_the_packages_starts_nothing(scene, panel, ct_node, tmp_path):
    asked = []

    def decline(action):
        asked.append(action)
        return False

    c = ModuleController(
        params=lambda: panel.params,
        logic_factory=lambda: MedDINOv3Logic(scene, work_dir=tmp_path / "w", user_dir=tmp_path / "u"),
        show_error=lambda message, details: panel.errors.append(message),
        ensure_dependencies=decline,
    )
    c.segment()
    assert asked == ["segment"] and not c.busy and panel.errors == []
    assert c.state().status.startswith("Cancelled: MedDINOv3 cannot run this without its Python packages")
    c.cleanup()


def test_cancel_ends_cancelled(controller, panel, ct_node):
    controller.compute_features()
    controller.cancel()
    _run(controller)
    assert controller.state().status == "Compute features: cancelled." and panel.errors == []
    assert not controller.logic.has_features(ct_node)


def test_scene_close_forgets_a_job_that_exited_but_was_not_polled(scene, controller, panel, ct_node):
    controller.segment()
    job = controller._running.job.jobs["predicting"]  # the one step of a plain model's Segment
    job._process.wait(timeout=300)  # the process has exited; the Widget's timer has not polled yet
    while job.running:
        time.sleep(0.05)
    old_work_dir = controller.logic.work_dir
    controller.scene_closing()
    scene.Clear(0)
    assert not controller.poll()  # nothing of the old job runs afterwards
    assert panel.params.segmentation is None and panel.errors == []
    assert scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0
    assert not old_work_dir.exists() and controller.logic.work_dir.is_dir()
    assert "cancelled (the scene was closed)" in controller.state().status


def _liver_ras(phantom) -> list[float]:
    zyx = np.argwhere(phantom.labels.array == LIVER)
    z, y, x = zyx[len(zyx) // 2]
    return list((ijk_to_ras_array(phantom.ct) @ np.array([x, y, z, 1.0]))[:3])


def test_point_events_with_and_without_call_data(scene, controller, panel, ct_node, phantom, capfd):
    controller.compute_features()
    _run(controller)
    assert controller.state().enabled["similarity"] and controller.state().enabled["pca"]
    node = controller.point_node
    assert node is not None and node.GetName() == "MedDINOv3 similarity point"
    node.AddControlPoint(*_liver_ras(phantom))  # PointPositionDefinedEvent with the point's index
    overlay = controller.logic.similarity_overlay.node
    assert overlay is not None and controller.state().status.startswith("Similarity to R ")
    before = slicer.util.arrayFromVolume(overlay).copy()
    node.SetNthControlPointPositionWorld(0, *phantom.ct.origin)  # a drag: an event with the point's index
    after = slicer.util.arrayFromVolume(overlay)
    assert not np.array_equal(before, after) and panel.errors == []
    # a deferred point event: Slicer fires it with a NULL call-data pointer (handles moved, transform hardened);
    # VTK then calls the observer without the index (and only prints the TypeError if the observer needs one)
    capfd.readouterr()
    changes = panel.changes
    node.InvokeEvent(node.PointModifiedEvent)
    assert "TypeError" not in capfd.readouterr().err
    assert panel.changes > changes and controller.state().status.startswith("Similarity to R ")
    # a second placed point replaces the first: the overlay always belongs to the one visible point
    node.AddControlPoint(*_liver_ras(phantom))
    assert node.GetNumberOfControlPoints() == 1


def test_overlay_controls_and_pca(scene, controller, panel, ct_node, phantom):
    controller.compute_features()
    _run(controller)
    controller.show_pca()
    pca = controller.logic.pca_overlay.node
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    controller.show_pca()
    assert composite.GetForegroundVolumeID() == pca.GetID() and composite.GetBackgroundVolumeID() == ct_node.GetID()
    controller.apply_overlay_settings(0.8, 0.3)
    assert composite.GetForegroundOpacity() == pytest.approx(0.8)
    controller.hide_overlays()
    assert composite.GetForegroundVolumeID() is None and panel.errors == []


def test_leaving_the_module_stops_persistent_point_placement(scene, controller, panel, ct_node):
    app = slicer.vtkMRMLApplicationLogic()
    app.SetMRMLScene(scene)
    interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
    selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
    node = controller.ensure_point_node()
    selection.SetActivePlaceNodeID(node.GetID())
    interaction.SetPlaceModePersistence(1)
    interaction.SetCurrentInteractionMode(interaction.Place)
    controller.module_exit()
    assert interaction.GetCurrentInteractionMode() == interaction.ViewTransform
    assert not interaction.GetPlaceModePersistence()
    # placing another module's markups is left alone
    other = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "someone else's")
    selection.SetActivePlaceNodeID(other.GetID())
    interaction.SetPlaceModePersistence(1)
    interaction.SetCurrentInteractionMode(interaction.Place)
    controller.module_exit()
    assert interaction.GetCurrentInteractionMode() == interaction.Place


def test_a_failed_model_folder_keeps_the_selection(controller, panel, tmp_path):
    (tmp_path / "not-a-card").mkdir()
    assert not controller.load_model_folder(str(tmp_path / "not-a-card"))
    assert panel.params.model == MODEL and len(panel.errors) == 1 and "is not a model card" in panel.errors[0][0]
    assert not controller.load_model_folder("")  # the folder dialog was cancelled
    assert len(panel.errors) == 1


def test_export_writes_a_new_folder_each_time(scene, controller, panel, ct_node, phantom):
    controller.segment()
    _run(controller)
    first = controller.export(now=0)
    second = controller.export(now=3600)
    assert panel.errors == [] and first and second and first.parent != second.parent
    assert first.is_file() and second.is_file()
    assert export_folder("/x", "CT: head/neck", 0).name.startswith("CT__head_neck-")


def test_listing_models_of_a_custom_registry_imports_no_torch(tmp_path):
    """A registry entry with an architecture is validated without torch: the Widget's setup lists the models."""
    registry = json.loads((ROOT / "Resources" / "models.json").read_text(encoding="utf-8"))
    registry["models"]["custom-backbone"] = {
        "repo_id": "org/custom",
        "revision": "0" * 40,
        "files": ["config.json", "model.safetensors"],
        "weights": "model.safetensors",
        "format": "model_card",
        "task": "backbone",
        "license": "apache-2.0",
        "description": "a custom backbone",
        "architecture": {"num_heads": 2},
    }
    path = tmp_path / "models.json"
    path.write_text(json.dumps(registry), encoding="utf-8")
    code = (
        "import sys, slicer\n"
        "from MedDINOv3SlicerLib.controller import ModuleController\n"
        "from MedDINOv3SlicerLib.logic import MedDINOv3Logic\n"
        f"work = {str(tmp_path / 'w')!r}\n"
        "c = ModuleController(lambda: None, lambda: MedDINOv3Logic(slicer.vtkMRMLScene(), work_dir=work))\n"
        "assert 'custom-backbone' in c.models, sorted(c.models)\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "MEDDINOV3_REGISTRY": str(path), "PYTHONPATH": str(ROOT / "MedDINOv3Slicer")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
