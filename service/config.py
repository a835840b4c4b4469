"""Typed configuration: one validated model per concern, unknown keys rejected.

The defaults below are the embedded defaults; ``configs/default.yaml`` spells them out for users to
copy and edit (a test keeps the two equal).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from service.fields.schema import FieldsConfig
from service.tasks import TASK_NAMES
from service.tasks.det import DEFAULTS as DET_DEFAULTS
from service.tasks.kie_common import DEFAULTS as KIE_DEFAULTS
from service.tasks.rec import DEFAULTS as REC_DEFAULTS


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
    # A file whose processing was interrupted this many times (the worker process died: a segfault
    # or OOM inside a decoder or Paddle) is quarantined as ``crashed_worker`` instead of retried.
    max_attempts: int = Field(3, ge=1)


# The shipped PP-OCRv4 detector's DB post-processing (PaddleOCR 3 OCR-pipeline defaults).
SHIPPED_DET_POSTPROCESS = {"thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5}


class DetConfig(StrictModel):
    """DB text-detection pre/post-processing (PaddleOCR 3 OCR-pipeline defaults)."""

    limit_side_len: int = Field(64, ge=32)
    limit_type: Literal["min", "max"] = "min"
    max_side_limit: int = Field(4000, ge=32)
    # None: the det version's own values (PostProcess in its inference.yml: 0.3 / 0.6 / 1.5 for the
    # shipped model; the learning job calibrates them on reviewers' pages).
    thresh: Optional[float] = Field(None, gt=0, lt=1)
    box_thresh: Optional[float] = Field(None, gt=0, lt=1)
    unclip_ratio: Optional[float] = Field(None, gt=0)
    max_candidates: int = Field(1000, ge=1)

    def resolved(self, postprocess: Mapping[str, Any]) -> "DetConfig":
        """This config with its unset post-processing values taken from a model's ``PostProcess``."""
        return self.model_copy(update={key: float(postprocess.get(key, value))
                                       for key, value in SHIPPED_DET_POSTPROCESS.items()
                                       if getattr(self, key) is None})


# Measured on FUNSD pages (2 vCPUs with 2 MB of L2 each): two one-thread workers side by side read a
# page in 1.25-1.33 s with 1,600 px batches against 1.39-1.50 s with 3,200 px ones, while one worker
# with 2 threads is fastest at 3,200 px (0.74 s/page vs 0.79 s at 1,600).
WIDTH_BUDGET_PER_THREAD = 1600


class RecConfig(StrictModel):
    """CTC text-recognition input shape and batching."""

    image_height: int = Field(48, ge=8)
    image_width: int = Field(320, ge=8)
    max_width: int = Field(3200, ge=8)
    batch_size: int = Field(8, ge=1)
    # Padded pixels of width per batch; None: WIDTH_BUDGET_PER_THREAD for each inference thread.
    batch_width_budget: int | None = Field(None, ge=8)
    width_step: int = Field(160, ge=1)

    def width_budget(self, threads: int) -> int:
        """The padded width one batch may hold: ``batch_width_budget``, or by default
        :data:`WIDTH_BUDGET_PER_THREAD` per inference thread (a batch is sized to the cache of the
        cores that run it)."""
        if self.batch_width_budget is not None:
            return self.batch_width_budget
        return WIDTH_BUDGET_PER_THREAD * max(1, threads)


class OcrConfig(StrictModel):
    """The OCR engine: Paddle Inference on the CPU."""

    threads: int = Field(2, ge=1)
    use_mkldnn: bool = True
    det: DetConfig = DetConfig()
    rec: RecConfig = RecConfig()


