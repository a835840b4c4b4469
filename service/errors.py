"""Named failures. Every file that cannot be processed fails with one coded reason."""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a file was quarantined. The value is stored in the DB and in the reason file."""

    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    FILE_MISSING = "file_missing"
    UNSUPPORTED_TYPE = "unsupported_type"
    PDF_DAMAGED = "pdf_damaged"
    PDF_ENCRYPTED = "pdf_encrypted"
    PDF_NO_PAGES = "pdf_no_pages"
    IMAGE_DAMAGED = "image_damaged"
    TOO_MANY_PAGES = "too_many_pages"
    PAGE_TOO_LARGE = "page_too_large"
    PROCESSING_ERROR = "processing_error"
    SYMLINK = "symlink"  # a link in the inbox: quarantined itself, its target never touched
    NOT_A_FILE = "not_a_file"  # a FIFO, socket or device node in the inbox
    CRASHED_WORKER = "crashed_worker"  # the worker died on this file ingest.max_attempts times


class PaperloopError(Exception):
    """Base class of Paperloop's own errors."""


class IngestError(PaperloopError):
    """A file cannot be turned into pages; ``reason`` says why in one code."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.message}"
