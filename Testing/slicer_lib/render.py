"""Render what a Slicer user sees, offscreen, with Slicer's own code (a test helper; no Qt, no X server).

``SceneViews(scene)`` adds the Red (axial), Yellow (sagittal) and Green (coronal) slice views and a 3D view to a
scene, the way the application's layout does, and draws them:

- ``slice_rgb(view)``: the slice logic's composited image (background, foreground with its opacity, label layer)
  from ``vtkMRMLSliceLogic``: pure VTK image filters, no OpenGL, so it works everywhere.
- ``render_slice(view)``: that image plus what the 2D displayable managers draw over it (segmentation fill and
  outline, markups control points), in an offscreen render window.
- ``render_3d()``: the 3D view (segment closed surfaces, markups) through the 3D displayable managers.

Every image is a numpy uint8 (H, W, 3) array in screen orientation (row 0 at the top). ``gl_unavailable_reason()``
says why offscreen OpenGL cannot be used here (None when it can); ``save_montage`` writes images side by side as a PNG.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    # without an X server, go straight to EGL (VTK would first try X and log "bad X server connection")
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

SLICE_VIEWS = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
SLICE_DISPLAYABLE_MANAGERS = (
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLMarkupsDisplayableManager",
)
THREED_DISPLAYABLE_MANAGERS = (
    "vtkMRMLCameraDisplayableManager",
    "vtkMRMLSegmentationsDisplayableManager3D",
    "vtkMRMLMarkupsDisplayableManager",
)
BACKGROUND_3D = (0.0, 0.0, 0.0)

_GL_REASON: list[str | None] = []
# Run in a child process: a render window that cannot get a GL context may abort the whole process, not raise.
_GL_PROBE = """
import vtk
window = vtk.vtkRenderWindow()
window.SetOffScreenRendering(1)
window.SetSize(8, 8)
renderer = vtk.vtkRenderer()
renderer.SetBackground(1.0, 0.0, 0.0)
window.AddRenderer(renderer)
window.Render()
grab = vtk.vtkWindowToImageFilter()
grab.SetInput(window)
grab.Update()
red = grab.GetOutput().GetScalarComponentAsDouble(4, 4, 0, 0)
print("GLPROBE", window.GetClassName(), int(window.SupportsOpenGL()), int(red))
"""


def gl_unavailable_reason() -> str | None:
    """Why an offscreen OpenGL render window cannot draw here (None when it can); probed once per process, in a
    child process with this one's environment."""
    if _GL_REASON:
        return _GL_REASON[0]
    import subprocess
    import sys

    try:
        done = subprocess.run(
            [sys.executable, "-c", _GL_PROBE], capture_output=True, text=True, timeout=120, env=dict(os.environ)
        )
        line = next((x for x in done.stdout.splitlines() if x.startswith("GLPROBE ")), None)
        if line is None:
            stderr = re.sub(r"\x1b\[[0-9;]*m", "", done.stderr).strip()  # VTK's log colours
            tail = (stderr.splitlines() or ["no output"])[-1]
            reason = f"an offscreen render window failed (exit status {done.returncode}: {tail[:200]})"
        else:
            _, name, supported, red = line.split()
            reason = None
            if supported != "1":
                reason = f"{name} reports no OpenGL support"
            elif int(red) < 200:
                reason = f"{name} rendered nothing"
    except (OSError, subprocess.SubprocessError) as exc:
        reason = f"could not probe offscreen OpenGL: {exc}"
    _GL_REASON.append(reason)
    return reason


def _window_rgb(window) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    w, h, _ = image.GetDimensions()
    rgb = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[..., :3]
    return np.ascontiguousarray(rgb[::-1])  # VTK's row 0 is the bottom


def _image_rgb(image) -> np.ndarray:
    """A slice logic's RGBA image over the view's black background (as the slice view draws it), top row first."""
    from vtk.util.numpy_support import vtk_to_numpy

    w, h, _ = image.GetDimensions()
    scalars = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)
    if scalars.shape[2] == 1:
        scalars = np.repeat(scalars, 3, axis=2)
    rgb = scalars[..., :3].astype(np.float32)
    if scalars.shape[2] == 4:
        rgb *= scalars[..., 3:4].astype(np.float32) / 255.0
    return np.ascontiguousarray(np.rint(rgb[::-1]).astype(np.uint8))


