"""LayoutXLM SER/RE wrappers on a tiny randomly initialised checkpoint and a real FUNSD form.

The checkpoint is built here (a sentencepiece model trained on the README's text, a 2-layer
LayoutXLM of hidden size 36), saved with paddlenlp's ``save_pretrained`` and loaded back through our
classes. Every test runs with outgoing connections refused, and checks that none was attempted.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image

from service.document import Document, Page, Segment, bbox_to_quad
from service.funsd import normalize_box
from service.kie.layoutxlm import LayoutXLMLoadError, LayoutXLMRe, LayoutXLMSer, bio_tags, pack_chunks
from service.kie.paddlenlp_compat import DownloadRefusedError, import_paddlenlp

CLASS_LIST = ["QUESTION", "ANSWER", "HEADER", "OTHER"]  # PaddleOCR's class_list order
PLAIN_LABELS = {"question", "answer", "header", "other"}
# hidden size must be 6 × coordinate_size (LayoutXLM concatenates six box embeddings), so 36, not 32
TINY = dict(hidden_size=36, coordinate_size=6, shape_size=6, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Refuse (and record) every outgoing connection and name lookup for the test's duration."""
    attempts: list[tuple] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args[1:] if args and isinstance(args[0], socket.socket) else args)
        raise OSError("network access is not allowed in this test")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield attempts
    assert attempts == [], f"tried to reach the network: {attempts}"


def _corpus() -> list[str]:
    """The tokenizer's training corpus: the lines of this project's README (no data set needed)."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random SER and RE checkpoints (with tokenizer) saved by paddlenlp's ``save_pretrained``."""
    import paddle
    import sentencepiece as spm

    transformers = import_paddlenlp()
    root = tmp_path_factory.mktemp("layoutxlm")
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus()), model_prefix=str(root / "sp"),
                                   vocab_size=300, model_type="bpe", minloglevel=2)
    tokenizer = transformers.LayoutXLMTokenizer(vocab_file=str(root / "sp.model"))
    heads = {"ser": (transformers.LayoutXLMForTokenClassification, {"num_labels": len(bio_tags(CLASS_LIST))}),
             "re": (transformers.LayoutXLMForRelationExtraction, {})}
    folders = {}
    for task, (model_class, extra) in heads.items():
        paddle.seed(7)
        config = transformers.LayoutXLMConfig(vocab_size=tokenizer.vocab_size, **TINY, **extra)
        folders[task] = root / task
        model_class(config).save_pretrained(str(folders[task]))
        tokenizer.save_pretrained(str(folders[task]))
    return folders


def _entities(page_path: Path) -> list[dict]:
    """The FUNSD annotation of a page image: its entities."""
    annotation = page_path.parent.parent / "annotations" / f"{page_path.stem}.json"
    return json.loads(annotation.read_text())["form"]


@pytest.fixture
def funsd_gold(funsd_page_path: Path) -> dict[str, str]:
    """Gold label of every entity of the FUNSD form, by segment id."""
    return {str(e["id"]): e["label"] for e in _entities(funsd_page_path)}


@pytest.fixture
def funsd_document(funsd_page_path: Path) -> Document:
    """A real FUNSD test form, unlabelled: one segment per entity, page size from the image."""
    entities = _entities(funsd_page_path)
    width, height = Image.open(funsd_page_path).size
    segments = [Segment(id=str(e["id"]), box=bbox_to_quad(normalize_box(e["box"])), text=e["text"])
                for e in entities]
    return Document(id=funsd_page_path.stem, source_name=funsd_page_path.name, sha256="0" * 64,
                    created_at="2024-01-01T00:00:00+00:00",
                    pages=[Page(number=1, width=width, height=height, segments=segments)])


def test_bio_tags_follow_paddleocr_class_list() -> None:
    assert bio_tags(CLASS_LIST) == ["O", "B-QUESTION", "I-QUESTION", "B-ANSWER", "I-ANSWER", "B-HEADER", "I-HEADER"]


def test_pack_chunks_keeps_segments_whole() -> None:
    chunks = pack_chunks([[1] * 3, [2] * 4, [3] * 9, [4]], [[0, 0, 1, 1]] * 4, max_len=8)
    assert [c.spans for c in chunks] == [[(0, 0, 3), (1, 3, 7)], [(2, 0, 8)], [(3, 0, 1)]]
    assert all(len(c.input_ids) == len(c.boxes) <= 8 for c in chunks)


@pytest.mark.slow
def test_ser_labels_every_segment(checkpoints: dict[str, Path], funsd_document: Document) -> None:
    ser = LayoutXLMSer.from_pretrained(checkpoints["ser"], CLASS_LIST)
    assert set(ser.labels) == PLAIN_LABELS
    assert len(ser._page_chunks(funsd_document.pages[0])) > 1  # the tiny vocabulary makes the page long
    result = ser.predict(funsd_document)
    assert result is funsd_document
    for segment in result.segments:
        assert segment.label in PLAIN_LABELS, segment
        assert 0.0 < segment.label_score <= 1.0, segment


