"""The fast tier is hermetic by rule: a test not marked slow cannot read FUNSD or train a model."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from conftest import FUNSD_ROOT, FUNSD_TEST_IMAGES, TierViolation, funsd_fixture_violation


def test_a_fast_test_cannot_open_or_list_funsd() -> None:
    with pytest.raises(TierViolation, match="read FUNSD.*not marked slow"):
        open(FUNSD_TEST_IMAGES / "82092117.png", "rb")  # refused before the file is looked for
    with pytest.raises(TierViolation, match="read FUNSD"):
        list((FUNSD_ROOT / "dataset").iterdir())


def test_a_fast_test_cannot_step_an_optimizer() -> None:
    layer = paddle.nn.Linear(2, 1)
    before = layer.weight.numpy().copy()
    for optimizer in (paddle.optimizer.SGD(learning_rate=0.1, parameters=layer.parameters()),
                      paddle.optimizer.AdamW(learning_rate=0.1, parameters=layer.parameters())):
        layer(paddle.ones([4, 2])).sum().backward()
        with pytest.raises(TierViolation, match="trained a model"):
            optimizer.step()
        with pytest.raises(TierViolation, match="trained a model"):
            optimizer.minimize(layer(paddle.ones([4, 2])).sum())
    np.testing.assert_array_equal(layer.weight.numpy(), before)


class _Item:
    """Just enough of a collected test for the fixture rule: its id, fixture closure and markers."""

    def __init__(self, fixturenames: list[str], markers: tuple[str, ...] = ()) -> None:
        self.nodeid, self.fixturenames, self.markers = "tests/test_x.py::test_x", fixturenames, markers

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None


def test_the_funsd_fixtures_are_refused_to_fast_tests_only() -> None:
    message = funsd_fixture_violation(_Item(["cfg", "funsd_pages", "finetuned"]))
    assert message and "uses `funsd_pages` (FUNSD) but is not marked slow" in message
    assert funsd_fixture_violation(_Item(["funsd_page_path"], markers=("slow",))) is None
    assert funsd_fixture_violation(_Item(["cfg", "page_path", "pages"])) is None


def test_synthetic_pages_differ_and_hold_text(pages: list) -> None:
    contents = [p.read_bytes() for p in pages]
    assert len(set(contents)) == 3 and all(p.suffix == ".png" for p in pages)
