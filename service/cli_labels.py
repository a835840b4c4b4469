"""``paperloop import`` / ``paperloop export``: gold labels from and to FUNSD, XFUND and PPOCRLabel.

Import is an upsert by document id, so importing the same data twice changes nothing. Data whose
split cannot be told from its layout needs ``--split``: test data must never land in ``train`` by
accident. Export writes one folder per split, in a layout that ``import`` reads back::

    funsd       OUT/dataset/{training,testing,holdout}_data/{annotations,images}/
    xfund       OUT/<lang>.{train,val,holdout}.json          (val = our test split)
    ppocrlabel  OUT/{train,test,holdout}/Label.txt           (images linked next to it)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click

from service.config import PaperloopConfig
from service.document import Document
from service.formats import (FormatError, read_funsd, read_ppocr_kie, read_xfund, write_funsd,
                             write_ppocr_kie, xfund_dict, xfund_header)
from service.labels import SPLITS, FrozenHoldoutError, LabelError, LabelStore
from service.store import Store

FORMATS = ("funsd", "xfund", "ppocrlabel")
FUNSD_FOLDERS = {"training_data": "train", "testing_data": "test", "holdout_data": "holdout"}
XFUND_SPLITS = {"train": "train", "val": "test", "test": "test", "holdout": "holdout"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

Batch = tuple[str, list[Document]]  # (split, documents)


def _split(found: str | None, override: str | None, where: Path) -> str:
    """The split to import into: ``--split`` first, then the one the data names."""
    split = override or found
    if split is None:
        raise click.ClickException(f"cannot tell the split of {where}; pass --split")
    return split


# -- import --------------------------------------------------------------------------------------

def _funsd_folders(path: Path) -> list[Path]:
    """FUNSD split folders (holding ``annotations/``) under a root, ``dataset/`` or split folder."""
    if (path / "annotations").is_dir():
        return [path]
    base = path / "dataset" if (path / "dataset").is_dir() else path
    folders = [base / name for name in FUNSD_FOLDERS if (base / name / "annotations").is_dir()]
    if not folders:
        raise click.ClickException(f"no FUNSD annotations under {path}")
    return folders


def _funsd_image(folder: Path, stem: str) -> Path | None:
    return next((p for p in (folder / "images" / f"{stem}{s}" for s in IMAGE_SUFFIXES) if p.is_file()), None)


def _read_funsd_folder(folder: Path) -> list[Document]:
    return [read_funsd(a, _funsd_image(folder, a.stem))
            for a in sorted((folder / "annotations").glob("*.json"))]


def _import_funsd(path: Path, split: str | None) -> list[Batch]:
    return [(_split(FUNSD_FOLDERS.get(f.name), split, f), _read_funsd_folder(f)) for f in _funsd_folders(path)]


def _import_xfund(path: Path, split: str | None) -> list[Batch]:
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise click.ClickException(f"no XFUND JSON files in {path}")
    return [(_split(XFUND_SPLITS.get(str(xfund_header(f).get("split"))), split, f), read_xfund(f))
            for f in files]


def _import_ppocrlabel(path: Path, split: str | None) -> list[Batch]:
    if path.is_file():
        files = [path]
    else:
        files = [path / "Label.txt"] if (path / "Label.txt").is_file() else sorted(path.glob("*/Label.txt"))
    if not files:
        raise click.ClickException(f"no Label.txt at {path}")
    known = {s: s for s in SPLITS}
    return [(_split(known.get(f.parent.name), split, f), read_ppocr_kie(f)) for f in files]


IMPORTERS: dict[str, Callable[[Path, str | None], list[Batch]]] = {
    "funsd": _import_funsd, "xfund": _import_xfund, "ppocrlabel": _import_ppocrlabel,
}


def _echo_counts(labels: LabelStore) -> None:
    for split, counts in labels.counts().items():
        click.echo(f"  {split:<8} {counts['documents']:>5} documents {counts['segments']:>7} segments "
                   f"{counts['links']:>6} links")


@click.command("import")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMATS + ("values",)))
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--split", type=click.Choice(SPLITS), help="Split to file the documents in (default: from the data).")
@click.pass_obj
def import_labels(cfg: PaperloopConfig, fmt: str, path: Path, split: str | None) -> None:
    """Import gold labels (FORMAT: funsd, xfund or ppocrlabel) into the label store.

    All or nothing: a document that would move into or out of the frozen holdout split stops the
    whole import. FORMAT values: PATH is a CSV or JSON file of known field values (document, field,
    value); each document is read by the models in service and the words printing its values are
    labelled (gold marked bootstrapped; default split train).
    """
    if fmt == "values":
        from service.cli_fields import run_values_import

        run_values_import(cfg, path, split)
        return
    store = Store(cfg.paths.database)
    try:
        labels = LabelStore(store)
        batches = IMPORTERS[fmt](path, split)
        with store.transaction():
            for target, documents in batches:
                for document in documents:
                    labels.put(document, source=fmt, split=target)
        for target, documents in batches:
            click.echo(f"imported {len(documents)} {fmt} documents into {target}")
        click.echo("gold labels now:")
        _echo_counts(labels)
    except FrozenHoldoutError as exc:
        raise click.ClickException(f"import refused, nothing imported: {exc}") from exc
    except (FormatError, LabelError) as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


# -- export --------------------------------------------------------------------------------------

def _absolute_images(documents: list[Document], data_dir: Path) -> list[Document]:
    """Page images stored relative to the data folder (processed documents) made absolute."""
    for page in (p for d in documents for p in d.pages):
        if page.image and not Path(page.image).is_absolute() and (data_dir / page.image).is_file():
            page.image = str(data_dir / page.image)
    return documents


def _export_funsd(documents: list[Document], out_dir: Path, split: str, lang: str) -> Path:
    folder = out_dir / "dataset" / next(name for name, s in FUNSD_FOLDERS.items() if s == split)
    write_funsd(documents, folder)
    return folder


def _export_xfund(documents: list[Document], out_dir: Path, split: str, lang: str) -> Path:
    xsplit = "val" if split == "test" else split
    path = out_dir / f"{lang}.{xsplit}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(xfund_dict(documents, lang=lang, split=xsplit), ensure_ascii=False), encoding="utf-8")
    return path


def _export_ppocrlabel(documents: list[Document], out_dir: Path, split: str, lang: str) -> Path:
    path = out_dir / split / "Label.txt"
    write_ppocr_kie(documents, path)
    return path


EXPORTERS: dict[str, Callable[[list[Document], Path, str, str], Path]] = {
    "funsd": _export_funsd, "xfund": _export_xfund, "ppocrlabel": _export_ppocrlabel,
}


@click.command("export")
@click.argument("fmt", metavar="FORMAT", type=click.Choice(FORMATS))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(SPLITS), help="Export one split only (default: all).")
@click.option("--lang", default="en", show_default=True, help="XFUND 'lang' field and file-name prefix.")
@click.pass_obj
def export_labels(cfg: PaperloopConfig, fmt: str, out_dir: Path, split: str | None, lang: str) -> None:
    """Export gold labels (FORMAT: funsd, xfund or ppocrlabel) into OUT_DIR; images are linked, not copied."""
    store = Store(cfg.paths.database)
    try:
        labels = LabelStore(store)
        for target in [split] if split else SPLITS:
            documents = _absolute_images(labels.documents(target), cfg.paths.resolve("data"))
            if documents:
                written = EXPORTERS[fmt](documents, out_dir, target, lang)
                click.echo(f"{target}: {len(documents)} documents → {written}")
    except FormatError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
