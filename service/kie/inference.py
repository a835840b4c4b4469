"""SER and RE in service: export trained models into the registry and run them on documents."""

from __future__ import annotations

import copy
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import paddle
from paddle.static import InputSpec

from service.document import Document, Link
from service.kie.features import MAX_TOKENS, N_BOX, N_PAIR, N_TEXT_CUES, featurize
from service.kie.fit import decode_links, re_probabilities
from service.ocr.engine import Predictor
from service.paddle_noise import quiet_export
from service.registry import ModelRegistry

if TYPE_CHECKING:
    from service.kie.grouping import Group, WordPage

PageImages = dict[int, np.ndarray]  # page number → H×W×3 RGB uint8
KIE_TASKS = ("group", "ser", "re")  # the document-level tasks whose models this module loads
SER_MODEL_NAME = "PaperloopGraphSER"
RE_MODEL_NAME = "PaperloopGraphRE"


def input_specs(num_labels: int | None = None) -> list[InputSpec]:
    """Dynamic-shape inputs of the exported graph models (RE also takes label probabilities)."""
    specs = [
        InputSpec([None, None, MAX_TOKENS], "int64", "tokens"),
        InputSpec([None, None, N_TEXT_CUES], "float32", "cues"),
        InputSpec([None, None, N_BOX], "float32", "boxes"),
        InputSpec([None, None, None, N_PAIR], "float32", "pairs"),
        InputSpec([None, None], "float32", "mask"),
    ]
    if num_labels is not None:
        specs.append(InputSpec([None, None, num_labels], "float32", "label_probs"))
    return specs


def export_for_inference(model: paddle.nn.Layer, specs: list[InputSpec], folder: Path) -> dict[str, Path]:
    """``paddle.jit.save`` the model into ``folder``; returns registry file name → path."""
    model.eval()
    with quiet_export():
        paddle.jit.save(model, str(folder / "inference"), input_spec=specs)
    return {"inference.json": folder / "inference.json", "inference.pdiparams": folder / "inference.pdiparams"}


