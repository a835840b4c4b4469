"""The result tree: Document → Page → Segment (+ links between segments), lossless to/from dict.

The same classes carry model predictions and gold labels: a prediction fills the scores and the
model versions, a gold label leaves them empty. SER fills ``Segment.label``; RE fills
``Document.links`` (key segment → value segment).

``Document.to_dict`` carries ``schema_version`` (:data:`SCHEMA_VERSION`), the version of the output
JSON's schema documented in the README ("Output JSON"). Adding a field keeps the number; removing,
renaming or changing the meaning of one raises it, and :meth:`Document.from_dict` refuses a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Point = tuple[float, float]
BBox = tuple[float, float, float, float]  # x0, y0, x1, y1

SCHEMA_VERSION = 1  # of the document JSON (README: "Output JSON"); raise it on any incompatible change


class SchemaVersionError(ValueError):
    """A document dict written with a newer schema than this code reads."""


def check_schema_version(data: dict[str, Any]) -> int:
    """The dict's ``schema_version`` (1 when absent: written before versions were recorded).

    Raises :class:`SchemaVersionError` for a version newer than :data:`SCHEMA_VERSION` or one that is
    not a positive integer.
    """
    version = data.get("schema_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise SchemaVersionError(f"schema_version must be a positive integer, not {version!r}")
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(f"document {data.get('id', '?')!r} has schema_version {version}, newer than "
                                 f"{SCHEMA_VERSION}, the newest this Paperloop reads: upgrade Paperloop to read it")
    return version


def bbox_to_quad(box: BBox) -> list[Point]:
    """Four points, clockwise from top-left, of an axis-aligned box."""
    x0, y0, x1, y1 = box
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def quad_to_bbox(points: list[Point]) -> BBox:
    """Axis-aligned (x0, y0, x1, y1) around a polygon."""
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


@dataclass
class Word:
    """One word inside a segment: from gold labels, or placed in an OCR line by its CTC character positions."""

    text: str
    box: BBox

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"text": self.text, "box": list(self.box)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Word":
        """Inverse of :meth:`to_dict`."""
        return cls(text=data["text"], box=tuple(float(v) for v in data["box"]))  # type: ignore[arg-type]


@dataclass
class Segment:
    """One text region: a 4-point box (clockwise from top-left), its text, label and scores."""

    id: str
    box: list[Point]
    text: str
    label: str | None = None
    label_score: float | None = None
    words: list[Word] = field(default_factory=list)
    det_score: float | None = None
    rec_score: float | None = None
    det_version: str | None = None
    rec_version: str | None = None
    ser_version: str | None = None
    # Set when the segment is an entity the grouping model formed from OCR words (service/kie/grouping.py):
    # how sure it is that these words, and no others, make one entity, and which version said so.
    group_score: float | None = None
    group_version: str | None = None
    # RE's probability for its own decision about this segment as a value: the key it links it to,
    # or no key at all. A missed link leaves no Link to carry a score; this still shows the doubt.
    link_score: float | None = None

    @property
    def bbox(self) -> BBox:
        """Axis-aligned (x0, y0, x1, y1) of the box."""
        return quad_to_bbox(self.box)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id, "box": [list(p) for p in self.box], "text": self.text,
            "label": self.label, "label_score": self.label_score,
            "words": [w.to_dict() for w in self.words],
            "det_score": self.det_score, "rec_score": self.rec_score,
            "det_version": self.det_version, "rec_version": self.rec_version,
            "ser_version": self.ser_version,
            "group_score": self.group_score, "group_version": self.group_version,
            "link_score": self.link_score,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Segment":
        """Inverse of :meth:`to_dict`; missing optional keys take their defaults."""
        fields = dict(data)
        fields["box"] = [(float(p[0]), float(p[1])) for p in fields["box"]]
        fields["words"] = [Word.from_dict(w) for w in fields.get("words", [])]
        return cls(**fields)


@dataclass
class Link:
    """A directed key → value link between two segments of a document (ids are segment ids)."""

    key: str
    value: str
    score: float | None = None
    re_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"key": self.key, "value": self.value, "score": self.score, "re_version": self.re_version}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Link":
        """Inverse of :meth:`to_dict`."""
        return cls(**data)


@dataclass
class FieldValue:
    """One value of a schema field (``fields`` in the config): normalized, with where it came from.

    Filled from SER's labels by :func:`service.fields.extract.fill_fields`, or, in a gold document,
    from a value a user already had (``paperloop import values``).
    """

    name: str  # the field (its SER label)
    value: str | None  # normalized: ISO date, decimal amount or number, pattern match, or the text
    raw: str  # the characters it was read from
    page: int
    boxes: list[BBox] = field(default_factory=list)  # x0, y0, x1, y1 per segment it came from
    segments: list[str] = field(default_factory=list)  # ids of those segments
    currency: str | None = None  # ISO 4217 code of an amount whose currency is printed
    confidence: float | None = None  # calibrated probability that the value is right
    threshold: float | None = None  # the confidence it needs to go through without review
    versions: dict[str, str] = field(default_factory=dict)  # task → version of the models that found it

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "value": self.value, "raw": self.raw, "currency": self.currency,
                "confidence": self.confidence, "threshold": self.threshold, "page": self.page,
                "boxes": [[round(v, 2) for v in box] for box in self.boxes], "segments": list(self.segments),
                "versions": dict(self.versions)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FieldValue":
        """Inverse of :meth:`to_dict`."""
        values = dict(data)
        values["boxes"] = [tuple(float(v) for v in box) for box in values.get("boxes", [])]
        return cls(**values)


@dataclass
class Page:
    """One page of a document, 1-based, with its pixel size and segments in reading order."""

    number: int
    width: int
    height: int
    image: str | None = None  # path of the rasterized page image, relative to the data folder
    segments: list[Segment] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "number": self.number, "width": self.width, "height": self.height, "image": self.image,
            "segments": [s.to_dict() for s in self.segments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Page":
        """Inverse of :meth:`to_dict`."""
        return cls(
            number=data["number"], width=data["width"], height=data["height"], image=data.get("image"),
            segments=[Segment.from_dict(s) for s in data.get("segments", [])],
        )


@dataclass
class Document:
    """A file's content: identity, the model versions that read it, pages, and key → value links."""

    id: str
    source_name: str
    sha256: str
    created_at: str
    model_versions: dict[str, str] = field(default_factory=dict)
    pages: list[Page] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    fields: list[FieldValue] = field(default_factory=list)  # the schema's fields (config ``fields``)

    @property
    def segments(self) -> list[Segment]:
        """All segments of all pages, in reading order."""
        return [s for page in self.pages for s in page.segments]

    def segment(self, segment_id: str) -> Segment:
        """The segment with this id; ``KeyError`` if there is none."""
        for s in self.segments:
            if s.id == segment_id:
                return s
        raise KeyError(segment_id)

    def key_values(self) -> list[dict[str, Any]]:
        """The links as readable pairs, entity to entity: key and value text (all their lines), ids,
        labels, page boxes (x0, y0, x1, y1) and pages, the link score, and the versions that made them."""
        by_id = {s.id: s for s in self.segments}
        page_of = {s.id: page.number for page in self.pages for s in page.segments}
        pairs = []
        for link in self.links:
            key, value = by_id.get(link.key), by_id.get(link.value)
            if key is None or value is None:
                continue
            versions = {"group": key.group_version or value.group_version, "ser": key.ser_version or value.ser_version,
                        "re": link.re_version}
            pairs.append({"key": key.text, "value": value.text, "key_id": key.id, "value_id": value.id,
                          "key_label": key.label, "value_label": value.label, "score": link.score,
                          "key_box": [round(v, 2) for v in key.bbox], "value_box": [round(v, 2) for v in value.bbox],
                          "key_page": page_of[key.id], "value_page": page_of[value.id],
                          "versions": {k: v for k, v in versions.items() if v is not None}})
        return pairs

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, with the :data:`SCHEMA_VERSION` it follows."""
        return {
            "schema_version": SCHEMA_VERSION,
            "id": self.id, "source_name": self.source_name, "sha256": self.sha256,
            "created_at": self.created_at, "model_versions": dict(self.model_versions),
            "pages": [p.to_dict() for p in self.pages],
            "links": [link.to_dict() for link in self.links],
            "fields": [f.to_dict() for f in self.fields],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Document":
        """Inverse of :meth:`to_dict`; refuses a newer ``schema_version`` (:class:`SchemaVersionError`)."""
        check_schema_version(data)
        return cls(
            id=data["id"], source_name=data["source_name"], sha256=data["sha256"],
            created_at=data["created_at"], model_versions=dict(data.get("model_versions", {})),
            pages=[Page.from_dict(p) for p in data.get("pages", [])],
            links=[Link.from_dict(link) for link in data.get("links", [])],
            fields=[FieldValue.from_dict(f) for f in data.get("fields", [])],
        )
