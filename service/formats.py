"""Gold labelled documents to and from FUNSD, XFUND and PaddleOCR KIE (PPOCRLabel ``Label.txt``).

Our one labelled-document format is :class:`~service.document.Document` with gold segment labels
and key → value links. The three external formats describe one image per record and share the
FUNSD entity model:

* an entity (our :class:`Segment`) has an integer ``id``, ``text``, a box, a ``label``, its
  ``words`` and a ``linking`` list of ``[from, to]`` id pairs; ``from`` → ``to`` is key → value
  (question → answer, header → question), i.e. our ``Link(key=from, value=to)``;
* every link is listed on *both* its entities (twice on the entity of a self-link).

**Link order.** FUNSD lists each entity's links in no global order (entity 7 may list
``[7, 34], [6, 7]`` while entity 30 lists ``[4, 30], [30, 2]``), and a few files record the same
link twice. ``Document.links`` holds one ``Link`` per recorded link (the two copies of a pair are one
link; a pair recorded twice, as in 7 FUNSD files, stays two), in first-seen order, moved only where
an entity's own list needs a link earlier. Writing a link appends it to the lists of both its
entities, so every list comes back exactly as read (see :func:`_links_from_linking`).

**Identity.** A record's name (FUNSD file stem, XFUND ``id``, Label.txt image stem) becomes the
document id with the format's prefix (``funsd-82092117``), unless it already carries a Paperloop
namespace; writers drop their own prefix again, so ids survive any round trip. ``Page.image`` is the
resolved absolute image path (images are never copied: writers link them), ``sha256`` hashes the
image and ``created_at`` is the image's modification time, so reading the same data twice gives the
same documents. Without an image, the size is 0 (unknown) unless the format gives it (XFUND), and
``sha256``/``created_at`` are empty.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from service.document import BBox, Document, Link, Page, Point, Segment, Word, bbox_to_quad, quad_to_bbox

FUNSD_PREFIX, XFUND_PREFIX, PPOCR_PREFIX = "funsd-", "xfund-", "ppocr-"
# Ids that already carry one of these are Paperloop ids ("doc-" is the pipeline's) and kept as-is.
NAMESPACES = (FUNSD_PREFIX, XFUND_PREFIX, PPOCR_PREFIX, "doc-")
XFUND_VERSION = "0.1"

Pair = tuple[str, str]


class FormatError(ValueError):
    """An external label file is malformed, or a document cannot be written in a format."""


# -- ids and numbers -----------------------------------------------------------------------------

def _document_id(prefix: str, name: str) -> str:
    return name if name.startswith(NAMESPACES) else f"{prefix}{name}"


def _record_name(prefix: str, document_id: str) -> str:
    return document_id[len(prefix):] if document_id.startswith(prefix) else document_id


def _number(value: float) -> int | float:
    """An integral value as ``int`` (the formats write pixel coordinates as integers)."""
    return int(value) if float(value).is_integer() else float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bbox(raw: Any, where: str) -> BBox:
    """A ``[x0, y0, x1, y1]`` box, kept as written (a few FUNSD boxes are reversed)."""
    if not isinstance(raw, (list, tuple)) or len(raw) != 4 or not all(_is_number(v) for v in raw):
        raise FormatError(f"{where}: box must be 4 numbers [x0, y0, x1, y1], got {raw!r}")
    return tuple(float(v) for v in raw)  # type: ignore[return-value]


def _quad(raw: Any, where: str) -> list[Point]:
    ok = isinstance(raw, (list, tuple)) and len(raw) == 4 and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p) for p in raw)
    if not ok:
        raise FormatError(f"{where}: points must be 4 [x, y] pairs, got {raw!r}")
    return [(float(p[0]), float(p[1])) for p in raw]


def _box_of_quad(quad: list[Point]) -> list[int | float]:
    """The ``[x0, y0, x1, y1]`` a quad was made from (exact, even reversed), else its bounding box."""
    (a, b), (c, d), (e, f), (g, h) = quad
    if (b, e, f, g) == (d, c, h, a):
        return [_number(v) for v in (a, b, e, f)]
    return [_number(v) for v in quad_to_bbox(quad)]


def _words(raw: Any, where: str) -> list[Word]:
    if not isinstance(raw, list):
        raise FormatError(f"{where}: words must be a list")
    words = []
    for i, word in enumerate(raw):
        if not isinstance(word, dict) or not isinstance(word.get("text"), str):
            raise FormatError(f"{where}: word {i} needs a text string and a box")
        words.append(Word(text=word["text"], box=_bbox(word.get("box"), f"{where} word {i}")))
    return words


def _word_dicts(words: list[Word]) -> list[dict[str, Any]]:
    return [{"box": [_number(v) for v in w.box], "text": w.text} for w in words]


def _label(raw: Any, where: str) -> str | None:
    if raw is not None and not isinstance(raw, str):
        raise FormatError(f"{where}: label must be a string, got {raw!r}")
    return raw


# -- links ---------------------------------------------------------------------------------------

def _pairs(raw: Any, owner: str, known: set[str], where: str) -> list[Pair]:
    """One entity's ``linking`` list as (from, to) segment-id pairs, checked."""
    if not isinstance(raw, list):
        raise FormatError(f"{where}: linking must be a list of [from, to] pairs")
    pairs = []
    for item in raw:
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise FormatError(f"{where}: link {item!r} is not a [from, to] pair")
        pair = (str(item[0]), str(item[1]))
        unknown = [i for i in pair if i not in known]
        if unknown:
            raise FormatError(f"{where}: link {list(item)} names unknown id {unknown[0]}")
        if owner not in pair:
            raise FormatError(f"{where}: link {list(item)} does not involve entity {owner}")
        pairs.append(pair)
    return pairs


