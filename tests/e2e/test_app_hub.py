"""The model box: a Hub repo id typed into the running app is downloaded (real huggingface_hub
code over HTTP, from a local Hub on 127.0.0.1), loaded strictly and used for the next image."""

from __future__ import annotations

import pytest
from hub_server import LocalHub
from PIL import Image

from refinenet.demo import SegmentOutputs

from .conftest import REPO, start_app, stop_app

pytestmark = pytest.mark.e2e


def test_a_hub_repo_id_is_downloaded_and_used(app_model_folder, tmp_path):
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    with LocalHub() as hub:
        hub.add_repo("lab/tiny-camvid", app_model_folder)
        env = {
            "HF_HUB_OFFLINE": "0",
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp_path / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        server = start_app(app_model_folder, tmp_path / "app.log", extra_env=env)
        try:
            client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
            dropdown, status = client.predict("lab/tiny-camvid", api_name="/load_model")
            assert "Model **lab/tiny-camvid** ready" in status
            assert "lab/tiny-camvid" in dropdown["value"]
            assert any("model.safetensors" in path for _, path in hub.requests)  # really downloaded

            example = REPO / "assets" / "synthetic-street-day.jpg"
            out = SegmentOutputs.from_client(
                client.predict(handle_file(str(example)), "lab/tiny-camvid", api_name="/segment")
            )
            assert "model `lab/tiny-camvid`" in out["timing"]
            assert Image.open(out["label_png"]).size == Image.open(example).size

            with pytest.raises(AppError) as missing:
                client.predict("lab/not-there", api_name="/load_model")
            assert "could not be loaded" in str(missing.value) and "no repository lab/not-there" in str(missing.value)
            assert server.alive()
        finally:
            stop_app(server)
