"""Shared fixtures: real models, synthetic and real FUNSD pages, a fresh Paperloop root per test.

Two tiers. The fast tier (``-m "not slow"``) is hermetic: it reads nothing of FUNSD and trains
nothing. Tests that need FUNSD's labels or train a model are marked ``slow``; CI runs both tiers.
The rule is enforced here, not only agreed on: a test not marked ``slow`` that asks for the FUNSD
fixtures (directly or through other fixtures) fails before it starts, and while one is set up, run
or torn down, opening or listing anything under FUNSD or stepping a Paddle optimizer raises
:class:`TierViolation`. Fast tests read pages rendered here (``page_path``, ``pages``).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import paddle.optimizer
import pytest
from PIL import Image, ImageDraw, ImageFont

from service.base_models import install_base_models
from service.config import OcrConfig, PaperloopConfig
from service.ocr import OcrEngine
from service.registry import ModelRegistry

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FUNSD_ROOT = Path(os.environ.get("PAPERLOOP_FUNSD", PROJECT_ROOT.parent / "shared/datasets/funsd"))
FUNSD_TEST_IMAGES = FUNSD_ROOT / "dataset/testing_data/images"
FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation")]


# -- the two tiers -----------------------------------------------------------------------------

class TierViolation(RuntimeError):
    """A fast-tier test (not marked ``slow``) read FUNSD or trained a model."""


_fast_test: str | None = None  # node id of the fast-tier test in progress, None otherwise
_FUNSD_RESOLVED = FUNSD_ROOT.resolve()
_PATH_EVENTS = {"open", "os.listdir", "os.scandir", "glob.glob"}  # audit events that name a path first


def is_slow(item: pytest.Item) -> bool:
    """Whether ``item`` belongs to the slow tier (marked ``slow`` on itself, its class or module)."""
    return item.get_closest_marker("slow") is not None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Arm the guards for the set-up, run and tear-down of every fast-tier test."""
    global _fast_test
    _fast_test = None if is_slow(item) else item.nodeid
    try:
        yield
    finally:
        _fast_test = None


def _violation(what: str) -> TierViolation:
    return TierViolation(f"{_fast_test} {what}, but it is not marked slow: the fast tier (-m 'not slow') "
                         "reads no FUNSD and trains nothing. Use the synthetic `page_path` / `pages` "
                         "fixtures, or mark the test @pytest.mark.slow.")


def _under_funsd(path: Any) -> bool:
    if isinstance(path, int) or path is None:
        return False
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(_FUNSD_RESOLVED)
    except (TypeError, ValueError, OSError):
        return False


def _funsd_audit(event: str, args: tuple) -> None:
    """Audit hook: a fast-tier test that opens or lists a path under FUNSD fails."""
    if _fast_test is not None and event in _PATH_EVENTS and args and _under_funsd(args[0]):
        raise _violation(f"read FUNSD ({os.fsdecode(args[0])})")


def _refuse_in_fast_tier(method: Callable) -> Callable:
    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _fast_test is not None:
            raise _violation(f"stepped a {type(self).__name__} optimizer (trained a model)")
        return method(self, *args, **kwargs)
    guarded.tier_guard = True  # type: ignore[attr-defined]
    return guarded


def _guard_optimizers() -> None:
    """Every Paddle optimizer's ``step`` and ``minimize`` refuse to run in a fast-tier test."""
    classes = [c for c in vars(paddle.optimizer).values()
               if isinstance(c, type) and issubclass(c, paddle.optimizer.Optimizer)]
    for cls in classes:
        for name in ("step", "minimize"):
            if name in cls.__dict__ and not getattr(cls.__dict__[name], "tier_guard", False):
                setattr(cls, name, _refuse_in_fast_tier(cls.__dict__[name]))


sys.addaudithook(_funsd_audit)
_guard_optimizers()


FUNSD_FIXTURES = frozenset({"funsd_page_path", "funsd_pages"})


