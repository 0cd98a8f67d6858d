"""The few-shot loop in the module on a real MRML scene with real background jobs: paint -> Fine-tune -> Segment ->
correct -> Fine-tune again -> Segment on ONE feature cache; the instant preview; region from a click -> segment.

The second round must do no backbone pass. What shows it cannot pass by accident: round 2's jobs run with a
``sitecustomize`` on PYTHONPATH that makes ``VisionTransformer.prepare_tokens`` (the entry of every backbone forward
pass) raise, so a backbone pass fails the job; and the cache's features file keeps its inode and mtime.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

slicer = pytest.importorskip("slicer")

from MedDINOv3Core.data.phantom import make_phantom  # noqa: E402
from MedDINOv3Core.metrics import dice  # noqa: E402
from MedDINOv3Core.volume_io import read_volume  # noqa: E402
from MedDINOv3SlicerLib.controller import ModuleController  # noqa: E402
from MedDINOv3SlicerLib.fewshot_loop import FewShotLoop  # noqa: E402
from MedDINOv3SlicerLib.geometry import (  # noqa: E402
    add_volume_node,
    ijk_to_ras_array,
    ras_to_lps_point,
    volume_from_node,
)
from MedDINOv3SlicerLib.logic import MedDINOv3Logic  # noqa: E402
from MedDINOv3SlicerLib.segmentation import labelmap_to_segmentation, segmentation_to_labelmap  # noqa: E402

MODEL = "meddinov3-phantom-tiny"
LIVER = 1
SHAPE = (16, 64, 64)
FAST = ["iterations_per_epoch=25", "fewshot_pixels=2048"]
NO_BACKBONE = '''
import importlib.abc, importlib.util, sys

class _NoBackbone(importlib.abc.MetaPathFinder):
    """Makes every backbone forward pass raise (the test's proof that a job read the feature cache instead)."""

    def find_spec(self, name, path=None, target=None):
        if name != "MedDINOv3Core.models.vit":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)

            def refuse(*args, **kwargs):
                raise RuntimeError("a backbone pass (VisionTransformer.prepare_tokens) in a job that reads the cache")

            module.VisionTransformer.prepare_tokens = refuse

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _NoBackbone())
'''


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(SHAPE, seed=5)


@pytest.fixture
def logic(scene, tmp_path):
    lg = MedDINOv3Logic(scene, work_dir=tmp_path / "work", user_dir=tmp_path / "user")
    yield lg
    lg.cleanup()


@pytest.fixture
def ct(scene, phantom):
    return add_volume_node(scene, phantom.ct, "phantom CT")


def _liver_label(phantom) -> list[dict]:
    return [label for label in phantom.label_table if label["value"] == LIVER]


def _paint(scene, phantom, ct, slices, node=None):
    """A segmentation holding the true liver on ``slices`` only (what a user paints)."""
    painted = np.zeros_like(phantom.labels.array)
    for k in slices:
        painted[k] = phantom.labels.array[k] == LIVER
    return labelmap_to_segmentation(scene, phantom.labels.with_array(painted), _liver_label(phantom), ct, "liver", node)


def _liver_ras(phantom, k: int | None = None) -> list[float]:
    zyx = np.argwhere(phantom.labels.array == LIVER)
    if k is not None:
        zyx = zyx[zyx[:, 0] == k]
    z, y, x = zyx[len(zyx) // 2]
    return list((ijk_to_ras_array(phantom.ct) @ np.array([x, y, z, 1.0]))[:3])


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


def _labelled_slices(chain) -> list[int]:
    """The slices a training job's dataset labels (the rest is the ignore label)."""
    data = Path(chain.jobs["training"].command[chain.jobs["training"].command.index("--data") + 1])
    import json

    ignore = json.loads((data / "dataset.json").read_text(encoding="utf-8"))["labels"]["ignore"]
    labels = read_volume(data / "labelsTr" / "case.nrrd").array
    return [k for k in range(labels.shape[0]) if (labels[k] != ignore).any()]


def test_two_rounds_of_the_loop_do_one_backbone_pass(scene, logic, ct, phantom, tmp_path, monkeypatch):
    """Five real jobs (16 s on an idle 2-core CPU; each starts Python + torch and loads the model)."""
    loop = FewShotLoop(logic)
    seg = _paint(scene, phantom, ct, (6, 9))
    t0 = time.perf_counter()

    # round 1: the features are extracted once (a job step), then the head trains on them
    chain = loop.finetune_job(ct, seg, MODEL, name="round-1", device="cpu", extra_overrides=FAST)
    steps = []
    chain.wait(progress=lambda stage, *rest: steps.append(stage), timeout=120)
    assert set(chain.jobs) == {"features", "training"} and steps[0] == "features" and "training" in steps
    assert _labelled_slices(chain) == [6, 9]
    cache = logic.features_for(ct, "round-1")
    assert cache is not None and cache == logic.features_for(ct, MODEL)  # the few-shot model's cache is its base's
    assert "--features" in chain.jobs["training"].command
    before = _stat(cache / "features.npy")

    chain = loop.segment_job(ct, "round-1", device="cpu", segmentation_node=seg)
    seg = chain.wait(timeout=120)
    assert set(chain.jobs) == {"predicting"}  # the cache was there: no feature job
    result, _ = segmentation_to_labelmap(seg, ct)
    truth = phantom.labels.array == LIVER

    # the user corrects slice 11 and erases slice 2 (whatever the result had there); the rest is left alone
    corrected = result.array.copy()
    corrected[11] = truth[11]
    corrected[2] = 0
    labelmap_to_segmentation(scene, result.with_array(corrected), _liver_label(phantom), ct, "liver", seg)

    # round 2: warm start from round 1, features from the cache; any backbone pass would fail the jobs
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "sitecustomize.py").write_text(NO_BACKBONE, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(guard), os.environ.get("PYTHONPATH", "")]))
    chain = loop.finetune_job(ct, seg, "round-1", name="round-2", device="cpu", extra_overrides=FAST)
    steps = []
    chain.wait(progress=lambda stage, done, total, message: steps.append((stage, message)), timeout=120)
    assert set(chain.jobs) == {"training"} and steps[0] == ("features", "ready (cached)")
    changed = sorted({6, 9, 11} | {2} & {k for k in range(SHAPE[0]) if result.array[k].any()})
    assert _labelled_slices(chain) == changed  # the trained slices + the corrected ones; the rest ignored
    chain = loop.segment_job(ct, "round-2", device="cpu", segmentation_node=seg)
    seg = chain.wait(timeout=120)
    assert set(chain.jobs) == {"predicting"}
    assert any("from cache" in event.message for event in chain.events)
    assert _stat(cache / "features.npy") == before  # the cache was not rewritten
    final, _ = segmentation_to_labelmap(seg, ct)
    dsc = dice(final.array.astype(np.uint8), truth.astype(np.uint8), labels=[1])[1]
    assert dsc > 0.6, dsc
    print(f"two rounds in {time.perf_counter() - t0:.1f} s, DSC {dsc:.3f}")


# ------------------------------------------------------------------------------------------ module controls


@pytest.fixture
def panel(tmp_path):
    return SimpleNamespace(
        inputVolume=None,
        segmentation=None,
        model=MODEL,
        device="cpu",
        fineTuneMode="fewshot",
        fineTuneName="",
        exportDirectory=tmp_path / "export",
        similarityThreshold=0.65,
    )


@pytest.fixture
def controller(scene, panel, ct, tmp_path):
    errors = []
    c = ModuleController(
        params=lambda: panel,
        logic_factory=lambda: MedDINOv3Logic(scene, user_dir=tmp_path / "user"),
        show_error=lambda message, details: errors.append(message),
        ensure_dependencies=lambda action: True,
    )
    c.errors = errors
    panel.inputVolume = ct
    c.compute_features()
    while c.poll():
        time.sleep(0.05)
    assert errors == []
    yield c
    c.cleanup()


def test_region_from_click_becomes_a_segment(scene, controller, panel, ct, phantom):
    from MedDINOv3Core.explore import points_to_index, region_from_similarity, similarity_map

    assert not controller.state().enabled["region"]  # no click yet
    ras = _liver_ras(phantom)
    controller.point_node.AddControlPoint(*ras)
    assert controller.state().enabled["region"]
    controller.region_to_segment()
    assert controller.errors == [] and controller.state().status.startswith("Segment 'Region 1' added")
    seg = panel.segmentation
    assert seg is not None and seg.GetSegmentation().GetNumberOfSegments() == 1
    labelmap, labels = segmentation_to_labelmap(seg, ct)
    cache, _ = controller.logic._cache(ct)
    lps = ras_to_lps_point(np.asarray(ras))
    expected = region_from_similarity(similarity_map(cache, lps, space="lps"), lps, 0.65, space="lps", geometry=cache)
    np.testing.assert_array_equal(labelmap.array == 1, expected)  # exactly the region, on the volume's voxels
    truth = phantom.labels.array == LIVER
    z, y, x = points_to_index(cache, lps, "lps")[0]
    assert expected[z, y, x] and truth[z, y, x]  # the region holds the click
    # similar tissue: the liver is several times denser in the region than in the volume (the features' quality
    # is the core's business; here the module must add exactly the region)
    assert (expected & truth).sum() / expected.sum() > 3 * truth.mean()
    # a second click region goes into the same node as a new segment; a too-high threshold says what to do
    panel.similarityThreshold = 0.999
    controller.region_to_segment()
    assert "lower it" in controller.errors[-1] and seg.GetSegmentation().GetNumberOfSegments() == 1


@pytest.fixture
def shown(scene):
    """Red/Yellow/Green slice views on the scene (set up before, torn down after the controller)."""
    from render import SceneViews

    return SceneViews(scene, size=128)


def test_preview_shows_the_painted_organ_in_the_slice_views(scene, shown, controller, panel, ct, phantom, tmp_path):
    from render import save_montage

    panel.segmentation = _paint(scene, phantom, ct, (6, 9))
    assert controller.state().enabled["preview"]
    t0 = time.perf_counter()
    controller.preview()
    seconds = time.perf_counter() - t0  # reported, not asserted (no timed tests)
    assert controller.errors == [], controller.errors
    node = controller.loop.preview.node
    assert node is not None and node.IsA("vtkMRMLLabelMapVolumeNode")
    preview = slicer.util.arrayFromVolume(node)
    truth = phantom.labels.array == LIVER
    unpainted = [k for k in range(SHAPE[0]) if k not in (6, 9) and truth[k].any()]
    # exactly the core's preview of the painted slices (liver = 1, the rest of slices 6 and 9 background = 0,
    # every other slice the ignore label 2)
    from MedDINOv3Core.fewshot_preview import preview_labels

    painted = np.full(SHAPE, 2, dtype=np.uint8)
    painted[[6, 9]] = truth[[6, 9]]
    np.testing.assert_array_equal(preview, preview_labels(controller.logic._cache(ct)[0], painted, ignore_value=2))
    dsc = dice((preview[unpainted] == 1).astype(np.uint8), truth[unpainted].astype(np.uint8), labels=[1])[1]
    assert dsc > 0.35, dsc  # a coarse patch-level guess on this 64 x 64 phantom, from two painted slices
    # what the user sees: the red view at an unpainted slice, the preview's label layer over the liver only
    shown.fit()
    shown.jump_to(_liver_ras(phantom, 8))
    with_preview = shown.slice_rgb("Red").astype(float)
    save_montage([with_preview.astype(np.uint8)], tmp_path / "preview_red.png")
    controller.hide_preview()
    assert all(shown.composite_node(name).GetLabelVolumeID() is None for name in shown.names)
    plain = shown.slice_rgb("Red").astype(float)
    shown_preview = shown.sample("Red", volume_from_node(node))
    liver, rest = shown_preview == LIVER, shown_preview == 0
    assert liver.sum() > 20 and rest.sum() > 20
    colour = 255 * np.asarray(phantom.label_table[0]["color"])  # the painted segment's colour
    tinted = np.abs(with_preview - (0.5 * plain + 0.5 * colour)).max(axis=-1) < 12  # half-opaque label layer
    interior = ndimage.binary_erosion(liver, iterations=1)
    assert tinted[interior].mean() > 0.9, tinted[interior].mean()
    assert (np.abs(with_preview - plain).max(axis=-1) > 6)[ndimage.binary_erosion(rest, iterations=1)].mean() < 0.02
    print(f"preview: {seconds * 1000:.0f} ms, DSC {dsc:.3f} on the unpainted liver slices")


def test_the_status_says_which_step_runs(controller, panel, ct, scene, phantom, monkeypatch):
    """Fine-tune (few-shot) runs as steps; the status line and the progress bar follow the step that runs."""
    import json
    import sys

    from MedDINOv3SlicerLib.job_chain import JobChain
    from MedDINOv3SlicerLib.jobs import Job

    def job(stage, total):
        lines = [json.dumps({"stage": stage, "done": d, "total": total}) for d in range(1, total + 1)]
        return Job(
            [sys.executable, "-c", "import time\n" + "".join(f"print({line!r}); time.sleep(0.2)\n" for line in lines)]
        )

    made = []

    def finetune_job(volume, segmentation, model, name=None, device="auto"):
        made.append((volume, segmentation, model))
        return JobChain([("features", lambda _: job("features", 2)), ("training", lambda _: job("finetune", 3))])

    monkeypatch.setattr(controller.loop, "finetune_job", finetune_job)
    panel.segmentation = _paint(scene, phantom, ct, (6, 9))
    controller.finetune()
    seen = []
    while controller.poll():
        state = controller.state()
        seen.append((state.status, state.progress))
        time.sleep(0.05)
    assert made == [(ct, panel.segmentation, MODEL)]
    statuses = [status for status, _ in seen]
    assert any(s.startswith("Fine-tune: features - features") for s in statuses)
    assert any(s.startswith("Fine-tune: training - finetune") for s in statuses)
    progress = [p for status, p in seen if status.startswith("Fine-tune: training")]
    assert (0, 0) in progress or progress[0][1] == 3  # a new step starts the bar afresh
    assert (3, 3) in [p for _, p in seen]


def test_features_in_the_per_user_cache_come_back_from_the_job(scene, ct, phantom, tmp_path, monkeypatch):
    """Without a features folder the CLI keys the cache by content under ~/.cache/meddinov3/features (valid across
    sessions); the module learns where from the job's "done" line, and a second extraction reuses it."""
    from MedDINOv3SlicerLib import logic as logic_module

    monkeypatch.setattr(logic_module, "default_features_root", lambda: None)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the job's Path.home()
    lg = MedDINOv3Logic(scene, work_dir=tmp_path / "work", user_dir=tmp_path / "user")
    job = lg.explore_job(ct, MODEL, device="cpu")
    assert "--cache-dir" not in job.command and job.command[job.command.index("--layers") + 1] == "multiscale"
    cache = job.start().wait(timeout=120)
    assert Path(cache.path).parent == tmp_path / "home" / ".cache" / "meddinov3" / "features"
    assert lg.features_for(ct, MODEL) == Path(cache.path)
    before = _stat(Path(cache.path) / "features.npy")
    again = MedDINOv3Logic(scene, work_dir=tmp_path / "work2", user_dir=tmp_path / "user")  # a later session
    job = again.explore_job(ct, MODEL, device="cpu")
    assert Path(job.start().wait(timeout=120).path) == Path(cache.path)
    assert any(event.message == "cached" for event in job.events)
    assert _stat(Path(cache.path) / "features.npy") == before
    lg.cleanup()
    again.cleanup()
