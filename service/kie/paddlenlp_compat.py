"""The one place that makes paddlenlp 2.8.1 importable beside paddleocr 3.7 / paddlex 3.7, offline.

Why a workaround is needed: ``paddlenlp.transformers.aistudio_utils`` runs
``from aistudio_sdk.hub import download`` at import time, but the aistudio-sdk versions that
paddlex 3.7 requires (0.3.x) no longer define ``aistudio_sdk.hub.download``, so
``import paddlenlp`` fails with an ``ImportError``. Paperloop only loads LayoutXLM weights from
local folders and never downloads anything, so paddlenlp never needs that function: when (and only
when) the real attribute is missing, :func:`import_paddlenlp` installs a stand-in that raises
:class:`DownloadRefusedError` if anything ever calls it. Should a later aistudio-sdk bring the real
function back, it is left untouched.

Offline: before importing, the download switches that paddlenlp's own code honours are turned off
(``AISTUDIO_BOS_OFFLINE`` — paddlenlp/utils/download/common.py mounts an adapter that refuses every
request — and ``HF_HUB_OFFLINE`` for huggingface_hub), and ``from_modelscope`` is cleared. Both
flags are read once when their module is imported, so the module-level values are set too, in case
paddlex imported huggingface_hub (it does) before this function ran. Callers must still pass
existing local folders: a name that is not a folder would make paddlenlp look it up online.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any, NoReturn

OFFLINE_ENV = {"AISTUDIO_BOS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


class DownloadRefusedError(RuntimeError):
    """Something asked paddlenlp to download a file; Paperloop never downloads at run time."""


def refuse_download(*args: Any, **kwargs: Any) -> NoReturn:
    """Stand-in for ``aistudio_sdk.hub.download``: always refuses, naming what was asked for."""
    target = kwargs.get("repo_id") or (args[0] if args else "?")
    raise DownloadRefusedError(
        f"paddlenlp tried to download {target!r} from AI Studio; Paperloop loads models only from "
        "local folders (pass the folder holding config.json and the weights)"
    )


def _set_offline_flags() -> None:
    """Turn off the downloads paddlenlp and huggingface_hub can make, in env and loaded modules."""
    os.environ.update(OFFLINE_ENV)
    os.environ.pop("from_modelscope", None)
    hf_constants = importlib.import_module("huggingface_hub.constants")
    hf_constants.HF_HUB_OFFLINE = True


def _install_aistudio_stand_in() -> None:
    """Give ``aistudio_sdk.hub`` a refusing ``download`` if, and only if, it has none."""
    hub = importlib.import_module("aistudio_sdk.hub")
    if not hasattr(hub, "download"):
        hub.download = refuse_download  # type: ignore[attr-defined]


def import_paddlenlp() -> ModuleType:
    """Import and return ``paddlenlp.transformers``, offline, with the aistudio stand-in in place."""
    _set_offline_flags()
    _install_aistudio_stand_in()
    transformers = importlib.import_module("paddlenlp.transformers")
    importlib.import_module("paddlenlp.utils.download.common").OFFLINE = True
    return transformers