def funsd_fixture_violation(item: pytest.Item) -> str | None:
    """Why ``item`` may not run: a fast-tier test that uses a FUNSD fixture, directly or through
    another fixture (``item.fixturenames`` is the whole closure); ``None`` when it may."""
    used = sorted(FUNSD_FIXTURES & set(item.fixturenames))
    if not used or is_slow(item):
        return None
    return (f"{item.nodeid} uses {', '.join(f'`{name}`' for name in used)} (FUNSD) but is not marked slow: "
            "mark it @pytest.mark.slow, or use the synthetic `page_path` / `pages` fixtures")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a fast-tier test that asks for FUNSD pages before any fixture is set up."""
    message = funsd_fixture_violation(item)
    if message:
        pytest.fail(message, pytrace=False)


# -- pages -------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def funsd_page_path() -> Path:
    """A real scanned FUNSD test form (PNG); slow-tier tests only."""
    path = FUNSD_TEST_IMAGES / "82092117.png"
    assert path.is_file(), f"FUNSD is expected at {FUNSD_ROOT} (see README)"
    return path


@pytest.fixture(scope="session")
def funsd_pages() -> list[Path]:
    """A few real FUNSD test forms; slow-tier tests only."""
    paths = sorted(FUNSD_TEST_IMAGES.glob("*.png"))[:3]
    assert len(paths) == 3, f"FUNSD is expected at {FUNSD_ROOT} (see README)"
    return paths


FORM_FIELDS = [("Name", "Jane Miller"), ("Date", "04/12/1998"), ("Company", "Acme Tobacco Research"),
               ("Phone", "(212) 555-0143"), ("Amount", "$1,250.00"), ("Project", "Filter Study 7"),
               ("Address", "120 Park Avenue, New York"), ("Reference", "AB-004217"), ("Approved by", "R. Stone")]


def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    for folder in FONT_DIRS:
        if (folder / name).is_file():
            return ImageFont.truetype(str(folder / name), size)
    raise FileNotFoundError(f"font {name} not in {FONT_DIRS}: install fonts-dejavu-core and fonts-liberation "
                            "(./run setup does)")


def render_form_page(path: Path, seed: int) -> Path:
    """Render a form-like page of printed lines (a title, label/value rows, one long line) into ``path``.

    Each seed gives different content; the same seed, the same bytes.
    """
    rng = random.Random(seed)
    page = Image.new("L", (800, 1040), 255)  # about a FUNSD scan's size
    draw = ImageDraw.Draw(page)
    draw.text((64, 56), f"FORM {seed + 1}: RESEARCH REQUEST", fill=0, font=_font("DejaVuSans-Bold.ttf", 27))
    label_font, value_font = _font("DejaVuSans.ttf", 21), _font("LiberationSerif-Regular.ttf", 22)
    fields = rng.sample(FORM_FIELDS, 7)
    for row, (label, value) in enumerate(fields):
        y = 152 + row * 96
        draw.text((64, y), f"{label}:", fill=0, font=label_font)
        draw.text((336, y), value, fill=20, font=value_font)
    draw.text((64, 864), "Please return this form to the research office before the end of the month.",
              fill=0, font=_font("DejaVuSans.ttf", 17))
    page.save(path, "PNG")
    return path


@pytest.fixture(scope="session")
def pages(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three synthetic form pages with printed text (rendered at test time, each one different)."""
    folder = tmp_path_factory.mktemp("pages")
    return [render_form_page(folder / f"form-{i + 1}.png", seed=i) for i in range(3)]


@pytest.fixture(scope="session")
def page_path(pages: list[Path]) -> Path:
    """One synthetic form page with printed text (PNG)."""
    return pages[0]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model registry with the base models, shared by the whole session."""
    root = tmp_path_factory.mktemp("models")
    install_base_models(ModelRegistry(root))
    return root


@pytest.fixture(scope="session")
def ocr_engine(models_dir: Path) -> OcrEngine:
    """One loaded OCR engine for the session (loading and oneDNN warm-up take seconds)."""
    return OcrEngine(ModelRegistry(models_dir), OcrConfig())


@pytest.fixture
def cfg(tmp_path: Path, models_dir: Path) -> PaperloopConfig:
    """A configuration rooted in a fresh temporary folder, with fast watcher timings."""
    config = PaperloopConfig.model_validate({
        "paths": {"root": str(tmp_path), "models": str(models_dir)},
        "watcher": {"quiet_seconds": 0.3, "poll_interval_seconds": 0.05, "rescan_interval_seconds": 1.0},
    })
    for folder in ("inbox", "archive", "quarantine", "output", "data"):
        config.paths.resolve(folder).mkdir(parents=True, exist_ok=True)
    return config


@pytest.fixture
def own_registry(cfg: PaperloopConfig, tmp_path: Path) -> PaperloopConfig:
    """``cfg`` with a registry of its own (base det/rec linked in), for tests that add versions."""
    models = tmp_path / "own-models"
    models.mkdir()
    for task in ("det", "rec"):
        (models / task).symlink_to(cfg.paths.resolve("models") / task)
    cfg.paths.models = models
    return cfg


def write_pdf(path: Path, pages: list[Path]) -> Path:
    """Render real page images into a multi-page PDF (Pillow writes it; poppler reads it back)."""
    images = [Image.open(p).convert("RGB") for p in pages]
    images[0].save(path, "PDF", resolution=100.0, save_all=True, append_images=images[1:])
    return path


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition",
             interval: float = 0.05) -> None:
    """Poll until ``condition()`` holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not met within {timeout}s")
