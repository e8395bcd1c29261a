"""Starting the app: a model that cannot be loaded stops it at once with a message that says
what was tried and how to give a model, instead of a server that fails on every request."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.e2e


def run_app(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf-home"),
        REFINENET_WEIGHTS_DIR=str(empty),
        GRADIO_ANALYTICS_ENABLED="False",
    )
    env.pop("REFINENET_APP_MODEL", None)
    return subprocess.run(
        [sys.executable, str(REPO / "app.py"), "--port", "0", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_no_loadable_model_stops_the_app_with_a_clear_message(tmp_path):
    done = run_app([], tmp_path)
    assert done.returncode != 0
    assert "No model could be loaded, so the demo cannot start" in done.stderr
    assert "camvid-refinenet-mobilenetv2" in done.stderr  # every zoo model tried is named
    assert "--model FOLDER_OR_REPO_ID" in done.stderr and "REFINENET_APP_MODEL" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_model_folder_is_named(tmp_path):
    done = run_app(["--model", str(tmp_path / "no-such-model")], tmp_path)
    assert done.returncode != 0
    assert "could not be loaded" in done.stderr and "no-such-model" in done.stderr
    assert "Traceback" not in done.stderr
