"""The result tree: Document → Page → Segment, with lossless ``to_dict`` / ``from_dict``.

Later stages (SER, RE, review) extend these classes rather than inventing their own shapes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

Point = tuple[float, float]


@dataclass
class Segment:
    """One text region: a 4-point box (clockwise from top-left), its text and the scores."""

    id: str
    box: list[Point]
    text: str
    det_score: float
    rec_score: float
    det_version: str
    rec_version: str

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """Axis-aligned (x0, y0, x1, y1) of the box."""
        xs = [p[0] for p in self.box]
        ys = [p[1] for p in self.box]
        return min(xs), min(ys), max(xs), max(ys)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["box"] = [list(p) for p in self.box]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Segment":
        """Inverse of :meth:`to_dict`."""
        fields = dict(data)
        fields["box"] = [tuple(map(float, p)) for p in fields["box"]]
        return cls(**fields)


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
            "number": self.number,
            "width": self.width,
            "height": self.height,
            "image": self.image,
            "segments": [s.to_dict() for s in self.segments],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Page":
        """Inverse of :meth:`to_dict`."""
        return cls(
            number=data["number"],
            width=data["width"],
            height=data["height"],
            image=data.get("image"),
            segments=[Segment.from_dict(s) for s in data.get("segments", [])],
        )


@dataclass
class Document:
    """A processed file: its identity, the model versions that read it, and its pages."""

    id: str
    source_name: str
    sha256: str
    created_at: str
    model_versions: dict[str, str] = field(default_factory=dict)
    pages: list[Page] = field(default_factory=list)

    @property
    def segments(self) -> list[Segment]:
        """All segments of all pages, in reading order."""
        return [s for page in self.pages for s in page.segments]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "id": self.id,
            "source_name": self.source_name,
            "sha256": self.sha256,
            "created_at": self.created_at,
            "model_versions": dict(self.model_versions),
            "pages": [p.to_dict() for p in self.pages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Document":
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=data["id"],
            source_name=data["source_name"],
            sha256=data["sha256"],
            created_at=data["created_at"],
            model_versions=dict(data.get("model_versions", {})),
            pages=[Page.from_dict(p) for p in data.get("pages", [])],
        )
