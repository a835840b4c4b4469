"""Typed configuration: one validated model per concern, unknown keys rejected.

The defaults below are the embedded defaults; ``configs/default.yaml`` spells them out for users to
copy and edit (a test keeps the two equal).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A configuration file is missing, unreadable or invalid."""


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(StrictModel):
    """Where Paperloop reads and writes. Relative paths are resolved against ``root``."""

    root: Path = Path(".")
    inbox: Path = Path("inbox")
    archive: Path = Path("archive")
    quarantine: Path = Path("quarantine")
    output: Path = Path("output")
    data: Path = Path("data")
    models: Path = Path("models")

    def resolve(self, name: str) -> Path:
        """Absolute path of one of the folders above."""
        path = getattr(self, name)
        return path if path.is_absolute() else (self.root / path).resolve()

    @property
    def database(self) -> Path:
        """The SQLite database file."""
        return self.resolve("data") / "paperloop.db"


class WatcherConfig(StrictModel):
    """How the inbox is watched."""

    # "events": inotify via watchdog plus the periodic rescan; "polling": the rescan alone, for
    # network shares and other file systems that deliver no change events.
    mode: Literal["events", "polling"] = "events"
    recursive: bool = True
    quiet_seconds: float = Field(2.0, ge=0)
    poll_interval_seconds: float = Field(0.5, gt=0)
    rescan_interval_seconds: float = Field(60.0, gt=0)
    ignore_patterns: list[str] = [".*", "~*", "*.tmp", "*.part", "*.crdownload", "*.swp", "*.reason.txt"]


class IngestConfig(StrictModel):
    """Rasterization settings and the limits that guard against hostile or broken input."""

    dpi: int = Field(200, ge=50, le=600)
    max_pages: int = Field(50, ge=1)
    max_pixels_per_page: int = Field(40_000_000, ge=1)
    max_file_bytes: int = Field(100 * 1024 * 1024, ge=1)


class DetConfig(StrictModel):
    """DB text-detection pre/post-processing (PaddleOCR 3 OCR-pipeline defaults)."""

    limit_side_len: int = Field(64, ge=32)
    limit_type: Literal["min", "max"] = "min"
    max_side_limit: int = Field(4000, ge=32)
    thresh: float = Field(0.3, gt=0, lt=1)
    box_thresh: float = Field(0.6, gt=0, lt=1)
    unclip_ratio: float = Field(1.5, gt=0)
    max_candidates: int = Field(1000, ge=1)


class RecConfig(StrictModel):
    """CTC text-recognition input shape and batching."""

    image_height: int = Field(48, ge=8)
    image_width: int = Field(320, ge=8)
    max_width: int = Field(3200, ge=8)
    batch_size: int = Field(8, ge=1)
    batch_width_budget: int = Field(3200, ge=8)
    width_step: int = Field(160, ge=1)


class OcrConfig(StrictModel):
    """The OCR engine: Paddle Inference on the CPU."""

    threads: int = Field(2, ge=1)
    use_mkldnn: bool = True
    det: DetConfig = DetConfig()
    rec: RecConfig = RecConfig()


class RoutingConfig(StrictModel):
    """When a processed document is sent to human review."""

    min_rec_score: float = Field(0.80, ge=0, le=1)


class PaperloopConfig(StrictModel):
    """The whole configuration."""

    paths: PathsConfig = PathsConfig()
    watcher: WatcherConfig = WatcherConfig()
    ingest: IngestConfig = IngestConfig()
    ocr: OcrConfig = OcrConfig()
    routing: RoutingConfig = RoutingConfig()


def load_config(path: Path | None = None) -> PaperloopConfig:
    """Load and validate a YAML config; ``None`` gives the embedded defaults.

    A relative ``paths.root`` in a file is taken relative to the current directory.
    """
    if path is None:
        return PaperloopConfig()
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    try:
        return PaperloopConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid config {path}:\n{exc}") from exc


def dump_config(cfg: PaperloopConfig) -> str:
    """The config as YAML (paths as strings), e.g. to write a starting ``configs/*.yaml``."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