def _partner(pair: Pair, owner: str) -> str:
    """The entity whose list holds the other copy of ``pair`` (the owner itself for a self-link)."""
    return pair[1] if pair[0] == owner else pair[0]


def _is_ready(queues: dict[str, deque[Pair]], owner: str) -> bool:
    """Whether the owner's next link is also next on its partner's list."""
    queue = queues[owner]
    pair = queue[0]
    partner = _partner(pair, owner)
    if partner == owner:
        return len(queue) > 1 and queue[1] == pair
    return bool(queues[partner]) and queues[partner][0] == pair


def _links_from_linking(linking: list[tuple[str, list[Pair]]]) -> list[Link]:
    """Document links from per-entity lists, in an order that gives every list back.

    Repeatedly take the first entity (in file order) whose next link is also next on the other
    entity's list and emit that link; this is plain first-seen order whenever that order fits all
    lists. A link listed on one side only (never in FUNSD) is taken when nothing else is ready.
    """
    queues = {owner: deque(pairs) for owner, pairs in linking}
    order = [owner for owner, _ in linking]
    links: list[Link] = []
    while pending := [owner for owner in order if queues[owner]]:
        owner = next((o for o in pending if _is_ready(queues, o)), pending[0])
        pair = queues[owner].popleft()
        partner_queue = queues[_partner(pair, owner)]
        if pair in partner_queue:
            partner_queue.remove(pair)
        links.append(Link(key=pair[0], value=pair[1]))
    return links


def _linking_lists(segment_ids: list[str], links: list[Link], ids: dict[str, int]) -> dict[str, list[list[int]]]:
    """Each segment's ``linking`` list: every link appended to its key's and its value's list."""
    lists: dict[str, list[list[int]]] = {sid: [] for sid in segment_ids}
    for link in links:
        if link.key not in lists or link.value not in lists:
            raise FormatError(f"link {link.key} → {link.value} names a segment that is not on its page")
        pair = [ids[link.key], ids[link.value]]
        lists[link.key].append(list(pair))
        lists[link.value].append(list(pair))
    return lists


def _external_ids(segments: list[Segment]) -> dict[str, int]:
    """Integer ids for the formats: the segment ids themselves when they are all integers."""
    ids = [s.id for s in segments]
    if all(i.isdigit() and str(int(i)) == i for i in ids) and len(set(ids)) == len(ids):
        return {i: int(i) for i in ids}
    return {sid: n for n, sid in enumerate(ids)}


# -- images and documents ------------------------------------------------------------------------

@dataclass(frozen=True)
class _ImageFacts:
    path: str | None = None
    name: str | None = None
    width: int = 0
    height: int = 0
    sha256: str = ""
    created_at: str = ""


