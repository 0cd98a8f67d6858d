"""MedDINOv3 for 3D Slicer: segment CT with a DINOv3 foundation model, explore its features, fine-tune, export RTSTRUCT.

This file is thin on purpose. The Widget wires the .ui to the parameter node and to ``MedDINOv3SlicerLib.logic``;
every computation lives in the Qt-free ``MedDINOv3SlicerLib`` package and the ``MedDINOv3Core`` library, and every
long computation (segmentation, feature extraction, fine-tuning) runs in a background process (a ``Job``) that a
QTimer polls, so Slicer's GUI never freezes and Cancel always works. torch is never imported on the GUI thread.
"""

import importlib
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated


def _add_bundled_packages_to_path() -> None:
    """Make ``MedDINOv3SlicerLib``, ``MedDINOv3Core`` and ``training`` importable.

    Installed extension: the module's CMakeLists copies the core library and the training package into the module's
    own folder (``lib/Slicer-X.Y/qt-scripted-modules/MedDINOv3Core/...``, with the project's ``Resources/`` beside
    them). Source checkout (``--additional-module-paths .../MedDINOv3Slicer``): they are in the parent folder.
    """
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent):
        if (folder / "MedDINOv3Core").is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            break
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))


_add_bundled_packages_to_path()

import qt  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode  # noqa: E402
from slicer.i18n import tr as _  # noqa: E402
from slicer.i18n import translate  # noqa: E402
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin  # noqa: E402

from MedDINOv3SlicerLib.jobs import JobCancelled  # noqa: E402
from MedDINOv3SlicerLib.logic import MedDINOv3Logic  # noqa: E402

DEFAULT_MODEL = "meddinov3-phantom-tiny"
DEVICES = ["auto", "cpu", "cuda", "mps"]
FINETUNE_MODES = ["fewshot", "decoder", "full"]
LOAD_FROM_FOLDER = "__load_from_folder__"
POLL_INTERVAL_MS = 200

# import name -> pip requirement (torch comes from the PyTorch extension, numpy/vtk/qt with Slicer)
PIP_REQUIREMENTS = {
    "huggingface_hub": "huggingface_hub>=2.4",
    "safetensors": "safetensors>=0.4",
    "pydicom": "pydicom>=3.0",
    "slicerio": "slicerio>=1.0",
    "SimpleITK": "SimpleITK>=2.3",
    "yaml": "PyYAML>=6.0",
    "tqdm": "tqdm>=4.60",
    "scipy": "scipy>=1.10",
}


#
# Module
#


class MedDINOv3Slicer(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("MedDINOv3")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["MedDINOv3 for Slicer developers"]
        self.parent.helpText = _(
            "Segment CT (and MRI) with MedDINOv3, a DINOv3 vision transformer adapted to CT by self-supervised "
            "pretraining.<br>"
            "<b>Segment</b>: one click segments the selected volume with the selected model (background process, "
            "progress bar, Cancel).<br>"
            "<b>Explore features</b>: compute the model's features once, then place a point to see where the model "
            "'sees the same thing' (cosine similarity overlay) or show an RGB map of the first three principal "
            "components.<br>"
            "<b>Fine-tune</b>: train a new model from the selected segmentation (a few painted slices are enough in "
            "few-shot mode); it becomes selectable for Segment.<br>"
            "<b>Export</b>: write the segmentation as a DICOM RT Structure Set for treatment planning.<br>"
            "Models come from the registry (downloaded once into the per-user Hugging Face cache) or, for offline "
            "sites, from a model folder on disk ('Load from folder...')."
        )
        self.parent.acknowledgementText = _(
            "MedDINOv3 is described in: Y. Li et al., 'MedDINOv3: How to adapt vision foundation models for medical "
            "image segmentation?', arXiv:2509.02379 (2025); it builds on DINOv3 (O. Simeoni et al., arXiv:2508.10104, "
            "2025). This extension is Apache-2.0 licensed; model weights are not part of it and carry their own "
            "licences (shown with each model): read them before clinical or commercial use. This software is not a "
            "medical device."
        )
        iconPath = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "MedDINOv3Slicer.png")
        if os.path.isfile(iconPath):
            self.parent.icon = qt.QIcon(iconPath)


