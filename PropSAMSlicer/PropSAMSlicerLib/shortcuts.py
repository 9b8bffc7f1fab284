"""The panel's keyboard shortcuts, and the ones Slicer itself already uses (they must not clash).

Slicer's own are copied from its documentation (user_guide/user_interface.md "Mouse & Keyboard
Shortcuts" and user_guide/modules/markups.md "Keyboard shortcuts"); Qt treats a second QShortcut
on the same keys in the main window as ambiguous and then fires neither.
"""

from __future__ import annotations

SHORTCUTS = {
    "box": "Ctrl+Shift+B",
    "sketch": "Ctrl+Shift+K",
    "two_view": "Ctrl+Shift+D",  # D for depth; Ctrl+Shift+T is the Markups toolbar's "place multiple points"
    "segment": "Ctrl+Shift+Return",
    "cancel": "Ctrl+Shift+X",
}

SLICER_SHORTCUTS = {
    "Ctrl+F": "find module", "Ctrl+O": "add data", "Ctrl+S": "save", "Ctrl+W": "close scene",
    "Ctrl+0": "error log", "Ctrl+1": "application help", "Ctrl+2": "application settings",
    "Ctrl+3": "Python console", "Ctrl+`": "Python console", "Ctrl+4": "extensions manager",
    "Ctrl+5": "module panel", "Ctrl+H": "startup module", "Ctrl+B": "3D view tilt lock",
    "Ctrl+G": "Python console: run script", "Ctrl+V": "Python console: paste and run",
    "Ctrl+Z": "Segment Editor undo", "Ctrl+Y": "Segment Editor redo",
    "Ctrl+Shift+A": "Markups: create new markup", "Ctrl+Shift+T": "Markups: toggle placing multiple points",
    "Ctrl+Shift+Space": "Markups: place new control point",
}


def normalized(keys: str) -> str:
    return "+".join(part.strip().capitalize() if len(part.strip()) > 1 else part.strip().upper()
                    for part in keys.split("+"))


def clashes() -> dict[str, str]:
    """PropSAM action -> the Slicer function already bound to its keys (empty when none clash)."""
    taken = {normalized(keys): what for keys, what in SLICER_SHORTCUTS.items()}
    return {action: taken[normalized(keys)] for action, keys in SHORTCUTS.items() if normalized(keys) in taken}
