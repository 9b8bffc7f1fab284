"""PropSAM: segment a 3D object in 3D Slicer from one box or one sketch on one slice.

Module / Widget / Logic / Test, as in Slicer's scripted-module template. The work is done by the
Qt-free PropSAMSlicerLib (tested headless in CI) and the propsam engine; this file is the panel.
"""

import logging
import os
import pathlib
import sys
import tempfile
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSliceNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

log = logging.getLogger("PropSAM")

NEW_SEGMENT = ""  # targetSegmentId meaning "create a new segment"


#
# Module
#
class PropSAMSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "PropSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["PropSAM for 3D Slicer contributors"]
        self.parent.helpText = (
            "Segment a 3D object from one prompt on one slice: draw a box (or sketch the object) on its largest "
            "slice and press Segment. Box2Mask turns the box into a 2D mask and PropMask propagates it slice by "
            "slice in both directions. The result is written into a segment that you can correct in the Segment "
            "Editor. See docs/USING_IN_SLICER.md in the extension's source."
        )
        self.parent.acknowledgementText = "PropSAM for 3D Slicer. The engine runs in Slicer's own Python process."


#
# Parameter node
#
@parameterNodeWrapper
class PropSAMSlicerParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    segmentation: vtkMRMLSegmentationNode
    targetSegmentId: str = NEW_SEGMENT
    segmentName: str = "PropSAM"
    segmentType: Annotated[str, Choice(["tissue", "organ", "lesion", "tumor", "mass"])] = "tissue"
    model: Annotated[str, Choice(["lite", "paper", "custom"])] = "lite"
    customModelPath: pathlib.Path
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    thicknessMm: Annotated[float, WithinRange(1.0, 200.0)] = 20.0
    context: Annotated[float, WithinRange(1.0, 4.0)] = 1.5
    leakLimit: Annotated[float, WithinRange(1.0, 100.0)] = 2.0  # the engine's default; the minimum, 1, reads "off"
    allowOverlap: bool = True
    boxRoi: vtkMRMLMarkupsROINode
    promptView: vtkMRMLSliceNode
    sketchSegmentId: str = ""
    studyMode: bool = False
    studyFile: pathlib.Path
    studyId: str = "study"
    readerId: str = ""
    caseId: str = ""
    objectName: str = ""
    referenceSegmentation: vtkMRMLSegmentationNode
    randomisedOrder: bool = True
    studySeed: int = 0
    exportPath: pathlib.Path


def path_or_none(path):
    """The path as text, or None for an unset ctkPathLineEdit (which reads as '.')."""
    text = str(path) if path is not None else ""
    return None if text in ("", ".") else text


#
# Logic: the Qt-free PropSAMLogic, plus the parameter node
#
class PropSAMSlicerLogic(ScriptedLoadableModuleLogic):
    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from PropSAMSlicerLib import PropSAMLogic

        self.core = PropSAMLogic(slicer.mrmlScene)

    def getParameterNode(self):
        return PropSAMSlicerParameterNode(super().getParameterNode())

    def __getattr__(self, name):
        # start/apply/segment/cancel/undo/can_undo come from PropSAMLogic
        core = self.__dict__.get("core")
        if core is None:
            raise AttributeError(name)
        return getattr(core, name)

    @staticmethod
    def modelSpec(parameters) -> str:
        if parameters.model == "lite":
            return "lite"
        custom = path_or_none(parameters.customModelPath)
        if custom:
            return custom
        return parameters.model  # "paper" without a file: the engine explains where to put one


#
# Dependencies: asked for, never installed silently, never at import time
#
def pip_install_after_asking(needs: dict, why: str) -> bool:
    """Install `needs` (import name -> requirement) after asking; any failure becomes a message box."""
    from PropSAMSlicerLib import dependencies

    requirements = list(needs.values())

    def install():
        try:
            from slicer import packaging  # Slicer >= 5.12: asks, installs with progress, offers a restart
        except ImportError:
            packaging = None
        if packaging is not None and hasattr(packaging, "pip_ensure"):
            return packaging.pip_ensure(requirements, requester="PropSAM")
        if not slicer.util.confirmOkCancelDisplay(
            f"{why} needs these Python packages: {', '.join(requirements)}.\nInstall them now (internet needed)?",
            windowTitle="PropSAM",
        ):
            return False
        with slicer.util.WaitCursor():
            return slicer.util.pip_install(" ".join(requirements))

    ok, message = dependencies.run_install(install, why, needs)
    if not ok:
        slicer.util.errorDisplay(message, windowTitle="PropSAM")
    return ok