def kie_inference_yml(task: str, labels: Sequence[str], temperature: float,
                      threshold: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``inference.yml`` of a KIE model: what a loader needs to turn outputs into labels and links."""
    post: dict[str, Any] = {"name": "SoftmaxTemperature" if task == "ser" else "KeyPerValueSoftmax",
                            "label_list": list(labels), "temperature": round(float(temperature), 5)}
    if threshold is not None:
        post["link_threshold"] = round(float(threshold), 4)
    return {
        "Global": {"model_name": SER_MODEL_NAME if task == "ser" else RE_MODEL_NAME, **(extra or {})},
        "PreProcess": {"features": "paperloop.kie.features/v1"},
        "PostProcess": post,
    }


def softmax(logits: np.ndarray, temperature: float = 1.0, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax with a temperature."""
    z = logits / temperature
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


class _LoadedModel:
    """One exported KIE model with its post-processing settings."""

    def __init__(self, registry: ModelRegistry, task: str, version: str, threads: int) -> None:
        self.version, folder = version, registry.version_dir(task, version)
        post = registry.inference_config(task, self.version)["PostProcess"]
        self.labels: list[str] = list(post["label_list"])
        self.temperature = float(post["temperature"])
        self.threshold = float(post.get("link_threshold", 0.5))
        self.predictor = Predictor(folder, threads=threads, use_mkldnn=False)


def _inputs(document: Document) -> tuple[list[str], list[np.ndarray]]:
    f = featurize(document)
    n = len(f.segment_ids)
    arrays = [f.tokens[None], f.cues[None], f.boxes[None], f.pairs[None], np.ones((1, n), np.float32)]
    return f.segment_ids, arrays


class KieModels:
    """The SER and RE versions in service; ``refresh()`` follows the ``current`` pointers."""

    def __init__(self, registry: ModelRegistry, threads: int = 2, multiple_values: bool = True,
                 link_threshold: float | None = None, pinned: dict[str, str] | None = None,
                 label_check: float | None = None) -> None:
        """``pinned`` fixes a task's version (e.g. a candidate under evaluation) instead of ``current``.
        ``label_check``: grouping links less probable than this join two parts only when SER gives both
        parts the same label (:meth:`form_entities`); ``None``: every link the grouping model accepts."""
        self._registry = registry
        self._label_check = label_check
        self._pinned = dict(pinned or {})
        self._threads = threads
        self._multiple_values = multiple_values
        self._link_threshold = link_threshold
        self._lock = threading.Lock()
        self.group: _LoadedModel | None = None
        self.ser: _LoadedModel | None = None
        self.re: _LoadedModel | None = None

    def refresh(self) -> dict[str, str]:
        """Load whatever grouping/SER/RE versions are in service now; returns them (empty when none)."""
        with self._lock:
            for task in KIE_TASKS:
                version = self._pinned.get(task) or self._registry.current_version(task)
                loaded = getattr(self, task)
                if version is None:
                    setattr(self, task, None)
                elif loaded is None or loaded.version != version:
                    setattr(self, task, _LoadedModel(self._registry, task, version, self._threads))
            loaded_models = ((t, getattr(self, t)) for t in KIE_TASKS)
            return {t: m.version for t, m in loaded_models if m is not None}

    def form_entities(self, document: Document) -> None:
        """Replace each page's OCR lines with the entities the grouping model in service forms from
        their words (nothing without a grouping model; a page over ``MAX_WORDS`` words keeps its lines).

        With ``label_check``, a link the grouping model is unsure of (below ``label_check``) is kept only
        when SER, reading the pages cut at every such link, labels the parts on its two sides alike
        (``..., JOHOR. TEL NO.: 07-387 3322``: an address and a phone line stay apart).
        """
        from service.kie.grouping import MAX_WORDS, accepted_links, groups_of_links, line_page, links_kept, regroup_page

        if self.group is None:
            return
        plans = []
        for page in document.pages:
            words = line_page(page)
            if words.units and len(words.units) <= MAX_WORDS:
                probabilities = self._group_probabilities(words)
                plans.append((page, words, probabilities, accepted_links(probabilities, self.group.threshold)))
        check = self._label_check if self.ser is not None else None
        if check is not None and any(p < check for *_, links in plans for _, _, p in links):
            parts = [groups_of_links(probabilities, words.units, [link for link in links if link[2] >= check])
                     for _, words, probabilities, links in plans]
            labels = self._part_labels(document, plans, parts)
            plans = [(page, words, probabilities, links_kept(links, page_parts, page_labels, check))
                     for (page, words, probabilities, links), page_parts, page_labels in zip(plans, parts, labels)]
        for page, words, probabilities, links in plans:
            regroup_page(page, groups_of_links(probabilities, words.units, links), words.units, self.group.version)

    def _part_labels(self, document: Document, plans: Sequence[tuple[Any, ...]],
                     parts: Sequence[Sequence["Group"]]) -> list[list[str]]:
        """SER's label of each part, page by page, on a copy of ``document`` cut into them."""
        from service.kie.grouping import regroup_page

        trial = copy.deepcopy(document)
        pages = {page.number: page for page in trial.pages}
        for (page, words, *_), page_parts in zip(plans, parts):
            regroup_page(pages[page.number], page_parts, words.units, self.group.version)
        self.label(trial)
        return [[s.label or "" for s in pages[page.number].segments] for page, *_ in plans]

    def _group_probabilities(self, words: "WordPage") -> np.ndarray:
        from service.kie.grouping import word_features

        assert self.group is not None, "no grouping model in service"
        f = word_features(words)
        arrays = [f.tokens[None], f.cues[None], f.boxes[None], f.pairs[None], np.ones((1, len(words.units)), np.float32)]
        logits = self.group.predictor.run(arrays)[1][0]
        return re_probabilities(logits, self.group.temperature)

    def groups_of(self, words: "WordPage") -> list["Group"]:
        """The entities the grouping model in service forms from a page's words (needs one in service)."""
        from service.kie.grouping import decode_groups

        return decode_groups(self._group_probabilities(words), words.units, self.group.threshold)

    def label(self, document: Document, page_images: PageImages | None = None) -> np.ndarray | None:
        """Fill every segment's label and calibrated probability; returns the (N, labels) probabilities.

        ``page_images`` is accepted for the interface shared with :class:`LayoutXLMModels`; the graph
        models read text and layout only."""
        if self.ser is None or not document.segments:
            return None
        ids, arrays = _inputs(document)
        probabilities = softmax(self.ser.predictor.run(arrays)[0][0], self.ser.temperature)
        by_id = {s.id: s for s in document.segments}
        for sid, p in zip(ids, probabilities):
            best = int(p.argmax())
            segment = by_id[sid]
            segment.label, segment.label_score, segment.ser_version = self.ser.labels[best], float(p[best]), self.ser.version
        return probabilities

    def link(self, document: Document, label_probabilities: np.ndarray | None,
             page_images: PageImages | None = None) -> None:
        """Replace the document's links with RE's predictions (key → value, calibrated score); nothing
        without an RE model or without SER's label probabilities."""
        if self.re is None or label_probabilities is None or not document.segments:
            return
        ids, arrays = _inputs(document)
        by_id = {s.id: s for s in document.segments}
        logits = self.re.predictor.run([*arrays, label_probabilities[None].astype(np.float32)])[0][0]
        probabilities = re_probabilities(logits, self.re.temperature)
        threshold = self._link_threshold if self._link_threshold is not None else self.re.threshold
        found = decode_links(probabilities, threshold)
        for sid, decision in zip(ids, probabilities.max(axis=0)):
            by_id[sid].link_score = round(float(decision), 5)
        if not self._multiple_values:
            best: dict[int, tuple[int, int, float]] = {}
            for key, value, p in found:
                if key not in best or p > best[key][2]:
                    best[key] = (key, value, p)
            found = list(best.values())
        document.links = [Link(key=ids[k], value=ids[v], score=round(p, 5), re_version=self.re.version)
                          for k, v, p in sorted(found, key=lambda t: (t[0], t[1]))]

    def predict(self, document: Document) -> Document:
        """Label the segments and link keys to values with the models in service (in place)."""
        versions = self.refresh()
        probabilities = self.label(document)
        if probabilities is not None and "re" in versions:
            self.link(document, probabilities)
        document.model_versions.update(versions)
        return document


def temporary_export_dir() -> tempfile.TemporaryDirectory:
    """A scratch folder for an export before it is copied into the registry."""
    return tempfile.TemporaryDirectory(prefix="paperloop-export-")


class LayoutXLMModels:
    """SER / RE from local LayoutXLM checkpoints (``kie.layoutxlm``), with KieModels' interface.

    A task without a folder falls back to the graph model in service for it, if any.
    """

    def __init__(self, fallback: KieModels, labels: Sequence[str], ser_dir: Path | None, re_dir: Path | None) -> None:
        from service.kie.layoutxlm import LayoutXLMRe, LayoutXLMSer

        self._fallback = fallback
        self._ser = LayoutXLMSer.from_pretrained(ser_dir, list(labels)) if ser_dir else None
        self._re = LayoutXLMRe.from_pretrained(re_dir, list(labels)) if re_dir else None
        self._versions = {task: f"layoutxlm:{Path(folder).name}"
                          for task, folder in (("ser", ser_dir), ("re", re_dir)) if folder}

    def refresh(self) -> dict[str, str]:
        """The graph models' versions in service (for a task without a folder), then the LayoutXLM ones."""
        return {**self._fallback.refresh(), **self._versions}

    def form_entities(self, document: Document) -> None:
        """Entities by the graph grouping model in service (LayoutXLM has no grouping head)."""
        self._fallback.form_entities(document)

    def label(self, document: Document, page_images: PageImages | None = None) -> np.ndarray | None:
        """LayoutXLM SER when configured (returns ``None``: no probabilities for the graph RE), else the graph SER."""
        if self._ser is None:
            return self._fallback.label(document)
        self._ser.predict(document, page_images)
        for segment in document.segments:
            segment.ser_version = self._versions["ser"]
        return None

    def link(self, document: Document, label_probabilities: np.ndarray | None,
             page_images: PageImages | None = None) -> None:
        """LayoutXLM RE when configured, else the graph RE (which needs SER's probabilities)."""
        if self._re is None:
            self._fallback.link(document, label_probabilities)
            return
        self._re.predict(document, page_images)
        for link in document.links:
            link.re_version = self._versions["re"]

    @property
    def uses_page_images(self) -> bool:
        """Whether a model here has a visual backbone, so :meth:`predict` wants the page images."""
        return any(model is not None and model.uses_image for model in (self._ser, self._re))

    def predict(self, document: Document, page_images: PageImages | None = None) -> Document:
        """Label with LayoutXLM SER (or the graph SER), then link with LayoutXLM RE (or the graph RE).

        ``page_images`` (page number → RGB array) feed the visual backbone of models that have one.
        """
        versions = self.refresh()
        self.link(document, self.label(document, page_images), page_images)
        document.model_versions.update(versions)
        return document
