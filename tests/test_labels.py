"""The gold-label store: the holdout split is frozen."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.formats import read_funsd
from service.funsd import split_pairs
from service.labels import FrozenHoldoutError, LabelStore
from service.store import Store

from conftest import FUNSD_ROOT


def _form(index: int):
    image, annotation = split_pairs("testing", FUNSD_ROOT)[index]
    return read_funsd(annotation, image)


@pytest.mark.slow
def test_holdout_membership_is_permanent(tmp_path: Path) -> None:
    labels = LabelStore(Store(tmp_path / "paperloop.db"))
    held, trained = _form(0), _form(1)
    labels.put(held, "funsd", "holdout")
    labels.put(trained, "review", "train")
    with pytest.raises(FrozenHoldoutError, match="holdout"):
        labels.put(held, "review", "train")  # out of the frozen set
    with pytest.raises(FrozenHoldoutError, match="holdout"):
        labels.put(trained, "review", "holdout")  # into it, after models may have trained on it
    with pytest.raises(FrozenHoldoutError):
        labels.put(held, "funsd", "test")
    assert [d.id for d in labels.documents("holdout")] == [held.id]
    assert [d.id for d in labels.documents("train")] == [trained.id]
    held.segments[0].text = "corrected"
    labels.put(held, "review", "holdout")  # a correction inside the holdout split is fine
    assert labels.get(held.id).segments[0].text == "corrected"
    labels.put(_form(2), "funsd", "holdout")  # and so are new holdout documents
    assert len(labels.documents("holdout")) == 2
