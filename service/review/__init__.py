"""Human review, the service side: routing, uncertainty, access, the queue, gold saves, edits, exports.

* :mod:`~service.review.routing`: :func:`decide` (does a processed document go to review, and
  why) and the uncertainty scores that order the queue.
* :mod:`~service.review.auth`: password hashes and the review app's login policy.
* :mod:`~service.review.accounts`: :class:`ReviewerAccounts`, reviewer accounts, logins with
  lockout, and sessions.
* :mod:`~service.review.gold`: the gold form of an edited document and the diff written to the
  audit log.
* :mod:`~service.review.queue`: :class:`ReviewService`, the queue, claims and atomic gold saves.
* :mod:`~service.review.edits`: changes to a working copy made in the review app.
* :mod:`~service.review.editor`: the page editor's starting document and its save's diff; entities in
  reading order.
* :mod:`~service.review.reread`: re-reading a reviewer's box with the rec model in service.
* :mod:`~service.review.exports`: :func:`export_gold`, the gold set in PaddleOCR's formats.
* :mod:`~service.review.models`: model versions and Hmean history for the Models page.

Every public name is re-exported here, so ``from service.review import X`` works for all of them.
The Streamlit app in ``review_app/`` is a thin layer over this package.
"""

from __future__ import annotations

from service.review.auth import (
    PASSWORD_ENV, PASSWORD_HASH_ENV, AuthPolicy, auth_policy, clean_reviewer_name, hash_password, is_loopback,
    verify_password,
)
from service.review.accounts import (
    AccountError, LockedOut, LoginError, Reviewer, ReviewerAccounts, check_account_name,
)
from service.review.edits import (
    KNOWN_COLOURS, LABEL_COLOURS, UNLABELLED_COLOUR, add_link, add_segment,
    delete_segment, label_colours, new_segment_id, page_of, remove_link, update_segment,
)
from service.review.editor import EditorDiffError, apply_editor_diff, editor_document, joined_text, reading_order
from service.review.exports import (
    EXPORT_FORMATS, ExportError, ExportRecord, create_export, export_archive, export_det, export_gold, export_kie,
    export_rec, exports_root, resolve_image,
)
from service.review.gold import BOX_TOLERANCE, Change, diff_documents, segment_words, to_gold
from service.review.models import (
    ActiveLearningResult, active_learning_result, hmean_history, learning_history, model_versions,
)
from service.review.reread import Reread, reread_box
from service.review.queue import (
    QUEUE_ORDERS, REVIEW_SOURCE, REVIEWED, WAITING, ClaimError, ConflictError, QueueItem, ReviewError,
    ReviewService, SaveResult, human_age, task_counts,
)
from service.review.routing import (
    UNCERTAINTY_STRATEGIES, Decision, ReviewReason, decide, document_uncertainty, is_audit_sample, review_uncertainty,
    score_uncertainty, segment_confidence, segment_is_low, segment_uncertainty,
)

__all__ = [
    # routing and uncertainty
    "UNCERTAINTY_STRATEGIES", "Decision", "ReviewReason", "decide", "document_uncertainty", "is_audit_sample",
    "review_uncertainty",
    "score_uncertainty", "segment_confidence", "segment_is_low", "segment_uncertainty",
    # passwords and access
    "PASSWORD_ENV", "PASSWORD_HASH_ENV", "AuthPolicy", "auth_policy", "clean_reviewer_name", "hash_password",
    "is_loopback", "verify_password",
    # accounts, logins, sessions
    "AccountError", "LockedOut", "LoginError", "Reviewer", "ReviewerAccounts", "check_account_name",
    # gold documents and diffs
    "BOX_TOLERANCE", "Change", "diff_documents", "segment_words", "to_gold",
    # the queue
    "QUEUE_ORDERS", "REVIEW_SOURCE", "REVIEWED", "WAITING", "ClaimError", "ConflictError", "QueueItem",
    "ReviewError", "ReviewService", "SaveResult", "human_age", "task_counts",
    # editing a working copy
    "KNOWN_COLOURS", "LABEL_COLOURS", "UNLABELLED_COLOUR", "add_link", "add_segment", "delete_segment",
    "label_colours", "new_segment_id", "page_of", "remove_link",
    "update_segment",
    # the page editor and re-reading
    "EditorDiffError", "apply_editor_diff", "editor_document", "joined_text", "reading_order", "Reread", "reread_box",
    # exports
    "EXPORT_FORMATS", "ExportError", "ExportRecord", "create_export", "export_archive", "export_det", "export_gold",
    "export_kie", "export_rec", "exports_root", "resolve_image",
    # model versions
    "ActiveLearningResult", "active_learning_result", "hmean_history", "learning_history", "model_versions",
]
