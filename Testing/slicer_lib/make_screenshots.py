"""Write the Slicer module's screenshots: what the user sees after Segment, a similarity click and Show PCA.

    python Testing/slicer_lib/make_screenshots.py [--out Resources/Screenshots] [--size 320]

Runs the REAL module logic (MedDINOv3Logic, background ``python -m training`` jobs on the embedded
"meddinov3-phantom-tiny" model, CPU) on a phantom CT and draws the Red/Yellow/Green slice views (+ the 3D view after
Segment) with Slicer's own rendering code offscreen (``render.py``). Needs slicer-core (CPython 3.11) and offscreen
OpenGL (EGL without an X server). Writes slicer_segment.png, slicer_similarity.png and slicer_pca.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for folder in (HERE, ROOT / "MedDINOv3Slicer", ROOT):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

MODEL = "meddinov3-phantom-tiny"
SHAPE = (48, 192, 192)  # the model's training size
SEED = 3
CT_WINDOW, CT_LEVEL = 400.0, 40.0  # Slicer's "CT-Abdomen" preset, as a user reading an abdomen sets it


def organ_ras(phantom, name: str):
    import numpy as np

    from MedDINOv3Core.data.phantom import LABEL_VALUES
    from MedDINOv3SlicerLib.geometry import ijk_to_ras_array

    zyx = np.argwhere(phantom.labels.array == LABEL_VALUES[name])
    z, y, x = zyx[len(zyx) // 2]
    return (ijk_to_ras_array(phantom.ct) @ np.array([x, y, z, 1.0]))[:3]


def make_screenshots(out: Path, size: int = 320, device: str = "cpu") -> list[Path]:
    import slicer
    from render import SceneViews, gl_unavailable_reason, save_montage

    from MedDINOv3Core.data.phantom import make_phantom
    from MedDINOv3SlicerLib.geometry import add_volume_node
    from MedDINOv3SlicerLib.logic import MedDINOv3Logic

    reason = gl_unavailable_reason()
    if reason is not None:
        raise SystemExit(f"cannot draw the views here: {reason}")
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    phantom = make_phantom(SHAPE, seed=SEED)
    shown = SceneViews(scene, size=size)
    ct = add_volume_node(scene, phantom.ct, "phantom CT")
    ct.GetDisplayNode().AutoWindowLevelOff()
    ct.GetDisplayNode().SetWindowLevel(CT_WINDOW, CT_LEVEL)
    written = []
    with tempfile.TemporaryDirectory(prefix="meddinov3-screenshots-") as work:
        logic = MedDINOv3Logic(scene, work_dir=work, user_dir=Path(work) / "user")
        print("segmenting ...", flush=True)
        segmentation = logic.segment(ct, MODEL, device=device)
        shown.fit()
        liver = organ_ras(phantom, "liver")
        shown.jump_to(liver)
        views = shown.render_all()
        written.append(save_montage(list(views.values()), out / "slicer_segment.png"))

        print("extracting features ...", flush=True)
        logic.explore_job(ct, MODEL, device=device).start().wait()
        segmentation.GetDisplayNode().SetVisibility(False)
        click = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "click")
        click.CreateDefaultDisplayNodes()
        click.AddControlPoint(*liver)
        logic.show_similarity(ct, liver)
        written.append(save_montage(list(shown.render_all(slices_only=True).values()), out / "slicer_similarity.png"))

        click.GetDisplayNode().SetVisibility(False)
        logic.show_pca(ct)
        written.append(save_montage(list(shown.render_all(slices_only=True).values()), out / "slicer_pca.png"))
        logic.cleanup()
    scene.Clear(1)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshots", help="output folder")
    parser.add_argument("--size", type=int, default=320, help="pixels per view (default 320)")
    parser.add_argument("--device", default="cpu", help="the jobs' device (default cpu)")
    args = parser.parse_args(argv)
    for path in make_screenshots(args.out, args.size, args.device):
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
