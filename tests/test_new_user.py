"""What a new user does first: the README's serve command on a fresh clone, a page dropped in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, wait_for


def _fresh_clone(target: Path) -> Path:
    """The project's files as a clone has them (tracked, plus new files not ignored), nothing built."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_ROOT, check=True, capture_output=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = PROJECT_ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_the_readme_serve_command_works_on_a_fresh_clone(tmp_path: Path, funsd_page_path: Path) -> None:
    clone = _fresh_clone(tmp_path / "paperloop")
    (tmp_path / "shared").symlink_to(PROJECT_ROOT.parent / "shared")  # ../shared resolves, as in CI
    # The virtual environment that `./run test` just set up stands in for the one `./run serve` would
    # build (same pinned packages, same stamp); the clone's own code runs through PYTHONPATH. With a
    # stale stamp `./run` would reinstall into the project's .venv from the clone: refuse instead.
    wanted = hashlib.sha256((clone / "pyproject.toml").read_bytes() + (clone / "constraints.txt").read_bytes())
    stamp = PROJECT_ROOT / ".venv" / ".setup-stamp"
    if not stamp.is_file() or stamp.read_text().strip() != wanted.hexdigest():
        pytest.fail("the project's .venv is not set up for this pyproject.toml / constraints.txt: run ./run setup")
    (clone / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    assert not (clone / "data").exists() and not (clone / "models" / "det").exists()
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONPATH": str(clone)}
    env.pop("PAPERLOOP_CONFIG", None)
    with open(log, "wb") as out:
        serve = subprocess.Popen(["./run", "serve"], cwd=clone, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (clone / "data" / "paperloop.db").exists() or serve.poll() is not None, timeout=300,
                 what="the service started")
        assert serve.poll() is None, f"serve exited at once:\n{log.read_text()[-3000:]}"
        shutil.copy(funsd_page_path, clone / "inbox" / "first-form.png")
        wait_for(lambda: any((clone / "output").glob("*.json")) or serve.poll() is not None, timeout=300,
                 what="the JSON of the dropped page")
        assert serve.poll() is None, f"serve died:\n{log.read_text()[-3000:]}"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    [result] = list((clone / "output").glob("*.json"))
    document = json.loads(result.read_text())
    assert document["source_name"] == "first-form.png" and document["pages"][0]["segments"]
    assert (clone / "archive").is_dir() and not any((clone / "inbox").glob("*.png"))
