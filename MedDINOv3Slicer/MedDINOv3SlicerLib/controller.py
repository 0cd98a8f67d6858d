"""ModuleController: the MedDINOv3 module's state machine, Qt-free (the Widget only wires widgets to it).

It owns what the user sees change: which actions are enabled, the one running job, the progress and the status
line, and what happens on finish, failure, Cancel, scene close and module exit. Every action ends in a defined
state: a failure becomes a status line plus ``show_error(message, details)`` (nothing is re-raised into a Qt slot),
a job's result lands in the parameter node also after the user left the module, and a closed scene forgets its job
whatever the job's state (nothing of it runs afterwards).

The Widget calls::

    controller = ModuleController(params=lambda: parameterNode, on_change=updateGui, show_error=errorDisplay,
                                  schedule=lambda f: qt.QTimer.singleShot(0, f))
    controller.segment()          # buttons
    while controller.poll(): ...  # a QTimer, every POLL_INTERVAL_MS while ``controller.busy``
    controller.state()            # -> ViewState (enabled actions, status, progress)

``params()`` returns the module's parameter node (any object with the attributes listed in ``PARAMETERS``).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import vtk

from MedDINOv3SlicerLib import dependencies
from MedDINOv3SlicerLib.jobs import JobCancelled

log = logging.getLogger(__name__)

PARAMETERS = ("inputVolume", "segmentation", "model", "device", "fineTuneMode", "fineTuneName", "exportDirectory")
ACTIONS = ("segment", "features", "similarity", "pca", "region", "finetune", "preview", "export", "cancel")
POINT_NODE_NAME = "MedDINOv3 similarity point"
SELECT_VOLUME = "Select a volume."


@dataclass
class ViewState:
    """What the Widget shows: ``enabled[action]``, the status line, and the progress (None: idle; (0, 0): busy
    with an unknown total; (done, total))."""

    enabled: dict[str, bool] = field(default_factory=dict)
    status: str = ""
    progress: tuple[int, int] | None = None
    busy: bool = False


@dataclass
class _Running:
    job: Any
    title: str
    on_done: Callable[[Any], str]
    progress: tuple[int, int] = (0, 0)


def export_folder(base: str | Path, volume_name: str, now: float | None = None) -> Path:
    """One new folder per export, ``<base>/<volume>-<YYYYmmdd-HHMMSS>``: a CT series and its structure set never mix
    with an earlier export's."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in volume_name) or "volume"
    return Path(base) / f"{name}-{stamp}"


