"""The demo app as a real server: ``python app.py`` in a subprocess on a free loopback port.

The app is started on a tiny random-weight model folder written here (CamVid's 11 class names
and colours, widths 32/16/16/16, batch-norm statistics calibrated like the shared tiny model so
that its label maps show several classes), never on the trained weights: the tests stay fast
and independent of the model zoo. ``HF_HUB_OFFLINE=1`` keeps the server off the network.
"""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from html import unescape
from pathlib import Path

import pytest
import torch
from PIL import Image

import refinenet
from refinenet import data
from refinenet.hub import save_pretrained

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CAMVID_CLASSES = list(data.CAMVID_CLASSES)
CAMVID_PALETTE = [
    [128, 128, 128],
    [128, 0, 0],
    [192, 192, 128],
    [128, 64, 128],
    [60, 40, 222],
    [128, 128, 0],
    [192, 128, 128],
    [64, 64, 128],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
]
INPUT_SIZE = 256  # the model's long-side cap: small images, fast network runs
STARTUP_TIMEOUT_S = 180


GRID_CELL = re.compile(r'<img class="(map|photo)" alt="([^"]*)" src="data:image/(png|jpeg);base64,([^"]+)">')


def grid_items(grid) -> list[tuple[Image.Image, str]]:
    """(picture, caption) pairs of a picture-grid output (the HTML, or an update dict holding it)."""
    html = grid["value"] if isinstance(grid, dict) else grid
    return [
        (Image.open(io.BytesIO(base64.b64decode(data))), unescape(alt)) for _, alt, _, data in GRID_CELL.findall(html)
    ]


def _shared_fixtures():
    """tests/conftest.py's helpers, loaded by path (two files named conftest cannot both be
    imported as ``conftest``)."""
    spec = importlib.util.spec_from_file_location("refinenet_tests_shared", REPO / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_app_model_folder(
    folder: Path, cascade: str = "4-cascade", crp_stages: int = 4, input_size: int = INPUT_SIZE, seed: int = 0
) -> Path:
    torch.manual_seed(seed)
    model = refinenet.refinenet_mobilenetv2(
        num_classes=11,
        widths=[32, 16, 16, 16][: {"4-cascade": 4, "2-cascade": 2, "1-cascade": 1}[cascade]],
        cascade=cascade,
        crp_stages=crp_stages,
        class_names=CAMVID_CLASSES,
        palette=CAMVID_PALETTE,
        input_size=input_size,
    )
    model = _shared_fixtures().calibrate_batch_norm(model, seed)
    with torch.no_grad():
        torch.nn.init.normal_(model.classifier.weight, std=0.5)
        model.classifier.bias.zero_()
    return save_pretrained(model, folder)


@pytest.fixture(scope="session")
def app_model_folder(tmp_path_factory) -> Path:
    return make_app_model_folder(tmp_path_factory.mktemp("app-model") / "tiny-camvid")


# The variants of "Compare the variants" in the e2e tests: (folder name, cascade, CRP stages,
# input size, test mIoU in an eval-test.json or None). The 2-cascade runs at 224 px, the others at
# 256: every variant must then see the photo at 224 px.
VARIANTS = [
    ("four-cascade", "4-cascade", 4, INPUT_SIZE, 61.25),
    ("two-cascade", "2-cascade", 4, 224, None),
    ("one-cascade-nocrp", "1-cascade", 0, INPUT_SIZE, None),
]
COMPARE_SIZE = (224, 168)  # 640 x 480 at the smallest cap, 224 px


@pytest.fixture(scope="session")
def variant_folders(tmp_path_factory) -> list[Path]:
    """Three small random-weight CamVid-class models that differ in cascade and CRP stages."""
    root = tmp_path_factory.mktemp("variants")
    folders = []
    for seed, (name, cascade, stages, size, miou) in enumerate(VARIANTS, start=1):
        folder = make_app_model_folder(root / name, cascade, stages, size, seed)
        if miou is not None:  # what scripts/release_model.py writes beside the weights
            (folder / "eval-test.json").write_text(json.dumps({"mIoU": miou, "pixel_accuracy": 90.0}))
        folders.append(folder)
    return folders


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class AppServer:
    url: str
    process: subprocess.Popen
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


def _wait_until_serving(server: AppServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not server.alive():
            raise RuntimeError(f"the app exited with code {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url + "/config", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the app did not answer within {STARTUP_TIMEOUT_S} s:\n{server.log_tail()}")


def start_app(
    model_folder: Path, log: Path, extra_env: dict[str, str] | None = None, extra_args: list[str] | None = None
) -> AppServer:
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
    # Importing app.py in this process pointed Gradio's cache into this process's own folder;
    # each server gets its own (inside its TMPDIR).
    env.pop("GRADIO_TEMP_DIR", None)
    # No "Compare the variants" unless a test asks for it (--compare or this variable): the
    # bundled ablation family would load six more models, each with torchvision's backbone.
    env["REFINENET_APP_COMPARE"] = ""
    env.update(extra_env or {})
    handle = log.open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "app.py"),
            "--model",
            str(model_folder),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
            *(extra_args or []),
        ],
        cwd=REPO,
        env=env,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
    handle.close()
    server = AppServer(f"http://127.0.0.1:{port}", process, log)
    try:
        _wait_until_serving(server)
    except Exception:
        stop_app(server)
        raise
    return server


def stop_app(server: AppServer) -> None:
    if server.alive():
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=15)


@pytest.fixture(scope="session")
def app_server(app_model_folder, tmp_path_factory) -> AppServer:
    """One app server for the whole e2e session (starting one takes a few seconds)."""
    server = start_app(app_model_folder, tmp_path_factory.mktemp("app-log") / "app.log")
    yield server
    stop_app(server)


@pytest.fixture(scope="session")
def compare_server(app_model_folder, variant_folders, tmp_path_factory) -> AppServer:
    """An app server with "Compare the variants" on (--compare with the three variant folders)."""
    server = start_app(
        app_model_folder,
        tmp_path_factory.mktemp("compare-log") / "app.log",
        extra_args=["--compare", ",".join(str(f) for f in variant_folders)],
    )
    yield server
    stop_app(server)


@pytest.fixture
def client(app_server):
    """A fresh gradio_client session (its own gr.State) on the shared server."""
    from gradio_client import Client

    assert app_server.alive(), app_server.log_tail()
    return Client(app_server.url, verbose=False, download_files=str(app_server.log.parent / "downloads"))


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def app_module():
    """``app.py`` imported in this process (it is a script beside the package, not in it)."""
    sys.path.insert(0, str(REPO))
    try:
        import app
    finally:
        sys.path.remove(str(REPO))
    return app
