"""``paperloop review``: start the Streamlit review app; ``paperloop review users``: reviewer accounts."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from service.config import PaperloopConfig
from service.review import (
    PASSWORD_ENV, PASSWORD_HASH_ENV, AccountError, ReviewerAccounts, auth_policy, hash_password, is_loopback,
)
from service.store import Store

APP = Path(__file__).resolve().parents[1] / "review_app" / "app.py"


def streamlit_command(address: str, port: int) -> list[str]:
    """The command line that serves the app."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", address, "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal", "--theme.base", "light", "--theme.primaryColor", "#1e5bd8"]


@click.group(invoke_without_command=True)
@click.option("--address", default=None, help="Address to bind (default: review.address, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: review.port, 8501).")
@click.option("--hash-password", "make_hash", is_flag=True,
              help="Ask for a password and print its hash for review.password_hash, then exit.")
@click.pass_context
def review(ctx: click.Context, address: str | None, port: int | None, make_hash: bool) -> None:
    """Start the review app in the browser (http://ADDRESS:PORT).

    Reviewers log in with their account (`paperloop review users add NAME`) and its password. The
    legacy shared password (review.password_hash or PAPERLOOP_REVIEW_PASSWORD) also opens an existing
    account. Without any password or account, the app only starts on a loopback address.
    """
    if ctx.invoked_subcommand is not None:
        return
    cfg: PaperloopConfig = ctx.obj
    if make_hash:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        click.echo(hash_password(password))
        return
    address = address or cfg.review.address
    port = port or cfg.review.port
    policy = auth_policy(cfg)
    store = Store(cfg.paths.database)  # creates / migrates the database before the app opens it
    try:
        accounts = ReviewerAccounts(store, cfg.review, shared_hash=policy.shared_hash)
        required, has_accounts = accounts.password_required, accounts.has_accounts()
    finally:
        store.close()
    if not required and not is_loopback(address):
        click.echo(f"error: refusing to start the review app on {address} without a password. Add reviewer "
                   f"accounts (`paperloop review users add NAME`), or bind to 127.0.0.1.", err=True)
        sys.exit(2)
    if policy.shared_hash and has_accounts:
        click.echo("warning: a shared review password is set: whoever knows it can log in as any reviewer "
                   "account. Remove it once every reviewer has an own password.", err=True)
    elif required and not has_accounts:
        click.echo("warning: no reviewer account exists, so no one can log in; add one with "
                   "`paperloop review users add NAME`.", err=True)
    env = dict(os.environ)
    env.pop(PASSWORD_ENV, None)  # the app gets the hash only
    env.pop(PASSWORD_HASH_ENV, None)
    if policy.shared_hash:
        env[PASSWORD_HASH_ENV] = policy.shared_hash
    config_path = ctx.find_root().params.get("config_path")
    if config_path:
        env["PAPERLOOP_CONFIG"] = str(Path(config_path).resolve())
    else:
        env.pop("PAPERLOOP_CONFIG", None)
    click.echo(f"review app: http://{address}:{port}  (Ctrl-C stops it)", err=True)
    command = streamlit_command(address, port)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(command[0], command, env)


# -- reviewer accounts ------------------------------------------------------------------------------


def _accounts(ctx: click.Context) -> ReviewerAccounts:
    cfg: PaperloopConfig = ctx.obj
    store = Store(cfg.paths.database)
    ctx.call_on_close(store.close)
    return ReviewerAccounts(store, cfg.review)


def _new_password(from_stdin: bool) -> str:
    """The password: one line of standard input, or asked twice without echo."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        raise click.ClickException("the password is empty")
    return password


@review.group()
def users() -> None:
    """Reviewer accounts of the review app (stored hashed in the database)."""


@users.command("add")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
@click.pass_context
def users_add(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Add a reviewer account (or re-enable a removed one)."""
    accounts = _accounts(ctx)
    try:
        accounts.add(name, _new_password(password_stdin))
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"reviewer {name} added")


@users.command("list")
@click.pass_context
def users_list(ctx: click.Context) -> None:
    """List the reviewer accounts (name, created, last login, removed)."""
    for reviewer in _accounts(ctx).list():
        state = "removed" if reviewer.disabled else "active"
        last = (reviewer.last_login or "never")[:19]
        click.echo(f"{reviewer.name}\t{state}\tcreated {reviewer.created_at[:19]}\tlast login {last}")


@users.command("remove")
@click.argument("name")
@click.pass_context
def users_remove(ctx: click.Context, name: str) -> None:
    """Remove a reviewer account: it can no longer log in, its sessions end (the audit log keeps its name)."""
    try:
        _accounts(ctx).remove(name)
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"reviewer {name} removed")


@users.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from one line of standard input.")
@click.pass_context
def users_passwd(ctx: click.Context, name: str, password_stdin: bool) -> None:
    """Set a reviewer's password (their open sessions end)."""
    accounts = _accounts(ctx)
    try:
        accounts.set_password(name, _new_password(password_stdin))
    except AccountError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"password of {name} changed")