@pytest.mark.slow
def test_re_links_questions_to_answers(checkpoints: dict[str, Path], funsd_document: Document,
                                       funsd_gold: dict[str, str]) -> None:
    for segment in funsd_document.segments:
        segment.label = funsd_gold[segment.id]
    re_model = LayoutXLMRe.from_pretrained(checkpoints["re"], CLASS_LIST)
    re_model.threshold = 0.0  # keep every scored pair: a random model's scores hover around 0.5
    links = re_model.predict(funsd_document).links
    assert links, "every question → answer pair of a sequence should be scored"
    by_id = {s.id: s for s in funsd_document.segments}
    for link in links:
        assert by_id[link.key].label == "question" and by_id[link.value].label == "answer", link
        assert 0.0 < link.score <= 1.0, link
    re_model.threshold = 0.5
    kept = re_model.predict(funsd_document).links
    assert all(link.score >= 0.5 for link in kept) and len(kept) <= len(links)


@pytest.mark.slow
def test_ser_then_re(checkpoints: dict[str, Path], funsd_document: Document) -> None:
    document = LayoutXLMSer.from_pretrained(checkpoints["ser"], CLASS_LIST).predict(funsd_document)
    re_model = LayoutXLMRe.from_pretrained(checkpoints["re"], CLASS_LIST)
    re_model.threshold = 0.0
    by_id = {s.id: s for s in document.segments}
    for link in re_model.predict(document).links:
        assert (by_id[link.key].label, by_id[link.value].label) == ("question", "answer")


@pytest.mark.slow
def test_re_needs_labels(checkpoints: dict[str, Path], funsd_document: Document) -> None:
    with pytest.raises(ValueError, match="run SER before RE"):
        LayoutXLMRe.from_pretrained(checkpoints["re"], CLASS_LIST).predict(funsd_document)


def test_folder_without_weights_fails_clearly(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    incomplete = tmp_path / "no-weights"
    shutil.copytree(checkpoints["ser"], incomplete)
    (incomplete / "model_state.pdparams").unlink()
    with pytest.raises(LayoutXLMLoadError, match="missing model_state.pdparams or model.safetensors"):
        LayoutXLMSer.from_pretrained(incomplete, CLASS_LIST)
    for not_a_folder in (tmp_path / "absent", Path("layoutxlm-base-uncased")):  # the latter is a hub name
        with pytest.raises(LayoutXLMLoadError, match="only from local folders"):
            LayoutXLMSer.from_pretrained(not_a_folder, CLASS_LIST)


def test_checkpoint_must_match_task_and_labels(checkpoints: dict[str, Path]) -> None:
    with pytest.raises(LayoutXLMLoadError, match="not LayoutXLMForRelationExtraction"):
        LayoutXLMRe.from_pretrained(checkpoints["ser"], CLASS_LIST)
    with pytest.raises(LayoutXLMLoadError, match="5 BIO tags"):
        LayoutXLMSer.from_pretrained(checkpoints["ser"], ["question", "answer"])


def test_visual_backbone_without_yacs_fails_clearly(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    if importlib.util.find_spec("yacs") is not None:
        pytest.skip("yacs is installed: the visual backbone can be built")
    folder = tmp_path / "with-backbone"
    shutil.copytree(checkpoints["ser"], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "use_visual_backbone": True}))
    with pytest.raises(LayoutXLMLoadError, match="needs the 'yacs' package"):
        LayoutXLMSer.from_pretrained(folder, CLASS_LIST)


def test_compat_refuses_downloads_and_keeps_paddleocr_importable() -> None:
    import aistudio_sdk.hub
    import huggingface_hub.constants

    import_paddlenlp()
    import_paddlenlp()  # idempotent
    with pytest.raises(DownloadRefusedError, match="only from local folders"):
        aistudio_sdk.hub.download(repo_id="PaddlePaddle/layoutxlm", filename="model_state.pdparams")
    assert huggingface_hub.constants.HF_HUB_OFFLINE is True
    from paddleocr import TextDetection  # noqa: F401 - paddleocr must still import beside paddlenlp


@pytest.mark.slow
def test_pipeline_uses_layoutxlm_from_config(checkpoints: dict[str, Path], cfg, ocr_engine,
                                             funsd_page_path: Path) -> None:
    from service.pipeline import DocumentPipeline

    cfg.kie.layoutxlm.ser_dir = checkpoints["ser"]
    cfg.kie.layoutxlm.re_dir = checkpoints["re"]
    document = DocumentPipeline(cfg, ocr_engine).process_file(funsd_page_path, "doc-000001", "0" * 64, "form.png")
    assert document.model_versions["ser"] == "layoutxlm:ser" and document.model_versions["re"] == "layoutxlm:re"
    assert all(s.label in cfg.kie.labels and s.ser_version == "layoutxlm:ser" for s in document.segments)
    assert all(link.re_version == "layoutxlm:re" for link in document.links)
