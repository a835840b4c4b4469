"""``paperloop batch``: a backfill of folders and globs on Ray (see :mod:`service.batch`)."""

from __future__ import annotations

import logging
import sys

import click

from service.config import PaperloopConfig


@click.command()
@click.argument("patterns", nargs=-1, required=True, metavar="PATH_OR_GLOB...")
@click.option("--num-cpus", type=click.IntRange(min=1), default=None,
              help="CPUs of the local Ray instance, one actor each (default: all cores).")
@click.option("--address", default=None,
              help="An existing Ray cluster (e.g. ray://head:10001 or auto) instead of a local instance.")
@click.option("--retry-failed", is_flag=True, help="Try again files that failed in an earlier run (skipped otherwise).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_obj
def batch(cfg: PaperloopConfig, patterns: tuple[str, ...], num_cpus: int | None, address: str | None,
          retry_failed: bool, no_progress: bool) -> None:
    """Process the files of folders or globs (PATH_OR_GLOB...) on Ray; the files stay where they are.

    Content already processed is skipped, so a second run only does what is new or was interrupted.
    Bad files are quarantined (a copy) with a reason. Ends with: processed / duplicates / failed.
    """
    from service.batch import run_batch
    from service.cli import _ensure_models

    if address and num_cpus:
        raise click.UsageError("--num-cpus is for a local Ray instance; a cluster has its own CPUs")
    _ensure_models(cfg)
    if not no_progress and logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("service.jobs").setLevel(logging.WARNING)  # one line per file would break the bar
    try:
        summary = run_batch(cfg, patterns, num_cpus=num_cpus, address=address, progress=not no_progress,
                            retry_failed=retry_failed)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.line())
    if summary.failed:
        sys.exit(1)
