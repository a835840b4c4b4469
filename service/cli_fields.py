"""``paperloop import values FILE`` and ``paperloop fields calibrate``: fields from known values, and
the straight-through thresholds."""

from __future__ import annotations

from pathlib import Path

import click

from service.config import PaperloopConfig
from service.fields.importer import ValuesFileError, import_values, read_values
from service.labels import FrozenHoldoutError, LabelError


def run_values_import(cfg: PaperloopConfig, path: Path, split: str | None) -> None:
    """Import known values as bootstrapped gold labels (``paperloop import values FILE``)."""
    if not cfg.fields.fields:
        raise click.ClickException("no field schema: configure `fields` (see configs/receipt.yaml) before importing values")
    try:
        values = read_values(path, cfg)
        report = import_values(cfg, values, split or "train")
    except (ValuesFileError, FrozenHoldoutError, LabelError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"imported {report.documents} documents into {split or 'train'} as bootstrapped gold (source "
               f"values:bootstrapped): values found per field:")
    for name in cfg.fields.names:
        found, missing = report.found[name], report.missing[name]
        if found or missing:
            click.echo(f"  {name:<16} {found:>5} found {missing:>5} not found in the OCR")


@click.group("fields")
def fields_group() -> None:
    """The field schema's thresholds."""


@fields_group.command("calibrate")
@click.pass_obj
def calibrate(cfg: PaperloopConfig) -> None:
    """Set the field thresholds of the SER version in service on the holdout split (routing.target_accuracy)."""
    from service.fields.holdout import calibrate_in_service

    try:
        result = calibrate_in_service(cfg)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_calibration(result))


def format_calibration(result: dict) -> str:
    """The thresholds and what they let through on the holdout, one line per field then the total."""
    lines = [f"field thresholds for SER {result['ser_version']} on {result['documents']} holdout documents "
             f"(target accuracy {result['target_accuracy']}):"]
    lines += [f"  {name:<16} {value:.4f}" for name, value in result["thresholds"].items()]
    through = result["straight_through"]
    accuracy = through["field_accuracy"]
    lines.append(f"  straight through: {through['accepted']} of {through['documents']} "
                 f"({through['share']:.2f}), field accuracy {'-' if accuracy is None else f'{accuracy:.4f}'}")
    return "\n".join(lines)