def install_torch_with_extension() -> bool:
    """PyTorch through the PyTorch extension, which picks the build matching the GPU driver."""
    from PropSAMSlicerLib import dependencies

    import PyTorchUtils

    if not slicer.util.confirmOkCancelDisplay(
        "PropSAM needs PyTorch, which is not installed. Install it now with the PyTorch extension? "
        "This downloads up to a few GB and takes minutes.", windowTitle="PropSAM",
    ):
        return False

    def install():
        with slicer.util.WaitCursor():
            return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.1")

    ok, message = dependencies.run_install(install, "PyTorch", dict([dependencies.TORCH]))
    if not ok:
        slicer.util.errorDisplay(message, windowTitle="PropSAM")
    return ok


def ensure_segmentation_dependencies() -> bool:
    from PropSAMSlicerLib import dependencies

    if dependencies.torch_missing():
        if dependencies.installed("PyTorchUtils"):
            if not install_torch_with_extension():
                return False
        elif not pip_install_after_asking(dict([dependencies.TORCH]), "PropSAM (PyTorch, CPU build from PyPI; "
                                          "install the PyTorch extension for a GPU build)"):
            return False
    needs = {name: req for name, req in dependencies.SEGMENTATION.items() if not dependencies.installed(name)}
    return not needs or pip_install_after_asking(needs, "PropSAM segmentation")


def ensure_export_dependencies() -> bool:
    from PropSAMSlicerLib import dependencies

    needs = {name: req for name, req in dependencies.EXPORT.items() if not dependencies.installed(name)}
    return not needs or pip_install_after_asking(needs, "DICOM-SEG export")


