"""``paperloop review``: start the Streamlit review app (or make a password hash for the config)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from service.config import PaperloopConfig
from service.review import PASSWORD_ENV, PASSWORD_HASH_ENV, auth_policy, hash_password, is_loopback
from service.store import Store

APP = Path(__file__).resolve().parents[1] / "review_app" / "app.py"


def streamlit_command(address: str, port: int) -> list[str]:
    """The command line that serves the app."""
    return [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", address, "--server.port", str(port), "--server.headless", "true",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--browser.gatherUsageStats", "false", "--global.developmentMode", "false",
            "--client.toolbarMode", "minimal", "--theme.base", "light", "--theme.primaryColor", "#1e5bd8"]


@click.command()
@click.option("--address", default=None, help="Address to bind (default: review.address, 127.0.0.1).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Port (default: review.port, 8501).")
@click.option("--hash-password", "make_hash", is_flag=True,
              help="Ask for a password and print its hash for review.password_hash, then exit.")
@click.pass_context
def review(ctx: click.Context, address: str | None, port: int | None, make_hash: bool) -> None:
    """Start the review app in the browser (http://ADDRESS:PORT).

    Reviewers log in with a name and the password from review.password_hash (or review.reviewers),
    or from the PAPERLOOP_REVIEW_PASSWORD environment variable. Without a password, the app only
    starts on a loopback address.
    """
    cfg: PaperloopConfig = ctx.obj
    if make_hash:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        click.echo(hash_password(password))
        return
    address = address or cfg.review.address
    port = port or cfg.review.port
    policy = auth_policy(cfg)
    if not policy.password_required and not is_loopback(address):
        click.echo(f"error: refusing to start the review app on {address} without a password. Set "
                   f"review.password_hash (make one with `paperloop review --hash-password`) or "
                   f"{PASSWORD_ENV}, or bind to 127.0.0.1.", err=True)
        sys.exit(2)
    Store(cfg.paths.database).close()  # create / migrate the database before the app opens it
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