def _image_facts(path: Path | None, read_size: bool = True) -> _ImageFacts:
    """Path, size (header only, pixels are not decoded), hash and mtime of an image, if it exists."""
    if path is None or not path.is_file():
        return _ImageFacts()
    real = path.resolve()
    width = height = 0
    if read_size:
        try:
            with Image.open(real) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError) as exc:
            raise FormatError(f"cannot read image {real}: {exc}") from exc
    mtime = datetime.fromtimestamp(real.stat().st_mtime, timezone.utc)
    return _ImageFacts(path=str(real), name=real.name, width=width, height=height,
                       sha256=hashlib.sha256(real.read_bytes()).hexdigest(),
                       created_at=mtime.isoformat(timespec="milliseconds"))


def _document(document_id: str, source_name: str, page: Page, links: list[Link], image: _ImageFacts) -> Document:
    return Document(id=document_id, source_name=image.name or source_name, sha256=image.sha256,
                    created_at=image.created_at, pages=[page], links=links)


def _records(document: Document, prefix: str) -> list[tuple[str, Page, list[Link]]]:
    """(record name, page, links) per page: these formats hold one image per record."""
    name = _record_name(prefix, document.id)
    if len(document.pages) == 1:
        return [(name, document.pages[0], document.links)]
    page_of = {s.id: page.number for page in document.pages for s in page.segments}
    for link in document.links:
        if page_of.get(link.key) != page_of.get(link.value):
            raise FormatError(f"{document.id}: link {link.key} → {link.value} joins two pages; "
                              "one-image formats cannot hold it")
    return [(f"{name}-p{page.number}", page,
             [link for link in document.links if page_of[link.key] == page.number])
            for page in document.pages]


def _link_image(image: str | None, folder: Path, name: str) -> Path | None:
    """A symbolic link ``folder/<name><suffix>`` to the page image (never a copy), or ``None``."""
    if not image or not Path(image).is_file():
        return None
    source = Path(image).resolve()
    target = folder / f"{name}{source.suffix}"
    if target.is_symlink() or target.exists():
        if target.resolve() == source:
            return target
        if not target.is_symlink():
            raise FormatError(f"{target} exists and is not a link to {source}; not overwriting it")
        target.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source)
    return target


# -- FUNSD / XFUND entities ----------------------------------------------------------------------

def _entity_ids(entities: Any, where: str) -> list[str]:
    if not isinstance(entities, list):
        raise FormatError(f"{where}: expected a list of entities")
    ids = []
    for n, entity in enumerate(entities):
        if not isinstance(entity, dict) or "id" not in entity:
            raise FormatError(f"{where}: entity #{n} has no id")
        ids.append(str(entity["id"]))
    if len(set(ids)) != len(ids):
        raise FormatError(f"{where}: duplicate entity ids")
    return ids


def _segment_from_entity(entity: dict[str, Any], where: str) -> Segment:
    if not isinstance(entity.get("text"), str):
        raise FormatError(f"{where}: missing text")
    return Segment(id=str(entity["id"]), box=bbox_to_quad(_bbox(entity.get("box"), where)),
                   text=entity["text"], label=_label(entity.get("label"), where),
                   words=_words(entity.get("words", []), where))


def _read_entities(entities: Any, where: str) -> tuple[list[Segment], list[Link]]:
    """Segments and links of a FUNSD ``form`` or an XFUND ``document`` list."""
    ids = _entity_ids(entities, where)
    known = set(ids)
    segments, linking = [], []
    for sid, entity in zip(ids, entities):
        at = f"{where} entity {sid}"
        segments.append(_segment_from_entity(entity, at))
        linking.append((sid, _pairs(entity.get("linking", []), sid, known, at)))
    return segments, _links_from_linking(linking)


def _entity_dicts(page: Page, links: list[Link]) -> list[dict[str, Any]]:
    ids = _external_ids(page.segments)
    linking = _linking_lists([s.id for s in page.segments], links, ids)
    return [{"box": _box_of_quad(s.box), "text": s.text, "label": s.label,
             "words": _word_dicts(s.words), "linking": linking[s.id], "id": ids[s.id]}
            for s in page.segments]


def _load_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"cannot read JSON {path}: {exc}") from exc


# -- FUNSD ---------------------------------------------------------------------------------------