#
# Widget
#
class PropSAMSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.tool = None  # "box", "sketch" or "two_view": the prompt in use
        self.job = None
        self.study = None
        self.shortcuts = []
        self.sketchEditor = None
        self.observedSegmentation = None
        self.sliceViewObservations = []  # (interactor, tag, slice node): which view a box is drawn in
        self.boxView = None  # slice node of the box's first click
        self.sketchView = None  # slice node last painted in

    # --- setup ------------------------------------------------------------------------------
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from PropSAMSlicerLib.dependencies import unsupported_reason

        reason = unsupported_reason(tuple(sys.version_info[:3]))
        if reason is not None:
            label = qt.QLabel(reason)
            label.wordWrap = True
            self.layout.addWidget(label)
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/PropSAMSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = PropSAMSlicerLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.boxButton.clicked.connect(lambda: self.armTool("box"))
        self.ui.sketchButton.clicked.connect(lambda: self.armTool("sketch"))
        self.ui.twoViewButton.clicked.connect(lambda: self.armTool("two_view"))
        self.ui.segmentButton.clicked.connect(self.onSegment)
        self.ui.cancelButton.clicked.connect(self.onCancel)
        self.ui.undoButton.clicked.connect(self.onUndo)
        self.ui.openEditorButton.clicked.connect(self.onOpenEditor)
        self.ui.targetSegmentComboBox.connect("currentIndexChanged(int)", self.onTargetSegmentChosen)
        self.ui.startCaseButton.clicked.connect(self.onStartCase)
        self.ui.exportButton.clicked.connect(self.onExport)
        self.ui.studyModeCheckBox.toggled.connect(self.onStudyModeToggled)

        from PropSAMSlicerLib.shortcuts import SHORTCUTS

        mainWindow = slicer.util.mainWindow()
        for action, keys in SHORTCUTS.items() if mainWindow is not None else ():  # none without a main window
            shortcut = qt.QShortcut(qt.QKeySequence(keys), mainWindow)
            shortcut.setEnabled(False)
            shortcut.activated.connect(lambda action=action: self.onShortcut(action))
            self.shortcuts.append(shortcut)

        from PropSAMSlicerLib import POLL_INTERVAL_MS

        # While a job runs, each tick waits on it with the GIL released (<= 30 ms) and returns to
        # Qt, which services GUI events in between: see PropSAMSlicerLib/worker.py for why.
        self.timer = qt.QTimer()
        self.timer.setInterval(POLL_INTERVAL_MS)
        self.timer.timeout.connect(self.onPoll)
        self.initializeParameterNode()
        from PropSAMSlicerLib.correction_panel import build_correction_panel
        self.correctionPanel = build_correction_panel(self)

    def cleanup(self):
        self.stopWatchingSliceViews()
        if self.job is not None:
            self.job.cancel()
        if self.study is not None:
            self.study.close()
        self.removeObservers()
        for shortcut in self.shortcuts:
            shortcut.setParent(None)
        self.shortcuts = []

    def enter(self):
        if self.logic is None:
            return
        self.initializeParameterNode()
        for shortcut in self.shortcuts:
            shortcut.setEnabled(True)

    def exit(self):
        self.stopWatchingSliceViews()
        for shortcut in self.shortcuts:
            shortcut.setEnabled(False)
        if self.sketchEditor is not None:
            self.sketchEditor.setActiveEffect(None)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)

    def onSceneStartClose(self, caller, event):
        if self.job is not None:
            self.job.cancel()
        self.logic.core.undo_stack.clear()
        self.tool = None
        self.stopWatchingSliceViews()
        if self.sketchEditor is not None:  # its editor node goes with the scene; a new one is found on next use
            self.sketchEditor.setActiveEffect(None)
            self.sketchEditor.setMRMLSegmentEditorNode(None)
        self.observeSegmentation(None)
        if self.study is not None:
            self.study.abandon()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if volume:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, parameterNode):
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGui)
            self.updateGui()

    # --- GUI state ----------------------------------------------------------------------------
    def updateGui(self, caller=None, event=None):
        p = self._parameterNode
        if p is None:
            return
        self.observeSegmentation(p.segmentation)
        self.fillTargetSegments()
        running = self.job is not None and not self.job.done
        for button, tool in ((self.ui.boxButton, "box"), (self.ui.sketchButton, "sketch"),
                             (self.ui.twoViewButton, "two_view")):
            button.checked = self.tool == tool
            button.enabled = not running and p.inputVolume is not None
        self.ui.segmentButton.enabled = not running and p.inputVolume is not None and self.tool is not None
        self.ui.cancelButton.enabled = running
        self.ui.undoButton.enabled = not running and self.logic.core.can_undo
        self.ui.openEditorButton.enabled = p.segmentation is not None
        self.ui.customModelPathLineEdit.enabled = p.model != "lite"
        self.ui.exportButton.enabled = not running and p.segmentation is not None and p.inputVolume is not None
        from PropSAMSlicerLib import write_policy

        self.ui.writePolicyLabel.text = write_policy(p.allowOverlap)

    def observeSegmentation(self, node):
        """Keep the target-segment list in step with segments added, renamed or removed elsewhere."""
        if node is self.observedSegmentation:
            return
        events = (slicer.vtkSegmentation.SegmentAdded, slicer.vtkSegmentation.SegmentRemoved,
                  slicer.vtkSegmentation.SegmentModified)
        if self.observedSegmentation is not None:
            for event in events:
                self.removeObserver(self.observedSegmentation.GetSegmentation(), event, self.onSegmentsChanged)
        self.observedSegmentation = node
        if node is not None:
            for event in events:
                self.addObserver(node.GetSegmentation(), event, self.onSegmentsChanged)

    def onSegmentsChanged(self, caller=None, event=None):
        if self._parameterNode is not None:
            self.fillTargetSegments()

    def fillTargetSegments(self):
        combo, p = self.ui.targetSegmentComboBox, self._parameterNode
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        combo.addItem("(new segment)", NEW_SEGMENT)
        if p.segmentation is not None:
            segmentation = p.segmentation.GetSegmentation()
            for i in range(segmentation.GetNumberOfSegments()):
                segment_id = segmentation.GetNthSegmentID(i)
                if segment_id != p.sketchSegmentId:
                    combo.addItem(segmentation.GetSegment(segment_id).GetName(), segment_id)
        index = combo.findData(p.targetSegmentId)
        combo.setCurrentIndex(max(index, 0))
        combo.blockSignals(wasBlocked)
        if index < 0:  # the chosen segment is gone (deleted, or another segmentation is selected)
            p.targetSegmentId = NEW_SEGMENT

    def onTargetSegmentChosen(self, index):
        if self._parameterNode is not None:
            self._parameterNode.targetSegmentId = self.ui.targetSegmentComboBox.itemData(index) or NEW_SEGMENT

    def setStatus(self, text):
        self.ui.statusLabel.text = text
        slicer.util.showStatusMessage(f"PropSAM: {text}", 5000)

    def onShortcut(self, action):
        if action in ("box", "sketch", "two_view"):
            self.armTool(action)
        elif action == "segment" and self.ui.segmentButton.enabled:
            self.onSegment()
        elif action == "cancel":
            self.onCancel()

    # --- prompt tools -----------------------------------------------------------------------
    def armTool(self, tool):
        p = self._parameterNode
        if p.inputVolume is None:
            slicer.util.errorDisplay("Select the volume to segment first.")
            return
        if self.study is not None:
            try:
                self.study.arm(tool)
            except Exception as exc:
                slicer.util.errorDisplay(str(exc), windowTitle="PropSAM study")
                self.updateGui()
                return
        self.tool = tool
        self.stopWatchingSliceViews()
        self.showSketchEditor(tool == "sketch")
        if tool == "sketch":
            self.startSketch()
        else:
            self.startBox(tool)
        self.updateGui()

    def startBox(self, tool):
        p = self._parameterNode
        if p.boxRoi is not None:
            self.removeObserver(p.boxRoi, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxPlaced)
            self.removeObserver(p.boxRoi, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onBoxEdited)
            slicer.mrmlScene.RemoveNode(p.boxRoi)
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "PropSAM box")
        roi.CreateDefaultDisplayNodes()
        roi.GetDisplayNode().SetSelectedColor(1.0, 0.85, 0.0)
        p.boxRoi, p.promptView = roi, None
        self.boxView = None
        self.watchSliceViews()
        self.addObserver(roi, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onBoxPlaced)
        self.addObserver(roi, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onBoxEdited)
        selection = slicer.app.applicationLogic().GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName("vtkMRMLMarkupsROINode")
        selection.SetActivePlaceNodeID(roi.GetID())
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetCurrentInteractionMode(interaction.Place)
        self.ui.promptStatusLabel.text = (
            "Draw the box around the object on its largest slice." if tool == "box" else
            "Draw the box in one view, then drag its handles in an orthogonal view to cover the object's depth.")

    def watchSliceViews(self):
        """Note the slice view of the box's first click: that view, not the crosshair, decides its axis."""
        self.stopWatchingSliceViews()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is None:
            return
        for name in layoutManager.sliceViewNames():
            sliceWidget = layoutManager.sliceWidget(name)
            interactor = sliceWidget.sliceView().interactor()
            sliceNode = sliceWidget.mrmlSliceNode()
            tag = interactor.AddObserver(vtk.vtkCommand.LeftButtonPressEvent,
                                         lambda caller, event, sliceNode=sliceNode: self.onSliceViewClicked(sliceNode),
                                         1.0)
            self.sliceViewObservations.append((interactor, tag))

    def stopWatchingSliceViews(self):
        for interactor, tag in self.sliceViewObservations:
            interactor.RemoveObserver(tag)
        self.sliceViewObservations = []

    def onSliceViewClicked(self, sliceNode):
        p = self._parameterNode
        if p is None:
            return
        if self.tool == "sketch":
            self.sketchView = sliceNode  # the view painted in
        elif self.boxView is None and p.boxRoi is not None and not self.boxPlaced(p.boxRoi):
            self.boxView = sliceNode

    @staticmethod
    def boxPlaced(roi):
        return roi.GetNumberOfDefinedControlPoints() > 0 and roi.GetControlPointPlacementComplete()

    def onBoxPlaced(self, caller, event):
        from PropSAMSlicerLib import flatten_box_to_view

        p = self._parameterNode
        self.stopWatchingSliceViews()
        if self.boxView is None:  # placed from a 3D view or by a script: the box's thinnest extent decides
            self.ui.promptStatusLabel.text = "Box placed outside a slice view; draw it in a slice view."
            return
        p.promptView = self.boxView
        # a flat box on the slice it was drawn on; the two-view box stays visible for its depth drag
        flatten_box_to_view(p.boxRoi, self.boxView, only_in_view=self.tool == "box")
        self.ui.promptStatusLabel.text = (
            f"Box placed in the {self.boxView.GetName()} view. Adjust it if needed, then press Segment."
            if self.tool == "box" else
            f"Box placed in the {self.boxView.GetName()} view. Now drag its handles in an orthogonal view "
            "to cover the object's depth, then press Segment.")

    def onBoxEdited(self, caller, event):
        if self.study is not None:
            self.study.correction()

    def startSketch(self):
        from PropSAMSlicerLib.sketch import sketch_editor_node, start_sketch

        p = self._parameterNode
        if p.segmentation is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{p.inputVolume.GetName()} PropSAM")
            node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(p.inputVolume)
            p.segmentation = node
        p.sketchSegmentId = start_sketch(p.segmentation, p.sketchSegmentId)
        self.sketchView = None
        self.watchSliceViews()
        p.segmentation.GetDisplayNode().SetSegmentVisibility(p.sketchSegmentId, True)
        editor = self.sketchEditor
        # looked up in the current scene every time: after Close Scene the old node is gone
        editor.setMRMLSegmentEditorNode(sketch_editor_node(slicer.mrmlScene))
        editor.setSegmentationNode(p.segmentation)
        editor.setSourceVolumeNode(p.inputVolume)
        editor.setCurrentSegmentID(p.sketchSegmentId)
        editor.setActiveEffectByName("Paint")
        self.ui.promptStatusLabel.text = (
            "Paint the object on one slice (its largest) in one slice view; Erase fixes strokes. Only the sketch "
            "is painted: other segments are never touched. Then press Segment.")

    def showSketchEditor(self, show):
        if show and self.sketchEditor is None:
            from PropSAMSlicerLib.sketch import SKETCH_EFFECTS, sketch_editor_node

            # a Segment Editor reduced to Paint and Erase: no selectors, no other effects
            editor = slicer.qMRMLSegmentEditorWidget()
            editor.setMRMLScene(slicer.mrmlScene)
            editor.setMRMLSegmentEditorNode(sketch_editor_node(slicer.mrmlScene))
            editor.setEffectNameOrder(SKETCH_EFFECTS)
            editor.unorderedEffectsVisible = False
            for setter in ("setSegmentationNodeSelectorVisible", "setSourceVolumeNodeSelectorVisible",
                           "setSwitchToSegmentationsButtonVisible"):
                if hasattr(editor, setter):
                    getattr(editor, setter)(False)
            editor.setMaximumNumberOfUndoStates(10)
            self.sketchEditor = editor
            self.ui.sketchEditorFrame.layout().addWidget(editor)
        if not show and self.sketchEditor is not None:
            self.sketchEditor.setActiveEffect(None)
        self.ui.sketchEditorFrame.visible = show

    def buildPrompt(self):
        from PropSAMSlicerLib import box_prompt_from_roi, mask_prompt_from_array, two_view_prompt_from_roi
        from PropSAMSlicerLib.segments import segment_array

        p = self._parameterNode
        if self.tool == "box":
            return box_prompt_from_roi(p.inputVolume, p.boxRoi, p.promptView)
        if self.tool == "two_view":
            return two_view_prompt_from_roi(p.inputVolume, p.boxRoi)
        from propsam.errors import InputError

        if p.segmentation is None or not p.sketchSegmentId:
            raise InputError("the sketch is empty: press Sketch and paint the object on one slice first")
        axis = None
        if self.sketchView is not None:  # the view painted in decides the axis (a thin stroke cannot)
            from PropSAMSlicerLib import view_axis

            axis = view_axis(p.inputVolume, self.sketchView)[0]
        return mask_prompt_from_array(segment_array(p.segmentation, p.sketchSegmentId, p.inputVolume), axis)

    # --- running ----------------------------------------------------------------------------
    def onSegment(self):
        from PropSAMSlicerLib import SegmentRequest, model_is_loaded, panel_leak_limit

        p = self._parameterNode
        try:
            prompt = self.buildPrompt()
        except Exception as exc:
            slicer.util.errorDisplay(f"Cannot segment: {exc}", windowTitle="PropSAM")
            return
        if not ensure_segmentation_dependencies():
            self.setStatus("PyTorch or another package is missing; nothing was run.")
            return
        target = p.targetSegmentId if p.segmentation is not None and p.targetSegmentId else None
        request = SegmentRequest(
            volume_node=p.inputVolume, prompt=prompt, segmentation_node=p.segmentation, segment_id=target,
            segment_name=p.segmentName or "PropSAM", segment_type=p.segmentType, model=self.logic.modelSpec(p),
            device=p.device, thickness_mm=p.thicknessMm, context=p.context, allow_overlap=p.allowOverlap,
            leak_limit=panel_leak_limit(p.leakLimit),
        )
        if not model_is_loaded(request.model, request.device):
            self.setStatus(f"Loading model {request.model} (first run, a few seconds)...")
            slicer.app.processEvents()
        try:
            import torch  # noqa: F401 - the first import is slow; done here rather than in the worker thread

            if self.study is not None:
                self.study.submit()
            self.job = self.logic.start(request)
        except Exception as exc:
            if self.study is not None:
                self.study.abandon()
            self.reportError(exc)
            return
        self.ui.progressBar.visible = True
        self.ui.progressBar.setRange(0, 0)  # busy until the first round reports
        self.timer.start()
        self.updateGui()

    def onPoll(self):
        if self.job is None:
            self.timer.stop()
            return
        for event in self.job.service():  # waits <= 30 ms with the GIL released: the engine runs meanwhile
            kind = event[0]
            if kind == "status":
                self.setStatus(event[1])
            elif kind == "progress":
                done, total = event[1], event[2]
                self.ui.progressBar.setRange(0, max(total, 1))
                self.ui.progressBar.setValue(done)
            elif kind in ("finished", "failed", "cancelled"):
                self.timer.stop()
                self.finishJob(kind)
                return

    def finishJob(self, kind):
        job, self.job = self.job, None
        self.ui.progressBar.visible = False
        try:
            if kind != "finished":
                raise job.error
            result = self.logic.apply(job)
        except Exception as exc:
            if self.study is not None:
                self.study.abandon()
            self.reportError(exc)
        else:
            self.showResult(result)
            self.correctionPanel.attach(job, result)
        self.updateGui()

    def showResult(self, result):
        p = self._parameterNode
        p.segmentation = result.segmentation_node
        display = result.segmentation_node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
            display.SetSegmentVisibility(result.segment_id, True)
            if p.sketchSegmentId and result.segmentation_node.GetSegmentation().GetSegment(p.sketchSegmentId):
                display.SetSegmentVisibility(p.sketchSegmentId, False)
        self.setStatus(result.status())
        if self.study is not None:
            record = self.study.finish(result.mask)
            dice = f", Dice {record.dice:.3f}" if record.dice is not None else ""
            self.ui.studyStatusLabel.text = (
                f"Recorded {record.prompt_type}: prompt {record.prompt_seconds:.1f} s, "
                f"segmentation {record.segmentation_seconds:.1f} s{dice}. {self.nextPromptText()}")
        if self.study is not None:  # the next prompt of the study is armed afresh
            self.tool = None
            self.showSketchEditor(False)
        elif self.sketchEditor is not None:
            self.sketchEditor.setActiveEffect(None)  # keep the sketch for a re-run, stop painting into it

    def reportError(self, exc):
        from propsam.errors import Cancelled, PropSAMError

        if isinstance(exc, Cancelled):
            self.setStatus("Cancelled; nothing was changed.")
            return
        if isinstance(exc, PropSAMError):
            log.warning("PropSAM: %s", exc)
            slicer.util.errorDisplay(str(exc), windowTitle="PropSAM")
        else:
            log.exception("PropSAM failed unexpectedly")
            slicer.util.errorDisplay(f"PropSAM failed unexpectedly: {exc}\nSee the Python console / log for details.",
                                     windowTitle="PropSAM")
        self.setStatus("Failed; nothing was changed.")

    def onCancel(self):
        if self.job is not None and not self.job.done:
            self.job.cancel()
            self.setStatus("Cancelling (stops after the current round)...")

    def onUndo(self):
        changed = self.logic.core.changed_since_run()
        if changed is not None and not slicer.util.confirmOkCancelDisplay(
            f"The last PropSAM result was changed since the run: {changed}. Undo restores the segment as it was "
            "before the run and discards those changes. Undo anyway?", windowTitle="PropSAM"):
            self.setStatus("Undo cancelled; nothing was changed.")
            return
        try:
            self.logic.undo(discard_changes=True)
            self.setStatus("Undone: the segment is back as it was before the last run.")
        except Exception as exc:
            self.reportError(exc)
        self.updateGui()

    def onOpenEditor(self):
        p = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(p.segmentation)
        if p.inputVolume is not None:
            editor.setSourceVolumeNode(p.inputVolume)
        if p.targetSegmentId:
            editor.setCurrentSegmentID(p.targetSegmentId)

    # --- study mode -------------------------------------------------------------------------
    def onStudyModeToggled(self, on):
        if not on and self.study is not None:
            self.study.close()
            self.study = None
            self.ui.studyStatusLabel.text = "Study mode off."

    def onStartCase(self):
        from PropSAMSlicerLib.segments import segment_array
        from PropSAMSlicerLib.study import StudyController

        p = self._parameterNode
        try:
            if not p.studyMode:
                p.studyMode = True
            if self.study is None:
                studyFile = path_or_none(p.studyFile)
                if studyFile is None:
                    raise ValueError("choose a study file first")
                self.study = StudyController(studyFile, p.studyId, p.readerId, randomised=p.randomisedOrder,
                                             seed=p.studySeed, model_version=self.logic.modelSpec(p))
            reference = None
            if p.referenceSegmentation is not None and p.referenceSegmentation.GetSegmentation().GetNumberOfSegments():
                first = p.referenceSegmentation.GetSegmentation().GetNthSegmentID(0)
                reference = segment_array(p.referenceSegmentation, first, p.inputVolume)
            order = self.study.start_case(p.caseId, p.objectName, reference)
        except Exception as exc:
            slicer.util.errorDisplay(f"Cannot start the case: {exc}", windowTitle="PropSAM study")
            return
        self.ui.studyStatusLabel.text = f"Case {p.caseId}: order {', '.join(order)}. " + self.nextPromptText()

    def nextPromptText(self):
        tool = self.study.next_tool() if self.study is not None else None
        if tool is None:
            return "Case complete: start the next case."
        from PropSAMSlicerLib.shortcuts import SHORTCUTS

        return f"Next prompt: {tool.replace('_', '-')} ({SHORTCUTS[tool]})."

    # --- export -----------------------------------------------------------------------------
    def onExport(self):
        from PropSAMSlicerLib.export import export_segments, series_folder

        p = self._parameterNode
        if not ensure_export_dependencies():
            return
        try:
            out = path_or_none(p.exportPath)
            if out is None:
                raise ValueError("choose the DICOM-SEG file to write")
            uids = (p.inputVolume.GetAttribute("DICOM.instanceUIDs") or "").split()
            files = [slicer.dicomDatabase.fileForInstance(uid) for uid in uids] if uids else []
            folder = series_folder(files, os.path.join(tempfile.gettempdir(), "PropSAM-series"))
            segmentation = p.segmentation.GetSegmentation()
            ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
            ids = [i for i in ids if i != p.sketchSegmentId]
            with slicer.util.WaitCursor():
                written = export_segments(p.segmentation, ids, p.inputVolume, folder, out,
                                          model_name=self.logic.modelSpec(p), force=True)
        except Exception as exc:
            slicer.util.errorDisplay(f"DICOM-SEG export failed: {exc}", windowTitle="PropSAM")
            return
        self.setStatus(f"DICOM-SEG written: {written}")


