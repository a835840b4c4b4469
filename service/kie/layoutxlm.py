"""LayoutXLM / VI-LayoutXLM (paddlenlp) as an alternative SER and RE model, from local folders only.

These classes wrap checkpoints of PaddleOCR's LayoutXLM family — the folders that paddlenlp's
``save_pretrained`` writes, which is also how PaddleOCR saves its KIE models — behind the same
interface as Paperloop's own SER/RE model: ``from_pretrained(local_dir, labels)`` and
``predict(document) -> document``. Nothing is ever downloaded: the folder must hold the config
(``config.json`` or the legacy ``model_config.json``), the weights (``model_state.pdparams`` or
``model.safetensors``) and the tokenizer's ``sentencepiece.bpe.model`` (PaddleOCR checkpoints do not
include it: copy the layoutxlm-base one next to the weights).

How a page becomes model input (as PaddleOCR's ``VQATokenLabelEncode`` does it): each segment's text
is tokenized without special tokens, every token gets its segment's box normalised to 0–1000 of the
page size, and the segments' tokens are concatenated in reading order. Pages longer than 512 tokens
are cut into several sequences at segment boundaries (PaddleOCR keeps only the first 512 tokens).

SER labels follow PaddleOCR's BIO scheme: ``O`` first, then ``B-X``/``I-X`` for every class ``X`` of
the class list in its order, skipping other/others/ignore. A segment's label comes from the mean over
its tokens of the token probabilities, with ``B-X`` and ``I-X`` summed into ``X`` and ``O`` read as
``other``: PaddleOCR trains every token of an entity (``B-`` on the first, ``I-`` on the rest) and
itself votes over all tokens with B/I merged, so the mean is that vote made soft. It uses all the
evidence, is not thrown by a meaningless first sub-piece (a lone "▁" or a bracket), and gives a
probability for ``label_score``. A segment with no text gets one ``<unk>`` token, so its box still
yields a prediction.

RE uses paddlenlp's ``LayoutXLMForRelationExtraction`` weights: the encoder, then the decoder's layers
(entity-label embedding, head and tail projections, biaffine classifier) applied to every
question → answer pair of segments in the same sequence, scored at each entity's first token as the
decoder does. Its ``forward`` is not called: it returns only the pairs it accepts, without their
probabilities, and swaps in dummy entities when a sequence has two entities or fewer.

Models with a visual backbone (LayoutXLM proper, ``use_visual_backbone: true``) need the ``yacs``
package, which Paperloop does not install, and use the page image when ``predict`` is given one;
VI-LayoutXLM (no visual backbone) needs nothing more.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from service.document import Document, Link, Page, Segment
from service.kie.paddlenlp_compat import import_paddlenlp

log = logging.getLogger(__name__)

OTHER = "other"
IGNORED_CLASSES = ("other", "others", "ignore")  # the class-list names PaddleOCR folds into "O"
RE_ENTITY_IDS = {"header": 0, "question": 1, "answer": 2}  # PaddleOCR's VQAReTokenChunk defaults
CONFIG_FILES = ("config.json", "model_config.json")
WEIGHT_FILES = ("model_state.pdparams", "model.safetensors")
TOKENIZER_FILE = "sentencepiece.bpe.model"
MAX_SEQ_LEN = 512
IMAGE_SIZE = 224  # PaddleOCR's KIE configs: Resize 224x224, then NormalizeImage with these (scale 1)
IMAGE_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
IMAGE_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)

PageImages = Mapping[int, np.ndarray]  # page number → H×W×3 RGB uint8 image
ModelT = TypeVar("ModelT", bound="_LayoutXLMBase")


class LayoutXLMLoadError(RuntimeError):
    """A LayoutXLM folder is missing, incomplete, or does not match the labels or the task."""


@dataclass
class Chunk:
    """One model input sequence: token ids, their 0–1000 boxes, and where each segment's tokens are."""

    input_ids: list[int] = field(default_factory=list)
    boxes: list[list[int]] = field(default_factory=list)
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (segment index, start, end)


def bio_tags(class_list: Sequence[str]) -> list[str]:
    """PaddleOCR's BIO tags for a class list: ``O``, then ``B-X``, ``I-X`` per kept class, in order."""
    tags = ["O"]
    for name in entity_classes(class_list):
        tags += [f"B-{name.upper()}", f"I-{name.upper()}"]
    return tags