class ModuleController:
    """See the module docstring.

    Args:
        params: returns the parameter node (``PARAMETERS``).
        logic_factory: ``() -> MedDINOv3Logic`` (a new logic after each scene close).
        on_change: called after every state change (the Widget re-reads ``state()``).
        show_error: ``(message, details)`` shows an error to the user (the Widget: an error dialog).
        ensure_dependencies: ``(action) -> bool`` installs what an action needs after asking; False = declined.
        schedule: ``(callable) -> None`` runs a callable on the next event-loop turn (coalesces point drags);
            default: at once.
    """

    def __init__(
        self,
        params: Callable[[], Any],
        logic_factory: Callable[[], Any] | None = None,
        on_change: Callable[[], None] | None = None,
        show_error: Callable[[str, str], None] | None = None,
        ensure_dependencies: Callable[[str], bool] = dependencies.ensure,
        schedule: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
        if logic_factory is None:
            from MedDINOv3SlicerLib.logic import MedDINOv3Logic as logic_factory
        self.params = params
        self.logic_factory = logic_factory
        self.logic = logic_factory()
        self.on_change = on_change or (lambda: None)
        self.show_error = show_error or (lambda message, details: log.error("%s\n%s", message, details))
        self.ensure_dependencies = ensure_dependencies
        self.schedule = schedule or (lambda function: function())
        self.models: dict[str, dict[str, Any]] = {}
        self.point_node = None
        self.last_click = None  # world RAS of the point the similarity overlay shows
        self._loop = None
        self._running: _Running | None = None
        self._status = ""
        self._point_pending = False
        self._ready: set[str] = set()  # actions whose dependencies are installed
        self._overlay_settings: tuple[float, float] | None = None  # (opacity, similarity threshold) last applied
        self.refresh_models()

    # ------------------------------------------------------------------------------------------------ state

    @property
    def busy(self) -> bool:
        return self._running is not None

    @property
    def loop(self):
        """The few-shot loop over the current logic (a new one after a scene close)."""
        if self._loop is None or self._loop.logic is not self.logic:
            from MedDINOv3SlicerLib.fewshot_loop import FewShotLoop

            self._loop = FewShotLoop(self.logic)
        return self._loop

    def state(self) -> ViewState:
        """Enabled actions from the parameter node and the running job; the status line; the progress."""
        p = self.params()
        volume = getattr(p, "inputVolume", None) if p is not None else None
        segmentation = getattr(p, "segmentation", None) if p is not None else None
        model = self.models.get(getattr(p, "model", None)) if p is not None else None
        busy = self.busy
        features = not busy and self.logic.has_features(volume)
        can_run = not busy and volume is not None and model is not None
        enabled = {
            "segment": can_run and model.get("task") == "segmentation",
            "features": can_run,
            "similarity": features,
            "pca": features,
            "region": features and self.last_click is not None,
            "finetune": can_run and segmentation is not None,
            "preview": features and segmentation is not None,
            "export": not busy and volume is not None and segmentation is not None and bool(str(p.exportDirectory)),
            "cancel": busy,
        }
        status = self._status
        if not busy and volume is None:
            status = SELECT_VOLUME
        elif not status or status == SELECT_VOLUME:
            status = "Ready."
        progress = self._running.progress if busy else None
        return ViewState(enabled=enabled, status=status, progress=progress, busy=busy)

    def _fail(self, title: str, exc: BaseException) -> None:
        """A failure ends here: a status line and one error message (details: the CLI's stderr or a traceback)."""
        details = getattr(exc, "stderr", "") or "".join(traceback.format_exception(exc))
        log.error("%s failed: %s", title, exc)
        self._status = f"{title} failed: {exc}"
        self.on_change()
        self.show_error(f"{title} failed: {exc}", details)

    def _attempt(self, title: str, function: Callable[[], Any]) -> Any:
        """Run ``function``; a failure is reported (``_fail``) and None returned: the UI stays in a defined state."""
        try:
            return function()
        except Exception as exc:  # noqa: BLE001 - every failure is shown, never raised into a Qt slot
            self._fail(title, exc)
            return None
        finally:
            self.on_change()

    # ----------------------------------------------------------------------------------------------- models

    def refresh_models(self) -> None:
        """Registry, bundled and locally registered models (no torch is imported to list them)."""
        models = self._attempt("Listing the models", self.logic.list_models)  # e.g. a broken custom registry
        self.models = {model["name"]: model for model in models or []}

    def model_info(self, name: str) -> str:
        """Task, source, licence and description of a listed model ("" when unknown)."""
        model = self.models.get(name)
        if not model:
            return ""
        details = [model.get("task") or "", model.get("source") or ""]
        if model.get("license"):
            details.append(f"licence: {model['license']}")
        head = " - ".join(detail for detail in details if detail)
        return "\n".join(text for text in (head, model.get("description") or "") if text)

    def select_model(self, name: str) -> None:
        if name in self.models:
            self.params().model = name

    def load_model_folder(self, folder: str) -> bool:
        """Register a model-card folder and select it; on failure the selection stays what it was (False)."""
        if not folder:
            return False

        def load():
            entry = self.logic.register_model(folder)
            self.refresh_models()
            self.params().model = entry["name"]
            self._status = f"Model '{entry['name']}' loaded from {folder}."
            return True

        return bool(self._attempt("Loading the model folder", load))

    # ------------------------------------------------------------------------------------------------- jobs

    def _device(self) -> str:
        """The one place the device choice is decided for every action: the user's choice, "auto" = CUDA, else
        Apple MPS, else CPU (decided by ``python -m training`` in the job, where torch is imported)."""
        return str(getattr(self.params(), "device", "") or "auto")

    def _ensure(self, action: str) -> bool:
        if action in self._ready:
            return True
        if not self.ensure_dependencies(action):
            self._status = "Cancelled: MedDINOv3 cannot run this without its Python packages."
            return False
        self._ready.add(action)
        return True

    def _start(self, action: str, title: str, make_job: Callable[[], Any], on_done: Callable[[Any], str]) -> None:
        def start():
            if self.busy:
                raise RuntimeError(f"'{self._running.title}' is running: wait for it or press Cancel")
            if not self._ensure(action):
                return
            job = make_job()
            job.start()
            self._running = _Running(job, title, on_done)
            self._status = f"{title}: starting..."

        self._attempt(f"Starting '{title}'", start)

    def poll(self) -> bool:
        """Forward the running job's progress; when it has ended, bring its result in. True while it runs."""
        run = self._running
        if run is None:
            return False
        for event in run.job.poll():
            if event.total and event.total > 0:
                run.progress = (int(min(event.done, event.total)), int(event.total))
            elif event.message == "starting":
                run.progress = (0, 0)  # a new step (features, training, predicting): busy until it counts
            message = f" - {event.message}" if event.message else ""
            self._status = f"{run.title}: {event.stage}{message}"
        if run.job.running:
            self.on_change()
            return True
        self._running = None
        try:
            result = run.job.result()  # brings the result into the scene (on this, the GUI, thread)
            self._status = run.on_done(result)
        except JobCancelled:
            self._status = f"{run.title}: cancelled."
        except Exception as exc:  # noqa: BLE001 - a failed job is shown, the UI returns to idle
            self._fail(run.title, exc)
        self.on_change()
        return False

    def cancel(self) -> None:
        run = self._running
        if run is not None:
            self._status = f"{run.title}: cancelling..."
            self.on_change()
            run.job.cancel()

    # ---------------------------------------------------------------------------------------------- actions

    def segment(self) -> None:
        p = self.params()

        def done(node) -> str:
            self.params().segmentation = node
            count = node.GetSegmentation().GetNumberOfSegments()
            return f"Segmented: {count} segments in '{node.GetName()}'."

        self._start(
            "segment",
            "Segment",
            # the selected segmentation is where Segment writes (its segments are replaced); none: a new node. A
            # few-shot model predicts from the volume's feature cache (extracted first when missing).
            lambda: self.loop.segment_job(
                p.inputVolume, p.model, device=self._device(), segmentation_node=p.segmentation
            ),
            done,
        )

    def compute_features(self) -> None:
        p = self.params()

        def done(cache) -> str:
            self.ensure_point_node()
            return "Features ready: place a point to see similar tissue, or show the PCA map."

        self._start(
            "features",
            "Compute features",
            lambda: self.logic.explore_job(p.inputVolume, p.model, device=self._device()),
            done,
        )

    def finetune(self) -> None:
        p = self.params()

        def done(card_folder) -> str:
            folder = str(Path(card_folder).resolve())
            self.refresh_models()
            name = next((m["name"] for m in self.models.values() if m.get("path") == folder), None)
            if name is None:
                name = self.logic.register_model(folder)["name"]
                self.refresh_models()
            self.params().model = name
            return f"Fine-tuned model '{name}' is ready ({folder}); press Segment to use it."

        def make_job():
            name = (p.fineTuneName or "").strip() or None
            if p.fineTuneMode == "fewshot":  # this round's slices, the features from the volume's cache
                return self.loop.finetune_job(p.inputVolume, p.segmentation, p.model, name=name, device=self._device())
            return self.logic.finetune_job(
                p.inputVolume, p.segmentation, p.model, mode=p.fineTuneMode, name=name, device=self._device()
            )

        self._start("finetune", "Fine-tune", make_job, done)

    def preview(self) -> None:
        """The instant preview from the feature cache (numpy, no job): every patch labelled by its nearest painted
        features, shown as a label overlay."""

        def show():
            p = self.params()
            t0 = time.perf_counter()
            self.loop.show_preview(p.inputVolume, p.segmentation)
            ms = 1000 * (time.perf_counter() - t0)
            self._status = f"Preview from the features ({ms:.0f} ms): correct where it is wrong, then Fine-tune."

        self._attempt("Preview", show)

    def hide_preview(self) -> None:
        self._attempt("Hiding the preview", self.loop.hide_preview)

    def region_to_segment(self) -> None:
        """The similarity region around the last click (threshold + connected component) as a new segment."""
        from MedDINOv3SlicerLib.click_region import region_to_segment

        def add():
            p = self.params()
            if self.last_click is None:
                raise RuntimeError("place a point first")
            threshold = float(getattr(p, "similarityThreshold", 0.0) or 0.0)
            node, segment_id, voxels = region_to_segment(
                self.logic, p.inputVolume, p.segmentation, self.last_click, threshold
            )
            p.segmentation = node
            name = node.GetSegmentation().GetSegment(segment_id).GetName()
            self._status = f"Segment '{name}' added: {voxels} voxels with similarity >= {threshold:.2f}."

        self._attempt("Region from click", add)

    def show_pca(self) -> None:
        def show():
            self.logic.show_pca(self.params().inputVolume)
            self._status = "PCA map: the first three principal components of the features as red, green, blue."

        self._attempt("Showing the PCA map", show)

    def hide_overlays(self) -> None:
        def hide():
            self.logic.hide_overlays()
            self._status = "Overlay hidden: place a point or show the PCA map to see one again."

        self._attempt("Hiding the overlay", hide)

    def apply_overlay_settings(self, opacity: float, threshold: float) -> None:
        """The opacity and similarity-threshold sliders: applied to the shown overlays at once (no recomputing)."""
        if (opacity, threshold) != self._overlay_settings:
            self._overlay_settings = (opacity, threshold)
            self._attempt("Changing the overlay", lambda: self._apply_overlay_settings(opacity, threshold))

    def _apply_overlay_settings(self, opacity: float, threshold: float) -> None:
        self.logic.set_overlay_opacity(opacity)
        self.logic.set_similarity_threshold(threshold)

    def export(self, now: float | None = None) -> Path | None:
        """Export the segmentation as an RT Structure Set into a new folder under the export directory."""
        from MedDINOv3SlicerLib.rtexport import slicerrt_available

        def export():
            if self.busy:
                raise RuntimeError(f"'{self._running.title}' is running: wait for it or press Cancel")
            if not self._ensure("export-slicerrt" if slicerrt_available() else "export"):
                return None
            p = self.params()
            out = export_folder(p.exportDirectory, p.inputVolume.GetName(), now)
            path = self.logic.export_rtstruct(p.inputVolume, p.segmentation, out)
            self._status = f"RT Structure Set written: {path}"
            return path

        return self._attempt("RTSTRUCT export", export)

    # ----------------------------------------------------------------------------------------- similarity

    def ensure_point_node(self):
        """One reused point node for similarity clicks (re-created after a scene close or a delete)."""
        scene = self.logic.scene
        node = self.point_node
        if node is None or not scene.IsNodePresent(node):
            node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", POINT_NODE_NAME)
            node.CreateDefaultDisplayNodes()
            for event in (node.PointPositionDefinedEvent, node.PointModifiedEvent):
                node.AddObserver(event, self.on_point_event)
            self.point_node = node
        return node

    @vtk.calldata_type(vtk.VTK_INT)
    def on_point_event(self, caller, event, index=None) -> None:
        """Markups point observer. Slicer fires deferred point events with a NULL call-data pointer (a point moved
        with the interaction handles, a hardened transform): VTK then calls without ``index``. Bursts of events (a
        drag) are coalesced into one similarity update on the next event-loop turn."""
        if not self._point_pending:
            self._point_pending = True
            self.schedule(self.update_similarity)

    def update_similarity(self) -> None:
        """Show the similarity to the newest placed point (older points are removed: the overlay always belongs to
        the visible point)."""
        self._point_pending = False
        node, p = self.point_node, self.params()
        if node is None or p is None or not self.logic.has_features(p.inputVolume):
            return
        defined = [
            i
            for i in range(node.GetNumberOfControlPoints())
            if node.GetNthControlPointPositionStatus(i) == node.PositionDefined
        ]
        if not defined:
            return  # only the preview point that follows the mouse while placing
        for older in reversed(defined[:-1]):
            node.RemoveNthControlPoint(older)
        index = defined[-1] - len(defined[:-1])
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, ras)

        def show():
            t0 = time.perf_counter()
            self.logic.show_similarity(p.inputVolume, ras)
            self.last_click = tuple(ras)
            ms = 1000 * (time.perf_counter() - t0)
            self._status = f"Similarity to R {ras[0]:.1f}, A {ras[1]:.1f}, S {ras[2]:.1f} ({ms:.0f} ms)."

        self._attempt("Showing the similarity map", show)

    def stop_placing(self) -> None:
        """Leave persistent point placement when it places our similarity points (module exit): clicks in other
        modules must not keep adding similarity points."""
        scene = self.logic.scene
        interaction = scene.GetNodeByID("vtkMRMLInteractionNodeSingleton")
        selection = scene.GetNodeByID("vtkMRMLSelectionNodeSingleton")
        node = self.point_node
        if interaction is None or node is None:
            return
        ours = selection is None or selection.GetActivePlaceNodeID() in (None, "", node.GetID())
        if ours and interaction.GetCurrentInteractionMode() == interaction.Place:
            interaction.SetPlaceModePersistence(0)
            interaction.SetCurrentInteractionMode(interaction.ViewTransform)

    # ------------------------------------------------------------------------------------- scene / module

    def scene_closing(self) -> None:
        """The scene is about to close: forget the job whatever its state (cancelled if running; its result, even
        one already on disk, is never brought in), drop the work folder, feature caches and overlays."""
        run, self._running = self._running, None
        if run is not None:
            run.job.cancel()
            self._status = f"{run.title}: cancelled (the scene was closed)."
        self.stop_placing()
        self.point_node = None
        self.last_click = None
        self._point_pending = False
        self._overlay_settings = None  # applied again to the next scene's overlays
        self.logic.cleanup()
        self.logic = self.logic_factory()  # node IDs are reused in the next scene
        self.on_change()

    def module_exit(self) -> None:
        """The user left the module: stop placing similarity points (a running job goes on and still lands)."""
        self.stop_placing()

    def cleanup(self) -> None:
        """The module is unloaded: cancel a running job and remove the work folder."""
        run, self._running = self._running, None
        if run is not None:
            run.job.cancel()
        self.logic.cleanup()


__all__ = ["ACTIONS", "ModuleController", "PARAMETERS", "ViewState", "export_folder"]
