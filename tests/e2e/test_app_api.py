"""Every endpoint of the running app through gradio_client, good inputs and bad.

Bad inputs (no image, corrupt files, 1x1, 12000x9000, grey, RGBA, 16-bit) must each give a
readable message or a sensible result, and the server must keep serving afterwards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from refinenet.demo import SegmentOutputs

from .conftest import CAMVID_CLASSES, CAMVID_PALETTE, INPUT_SIZE, REPO, grid_items

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "assets" / "synthetic-street-day.jpg"


def segment(client, image_path) -> dict:
    from gradio_client import handle_file

    values = client.predict(handle_file(str(image_path)), api_name="/segment")
    assert len(values) == len(SegmentOutputs.client_names())
    return SegmentOutputs.from_client(values)


items = grid_items


def app_error(client, *args, api_name: str) -> str:
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as caught:
        client.predict(*args, api_name=api_name)
    return str(caught.value)


def check_label_png(path, size: tuple[int, int]) -> np.ndarray:
    png = Image.open(path)
    assert png.format == "PNG" and png.mode == "P", "the label map must be a lossless palette PNG"
    assert png.size == size
    labels = np.asarray(png)
    assert labels.max() < len(CAMVID_CLASSES)
    assert png.getpalette()[:6] == [*CAMVID_PALETTE[0], *CAMVID_PALETTE[1]]
    return labels


# ----------------------------------------------------------------------------- the good path


def test_api_lists_the_main_events(client):
    endpoints = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/segment", "/overlay", "/features", "/crp", "/ablate", "/load_model"} <= endpoints


def test_segment_renders_every_panel(client):
    out = segment(client, EXAMPLE)
    photo = Image.open(EXAMPLE)
    overlay = Image.open(out["overlay"])
    assert overlay.size == photo.size
    labels = check_label_png(out["label_png"], photo.size)
    assert len(np.unique(labels)) > 1
    assert Image.open(out["confidence"]).size == photo.size
    for name in CAMVID_CLASSES:
        assert name in out["legend"]
    stages = items(out["stages"])
    assert [caption.split(" · ")[:2] for _, caption in stages] == [
        ["RefineNet-4", "stride 32"],
        ["RefineNet-3", "stride 16"],
        ["RefineNet-2", "stride 8"],
        ["RefineNet-1", "stride 4"],
    ]
    # 640 x 480 capped to 256 x 192: RefineNet-1 is 16 x 48 x 64 (stride 4), RefineNet-4 32 x 6 x 8.
    assert stages[3][1].endswith("16×48×64") and stages[0][1].endswith("32×6×8")
    for picture, _ in stages:  # one pixel per cell, lossless
        assert picture.format == "PNG"
    assert stages[3][0].size == (64, 48) and stages[0][0].size == (8, 6)
    crp = items(out["crp"])
    assert len(crp) == 10 and crp[0][1].startswith("input") and crp[5][1].startswith("windows")
    assert crp[5][0].format == "JPEG" and crp[5][0].size == (INPUT_SIZE, 192)  # the photo with the windows
    assert all(picture.format == "PNG" for i, (picture, _) in enumerate(crp) if i != 5)
    assert "RefineNet-3" in out["crp_context"]
    assert out["ablated"] is None and out["path"] == "none"
    assert "<svg" in out["architecture"] and "out 16×48×64" in out["architecture"]
    assert "network" in out["timing"] and f"network input {INPUT_SIZE}×192 px" in out["timing"]


def test_view_endpoints_redraw_from_the_session_cache(client):
    labels = check_label_png(segment(client, EXAMPLE)["label_png"], Image.open(EXAMPLE).size)
    photo = np.asarray(Image.open(EXAMPLE).convert("RGB"), dtype=np.int16)
    # The overlay is a JPEG (quality 90, no chroma subsampling): equal up to its small error.
    plain = np.asarray(Image.open(client.predict(0.0, api_name="/overlay")).convert("RGB"), dtype=np.int16)
    assert np.abs(plain - photo).mean() < 3  # opacity 0: the photo itself
    solid = np.asarray(Image.open(client.predict(1.0, api_name="/overlay")).convert("RGB"), dtype=np.int16)
    painted = np.asarray(CAMVID_PALETTE, dtype=np.int16)[labels]  # opacity 1: the class colours
    assert np.abs(solid - painted).mean() < 3
    assert np.mean(np.abs(solid - painted).max(axis=-1) > 40) < 0.02  # off only along class edges
    for reduction in ("pca", "l2", "mean"):
        for scaling in ("per-map", "shared"):
            stages = items(client.predict(reduction, scaling, "magma", 4, api_name="/features"))
            assert len(stages) == 4
    topk = items(client.predict("topk", "shared", "viridis", 3, api_name="/features"))
    assert len(topk) == 12 and topk[2][1].startswith("RefineNet-4 · channel ") and topk[2][1].endswith("(#3)")
    crp, context = client.predict("RefineNet-4", "l2", "shared", "gray", api_name="/crp")
    assert len(items(crp)) == 10 and "RefineNet-4" in context and "5×5 cells = 160×160 px" in context


def test_ablation_shows_what_a_missing_path_changes(client):
    segment(client, EXAMPLE)
    ablated, changes, summary, architecture = client.predict("32", 0.5, api_name="/ablate")
    assert Image.open(ablated).size == Image.open(changes).size == (INPUT_SIZE, 192)
    assert "Without the **1/32** path" in summary and "of the pixels change class" in summary
    assert 'stroke-dasharray="6 4"' in architecture
    none = client.predict("none", 0.5, api_name="/ablate")
    assert none[0] is None and "full network" in none[2] and 'stroke-dasharray="6 4"' not in none[3]


def test_sessions_do_not_share_their_cache(app_server, client, tmp_path):
    from gradio_client import Client

    other = Client(app_server.url, verbose=False, download_files=str(tmp_path))
    small = tmp_path / "small.png"
    Image.new("RGB", (64, 32), (200, 30, 30)).save(small)
    segment(client, EXAMPLE)
    segment(other, small)
    mine = items(client.predict("l2", "per-map", "viridis", 1, api_name="/features"))
    theirs = items(other.predict("l2", "per-map", "viridis", 1, api_name="/features"))
    assert mine[3][1].endswith("16×48×64") and theirs[3][1].endswith("16×8×16")


def test_load_model_endpoint(client, app_model_folder):
    dropdown, status = client.predict(str(app_model_folder), api_name="/load_model")
    assert "ready" in status and "11 classes" in status
    assert dropdown["value"] == str(app_model_folder)
    assert "could not be loaded" in app_error(client, "/no/such/folder", api_name="/load_model")
    assert "Type a Hub repo id" in app_error(client, "", api_name="/load_model")


# ----------------------------------------------------------------------------- bad inputs


def test_views_before_any_image_ask_for_one(client):
    assert "Segment an image first" in app_error(client, "pca", "shared", "viridis", 4, api_name="/features")
    assert "Segment an image first" in app_error(client, 0.5, api_name="/overlay")
    assert "Segment an image first" in app_error(client, "16", 0.5, api_name="/ablate")


def test_no_image_gives_a_readable_message(client):
    assert "No image yet" in app_error(client, None, api_name="/segment")


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"this is a text file, not a picture", "not an image file"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot be used as an image"),
        (b"", "empty"),
    ],
    ids=["text", "broken-png-header", "empty-file"],
)
def test_corrupt_files_give_readable_messages(client, tmp_path, content, expected):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    message = app_error(client, _file(path), api_name="/segment")
    assert expected in message and "Traceback" not in message


def test_truncated_jpeg_gives_a_readable_message(client, tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(EXAMPLE.read_bytes()[:3000])
    message = app_error(client, _file(path), api_name="/segment")
    assert "cannot be used as an image" in message and ("truncated" in message or "corrupt" in message)


def _file(path: Path):
    from gradio_client import handle_file

    return handle_file(str(path))


@pytest.mark.parametrize(
    "mode, size",
    [("RGB", (1, 1)), ("L", (96, 64)), ("RGBA", (80, 60)), ("I;16", (70, 50))],
    ids=["1x1", "grayscale", "rgba", "16-bit"],
)
def test_odd_images_are_segmented(client, tmp_path, mode, size):
    path = tmp_path / f"odd-{mode.replace(';', '')}.png"
    if mode == "I;16":
        ramp = np.linspace(0, 65535, size[0] * size[1]).reshape(size[1], size[0]).astype(np.uint16)
        Image.fromarray(ramp).save(path)
        assert Image.open(path).mode.startswith("I")  # truly a 16-bit PNG
    elif mode == "RGBA":
        rgba = np.zeros((size[1], size[0], 4), np.uint8)
        rgba[..., 0] = 255
        rgba[:, : size[0] // 2, 3] = 255  # left half opaque red, right half transparent
        Image.fromarray(rgba, "RGBA").save(path)
    else:
        Image.new(mode, size, 120).save(path)
    out = segment(client, path)
    check_label_png(out["label_png"], size)
    assert Image.open(out["overlay"]).size == size
    if mode == "RGBA":  # transparent pixels are composited on white, as a browser shows them
        plain = np.asarray(Image.open(client.predict(0.0, api_name="/overlay")).convert("RGB"), dtype=np.int16)
        # (a JPEG: colours within its small error, away from the red/white edge)
        assert np.abs(plain[0, -1] - (255, 255, 255)).max() <= 4 and np.abs(plain[0, 0] - (255, 0, 0)).max() <= 4


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # reading back our own label map
def test_a_108_megapixel_photo_is_segmented_at_full_size(client, tmp_path):
    """12000 x 9000, the size of a 108 MP phone photo: the network sees it capped to the model's
    input size, the label map comes back at full size, the pictures at display size."""
    path = tmp_path / "huge.png"
    image = Image.new("RGB", (12000, 9000), (110, 110, 115))
    image.paste((90, 150, 230), (0, 0, 12000, 3500))  # sky-ish top
    image.save(path, compress_level=1)
    del image
    out = segment(client, path)
    labels = check_label_png(out["label_png"], (12000, 9000))
    assert labels.shape == (9000, 12000)
    assert max(Image.open(out["overlay"]).size) == 960
    assert "Image 12000×9000 px" in out["timing"]


def test_the_server_keeps_serving_after_bad_inputs(app_server, client, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage" * 100)
    for _ in range(3):
        app_error(client, _file(bad), api_name="/segment")
    assert app_server.alive()
    out = segment(client, EXAMPLE)
    check_label_png(out["label_png"], Image.open(EXAMPLE).size)