class DaemonConfig(StrictModel):
    """How ``paperloop serve`` processes the queue."""

    # 1: one worker thread in the daemon's process (the default). N > 1: N worker processes, each
    # with its own predictors (ocr.threads threads each), claiming jobs from the store. "auto":
    # as many as fit the CPU, os.cpu_count() // ocr.threads (at least 1).
    workers: StrictInt | Literal["auto"] = 1

    @field_validator("workers")
    @classmethod
    def _at_least_one(cls, workers: int | str) -> int | str:
        if isinstance(workers, int) and workers < 1:
            raise ValueError("workers must be at least 1, or 'auto'")
        return workers

    def resolved_workers(self, ocr_threads: int) -> int:
        """The number of workers: ``workers``, or for ``auto`` the CPU cores ÷ threads per worker."""
        if self.workers == "auto":
            return max(1, (os.cpu_count() or 1) // ocr_threads)
        return int(self.workers)


class RoutingConfig(StrictModel):
    """When a processed document is sent to human review."""

    min_rec_score: float = Field(0.80, ge=0, le=1)
    # With a field schema (`fields`), documents go through on their fields' confidences: each field's
    # threshold is set on the holdout split so that accepted documents' fields are right this often
    # (`paperloop fields calibrate`, run by `train ser`). `field_thresholds` fixes some by hand.
    target_accuracy: float = Field(0.98, gt=0, le=1)
    field_thresholds: dict[str, float] = {}


class ReviewConfig(StrictModel):
    """Human review: what goes to the queue, in which order, and who may review.

    The recognition threshold is ``routing.min_rec_score``; the SER and RE thresholds are here.
    """

    min_label_score: float = Field(0.80, ge=0, le=1)  # SER label probability
    min_link_score: float = Field(0.80, ge=0, le=1)  # RE link probability
    # Entity grouping: an entity whose words the grouping model joined (or cut) with a probability
    # below this goes to review, where merge / split fix it.
    min_group_score: float = Field(0.50, ge=0, le=1)
    # Per label of the schema: a segment with this label whose confidence (the lower of its
    # recognition score and label probability) is below the value goes to review.
    field_thresholds: dict[str, float] = {}
    audit_percent: float = Field(5.0, ge=0, le=100)  # random share of passed documents reviewed
    audit_every: int = Field(4, ge=1)  # in the queue, one audit document after every N others
    uncertainty: Literal["entropy", "margin", "least_confidence"] = "entropy"
    # Which scores make a document's uncertainty (the queue's order): recognition, SER label,
    # grouping, RE link. bench/active.py measures what each choice buys.
    uncertainty_from: list[Literal["rec", "label", "group", "link", "link_choice"]] = Field(
        ["rec", "label", "link"], min_length=1)
    # The document's total uncertainty (sum) or its mean per scored item; bench/active.py chose sum.
    uncertainty_aggregate: Literal["mean", "sum"] = "sum"
    holdout_fraction: float = Field(0.1, ge=0, lt=1)  # share of new gold documents frozen in holdout
    claim_minutes: float = Field(30.0, gt=0)  # a claim not renewed for this long lapses
    # Password hashes made by `paperloop review --hash-password`: one shared by every reviewer,
    # and/or one per reviewer name. PAPERLOOP_REVIEW_PASSWORD (plain) takes precedence over the
    # shared one. With none, the app runs on a loopback address only.
    password_hash: str | None = None
    reviewers: dict[str, str] = {}
    address: str = "127.0.0.1"
    port: int = Field(8501, ge=1, le=65535)
    # Accounts (`paperloop review users`): failed logins per name within the window lock it out.
    login_max_failures: int = Field(5, ge=1)
    login_max_failures_per_address: int = Field(20, ge=1)
    login_window_minutes: float = Field(15.0, gt=0)
    lockout_minutes: float = Field(15.0, gt=0)
    session_idle_minutes: float = Field(60.0, gt=0)  # a session not used for this long ends
    exports_dir: Path = Path("data/exports")  # every export goes in a new folder under this one
    # Where the Models page finds the latest active-learning measurement (bench/active.py's
    # active.json and active.png), relative to ``paths.root``.
    active_learning_results: Path = Path("bench/results")


class KieTrainingConfig(StrictModel):
    """Hyper-parameters of ``paperloop train ser|re`` (chosen on a split of FUNSD's training set)."""

    epochs: int = Field(KIE_DEFAULTS.epochs, ge=1)
    batch_size: int = Field(KIE_DEFAULTS.batch_size, ge=1)
    learning_rate: float = Field(KIE_DEFAULTS.learning_rate, gt=0)
    weight_decay: float = Field(KIE_DEFAULTS.weight_decay, ge=0)
    dim: int = Field(KIE_DEFAULTS.dim, ge=8)
    layers: int = Field(KIE_DEFAULTS.layers, ge=1)
    heads: int = Field(KIE_DEFAULTS.heads, ge=1)
    embed_dim: int = Field(KIE_DEFAULTS.embed_dim, ge=8)
    dropout: float = Field(KIE_DEFAULTS.dropout, ge=0, lt=1)
    seed: int = KIE_DEFAULTS.seed
    validation_fraction: float = Field(KIE_DEFAULTS.validation_fraction, gt=0, lt=1)
    line_augmentation: bool = True  # also train on gold entities split into lines, as OCR sees them
    # SER loss weights per label: "inverse_sqrt" (1/sqrt of the label's share of training segments,
    # so a field with one line per document is not drowned by `other`) or "none".
    class_balance: Literal["inverse_sqrt", "none"] = "inverse_sqrt"
    # Also train on what service sees: the gold page read by the OCR in service, its words aligned
    # to the gold entities (service/kie/service_view.py; cached per det/rec version).
    service_view: bool = True
    # Epochs of the grouping model (`group`): it learns from every word of a page, so it needs fewer
    # passes; on 60 FUNSD forms its validation Hmean peaked at epoch 4-6 of 15 and fell after.
    group_epochs: int = Field(8, ge=1)


class LayoutXLMConfig(StrictModel):
    """Use pretrained LayoutXLM / VI-LayoutXLM weights from local folders instead of the graph models.

    Each folder holds a paddlenlp checkpoint (config, weights, ``sentencepiece.bpe.model``), as
    PaddleOCR's KIE models are saved. Nothing is ever downloaded.
    """

    ser_dir: Path | None = None
    re_dir: Path | None = None


class KieConfig(StrictModel):
    """Key information extraction: the label schema and how links are decided."""

    labels: list[str] = ["header", "question", "answer", "other"]
    other_label: str = "other"  # the "not a field" label; not counted in entity-level scores
    multiple_values: bool = True  # a key may link to several values (FUNSD: yes)
    link_threshold: float | None = Field(None, gt=0, lt=1)  # None: the model's own, tuned on validation
    # A grouping link less probable than this joins two parts into one entity only when SER labels
    # both parts alike (a receipt's address line that also prints the phone number); None: off.
    group_label_check: float | None = Field(None, gt=0, lt=1)
    training: KieTrainingConfig = KieTrainingConfig()
    layoutxlm: LayoutXLMConfig = LayoutXLMConfig()

    @model_validator(mode="after")
    def _other_is_a_label(self) -> "KieConfig":
        if self.other_label not in self.labels:
            raise ValueError(f"other_label {self.other_label!r} must be one of labels {self.labels}")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError("labels must be unique")
        return self


class LearningConfig(StrictModel):
    """The scheduled learning job: retrain on new gold labels, promote only what is better."""

    enabled: bool = True  # schedule the job inside `paperloop serve`
    trigger: Literal["interval", "cron"] = "interval"
    interval_hours: float = Field(24.0, gt=0)
    cron: str = "0 2 * * *"  # minute hour day month weekday, used when trigger is "cron"
    misfire_grace_seconds: int = Field(3600, ge=1)
    # The tasks the job trains, in the order det, rec, ser, re (bench/loop.py measures each on FUNSD).
    tasks: list[str] = list(TASK_NAMES)
    # det: DB weight fine-tuning steps (one page crop each; targets shrunk so the unclip restores the
    # gold box), then post-processing calibration. Defaults and their evidence: service/tasks/det.py.
    det_steps: int = Field(DET_DEFAULTS.steps, ge=0)
    det_learning_rate: float = Field(DET_DEFAULTS.learning_rate, gt=0)
    det_crop_size: int = Field(DET_DEFAULTS.crop_size, ge=64)  # square crops at the page's own scale
    rec_epochs: int = Field(REC_DEFAULTS.epochs, ge=1)
    rec_learning_rate: float = Field(REC_DEFAULTS.learning_rate, gt=0)
    # Forgetting guard: synthetic lines rendered with these fonts, this many per gold line.
    rec_synthetic_ratio: float = Field(REC_DEFAULTS.synthetic_ratio, ge=0)
    synthetic_font_dirs: list[str] = ["/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation"]
    min_new_documents: int = Field(20, ge=0)  # new gold documents since the task's last run
    margin: float = Field(0.005, ge=0)  # the main metric must improve by at least this
    tolerance: float = Field(0.01, ge=0)  # no other metric may fall by more (precision, recall: plus the gain)
    # ... nor by more than this many standard errors of the holdout's sampling noise, for metrics whose
    # number of gold items is known (a field's Hmean: its gold segments); 0 = the tolerance alone.
    gate_noise_z: float = Field(1.645, ge=0)
    nice: int = Field(10, ge=0, le=19)  # training runs in a child process at this priority

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in TASK_NAMES]
        if unknown:
            raise ValueError(f"unknown task(s) {', '.join(unknown)}; expected some of {', '.join(TASK_NAMES)}")
        return tasks


class PaperloopConfig(StrictModel):
    """The whole configuration."""

    paths: PathsConfig = PathsConfig()
    watcher: WatcherConfig = WatcherConfig()
    ingest: IngestConfig = IngestConfig()
    ocr: OcrConfig = OcrConfig()
    daemon: DaemonConfig = DaemonConfig()
    routing: RoutingConfig = RoutingConfig()
    review: ReviewConfig = ReviewConfig()
    kie: KieConfig = KieConfig()
    learning: LearningConfig = LearningConfig()
    fields: FieldsConfig = FieldsConfig()

    @model_validator(mode="after")
    def _fields_are_labels(self) -> "PaperloopConfig":
        missing = [name for name in self.fields.names if name not in self.kie.labels]
        if missing:
            raise ValueError(f"fields {missing} are not SER labels: add them to kie.labels {self.kie.labels}")
        return self


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
