"""MedDINOv3 for 3D Slicer: segment CT with a DINOv3 foundation model, explore its features, fine-tune, export RTSTRUCT.

This file only wires. The module's state machine is ``MedDINOv3SlicerLib.controller.ModuleController``, MRML <-> core
is ``MedDINOv3SlicerLib.logic``, long work runs in background processes (torch never runs in Slicer's process).
Requires Slicer 5.10 or newer (Python 3.12); this file imports on older Slicer versions (no annotation here needs
Python >= 3.10) so that they show that message; the Lib is imported only after the version check.
"""

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MINIMUM_SLICER = (5, 10)
DEFAULT_MODEL = "meddinov3-phantom-tiny"
DEVICES = ["auto", "cpu", "cuda", "mps"]
FINETUNE_MODES = ["fewshot", "decoder", "full"]
LOAD_FROM_FOLDER = "__load_from_folder__"
POLL_INTERVAL_MS = 200


def _add_bundled_packages_to_path() -> None:
    """Make ``MedDINOv3SlicerLib``, ``MedDINOv3Core`` and ``training`` importable: the installed extension has them in
    the module's folder (the module's CMakeLists copies them there); a source checkout has the last two in the parent
    folder (``--additional-module-paths .../MedDINOv3Slicer``)."""
    here = Path(__file__).resolve().parent
    for folder in (here, here.parent):
        if (folder / "MedDINOv3Core").is_dir() and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
            break
    if str(here) not in sys.path:
        sys.path.insert(0, str(here))


def slicerVersionProblem() -> str:
    """ "" on a supported Slicer, else what to do."""
    found = (int(slicer.app.majorVersion), int(slicer.app.minorVersion))
    if found >= MINIMUM_SLICER:
        return ""
    return _(
        "MedDINOv3 needs 3D Slicer {minimum} or newer (Python 3.12); this is Slicer {found}. Install a newer "
        "Slicer from download.slicer.org."
    ).format(minimum=".".join(map(str, MINIMUM_SLICER)), found=".".join(map(str, found)))


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
            "pretraining. Requires 3D Slicer 5.10 or newer and the PyTorch extension.<br>"
            "<b>Segment</b> the selected volume into the selected segmentation (a new one if none) in a background "
            "process, with progress and Cancel.<br><b>Explore features</b>: compute them once, then place a point "
            "for a cosine-similarity overlay (threshold, opacity) or show a PCA colour map.<br><b>Fine-tune</b> a "
            "new, selectable model from the segmentation; few-shot rounds need a few painted slices and reuse the "
            "computed features: paint, Fine-tune, Segment, correct slices (the next round's labels), Fine-tune "
            "again. <b>Preview</b> labels the volume from the painted slices at once; <b>Region from click</b> "
            "turns the similar region around a point into a segment.<br><b>Export</b> a DICOM RT Structure Set "
            "(SlicerRT's exporter when installed, keeping a DICOM volume's patient and study).<br>Models come from "
            "the registry (downloaded once into the Hugging Face cache) or a folder on disk ('Load from folder...')."
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
        if not slicerVersionProblem():  # the Sample Data entry "MedDINOv3 phantom" (drawn only when picked)
            slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    import SampleData

    _add_bundled_packages_to_path()
    from MedDINOv3SlicerLib.sampledata import register_sample_data

    register_sample_data(SampleData.SampleDataLogic)


@parameterNodeWrapper
class MedDINOv3SlicerParameterNode:
    """The module's state, saved with the scene (see the .ui tooltips; ``model`` is set by the Widget because its
    combo box is filled at run time)."""

    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    model: str = DEFAULT_MODEL
    device: Annotated[str, Choice(DEVICES)] = "auto"
    fineTuneMode: Annotated[str, Choice(FINETUNE_MODES)] = "fewshot"
    fineTuneName: str = ""
    exportDirectory: Path = Path.home() / "MedDINOv3-export"
    overlayOpacity: float = 0.5
    similarityThreshold: float = 0.0


class MedDINOv3SlicerLogic(ScriptedLoadableModuleLogic):
    """Only the parameter node; the logic is ``MedDINOv3SlicerLib.logic.MedDINOv3Logic`` (Qt-free, tested)."""

    def getParameterNode(self) -> MedDINOv3SlicerParameterNode:
        return MedDINOv3SlicerParameterNode(super().getParameterNode())