#
# Parameter node
#


@parameterNodeWrapper
class MedDINOv3SlicerParameterNode:
    """The module's state, saved with the scene.

    inputVolume: the volume to segment / explore / fine-tune on / export.
    segmentation: Segment's output, Fine-tune's labels, Export's structures.
    model: a registry name or a model-card folder (the model combo box is filled at run time, so it is not bound
        through connectGui; the Widget keeps the two in step).
    device: auto (CUDA, else MPS, else CPU), cpu, cuda or mps.
    fineTuneMode, fineTuneName: the fine-tuning recipe and the new model's name ("" = derived).
    exportDirectory: where Export RTSTRUCT writes.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    model: str = DEFAULT_MODEL
    device: Annotated[str, Choice(DEVICES)] = "auto"
    fineTuneMode: Annotated[str, Choice(FINETUNE_MODES)] = "fewshot"
    fineTuneName: str = ""
    exportDirectory: Path = Path.home() / "MedDINOv3-export"


class MedDINOv3SlicerLogic(ScriptedLoadableModuleLogic):
    """Only the parameter node; the real logic is ``MedDINOv3SlicerLib.logic.MedDINOv3Logic`` (Qt-free, tested)."""

    def getParameterNode(self) -> MedDINOv3SlicerParameterNode:
        return MedDINOv3SlicerParameterNode(super().getParameterNode())


#
# Dependencies
#


def _missingPipRequirements() -> list[str]:
    return [req for module, req in PIP_REQUIREMENTS.items() if importlib.util.find_spec(module) is None]


def ensureDependencies() -> bool:
    """Install what MedDINOv3 needs into Slicer's Python, after asking; False when the user declined.

    torch comes from the PyTorch extension (it picks the CUDA build that fits the GPU driver); the other packages
    through ``slicer.packaging.pip_ensure`` (Slicer >= 5.12) or ``slicer.util.pip_install``. Raises RuntimeError
    with what to do when something cannot be installed.
    """
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise RuntimeError(
            "MedDINOv3 needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, restart Slicer "
            "and try again."
        ) from exc
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if not torchLogic.torchInstalled():
        if torchLogic.installTorch(askConfirmation=True) is None:
            return False

    missing = _missingPipRequirements()
    if not missing:
        return True
    try:
        packaging = importlib.import_module("slicer.packaging")
    except ImportError:
        packaging = None
    if packaging is not None and hasattr(packaging, "pip_ensure"):
        from packaging.requirements import Requirement

        packaging.pip_ensure([Requirement(req) for req in missing], requester="MedDINOv3")
    else:
        if not slicer.util.confirmOkCancelDisplay(
            _("MedDINOv3 needs these Python packages, which will be installed now:\n\n{packages}").format(
                packages="\n".join(missing)
            ),
            windowTitle=_("Install Python packages"),
        ):
            return False
        slicer.util.pip_install(" ".join(missing))
    importlib.invalidate_caches()
    stillMissing = _missingPipRequirements()
    if stillMissing:
        raise RuntimeError(
            f"Could not install {', '.join(stillMissing)}; install them from Slicer's Python console with "
            f"slicer.util.pip_install({stillMissing!r}) and restart Slicer."
        )
    return True


#
# Widget
#


class MedDINOv3SlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui to the parameter node and to MedDINOv3Logic; runs every long task as a polled background Job."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None  # MedDINOv3SlicerLib.logic.MedDINOv3Logic (imports numpy only; torch runs in the jobs)
        self.parameterLogic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._dependenciesReady = False
        self._job = None
        self._jobTitle = ""
        self._jobDone = None
        self._pollTimer = None
        self._pointNode = None
        self._pendingPointIndex = None
        self._updatingModelCombo = False
        self._models = {}

    # ----------------------------------------------------------------------------------------- set-up / tear-down

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDINOv3Slicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MedDINOv3Logic()
        self.parameterLogic = MedDINOv3SlicerLogic()
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegment)
        self.ui.computeFeaturesButton.connect("clicked(bool)", self.onComputeFeatures)
        self.ui.showPcaButton.connect("clicked(bool)", self.onShowPca)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTune)
        self.ui.exportRtStructButton.connect("clicked(bool)", self.onExportRtStruct)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)

        placeWidget = self.ui.similarityPlaceWidget
        placeWidget.setMRMLScene(slicer.mrmlScene)
        placeWidget.buttonsVisible = False
        placeWidget.placeButton().show()
        placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        self._fillModelComboBox()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._job is not None:
            self._job.cancel()
            self._job = None
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()
        if self.logic is not None:
            self.logic.cleanup()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self._job is not None:
            self._job.cancel()  # its result would land in a closed scene; the next poll reports the cancel
        self.setParameterNode(None)
        self._pointNode = None

    def onSceneEndClose(self, caller, event) -> None:
        # node IDs are reused in the next scene: a fresh logic forgets the old feature caches and overlays
        self.logic.cleanup()
        self.logic = MedDINOv3Logic()
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.parameterLogic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: MedDINOv3SlicerParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        self._selectModelInComboBox()
        self.updateButtonStates()

    def _ensureDependencies(self) -> bool:
        """Dependency check on first use (asks before installing); False when the user declined."""
        if not self._dependenciesReady:
            if not ensureDependencies():
                self._setStatus(_("MedDINOv3 cannot run without its Python packages."))
                return False
            self._dependenciesReady = True
        return True

    # ------------------------------------------------------------------------------------------------------ models

    def _fillModelComboBox(self) -> None:
        """Registry and locally registered (fine-tuned, loaded) models, then "Load from folder..."."""
        combo = self.ui.modelComboBox
        models = self.logic.list_models()
        self._models = {model["name"]: model for model in models}
        self._updatingModelCombo = True
        try:
            combo.clear()
            for model in models:
                combo.addItem(model["name"], model["name"])
                combo.setItemData(combo.count - 1, self._modelInfoText(model), qt.Qt.ToolTipRole)
            combo.insertSeparator(combo.count)
            combo.addItem(_("Load from folder..."), LOAD_FROM_FOLDER)
        finally:
            self._updatingModelCombo = False
        self._selectModelInComboBox()

    @staticmethod
    def _modelInfoText(model: dict) -> str:
        details = [model.get("task") or "", model.get("source") or ""]
        if model.get("license"):
            details.append(_("licence: {license}").format(license=model["license"]))
        head = " - ".join(detail for detail in details if detail)
        return "\n".join(text for text in (head, model.get("description") or "") if text)

    def _selectModelInComboBox(self) -> None:
        if self._parameterNode is None or self._updatingModelCombo:
            return
        model = self._parameterNode.model
        self._updatingModelCombo = True
        try:
            self.ui.modelComboBox.setCurrentIndex(self.ui.modelComboBox.findData(model))
        finally:
            self._updatingModelCombo = False
        info = self._models.get(model)
        self.ui.modelInfoLabel.text = self._modelInfoText(info) if info else ""

    def onModelActivated(self, index: int) -> None:
        if self._parameterNode is None or self._updatingModelCombo:
            return
        data = self.ui.modelComboBox.itemData(index)
        if data != LOAD_FROM_FOLDER:
            if data:
                self._parameterNode.model = data
            return
        folder = qt.QFileDialog.getExistingDirectory(
            slicer.util.mainWindow(), _("Model folder (config.json + model.safetensors)")
        )
        with slicer.util.tryWithErrorDisplay(_("Could not load the model folder.")):
            if folder:
                entry = self.logic.register_model(folder)
                self._fillModelComboBox()
                self._parameterNode.model = entry["name"]
        self._selectModelInComboBox()

    # ----------------------------------------------------------------------------------------------- button states

    def updateButtonStates(self) -> None:
        """Enable each action only when its inputs are valid and no job runs (Cancel only while one runs)."""
        p = self._parameterNode
        busy = self._job is not None
        volume = p.inputVolume if p else None
        segmentation = p.segmentation if p else None
        hasModel = bool(p and p.model in self._models)
        featuresReady = self.logic is not None and self.logic.has_features(volume)
        canRun = not busy and volume is not None and hasModel
        # backbones (task "backbone") explore and are fine-tuned; only segmentation models segment
        self.ui.segmentButton.enabled = canRun and self._models[p.model].get("task") == "segmentation"
        self.ui.computeFeaturesButton.enabled = canRun
        self.ui.similarityPlaceWidget.enabled = not busy and featuresReady
        self.ui.showPcaButton.enabled = not busy and featuresReady
        self.ui.fineTuneButton.enabled = canRun and segmentation is not None
        self.ui.exportRtStructButton.enabled = (
            not busy and volume is not None and segmentation is not None and bool(str(p.exportDirectory))
        )
        self.ui.cancelButton.enabled = busy
        if not busy and volume is None:
            self._setStatus(_("Select a volume."))
        elif not busy and self.ui.statusLabel.text == _("Select a volume."):
            self._setStatus(_("Ready."))

    def _setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    # ----------------------------------------------------------------------------------------------------- jobs

    def startJob(self, job, title: str, onDone) -> None:
        """Start ``job`` and poll it from a QTimer; ``onDone(result)`` runs on success, errors are displayed."""
        if self._job is not None:
            raise RuntimeError("Another MedDINOv3 task is running: wait for it or press Cancel.")
        self._job, self._jobTitle, self._jobDone = job, title, onDone
        self.ui.progressBar.setRange(0, 0)  # busy indicator until the first progress line
        self._setStatus(_("{title}: starting...").format(title=title))
        self.updateButtonStates()
        try:
            job.start()
        except Exception:
            self._job = self._jobDone = None
            self.ui.progressBar.setRange(0, 100)
            self.updateButtonStates()
            raise
        self._pollTimer.start()

    def onPollJob(self) -> None:
        job = self._job
        if job is None:
            self._pollTimer.stop()
            return
        for event in job.poll():
            if event.total and event.total > 0:
                self.ui.progressBar.setRange(0, int(event.total))
                self.ui.progressBar.setValue(int(min(event.done, event.total)))
            message = f" - {event.message}" if event.message else ""
            self._setStatus(f"{self._jobTitle}: {event.stage}{message}")
        if job.running:
            return
        self._pollTimer.stop()
        onDone, title = self._jobDone, self._jobTitle
        self._job = self._jobDone = None
        self.ui.progressBar.setRange(0, 100)
        self.ui.progressBar.setValue(0)
        self.updateButtonStates()
        with slicer.util.tryWithErrorDisplay(_("{title} failed.").format(title=title)):
            try:
                result = job.result()  # brings the result into the scene (on this, the GUI, thread)
            except JobCancelled:
                self._setStatus(_("{title}: cancelled.").format(title=title))
                return
            self.ui.progressBar.setValue(100)
            onDone(result)
            self.updateButtonStates()
            return
        self._setStatus(_("{title} failed (see the error message).").format(title=title))

    def onCancel(self) -> None:
        if self._job is not None:
            self._setStatus(_("{title}: cancelling...").format(title=self._jobTitle))
            self._job.cancel()

    # -------------------------------------------------------------------------------------------------- actions

    def onSegment(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start the segmentation."), waitCursor=True):
            if not self._ensureDependencies():
                return
            p = self._parameterNode
            job = self.logic.segment_job(p.inputVolume, p.model, device=p.device)
            self.startJob(job, _("Segment"), self._onSegmentDone)

    def _params(self) -> MedDINOv3SlicerParameterNode:
        """The parameter node, also after the user left the module while a job ran (then not bound to the GUI)."""
        return self._parameterNode or self.parameterLogic.getParameterNode()

    def _onSegmentDone(self, segmentationNode) -> None:
        self._params().segmentation = segmentationNode
        count = segmentationNode.GetSegmentation().GetNumberOfSegments()
        self._setStatus(
            _("Segmented: {count} segments in {segmentation}.").format(
                count=count, segmentation=segmentationNode.GetName()
            )
        )

    def onComputeFeatures(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start the feature extraction."), waitCursor=True):
            if not self._ensureDependencies():
                return
            p = self._parameterNode
            job = self.logic.explore_job(p.inputVolume, p.model, device=p.device)
            self.startJob(job, _("Compute features"), self._onFeaturesDone)

    def _onFeaturesDone(self, featureCache) -> None:
        self._ensurePointNode()
        self._setStatus(_("Features ready: place a point to see similar tissue, or show the PCA map."))

    def _ensurePointNode(self):
        """One reused point node for similarity clicks (re-created after a scene close or a delete)."""
        node = self._pointNode
        if node is None or not slicer.mrmlScene.IsNodePresent(node):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "MedDINOv3 similarity point")
            node.CreateDefaultDisplayNodes()
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointEvent)
            self.addObserver(node, slicer.vtkMRMLMarkupsNode.PointModifiedEvent, self.onPointEvent)
            self._pointNode = node
        self.ui.similarityPlaceWidget.setCurrentNode(node)
        return node

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointEvent(self, caller, event, index) -> None:
        """Coalesce bursts of events (a drag) into one similarity update on the next event-loop turn."""
        if self._pendingPointIndex is None:
            qt.QTimer.singleShot(0, self._updateSimilarity)
        self._pendingPointIndex = index

    def _updateSimilarity(self) -> None:
        index, self._pendingPointIndex = self._pendingPointIndex, None
        node, p = self._pointNode, self._parameterNode
        if node is None or p is None or index is None or not self.logic.has_features(p.inputVolume):
            return
        if index < 0 or index >= node.GetNumberOfControlPoints():
            return
        if node.GetNthControlPointPositionStatus(index) != node.PositionDefined:
            return  # the preview point that follows the mouse while placing
        # keep only the newest defined point: the overlay always belongs to the visible point
        for older in range(index - 1, -1, -1):
            if node.GetNthControlPointPositionStatus(older) == node.PositionDefined:
                node.RemoveNthControlPoint(older)
                index -= 1
        ras = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(index, ras)
        with slicer.util.tryWithErrorDisplay(_("Could not show the similarity map.")):
            t0 = time.perf_counter()
            self.logic.show_similarity(p.inputVolume, ras)
            self._setStatus(
                _("Similarity to R {r:.1f}, A {a:.1f}, S {s:.1f} ({ms:.0f} ms).").format(
                    r=ras[0], a=ras[1], s=ras[2], ms=1000 * (time.perf_counter() - t0)
                )
            )

    def onShowPca(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not show the PCA map."), waitCursor=True):
            self.logic.show_pca(self._parameterNode.inputVolume)
            self._setStatus(_("PCA map: the first three principal components of the features as red, green, blue."))

    def onFineTune(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Could not start fine-tuning."), waitCursor=True):
            if not self._ensureDependencies():
                return
            p = self._parameterNode
            job = self.logic.finetune_job(
                p.inputVolume,
                p.segmentation,
                p.model,
                mode=p.fineTuneMode,
                name=p.fineTuneName.strip() or None,
                device=None if p.device == "auto" else p.device,  # auto: the recipe's choice
            )
            self.startJob(job, _("Fine-tune"), self._onFineTuneDone)

    def _onFineTuneDone(self, cardFolder) -> None:
        """The logic registered the new model card: list it and make it the selected model."""
        self._fillModelComboBox()
        folder = str(Path(cardFolder).resolve())
        name = next((m["name"] for m in self._models.values() if m.get("path") == folder), None)
        if name is None:
            name = self.logic.register_model(folder)["name"]
            self._fillModelComboBox()
        self._params().model = name
        self._setStatus(
            _("Fine-tuned model '{name}' is ready ({folder}); press Segment to use it.").format(
                name=name, folder=folder
            )
        )

    def onExportRtStruct(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("RTSTRUCT export failed."), waitCursor=True):
            if not self._ensureDependencies():
                return
            p = self._parameterNode
            # one new folder per export: a CT series and its structure set never mix with an earlier export's
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = "".join(c if c.isalnum() or c in "-_" else "_" for c in p.inputVolume.GetName()) or "volume"
            outputDir = Path(p.exportDirectory) / f"{name}-{stamp}"
            path = self.logic.export_rtstruct(p.inputVolume, p.segmentation, outputDir)
            self._setStatus(_("RT Structure Set written: {path}").format(path=path))


#
# Test
#


class MedDINOv3SlicerTest(ScriptedLoadableModuleTest):
    """Really computes, in Slicer, with the embedded demo model on a synthetic phantom (about a minute on a CPU)."""

    MODEL = DEFAULT_MODEL
    PHANTOM_SHAPE = (48, 192, 192)  # the embedded model's training size (Resources/models/*/RECIPE.md)
    PHANTOM_SEED = 2026  # not a training seed

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_segment_explore_export()

    def _phantomVolumeNode(self):
        from MedDINOv3Core.data.phantom import make_phantom
        from MedDINOv3SlicerLib.geometry import add_volume_node

        phantom = make_phantom(self.PHANTOM_SHAPE, seed=self.PHANTOM_SEED)
        node = add_volume_node(slicer.mrmlScene, phantom.ct, "MedDINOv3 phantom")
        return node, phantom

    def test_segment_explore_export(self):
        missing = [module for module in ("torch", *PIP_REQUIREMENTS) if importlib.util.find_spec(module) is None]
        if missing:
            self.skipTest(
                f"Python packages missing: {', '.join(missing)}. Install them (press Segment once in the MedDINOv3 "
                "module, which offers to) and run the test again."
            )
        import numpy as np

        from MedDINOv3Core.data.phantom import LABEL_VALUES
        from MedDINOv3Core.metrics import dice
        from MedDINOv3SlicerLib.segmentation import segmentation_to_labelmap

        self.delayDisplay("Building a synthetic CT phantom")
        volumeNode, phantom = self._phantomVolumeNode()
        logic = MedDINOv3Logic()
        try:
            self.assertIn(self.MODEL, [model["name"] for model in logic.list_models()])

            self.delayDisplay(f"Segmenting with {self.MODEL}")
            segmentationNode = logic.segment(volumeNode, self.MODEL, device="cpu")
            labelmap, labels = segmentation_to_labelmap(segmentationNode, volumeNode)
            liverValues = [label["value"] for label in labels if label["name"] == "liver"]
            self.assertEqual(len(liverValues), 1, "the segmentation has no (or several) 'liver' segments")
            liver = labelmap.array == liverValues[0]
            truth = phantom.labels.array == LABEL_VALUES["liver"]
            self.assertEqual(liver.shape, truth.shape)
            liverDice = dice(liver.astype(np.uint8), truth.astype(np.uint8), labels=[1])[1]
            self.delayDisplay(f"Liver Dice {liverDice:.3f}")
            self.assertGreater(liverDice, 0.8)

            self.delayDisplay("Computing features and one similarity click")
            logic.explore_job(volumeNode, self.MODEL, device="cpu").wait(timeout=600)
            k, j, i = (int(round(c)) for c in np.argwhere(truth).mean(axis=0))
            ijkToRas = vtk.vtkMatrix4x4()
            volumeNode.GetIJKToRASMatrix(ijkToRas)
            ras = ijkToRas.MultiplyPoint([i, j, k, 1])[:3]
            overlay = logic.show_similarity(volumeNode, ras)
            similarity = slicer.util.arrayFromVolume(overlay)
            self.assertEqual(similarity.shape, truth.shape)
            self.assertGreater(float(similarity[k, j, i]), 0.9)  # the clicked patch is most similar to itself
            air = phantom.ct.array < -500
            self.assertGreater(float(similarity[truth].mean()), float(similarity[air].mean()))
            self.assertIs(logic.show_similarity(volumeNode, ras), overlay)  # one overlay node, updated in place

            pca = logic.show_pca(volumeNode)
            self.assertEqual(slicer.util.arrayFromVolume(pca).shape, (*truth.shape, 3))

            self.delayDisplay("Exporting an RT Structure Set")
            import pydicom

            with tempfile.TemporaryDirectory() as folder:
                written = Path(logic.export_rtstruct(volumeNode, segmentationNode, folder))
                files = [written] if written.is_file() else sorted(f for f in written.rglob("*") if f.is_file())
                rtstructs = []
                for file in files:
                    try:
                        dataset = pydicom.dcmread(file, stop_before_pixels=True)
                    except pydicom.errors.InvalidDicomError:
                        continue
                    if dataset.Modality == "RTSTRUCT":
                        rtstructs.append(dataset)
                self.assertEqual(len(rtstructs), 1)
                roiNames = [roi.ROIName for roi in rtstructs[0].StructureSetROISequence]
                self.assertIn("liver", roiNames)
        finally:
            logic.cleanup()
        self.delayDisplay("MedDINOv3 test passed")