def entity_classes(class_list: Sequence[str]) -> list[str]:
    """The class list, lower-cased, without the names PaddleOCR folds into ``O``."""
    return [name.lower() for name in class_list if name.lower() not in IGNORED_CLASSES]


def check_model_dir(local_dir: Path) -> Path:
    """The folder, once it is known to hold a config, weights and a tokenizer; raises otherwise."""
    folder = Path(local_dir)
    if not folder.is_dir():
        raise LayoutXLMLoadError(f"no LayoutXLM model folder at {folder} (models load only from local folders)")
    missing = [" or ".join(names) for names in (CONFIG_FILES, WEIGHT_FILES, (TOKENIZER_FILE,))
               if not any((folder / name).is_file() for name in names)]
    if missing:
        raise LayoutXLMLoadError(f"{folder} is not a complete LayoutXLM model folder: missing {', '.join(missing)}")
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's config as saved (``config.json`` preferred to the legacy name)."""
    path = next(folder / name for name in CONFIG_FILES if (folder / name).is_file())
    return json.loads(path.read_text(encoding="utf-8"))


def _check_config(folder: Path, config: dict[str, Any], architecture: str) -> None:
    """Refuse a checkpoint saved for another task, or one whose visual backbone cannot be built."""
    saved = config.get("architectures") or ([config["init_class"]] if "init_class" in config else [])
    if saved and architecture not in saved:
        raise LayoutXLMLoadError(f"{folder} holds a {', '.join(saved)} checkpoint, not {architecture}")
    if config.get("use_visual_backbone") and importlib.util.find_spec("yacs") is None:
        raise LayoutXLMLoadError(
            f"{folder} is a LayoutXLM with a visual backbone, which needs the 'yacs' package "
            "(not installed); VI-LayoutXLM checkpoints (use_visual_backbone: false) need nothing more"
        )


def normalized_box(segment: Segment, page: Page) -> list[int]:
    """The segment's axis-aligned box in 0–1000 page coordinates (LayoutXLM's layout input)."""
    x0, y0, x1, y1 = segment.bbox
    width, height = max(page.width, 1), max(page.height, 1)
    scaled = [x0 * 1000 / width, y0 * 1000 / height, x1 * 1000 / width, y1 * 1000 / height]
    return [min(max(int(v), 0), 1000) for v in scaled]


def pack_chunks(token_ids: list[list[int]], boxes: list[list[int]], max_len: int) -> list[Chunk]:
    """Concatenate segments' tokens into sequences of at most ``max_len``, never splitting a segment.

    A segment longer than ``max_len`` on its own keeps its first ``max_len`` tokens.
    """
    chunks = [Chunk()]
    for index, (ids, box) in enumerate(zip(token_ids, boxes)):
        ids = ids[:max_len]
        if len(chunks[-1].input_ids) + len(ids) > max_len:
            chunks.append(Chunk())
        chunk = chunks[-1]
        start = len(chunk.input_ids)
        chunk.input_ids += ids
        chunk.boxes += [box] * len(ids)
        chunk.spans.append((index, start, start + len(ids)))
    return [c for c in chunks if c.spans]