class MedDINOv3SlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Wires the .ui to the parameter node and to the ModuleController; nothing else."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.controller = self.parameterLogic = self._parameterNode = self._parameterNodeGuiTag = self._pollTimer = None
        self._updatingGui = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        problem = slicerVersionProblem()
        if problem:
            label = qt.QLabel(problem)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        _add_bundled_packages_to_path()
        from MedDINOv3SlicerLib.controller import ModuleController

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedDINOv3Slicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.parameterLogic = MedDINOv3SlicerLogic()
        self.controller = ModuleController(
            params=self._params,
            on_change=self.updateGui,
            show_error=lambda message, details: slicer.util.errorDisplay(message, detailedText=details),
            schedule=lambda function: qt.QTimer.singleShot(0, function),
        )
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.connect("timeout()", self.onPollJob)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        c = self.controller
        self.ui.modelComboBox.connect("activated(int)", self.onModelActivated)
        self.ui.segmentButton.connect("clicked(bool)", lambda: self._run(c.segment))
        self.ui.computeFeaturesButton.connect("clicked(bool)", lambda: self._run(c.compute_features))
        self.ui.showPcaButton.connect("clicked(bool)", lambda: self._run(c.show_pca))
        self.ui.hideOverlayButton.connect("clicked(bool)", lambda: self._run(c.hide_overlays))
        self.ui.fineTuneButton.connect("clicked(bool)", lambda: self._run(c.finetune))
        self.ui.previewButton.connect("clicked(bool)", lambda: self._run(c.preview))
        self.ui.hidePreviewButton.connect("clicked(bool)", lambda: self._run(c.hide_preview))
        self.ui.regionToSegmentButton.connect("clicked(bool)", lambda: self._run(c.region_to_segment))
        self.ui.exportRtStructButton.connect("clicked(bool)", lambda: self._run(c.export))
        self.ui.cancelButton.connect("clicked(bool)", c.cancel)

        placeWidget = self.ui.similarityPlaceWidget
        placeWidget.setMRMLScene(slicer.mrmlScene)
        placeWidget.buttonsVisible = False
        placeWidget.placeButton().show()
        placeWidget.placeMultipleMarkups = slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups

        self._fillModelComboBox()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self._pollTimer is not None:
            self._pollTimer.stop()
        self.removeObservers()
        if self.controller is not None:
            self.controller.cleanup()

    def enter(self) -> None:
        if self.controller is not None:
            self.initializeParameterNode()

    def exit(self) -> None:
        if self.controller is not None:
            self.controller.module_exit()  # leave persistent point placement
            self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.controller.scene_closing()  # the job is forgotten whatever its state

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def _params(self):
        """The parameter node, also after the user left the module while a job ran (then not bound to the GUI)."""
        return self._parameterNode or self.parameterLogic.getParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.parameterLogic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MedDINOv3SlicerParameterNode]) -> None:
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
        p = self._parameterNode
        if p is not None and self.controller is not None:
            self.controller.apply_overlay_settings(p.overlayOpacity, p.similarityThreshold)
        self.updateGui()

    def _run(self, action) -> None:
        """A button's action; the controller reports failures itself. Poll while a job runs."""
        with slicer.util.WaitCursor():
            action()
        if self.controller.busy and not self._pollTimer.isActive():
            self._pollTimer.start()

    def onPollJob(self) -> None:
        if not self.controller.poll():
            self._pollTimer.stop()

    def updateGui(self) -> None:
        """Show the controller's state: enabled actions, status line, progress bar, selected model."""
        if self.controller is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            state = self.controller.state()
            ui, enabled = self.ui, state.enabled
            ui.segmentButton.enabled = enabled["segment"]
            ui.computeFeaturesButton.enabled = enabled["features"]
            ui.similarityPlaceWidget.enabled = enabled["similarity"]
            for widget in (ui.showPcaButton, ui.hideOverlayButton, ui.overlayOpacitySlider):
                widget.enabled = enabled["pca"]
            ui.similarityThresholdSlider.enabled = enabled["similarity"]
            ui.regionToSegmentButton.enabled = enabled["region"]
            ui.fineTuneButton.enabled = enabled["finetune"]
            ui.previewButton.enabled = ui.hidePreviewButton.enabled = enabled["preview"]
            ui.exportRtStructButton.enabled = enabled["export"]
            ui.cancelButton.enabled = enabled["cancel"]
            ui.statusLabel.text = state.status
            done, total = state.progress or (0, 100)
            ui.progressBar.setRange(0, total)
            ui.progressBar.setValue(done)
            if self.controller.point_node is not None:
                ui.similarityPlaceWidget.setCurrentNode(self.controller.point_node)
            self._selectModelInComboBox()
        finally:
            self._updatingGui = False

    def _fillModelComboBox(self) -> None:
        """Registry, bundled and locally registered models, then "Load from folder..."."""
        combo = self.ui.modelComboBox
        combo.blockSignals(True)
        try:
            combo.clear()
            for name in self.controller.models:
                combo.addItem(name, name)
                combo.setItemData(combo.count - 1, self.controller.model_info(name), qt.Qt.ToolTipRole)
            combo.insertSeparator(combo.count)
            combo.addItem(_("Load from folder..."), LOAD_FROM_FOLDER)
        finally:
            combo.blockSignals(False)
        self._selectModelInComboBox()

    def _selectModelInComboBox(self) -> None:
        combo, p = self.ui.modelComboBox, self._parameterNode
        if p is None:
            return
        if combo.count != len(self.controller.models) + 2:  # a new model was registered
            self._fillModelComboBox()
            return
        combo.blockSignals(True)
        combo.setCurrentIndex(combo.findData(p.model))
        combo.blockSignals(False)
        self.ui.modelInfoLabel.text = self.controller.model_info(p.model)

    def onModelActivated(self, index: int) -> None:
        data = self.ui.modelComboBox.itemData(index)
        if data == LOAD_FROM_FOLDER:
            folder = qt.QFileDialog.getExistingDirectory(
                slicer.util.mainWindow(), _("Model folder (config.json + model.safetensors)")
            )
            self.controller.load_model_folder(folder)  # on failure the selection stays what it was
        elif data:
            self.controller.select_model(data)
        self._selectModelInComboBox()


class MedDINOv3SlicerTest(ScriptedLoadableModuleTest):
    """Really computes, in Slicer, with the embedded demo model on a synthetic phantom (about a minute on a CPU).

    The body is ``MedDINOv3SlicerLib.selftest`` (also run by pytest on slicer-core). Missing packages are reported,
    not raised: Slicer's "Reload and Test" counts a unittest.SkipTest as a failure.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        import unittest

        self.setUp()
        problem = slicerVersionProblem()
        if problem:
            self.delayDisplay(problem)
            return
        try:
            self.test_segment_explore_export()
        except unittest.SkipTest as skipped:
            self.delayDisplay(f"MedDINOv3 test skipped: {skipped}")

    def test_segment_explore_export(self):
        _add_bundled_packages_to_path()
        from MedDINOv3SlicerLib.selftest import segment_explore_export

        segment_explore_export(self, self.delayDisplay)