def read_funsd(annotation_path: Path, image_path: Path | None = None, document_id: str | None = None) -> Document:
    """One FUNSD annotation file as a one-page gold document (``funsd-<file stem>`` by default).

    The page size, hash and date come from ``image_path`` when given (its header only is read).
    """
    path = Path(annotation_path)
    data = _load_json(path)
    if not isinstance(data, dict) or "form" not in data:
        raise FormatError(f"{path}: not a FUNSD annotation (no 'form' list)")
    if image_path is not None and not Path(image_path).is_file():
        raise FormatError(f"{path}: no image at {image_path}")
    image = _image_facts(Path(image_path) if image_path else None)
    segments, links = _read_entities(data["form"], str(path))
    page = Page(number=1, width=image.width, height=image.height, image=image.path, segments=segments)
    return _document(document_id or _document_id(FUNSD_PREFIX, path.stem), path.name, page, links, image)


def funsd_dict(document: Document) -> dict[str, Any]:
    """The FUNSD annotation of a one-page document (``{"form": [...]}``)."""
    records = _records(document, FUNSD_PREFIX)
    if len(records) != 1:
        raise FormatError(f"{document.id}: FUNSD holds one page per file, the document has {len(records)}")
    _, page, links = records[0]
    return {"form": _entity_dicts(page, links)}


def write_funsd(documents: Iterable[Document], folder: Path) -> list[Path]:
    """A FUNSD split folder: ``annotations/<name>.json`` and ``images/<name>.<ext>`` links to the
    images (one file per page); returns the annotation paths."""
    folder = Path(folder)
    (folder / "annotations").mkdir(parents=True, exist_ok=True)
    written = []
    for document in documents:
        for name, page, links in _records(document, FUNSD_PREFIX):
            _link_image(page.image, folder / "images", name)
            path = folder / "annotations" / f"{name}.json"
            text = json.dumps({"form": _entity_dicts(page, links)}, indent=4, ensure_ascii=False)
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written


# -- XFUND ---------------------------------------------------------------------------------------

def _xfund_image(img: dict[str, Any], folder: Path, header: dict[str, Any]) -> Path | None:
    """The image file named by ``img.fname``: absolute, next to the JSON, or in ``<lang>.<split>/``."""
    fname = img.get("fname")
    if not isinstance(fname, str) or not fname:
        return None
    subfolder = f"{header.get('lang')}.{header.get('split')}"
    for candidate in (Path(fname), folder / fname, folder / subfolder / fname, folder / "images" / fname):
        if candidate.is_file():
            return candidate
    return None


def _read_xfund_entry(entry: Any, folder: Path, header: dict[str, Any], where: str) -> Document:
    if not isinstance(entry, dict) or "id" not in entry or "document" not in entry:
        raise FormatError(f"{where}: an XFUND document needs 'id' and 'document'")
    img = entry.get("img") or {}
    if not isinstance(img, dict):
        raise FormatError(f"{where}: img must be an object")
    where = f"{where} document {entry['id']}"
    segments, links = _read_entities(entry["document"], where)
    facts = _image_facts(_xfund_image(img, folder, header), read_size="width" not in img or "height" not in img)
    width, height = img.get("width", facts.width), img.get("height", facts.height)
    if not (isinstance(width, int) and isinstance(height, int)):
        raise FormatError(f"{where}: img width and height must be integers")
    page = Page(number=1, width=width, height=height, image=facts.path or img.get("fname") or None,
                segments=segments)
    name = str(entry["id"])
    return _document(_document_id(XFUND_PREFIX, name), Path(str(img.get("fname") or name)).name, page, links, facts)


def read_xfund(path: Path) -> list[Document]:
    """The documents of an XFUND JSON file (``xfund-<id>`` unless the id is already a Paperloop id)."""
    path = Path(path)
    data = _load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("documents"), list):
        raise FormatError(f"{path}: not an XFUND file (no 'documents' list)")
    return [_read_xfund_entry(entry, path.parent, data, str(path)) for entry in data["documents"]]


def xfund_header(path: Path) -> dict[str, Any]:
    """The ``lang``, ``version`` and ``split`` fields of an XFUND file."""
    data = _load_json(Path(path))
    if not isinstance(data, dict):
        raise FormatError(f"{path}: not an XFUND file")
    return {key: data.get(key) for key in ("lang", "version", "split")}