class SceneViews:
    """Red/Yellow/Green slice views and a 3D view on ``scene``, drawn as Slicer draws them (see the module docstring).

    Args:
        scene: the MRML scene (its slice views are added here, as the application's layout adds them).
        size: each view's width and height in pixels.
        views: the slice views to add (layout name -> orientation).
    """

    def __init__(self, scene, size: int = 256, views: dict[str, str] | None = None) -> None:
        import slicer
        import vtk

        self.scene = scene
        self.size = int(size)
        self.app = slicer.vtkMRMLApplicationLogic()
        self.app.SetMRMLScene(scene)
        self.colors = slicer.vtkSlicerColorLogic()  # the default colour tables (Grey, Labels, ...)
        self.colors.SetMRMLApplicationLogic(self.app)
        warnings = vtk.vtkObject.GetGlobalWarningDisplay()
        vtk.vtkObject.GlobalWarningDisplayOff()  # slicer-core ships no colour files (Viridis.txt, ...): it says so
        try:
            self.colors.SetMRMLScene(scene)
        finally:
            vtk.vtkObject.SetGlobalWarningDisplay(warnings)
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.segmentations.SetMRMLScene(scene)
        self.markups = slicer.vtkSlicerMarkupsLogic()
        self.markups.SetMRMLScene(scene)
        self.app.SetModuleLogic("Markups", self.markups)
        self.slice_logics = {}
        for name, orientation in (views or SLICE_VIEWS).items():
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(scene)
            node = logic.AddSliceNode(name)
            node.SetOrientation(orientation)
            node.SetDimensions(self.size, self.size, 1)
            self.slice_logics[name] = logic
        self.app.SetSliceLogics(self._logic_collection())
        self.view_node = scene.AddNewNodeByClass("vtkMRMLViewNode")
        self.view_node.SetLayoutName("1")
        self.view_node.SetBackgroundColor(*BACKGROUND_3D)
        self.view_node.SetBackgroundColor2(*BACKGROUND_3D)
        self.view_node.SetBoxVisible(False)
        self.view_node.SetAxisLabelsVisible(False)

    def _logic_collection(self):
        import vtk

        collection = vtk.vtkCollection()
        for logic in self.slice_logics.values():
            collection.AddItem(logic)
        return collection

    @property
    def names(self) -> list[str]:
        return list(self.slice_logics)

    def composite_node(self, view: str):
        return self.slice_logics[view].GetSliceCompositeNode()

    def slice_node(self, view: str):
        return self.slice_logics[view].GetSliceNode()

    def fit(self) -> None:
        """Fit every slice view to its background volume (as Slicer does when a volume is shown)."""
        for logic in self.slice_logics.values():
            logic.FitSliceToAll()

    def jump_to(self, ras: Sequence[float]) -> None:
        """Move every slice view through the world RAS point (Slicer's default "jump slices" mode: offset, no pan)."""
        for logic in self.slice_logics.values():
            logic.GetSliceNode().JumpSliceByOffsetting(*[float(v) for v in ras])

    # ------------------------------------------------------------------------------------------------ no GL

    def slice_rgb(self, view: str) -> np.ndarray:
        """The slice logic's composited layers (no OpenGL): uint8 (H, W, 3); black when the view shows no volume."""
        connection = self.slice_logics[view].GetImageDataConnection()
        if connection is None:
            return np.zeros((self.size, self.size, 3), np.uint8)
        producer = connection.GetProducer()
        producer.Update()
        return _image_rgb(producer.GetOutputDataObject(0))

    def xy_to_ras(self, view: str) -> np.ndarray:
        """The 4x4 matrix from a slice view's pixel (x right, y up from the bottom, 0) to world RAS."""
        matrix = self.slice_node(view).GetXYToRAS()
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    def pixel_ras(self, view: str) -> np.ndarray:
        """The world RAS point of each pixel of a slice view: (H, W, 3), rows top to bottom as the images."""
        h = w = self.size
        ys, xs = np.mgrid[0:h, 0:w]
        xy = np.stack([xs.ravel(), (h - 1 - ys).ravel(), np.zeros(h * w), np.ones(h * w)], axis=0)
        return (self.xy_to_ras(view) @ xy)[:3].T.reshape(h, w, 3)

    def ras_to_pixel(self, view: str, ras: Sequence[float]) -> tuple[float, float]:
        """(row, column) of a world RAS point in a slice view's images (row 0 at the top)."""
        xy = np.linalg.inv(self.xy_to_ras(view)) @ np.array([*[float(v) for v in ras], 1.0])
        return self.size - 1 - float(xy[1]), float(xy[0])

    def sample(self, view: str, volume, outside=0) -> np.ndarray:
        """A core ``Volume``'s voxels (nearest) at each pixel of a slice view: (H, W), ``outside`` off the grid."""
        from MedDINOv3SlicerLib.geometry import ijk_to_ras_array

        ras = self.pixel_ras(view).reshape(-1, 3)
        ijk = np.linalg.inv(ijk_to_ras_array(volume)) @ np.c_[ras, np.ones(len(ras))].T
        i, j, k = np.rint(ijk[:3]).astype(np.int64)
        z, y, x = volume.shape
        ok = (i >= 0) & (i < x) & (j >= 0) & (j < y) & (k >= 0) & (k < z)
        array = np.asarray(volume.array)
        out = np.full(len(ras), outside, dtype=np.result_type(array.dtype, np.min_scalar_type(outside)))
        out[ok] = array[k[ok], j[ok], i[ok]]
        return out.reshape(self.size, self.size)

    # -------------------------------------------------------------------------------------------- with GL

    def _window(self, size: int):
        import vtk

        window = vtk.vtkRenderWindow()
        window.SetOffScreenRendering(1)
        window.SetSize(size, size)
        window.SetMultiSamples(0)
        renderer = vtk.vtkRenderer()
        window.AddRenderer(renderer)
        interactor = vtk.vtkGenericRenderWindowInteractor()  # the widgets need one; no X connection
        interactor.SetRenderWindow(window)
        return window, renderer

    def _draw(self, factory, managers, displayable_node, window, renderer, reset_camera: bool = False) -> np.ndarray:
        """Render ``displayable_node``'s view with the displayable managers ``managers``; release them after."""
        factory.SetMRMLApplicationLogic(self.app)
        for name in managers:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        group = factory.InstantiateDisplayableManagers(renderer)
        try:
            group.SetMRMLDisplayableNode(displayable_node)
            window.Render()
            if reset_camera:
                renderer.ResetCamera()
                window.Render()
            return _window_rgb(window)
        finally:
            group.SetMRMLDisplayableNode(None)  # stop observing the scene
            window.Finalize()

    def render_slice(self, view: str) -> np.ndarray:
        """The slice view as Slicer draws it: the composited layers, then the segmentation and markups on top."""
        import slicer
        import vtk

        reason = gl_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        window, renderer = self._window(self.size)
        logic = self.slice_logics[view]
        mapper = vtk.vtkImageMapper()
        mapper.SetInputConnection(logic.GetImageDataConnection())
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(mapper)
        renderer.AddViewProp(actor)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        return self._draw(factory, SLICE_DISPLAYABLE_MANAGERS, logic.GetSliceNode(), window, renderer)

    def render_3d(self, reset_camera: bool = True) -> np.ndarray:
        """The 3D view (segment surfaces, markups) as Slicer draws it."""
        import slicer

        reason = gl_unavailable_reason()
        if reason is not None:
            raise RuntimeError(reason)
        window, renderer = self._window(self.size)
        renderer.SetBackground(*BACKGROUND_3D)
        factory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        return self._draw(factory, THREED_DISPLAYABLE_MANAGERS, self.view_node, window, renderer, reset_camera)

    def render_all(self, slices_only: bool = False) -> dict[str, np.ndarray]:
        """Red, Yellow, Green (+ "3D") through the displayable managers."""
        out = {name: self.render_slice(name) for name in self.names}
        if not slices_only:
            out["3D"] = self.render_3d()
        return out


def save_montage(images: Sequence[np.ndarray], path: str | Path, gap: int = 4) -> Path:
    """Write RGB images (H, W, 3 uint8, same height) side by side, separated by ``gap`` dark pixels, as a PNG."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    height = max(image.shape[0] for image in images)
    parts = []
    for i, image in enumerate(images):
        if i:
            parts.append(np.full((height, gap, 3), 40, np.uint8))
        padded = np.zeros((height, image.shape[1], 3), np.uint8)
        padded[: image.shape[0]] = image[..., :3]
        parts.append(padded)
    montage = np.ascontiguousarray(np.concatenate(parts, axis=1)[::-1])  # VTK's row 0 is the bottom
    vtk_image = vtk.vtkImageData()
    vtk_image.SetDimensions(montage.shape[1], montage.shape[0], 1)
    vtk_image.GetPointData().SetScalars(numpy_to_vtk(montage.reshape(-1, 3), deep=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(vtk_image)
    writer.SetCompressionLevel(9)
    writer.Write()
    return path


__all__ = ["SLICE_VIEWS", "SceneViews", "gl_unavailable_reason", "save_montage"]
