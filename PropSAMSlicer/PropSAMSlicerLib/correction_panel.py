"""The Corrections panel of the PropSAM module (Qt): a per-slice confidence strip and the correction buttons.

Thin by design: everything it does is a call into corrections.CorrectionSession (Qt-free, tested
headless). The module widget needs two lines:

    self.correctionPanel = build_correction_panel(self)          # in setup()
    self.correctionPanel.attach(job, result)                      # after a run was applied
"""

from __future__ import annotations

import math

import qt
import slicer

from .corrections import CorrectionSession

VIEWS = ("Red", "Yellow", "Green")


def build_correction_panel(widget) -> "CorrectionPanel":
    """Add the panel to the module widget's layout. `widget` gives .layout, .logic.core and .reportError."""
    return CorrectionPanel(widget)


class ConfidenceStrip(qt.QLabel):
    """One cell per slice along the propagation axis: green = confident, red = likely wrong, grey = empty."""

    def __init__(self, on_click):
        super().__init__()
        self.on_click = on_click
        self.scores = None
        self.setMinimumHeight(16)
        self.setToolTip("Confidence per slice (green: sure, red: likely wrong). Click to go to a slice.")

    def set_scores(self, scores) -> None:
        self.scores = scores
        self.redraw()

    def redraw(self) -> None:
        width, height = max(int(self.width), 100), 16
        pixmap = qt.QPixmap(width, height)
        pixmap.fill(qt.QColor(200, 200, 200))
        if self.scores is not None and len(self.scores):
            painter = qt.QPainter(pixmap)
            n = len(self.scores)
            for k, score in enumerate(self.scores):
                if not math.isfinite(score):
                    continue
                x0, x1 = int(k * width / n), int((k + 1) * width / n)
                painter.fillRect(x0, 0, max(1, x1 - x0), height, qt.QColor.fromHsvF(max(0.0, min(1.0, score)) / 3, 0.85, 0.9))
            painter.end()
        self.setPixmap(pixmap)

    def resizeEvent(self, event):
        self.redraw()

    def mousePressEvent(self, event):
        if self.scores is not None and len(self.scores):
            self.on_click(min(len(self.scores) - 1, int(event.pos().x() * len(self.scores) / max(int(self.width), 1))))


class CorrectionPanel:
    def __init__(self, widget):
        import ctk

        self.widget = widget
        self.session: CorrectionSession | None = None
        self.job = None
        box = ctk.ctkCollapsibleButton()
        box.text = "Corrections"
        widget.layout.addWidget(box)
        form = qt.QFormLayout(box)
        self.strip = ConfidenceStrip(self.onStripClicked)
        form.addRow("Confidence:", self.strip)
        self.suspectsLabel = qt.QLabel("Run PropSAM first.")
        form.addRow(self.suspectsLabel)
        row = qt.QHBoxLayout()
        self.fromSliceButton = qt.QPushButton("Re-propagate from this slice")
        self.fromSliceButton.toolTip = "After editing the current slice: keep it and re-propagate the slices beyond it"
        self.stopButton = qt.QPushButton("Stop here")
        self.stopButton.toolTip = "The object ends on the current slice: clear the slices beyond it"
        self.continueButton = qt.QPushButton("Continue")
        self.continueButton.toolTip = "The object goes on past the current slice: propagate further"
        for button in (self.fromSliceButton, self.stopButton, self.continueButton):
            row.addWidget(button)
        form.addRow(row)
        boxRow = qt.QHBoxLayout()
        self.roiSelector = slicer.qMRMLNodeComboBox()
        self.roiSelector.nodeTypes = ["vtkMRMLMarkupsROINode"]
        self.roiSelector.noneEnabled = True
        self.roiSelector.addEnabled = False
        self.roiSelector.setMRMLScene(slicer.mrmlScene)
        self.fromBoxButton = qt.QPushButton("Re-propagate from box")
        self.fromBoxButton.toolTip = "A box drawn on one slice: Box2Mask makes that slice, the slices beyond are re-propagated"
        boxRow.addWidget(self.roiSelector)
        boxRow.addWidget(self.fromBoxButton)
        form.addRow("Box:", boxRow)
        self.fromSliceButton.clicked.connect(lambda: self.run(lambda s, view: s.edited_slice(s.slice_in_view(view))))
        self.stopButton.clicked.connect(lambda: self.run(lambda s, view: s.stop_here(s.slice_in_view(view))))
        self.continueButton.clicked.connect(lambda: self.run(lambda s, view: s.continue_past(s.slice_in_view(view))))
        self.fromBoxButton.clicked.connect(lambda: self.run(lambda s, view: s.boxed_slice(self.roiSelector.currentNode(), view)))
        self.timer = qt.QTimer()
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.onPoll)
        self.update()

    # --- hooks for the module widget ----------------------------------------------------------------
    def attach(self, job, result) -> None:
        """A run was applied: its segment is the one corrected from now on."""
        self.session = CorrectionSession(self.widget.logic.core, job, result)
        self.update()

    # --- actions ------------------------------------------------------------------------------------
    def view(self):
        """The first slice view showing slices of the result's axis."""
        manager, last = slicer.app.layoutManager(), None
        for name in VIEWS:
            view = manager.sliceWidget(name).mrmlSliceNode() if manager and manager.sliceWidget(name) else None
            if view is None:
                continue
            try:
                self.session.slice_in_view(view)
                return view
            except Exception:  # noqa: BLE001 - not this view; the last one's reason is shown below
                last = view
        return last

    def run(self, make_correction) -> None:
        if self.session is None:
            return
        try:
            correction = make_correction(self.session, self.view())
            self.job = self.session.start(correction)
        except Exception as exc:
            self.widget.reportError(exc)
            return
        self.suspectsLabel.text = f"Correcting slice {correction.slice_index}..."
        self.timer.start()
        self.update()

    def onPoll(self) -> None:
        if self.job is None or not self.job.done:
            return
        self.timer.stop()
        job, self.job = self.job, None
        try:
            result = self.session.apply(job)
        except Exception as exc:
            self.widget.reportError(exc)
        else:
            self.suspectsLabel.text = f"Corrected in {result.seconds:.1f} s."
        self.update()

    def onStripClicked(self, slice_index: int) -> None:
        if self.session is not None:
            try:
                self.session.jump_to_slice(self.view(), slice_index)
            except Exception as exc:
                self.widget.reportError(exc)

    def update(self) -> None:
        ready = self.session is not None and self.job is None
        for button in (self.fromSliceButton, self.stopButton, self.continueButton, self.fromBoxButton):
            button.enabled = ready
        if self.session is None:
            self.strip.set_scores(None)
            return
        try:
            confidence = self.session.confidence()
        except Exception:  # noqa: BLE001 - e.g. the segment was deleted: nothing to show
            self.strip.set_scores(None)
            return
        self.strip.set_scores(confidence.score)
        if self.job is None:
            suspects = ", ".join(map(str, confidence.suspects())) or "none"
            self.suspectsLabel.text = f"Least confident slices: {suspects} ({len(self.session.corrections)} correction(s) so far)"
