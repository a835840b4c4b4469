"""The page editor: a Streamlit component holding one document's whole edit state in the browser.

Plain HTML/SVG/JavaScript (``frontend/index.html`` and ``frontend/editor.js``), no build step. Boxes,
text, labels, links and entity merges/splits are edited in the browser without a server round trip;
the component sends Python one event per server action:

* ``{"action": "save" | "accept", "diff": {...}}``: the edits since the document was loaded, as
  :func:`service.review.editor.apply_editor_diff` takes them;
* ``{"action": "reread", "request", "id", "page", "box"}``: read a box with the recognizer in service;
* ``{"action": "skip" | "queue"}``: leave the document (the editor asked first if there were edits).

Every event carries ``uid`` (unique), ``doc`` (the document it was made on) and ``at`` (browser ms).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Callable

import streamlit.components.v1 as components

_FRONTEND = Path(__file__).parent / "frontend"
_component = components.declare_component("paperloop_box_editor", path=str(_FRONTEND))

EDITOR_KEY = "page_editor"  # one stable widget: the iframe (and its zoom, focus) survive reruns


def page_editor(doc: dict[str, Any], images: dict[str, str], labels: list[str], colours: dict[str, str],
                load_key: str, status: dict[str, Any] | None, reread: dict[str, Any] | None,
                on_event: Callable[..., None], args: tuple = ()) -> dict[str, Any] | None:
    """Render the editor for ``doc`` (:func:`service.review.editor.editor_document`); ``images`` maps
    page numbers to image URLs, ``load_key`` changes whenever the editor must start again from ``doc``
    (another document, or a saved revision). ``on_event(*args)`` runs before the next run of the page
    when the editor sends an event; the event is ``st.session_state[EDITOR_KEY]``."""
    return _component(doc=doc, images=images, labels=labels, colours=colours, key=EDITOR_KEY, load=load_key,
                      status=status, reread=reread, default=None, on_change=partial(on_event, *args))