def xfund_dict(documents: Iterable[Document], lang: str = "en", split: str = "train") -> dict[str, Any]:
    """An XFUND file holding the documents (one entry per page; ``img.fname`` is ``Page.image``)."""
    entries = []
    for document in documents:
        for name, page, links in _records(document, XFUND_PREFIX):
            entries.append({"id": name, "document": _entity_dicts(page, links),
                            "img": {"fname": page.image or "", "width": page.width, "height": page.height}})
    return {"lang": lang, "version": XFUND_VERSION, "split": split, "documents": entries}


# -- PaddleOCR KIE (PPOCRLabel Label.txt) --------------------------------------------------------

def _segment_from_item(item: Any, index: int, where: str) -> Segment:
    if not isinstance(item, dict) or not isinstance(item.get("transcription"), str):
        raise FormatError(f"{where}: item {index} needs a transcription string")
    label = item["label"] if "label" in item else item.get("key_cls")
    return Segment(id=str(item.get("id", index)), box=_quad(item.get("points"), f"{where} item {index}"),
                   text=item["transcription"], label=_label(label, where),
                   words=_words(item.get("words", []), f"{where} item {index}"))


def _ppocr_image(raw: str, label_txt: Path) -> Path | None:
    """A Label.txt image path: absolute, or relative to the folder above Label.txt (PPOCRLabel's
    ``<image folder>/<file>``), or to Label.txt's own folder."""
    path = Path(raw)
    candidates = [path] if path.is_absolute() else [label_txt.parent.parent / path, label_txt.parent / path]
    return next((c for c in candidates if c.is_file()), None)


def _read_ppocr_line(line: str, label_txt: Path, number: int) -> Document:
    where = f"{label_txt}:{number}"
    raw_path, sep, payload = line.partition("\t")
    if not sep or not raw_path:
        raise FormatError(f"{where}: expected '<image path>\\t<json list>'")
    try:
        items = json.loads(payload)
    except json.JSONDecodeError as exc:
        raise FormatError(f"{where}: bad JSON: {exc}") from exc
    if not isinstance(items, list):
        raise FormatError(f"{where}: the annotation must be a JSON list")
    segments = [_segment_from_item(item, i, where) for i, item in enumerate(items)]
    ids = [s.id for s in segments]
    if len(set(ids)) != len(ids):
        raise FormatError(f"{where}: duplicate item ids")
    linking = [(s.id, _pairs(item.get("linking", []), s.id, set(ids), f"{where} item {s.id}"))
               for s, item in zip(segments, items)]
    facts = _image_facts(_ppocr_image(raw_path, label_txt))
    page = Page(number=1, width=facts.width, height=facts.height, image=facts.path or raw_path, segments=segments)
    name = Path(raw_path).stem
    return _document(_document_id(PPOCR_PREFIX, name), Path(raw_path).name, page,
                     _links_from_linking(linking), facts)


def read_ppocr_kie(label_txt: Path) -> list[Document]:
    """The documents of a PPOCRLabel KIE ``Label.txt`` (``label`` or ``key_cls``; ``label`` wins)."""
    path = Path(label_txt)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(f"cannot read {path}: {exc}") from exc
    return [_read_ppocr_line(line, path, n) for n, line in enumerate(lines, start=1) if line.strip()]


def _ppocr_items(page: Page, links: list[Link]) -> list[dict[str, Any]]:
    ids = _external_ids(page.segments)
    linking = _linking_lists([s.id for s in page.segments], links, ids)
    return [{"transcription": s.text, "points": [[_number(x), _number(y)] for x, y in s.box],
             "label": s.label, "id": ids[s.id], "linking": linking[s.id], "difficult": False,
             "words": _word_dicts(s.words)}
            for s in page.segments]


def write_ppocr_kie(documents: Iterable[Document], path: Path) -> None:
    """A PPOCRLabel KIE ``Label.txt``; each image is linked (not copied) next to it, named after the
    document, and written as ``<folder>/<file>`` as PPOCRLabel does."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for document in documents:
        for name, page, links in _records(document, PPOCR_PREFIX):
            linked = _link_image(page.image, path.parent, name)
            image = f"{path.parent.name}/{linked.name}" if linked else (page.image or f"{name}.png")
            lines.append(f"{image}\t{json.dumps(_ppocr_items(page, links), ensure_ascii=False)}\n")
    path.write_text("".join(lines), encoding="utf-8")