#
# Test (runs inside Slicer: Reload and Test, or ctest with the extension's build)
#
class PropSAMSlicerTest(ScriptedLoadableModuleTest):
    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_two_view_box_segments_inside_box_on_volume_grid()
        self.setUp()
        self.test_one_view_box_with_shipped_model()
        self.setUp()
        self.test_speed_in_slicers_main_loop()

    def modelForTest(self):
        """The shipped lite model if present, else seeded random weights (the code path is the same)."""
        from propsam.weights import MANIFEST, SHIPPED_MODELS_DIR

        shipped = SHIPPED_MODELS_DIR / "lite" / MANIFEST
        if shipped.is_file():
            return "lite", True
        from propsam.training.bundle import random_bundle

        folder = pathlib.Path(slicer.app.temporaryPath) / "PropSAMTestModel"
        return str(random_bundle(folder)), False

    def loadAndDrawBox(self, low_ijk, high_ijk):
        import numpy as np
        import SampleData

        volume = SampleData.downloadSample("MRHead")
        self.assertIsNotNone(volume)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        corners = [m @ np.array([*c, 1.0]) for c in (low_ijk, high_ijk)]
        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "test box")
        lo, hi = np.minimum(corners[0], corners[1])[:3], np.maximum(corners[0], corners[1])[:3]
        roi.SetCenter(*((lo + hi) / 2))
        roi.SetSize(*(hi - lo))
        return volume, roi, m

    def checkOnVolumeGrid(self, volume, result):
        import numpy as np

        internal = result.segmentation_node.GetBinaryLabelmapInternalRepresentation(result.segment_id)
        toWorld = vtk.vtkMatrix4x4()
        internal.GetImageToWorldMatrix(toWorld)
        matrix = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        for r in range(4):
            for c in range(4):
                self.assertAlmostEqual(toWorld.GetElement(r, c), matrix.GetElement(r, c), places=6)
        extent, dims = internal.GetExtent(), volume.GetImageData().GetDimensions()
        for axis in range(3):
            self.assertGreaterEqual(extent[2 * axis], 0)
            self.assertLess(extent[2 * axis + 1], dims[axis])
        from PropSAMSlicerLib.segments import segment_array

        array = segment_array(result.segmentation_node, result.segment_id, volume)
        self.assertEqual(array.shape, slicer.util.arrayFromVolume(volume).shape)
        np.testing.assert_array_equal(array, result.mask)
        return array

    def test_two_view_box_segments_inside_box_on_volume_grid(self):
        import numpy as np

        from PropSAMSlicerLib import SegmentRequest, dependencies, two_view_prompt_from_roi

        if dependencies.torch_missing():
            self.skipTest("PyTorch is not installed (install it from the PropSAM panel or the PyTorch extension)")
        model, _ = self.modelForTest()
        volume, roi, _ = self.loadAndDrawBox((80, 80, 60), (170, 180, 90))  # a box over the brain
        before = slicer.util.arrayFromVolume(volume).copy()
        prompt = two_view_prompt_from_roi(volume, roi)
        logic = PropSAMSlicerLogic()
        result = logic.segment(SegmentRequest(volume, prompt, model=model, device="cpu"))
        array = self.checkOnVolumeGrid(volume, result)
        self.assertGreater(int(array.sum()), 0)
        i0, j0, k0, i1, j1, k1 = prompt.box3d
        outside = array.copy()
        outside[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1] = 0
        self.assertEqual(int(outside.sum()), 0, "the result leaves the two-view box")
        np.testing.assert_array_equal(slicer.util.arrayFromVolume(volume), before)
        logic.undo()
        self.assertIsNone(slicer.mrmlScene.GetNodeByID(result.segmentation_node.GetID()))
        self.delayDisplay("Two-view box test passed")

    def test_one_view_box_with_shipped_model(self):
        import numpy as np

        from PropSAMSlicerLib import SegmentRequest, box_prompt_from_roi, dependencies

        if dependencies.torch_missing():
            self.skipTest("PyTorch is not installed (install it from the PropSAM panel or the PyTorch extension)")
        model, trained = self.modelForTest()
        if not trained:
            self.skipTest("no shipped lite model: region checks need trained weights")
        volume, roi, _ = self.loadAndDrawBox((80, 70, 75), (175, 190, 75))  # the head on slice k = 75
        prompt = box_prompt_from_roi(volume, roi)  # a flat box: its slice axis is the one it is flat along
        self.assertEqual((prompt.axis, prompt.slice_index), (0, 75))
        result = PropSAMSlicerLogic().segment(SegmentRequest(volume, prompt, model=model))
        array = self.checkOnVolumeGrid(volume, result)
        self.assertGreater(int(array[prompt.slice_index].sum()), 0, "nothing on the prompt slice")
        c0, r0, c1, r1 = prompt.box
        margin_c, margin_r = (c1 - c0) // 4, (r1 - r0) // 4  # the object may bulge past its slice's box elsewhere
        outside = array.copy()
        outside[:, max(r0 - margin_r, 0):r1 + margin_r + 1, max(c0 - margin_c, 0):c1 + margin_c + 1] = 0
        self.assertEqual(int(outside.sum()), 0, "the result reaches far outside the box")
        self.delayDisplay("One-view box test passed")

    def test_speed_in_slicers_main_loop(self):
        """The engine at full speed in Slicer's own event loop (where the main thread holds the GIL
        while idle): the panel's timer-driven run vs the same run with the main thread blocked."""
        import time

        import numpy as np

        from PropSAMSlicerLib import POLL_INTERVAL_MS, SegmentRequest, box_prompt_from_roi, dependencies

        if dependencies.torch_missing():
            self.skipTest("PyTorch is not installed")
        model, trained = self.modelForTest()
        volume, roi, _ = self.loadAndDrawBox((80, 70, 75), (175, 190, 75))
        logic = PropSAMSlicerLogic()
        request = SegmentRequest(volume, box_prompt_from_roi(volume, roi), model=model)
        logic.segment(request)  # loads the model
        logic.undo()
        standalone, inSlicer, gaps = [], [], []
        for _ in range(2):
            start = time.monotonic()
            job = logic.start(request)
            job.wait()
            standalone.append(time.monotonic() - start)
            job = logic.start(request)
            loop, timer, ticks = qt.QEventLoop(), qt.QTimer(), []

            def tick(job=job, loop=loop, timer=timer, ticks=ticks):
                job.service()
                ticks.append(time.monotonic())
                if job.done:
                    timer.stop()
                    loop.quit()

            timer.setInterval(POLL_INTERVAL_MS)
            timer.timeout.connect(tick)
            start = time.monotonic()
            timer.start()
            (loop.exec_ if hasattr(loop, "exec_") else loop.exec)()
            inSlicer.append(time.monotonic() - start)
            gaps.extend(np.diff(ticks))
            self.assertEqual(job.state, "finished")
        ratio = min(inSlicer) / min(standalone)
        message = (f"standalone {min(standalone):.2f} s, in Slicer's loop {min(inSlicer):.2f} s ({ratio:.2f}x); "
                   f"timer ticks every {np.median(gaps) * 1000:.0f} ms (median), {max(gaps) * 1000:.0f} ms (longest)")
        logging.info(message)
        self.delayDisplay(message)
        self.assertLessEqual(ratio, 1.3)