def page_image_tensor(image: np.ndarray) -> np.ndarray:
    """A page image as the visual backbone's input: 224×224, normalised as PaddleOCR does, C×H×W."""
    pixels = np.asarray(image)
    rgb = np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[:, :, :3]
    resized = cv2.resize(rgb, (IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    return ((resized - IMAGE_MEAN) / IMAGE_STD).transpose(2, 0, 1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class _LayoutXLMBase:
    """What SER and RE share: loading, turning a page into model inputs, and running the encoder."""

    architecture = ""  # the paddlenlp class name, set by subclasses

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], max_seq_len: int = MAX_SEQ_LEN) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.classes = entity_classes(labels)
        self.labels = tuple(self.classes) + (OTHER,)  # the plain labels this model can give
        self.max_seq_len = min(max_seq_len, int(model.config.max_position_embeddings))
        self.uses_image = bool(model.config.use_visual_backbone)
        self._warned_no_image = False
        self.model.eval()

    @classmethod
    def from_pretrained(cls: type[ModelT], local_dir: Path, labels: list[str]) -> ModelT:
        """Load a checkpoint folder written by paddlenlp's ``save_pretrained``; never downloads."""
        folder = check_model_dir(local_dir)
        _check_config(folder, _read_config(folder), cls.architecture)
        transformers = import_paddlenlp()
        tokenizer = transformers.LayoutXLMTokenizer.from_pretrained(str(folder))
        model = getattr(transformers, cls.architecture).from_pretrained(str(folder))
        return cls(model, tokenizer, labels)

    def _segment_token_ids(self, text: str) -> list[int]:
        """Token ids of one segment's text, without special tokens; ``[<unk>]`` for empty text."""
        ids = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text)) if text.strip() else []
        return ids or [self.tokenizer.unk_token_id]

    def _page_chunks(self, page: Page) -> list[Chunk]:
        """The page's segments as model input sequences."""
        token_ids = [self._segment_token_ids(s.text) for s in page.segments]
        boxes = [normalized_box(s, page) for s in page.segments]
        return pack_chunks(token_ids, boxes, self.max_seq_len)

    def _inputs(self, chunks: list[Chunk], image: np.ndarray | None) -> dict[str, Any]:
        """Padded input tensors for a batch of sequences of one page."""
        import paddle

        length = max(len(c.input_ids) for c in chunks)
        pad = self.tokenizer.pad_token_id
        ids = [c.input_ids + [pad] * (length - len(c.input_ids)) for c in chunks]
        boxes = [c.boxes + [[0, 0, 0, 0]] * (length - len(c.boxes)) for c in chunks]
        mask = [[1] * len(c.input_ids) + [0] * (length - len(c.input_ids)) for c in chunks]
        inputs = {
            "input_ids": paddle.to_tensor(ids, dtype="int64"),
            "bbox": paddle.to_tensor(boxes, dtype="int64"),
            "attention_mask": paddle.to_tensor(mask, dtype="int64"),
            "token_type_ids": paddle.zeros([len(chunks), length], dtype="int64"),
        }
        if image is not None:
            batch = np.repeat(page_image_tensor(image)[None], len(chunks), axis=0)
            inputs["image"] = paddle.to_tensor(batch)
        return inputs

    def _page_image(self, page: Page, page_images: PageImages | None) -> np.ndarray | None:
        """The page image when the model has a visual backbone and one was given, else ``None``."""
        if not self.uses_image:
            return None
        image = (page_images or {}).get(page.number)
        if image is None and not self._warned_no_image:
            log.warning("%s has a visual backbone but got no page image: predicting from text and layout only",
                        self.architecture)
            self._warned_no_image = True
        return image


class LayoutXLMSer(_LayoutXLMBase):
    """Segment labels (question/answer/header/other) from a LayoutXLM token classifier."""

    architecture = "LayoutXLMForTokenClassification"

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], max_seq_len: int = MAX_SEQ_LEN) -> None:
        super().__init__(model, tokenizer, labels, max_seq_len)
        tags = bio_tags(labels)
        if len(tags) != int(model.config.num_labels):
            raise LayoutXLMLoadError(
                f"labels {list(labels)} give {len(tags)} BIO tags ({', '.join(tags)}) but the checkpoint "
                f"classifies {model.config.num_labels}: pass the class list the model was trained with"
            )
        self._merge = self._tag_to_label_matrix(tags)

    def _tag_to_label_matrix(self, tags: list[str]) -> np.ndarray:
        """(tags × labels) 0/1 matrix that sums ``B-X`` and ``I-X`` into ``X`` and ``O`` into other."""
        merge = np.zeros((len(tags), len(self.labels)), dtype=np.float32)
        for row, tag in enumerate(tags):
            label = OTHER if tag == "O" else tag[2:].lower()
            merge[row, self.labels.index(label)] = 1.0
        return merge

    def predict(self, document: Document, page_images: PageImages | None = None) -> Document:
        """Fill every segment's ``label`` and ``label_score``; returns the same document.

        ``page_images`` (page number → RGB array) is used only by models with a visual backbone.
        """
        for page in document.pages:
            if page.segments:
                self._predict_page(page, self._page_image(page, page_images))
        return document

    def _predict_page(self, page: Page, image: np.ndarray | None) -> None:
        """Label the segments of one page."""
        import paddle

        chunks = self._page_chunks(page)
        with paddle.no_grad():
            logits = self.model(**self._inputs(chunks, image))[0].numpy()
        label_probs = softmax(logits) @ self._merge  # (chunks, tokens, labels)
        for row, chunk in enumerate(chunks):
            for index, start, end in chunk.spans:
                mean = label_probs[row, start:end].mean(axis=0)
                best = int(mean.argmax())
                page.segments[index].label = self.labels[best]
                page.segments[index].label_score = float(mean[best])


