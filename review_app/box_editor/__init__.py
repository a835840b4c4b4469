"""A Streamlit component that shows a page image with its boxes and lets a reviewer edit them.

Plain HTML/SVG/JavaScript (``frontend/index.html``), no build step. Click a box to select it, drag
it to move it, drag one of its eight handles to resize it, drag on empty space (or use ``+ Box``
or ``B``) to draw a new one, and press Delete (or ``Delete box``) to remove the selected one; arrow
keys nudge it (Shift: 10 px). Every finished gesture is sent to Python as one event:
``{"uid", "nonce", "action": select|move|resize|add|delete, "id", "box": [x0, y0, x1, y1]}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit.components.v1 as components

_FRONTEND = Path(__file__).parent / "frontend"
_component = components.declare_component("paperloop_box_editor", path=str(_FRONTEND))


def box_editor(image_url: str, width: int, height: int, boxes: list[dict[str, Any]],
               links: list[tuple[str, str]], selected: str | None, nonce: int, key: str,
               max_height: int = 1100) -> dict[str, Any] | None:
    """Render the editor; returns the last event (or ``None`` before the first one)."""
    return _component(image=image_url, width=width, height=height, boxes=boxes, links=[list(p) for p in links],
                      selected=selected, nonce=nonce, max_height=max_height, key=key, default=None)
