"""Hosting mode (``python app.py --public``, the default on a Space) against the running app.

What a stranger types never reaches the server's disk, every refusal reads the same, crafted
model configs are refused quickly with their field named (and the server goes on serving), one
visitor's models stay theirs, uploads are bounded, and a clean stop leaves no files behind.
Crafted models are served by a local Hub (real huggingface_hub code over HTTP on 127.0.0.1).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
from hub_server import LocalHub

from refinenet.demo import SegmentOutputs
from refinenet.serving import REFUSAL

from .conftest import REPO, start_app, stop_app

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "assets" / "synthetic-street-day.jpg"


def crafted(folder: Path, source: Path, **config_changes) -> Path:
    """A copy of the model folder ``source`` whose config.json has ``config_changes``."""
    shutil.copytree(source, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(config_changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def huge_header(folder: Path, source: Path) -> Path:
    """A valid config beside a 1 KB safetensors file whose header declares 24.8 GB of tensors."""
    shutil.copytree(source, folder)
    header = json.dumps({"x": {"dtype": "F32", "shape": [6_200_000_000], "data_offsets": [0, 24_800_000_000]}})
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode() + b"\0" * 1000)
    return folder


@pytest.fixture(scope="module")
def public_app(app_model_folder, tmp_path_factory):
    """The app in hosting mode, allowed to load four repos of a local Hub, three of them crafted."""
    root = tmp_path_factory.mktemp("hosting")
    repos = {
        "lab/tiny-camvid": app_model_folder,
        "lab/crp-stages": crafted(root / "crp", app_model_folder, crp_stages=1_000_000),
        "lab/adapt-rcus": crafted(root / "rcus", app_model_folder, adapt_rcus=100_000),
        "lab/input-size": crafted(root / "input", app_model_folder, input_size=0),
        "lab/many-keys": crafted(root / "keys", app_model_folder, **{f"k{i:06d}": "x" * 50 for i in range(3000)}),
        "lab/huge-header": huge_header(root / "header", app_model_folder),
    }
    with LocalHub() as hub:
        for repo, folder in repos.items():
            hub.add_repo(repo, folder)
        env = {
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(root / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "TMPDIR": str(root / "tmp"),
        }
        (root / "tmp").mkdir()
        args = ["--public", *(arg for repo in repos for arg in ("--allow-repo", repo))]
        server = start_app(app_model_folder, root / "app.log", extra_env=env, extra_args=args)
        try:
            yield server, root, hub
        finally:
            stop_app(server)


def new_client(server, tmp_path):
    from gradio_client import Client

    return Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))


def error_of(client, *args, api_name: str) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    return str(caught.value)


def segment_works(client, model: str) -> None:
    from gradio_client import handle_file

    out = SegmentOutputs.from_client(client.predict(handle_file(str(EXAMPLE)), model, api_name="/segment"))
    assert Path(out["label_png"]).is_file()


def test_names_outside_the_list_all_get_the_same_message(public_app, app_model_folder, tmp_path):
    server, *_ = public_app
    client = new_client(server, tmp_path)
    names = [
        "/etc",
        "/etc/passwd",
        "/proc/self/environ",
        "../../etc/passwd",
        "refinenet/weights",
        str(app_model_folder.parent),  # a real folder on the server
        "x" * 300,
        "lab/tiny-camvid\x00",
        "lab/tiny-camvid\n/etc",
        "lab/not-allowed",  # a well-formed repo id that is not on the list
    ]
    messages = {name: error_of(client, name, api_name="/load_model") for name in names}
    assert set(messages.values()) == {REFUSAL}, messages
    # The same through the segment endpoint's model field.
    from gradio_client import handle_file

    for name in ("/etc/passwd", "../../etc/passwd", "x" * 300):
        assert error_of(client, handle_file(str(EXAMPLE)), name, api_name="/segment") == REFUSAL
    assert server.alive()


@pytest.mark.parametrize(
    ("repo", "field"),
    [
        ("lab/crp-stages", "crp_stages"),
        ("lab/adapt-rcus", "adapt_rcus"),
        ("lab/input-size", "input_size"),
        ("lab/many-keys", "unknown fields"),
        ("lab/huge-header", "declares 24,800 MB"),
    ],
)
def test_a_crafted_model_is_refused_before_it_costs_anything(public_app, tmp_path, repo, field):
    """What keeps a refusal fast is where it happens: a config is refused before the weights are
    fetched (nothing is built but meta tensors), a lying safetensors header before the file is
    mapped. The server then answers the next normal request."""
    server, _, hub = public_app
    client = new_client(server, tmp_path)
    message = error_of(client, repo, api_name="/load_model")
    assert field in message, message
    assert len(message) < 400, "refusals stay short"
    # The Hub hands large files out from its CDN (/cdn/<repo>/<sha256>): a GET there is a download.
    weights_fetched = any(method == "GET" and path.startswith(f"/cdn/{repo}/") for method, path in hub.requests)
    assert weights_fetched == (repo == "lab/huge-header"), hub.requests
    segment_works(client, "lab/tiny-camvid")  # the next normal request is answered
    assert server.alive()


def test_one_visitor_never_sees_the_models_another_loaded(public_app, app_model_folder, tmp_path):
    server, *_ = public_app
    alice, bob = new_client(server, tmp_path / "a"), new_client(server, tmp_path / "b")
    dropdown, status = alice.predict("lab/tiny-camvid", api_name="/load_model")
    assert "ready" in status
    assert "lab/tiny-camvid" in [c[0] if isinstance(c, list | tuple) else c for c in dropdown["choices"]]
    dropdown, _ = bob.predict(str(app_model_folder), api_name="/load_model")  # the default model
    assert "lab/tiny-camvid" not in json.dumps(dropdown["choices"])
    page = json.dumps(bob.config)  # the page every new visitor gets lists no visitor's model either
    assert "lab/tiny-camvid" not in page


def test_an_oversized_upload_is_refused(public_app, tmp_path):
    server, *_ = public_app
    client = new_client(server, tmp_path)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (26 * 1024**2))  # over the 25 MB public limit
    import httpx
    from gradio_client import handle_file

    # Gradio's client reads the server's limit and refuses before sending...
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        client.predict(handle_file(str(big)), "lab/tiny-camvid", api_name="/segment")
    # ...and the server refuses a client that sends it anyway, without storing it.
    with big.open("rb") as stream:
        answer = httpx.post(server.url + "/gradio_api/upload", files={"files": ("big.png", stream)}, timeout=60)
    assert answer.status_code == 413, (answer.status_code, answer.text[:200])
    segment_works(client, "lab/tiny-camvid")


def test_the_temp_folder_is_gone_after_a_clean_shutdown(app_model_folder, tmp_path):
    """The upload, Gradio's copies of the examples and the app's pictures all live in the
    process's one folder, and a stop request removes it."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = start_app(app_model_folder, tmp_path / "app.log", extra_env={"TMPDIR": str(tmp)}, extra_args=["--public"])
    try:
        segment_works(new_client(server, tmp_path), str(app_model_folder))
        run_dirs = list(tmp.glob("refinenet-app-*"))
        assert len(run_dirs) == 1, run_dirs
        assert list(run_dirs[0].glob("gradio/**/synthetic-street-day.jpg")), "the upload is stored in it"
        assert list(run_dirs[0].glob("files-*/labels-*.png")), "and so are the app's label maps"
    finally:
        stop_app(server)  # SIGTERM, as a Space or a service manager stops it
    assert server.process.returncode == 0, server.log_tail()
    assert not run_dirs[0].exists(), server.log_tail()