class LayoutXLMRe(_LayoutXLMBase):
    """Question → answer links from a LayoutXLM relation-extraction checkpoint."""

    architecture = "LayoutXLMForRelationExtraction"

    def __init__(self, model: Any, tokenizer: Any, labels: Sequence[str], max_seq_len: int = MAX_SEQ_LEN,
                 threshold: float = 0.5) -> None:
        super().__init__(model, tokenizer, labels, max_seq_len)
        if not {"question", "answer"} <= set(self.classes):
            raise LayoutXLMLoadError(f"labels {list(labels)} lack question and answer: there is nothing to link")
        self.threshold = threshold  # 0.5 = the decoder's own argmax over (no link, link)

    def predict(self, document: Document, page_images: PageImages | None = None) -> Document:
        """Replace ``document.links`` with the question → answer links scored at least ``threshold``.

        Segment labels (from SER) choose the entities: ``question`` segments are the candidate keys,
        ``answer`` segments the candidate values, ``header`` segments are entities that are never
        linked, the rest is context. Raises ``ValueError`` when a segment has no label yet.
        """
        unlabelled = [s.id for s in document.segments if s.label is None]
        if unlabelled:
            raise ValueError(f"{document.id}: segments {unlabelled[:5]} have no label; run SER before RE")
        links: list[Link] = []
        for page in document.pages:
            if self._has_pairs(page.segments):
                links += self._predict_page(page, self._page_image(page, page_images))
        document.links = sorted(links, key=lambda link: -(link.score or 0.0))
        return document

    @staticmethod
    def _has_pairs(segments: Sequence[Segment]) -> bool:
        """Whether a page has at least one question and one answer."""
        labels = {s.label for s in segments}
        return "question" in labels and "answer" in labels

    def _predict_page(self, page: Page, image: np.ndarray | None) -> list[Link]:
        """Links within one page (pairs must share an input sequence)."""
        import paddle

        chunks = self._page_chunks(page)
        with paddle.no_grad():
            encoded = self.model.layoutxlm(**self._inputs(chunks, image))[0]
            links = []
            for row, chunk in enumerate(chunks):
                links += self._chunk_links(page, chunk, encoded[row])
        return links

    def _entity_starts(self, page: Page, chunk: Chunk, label: str) -> tuple[list[str], list[int]]:
        """Segment ids and first-token positions of the chunk's segments with this label."""
        found = [(page.segments[i].id, start) for i, start, _ in chunk.spans if page.segments[i].label == label]
        return [f[0] for f in found], [f[1] for f in found]

    def _entity_repr(self, hidden: Any, starts: list[int], label: str, project: Any) -> Any:
        """Decoder representation of entities: first-token state + label embedding, projected."""
        import paddle

        decoder = self.model.extractor
        states = paddle.gather(hidden, paddle.to_tensor(starts, dtype="int64"))
        label_ids = paddle.full([len(starts)], RE_ENTITY_IDS[label], dtype="int64")
        return project(paddle.concat([states, decoder.entity_emb(label_ids)], axis=-1))

    def _chunk_links(self, page: Page, chunk: Chunk, hidden: Any) -> list[Link]:
        """Score every question → answer pair of one sequence with the biaffine classifier."""
        key_ids, key_starts = self._entity_starts(page, chunk, "question")
        value_ids, value_starts = self._entity_starts(page, chunk, "answer")
        if not key_ids or not value_ids:
            return []
        decoder = self.model.extractor
        heads = self._entity_repr(hidden, key_starts, "question", decoder.ffnn_head)
        tails = self._entity_repr(hidden, value_starts, "answer", decoder.ffnn_tail)
        n_keys, n_values = len(key_ids), len(value_ids)
        pair_heads = heads.unsqueeze(1).expand([n_keys, n_values, heads.shape[-1]]).reshape([n_keys * n_values, -1])
        pair_tails = tails.unsqueeze(0).expand([n_keys, n_values, tails.shape[-1]]).reshape([n_keys * n_values, -1])
        probs = softmax(decoder.rel_classifier(pair_heads, pair_tails).numpy())[:, 1].reshape(n_keys, n_values)
        return [Link(key=key_ids[k], value=value_ids[v], score=float(probs[k, v]))
                for k in range(n_keys) for v in range(n_values) if probs[k, v] >= self.threshold]
