"""The app's "Compare the variants" section: the ``/compare`` endpoint of a server started with
``--compare`` (three random-weight CamVid-class variants), and in-process: the section is left
out when there is nothing to compare, incomparable variants stop the app at startup, the
operator's folders load in hosting mode, and the networks run on the compute thread."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from refinenet import zoo
from refinenet.serving import HostingPolicy

from .conftest import CAMVID_PALETTE, COMPARE_SIZE, REPO, VARIANTS, grid_items, make_app_model_folder

pytestmark = pytest.mark.e2e

EXAMPLE = REPO / "assets" / "synthetic-street-day.jpg"


@pytest.fixture
def compare_client(compare_server):
    from gradio_client import Client

    assert compare_server.alive(), compare_server.log_tail()
    return Client(compare_server.url, verbose=False, download_files=str(compare_server.log.parent / "downloads"))


def labels_from_colours(picture: Image.Image) -> np.ndarray:
    """A label map back from its class colours (a lossless PNG; CamVid's colours are distinct)."""
    rgb = np.asarray(picture.convert("RGB"), dtype=np.int32)
    palette = np.asarray(CAMVID_PALETTE, dtype=np.int32)
    match = (rgb[:, :, None, :] == palette[None, None]).all(axis=-1)  # H x W x classes
    assert match.any(axis=-1).all(), "every pixel is painted in a class colour"
    return match.argmax(axis=-1)


def call_compare(client, path):
    from gradio_client import handle_file

    return client.predict(handle_file(str(path)), api_name="/compare")


# ----------------------------------------------------------------------------- the endpoint


def test_compare_returns_every_variant_and_where_they_disagree(compare_client):
    variants_html, disagreement_path, key = call_compare(compare_client, EXAMPLE)
    pictures = grid_items(variants_html)
    assert len(pictures) == len(VARIANTS)
    for (picture, caption), (name, cascade, stages, _, miou) in zip(pictures, VARIANTS, strict=True):
        title, description, measured = caption.split(" · ")[0], caption.split(" · ")[1], caption.split(" · ")[-1]
        assert title == name and description.startswith(f"{cascade}: ")
        crp = "no CRP (0 stages)" if stages == 0 else f"{stages} CRP stage{'s' if stages != 1 else ''}"
        assert caption.split(" · ")[-2] == crp
        assert measured == (f"test mIoU {miou:.2f}" if miou is not None else "test mIoU not measured")
        assert picture.format == "PNG" and picture.size == COMPARE_SIZE  # one size for all: the smallest cap
    labels = [labels_from_colours(picture) for picture, _ in pictures]
    assert len({m.tobytes() for m in labels}) == len(labels), "different variants, different predictions"

    disagreement = Image.open(disagreement_path)
    assert disagreement.format == "PNG" and disagreement.mode == "P" and disagreement.size == COMPARE_SIZE
    counts = np.asarray(disagreement)
    # Recomputed from the returned label maps: the variants outside the most common class.
    stack = np.stack(labels)
    majority = (stack[None] == np.arange(len(CAMVID_PALETTE))[:, None, None, None]).sum(axis=1).max(axis=0)
    np.testing.assert_array_equal(counts, len(VARIANTS) - majority)
    assert f"All 3 variants agree on <b>{100 * np.mean(counts == 0):.1f}%</b> of the pixels" in key
    assert "each saw the photo at 224×168 px" in key
    for level in (1, 2):
        share = 100 * np.mean(counts == level)
        assert f"{level} of 3 differ" in key and f"{share:.1f}%" in key


def test_compare_bad_inputs_get_the_segment_endpoint_messages(compare_client, compare_server, tmp_path):
    from gradio_client.exceptions import AppError

    def message(*args) -> str:
        with pytest.raises(AppError) as caught:
            compare_client.predict(*args, api_name="/compare")
        return str(caught.value)

    assert "No image yet" in message(None)
    text = tmp_path / "upload.png"
    text.write_bytes(b"this is a text file, not a picture")
    from gradio_client import handle_file

    said = message(handle_file(str(text)))
    assert "not an image file" in said and "Traceback" not in said
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    assert "cannot be used as an image" in message(handle_file(str(broken)))
    assert compare_server.alive()
    small = tmp_path / "grey.png"
    Image.new("L", (40, 30), 120).save(small)  # a grey photo, within every cap: compared at its size
    variants_html, disagreement_path, _ = call_compare(compare_client, small)
    assert [picture.size for picture, _ in grid_items(variants_html)] == [(40, 30)] * 3
    assert Image.open(disagreement_path).size == (40, 30)


def test_the_compare_server_lists_its_endpoint(compare_client):
    endpoints = compare_client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert "/compare" in endpoints and "/segment" in endpoints


# ----------------------------------------------------------------------------- in-process


def zoo_without_the_family(monkeypatch) -> None:
    """The zoo as it would be with no ablation variant released."""
    kept = {k: e for k, e in zoo.MODELS.items() if e.family != zoo.ABLATION_FAMILY}
    monkeypatch.setattr(zoo, "MODELS", kept)


def test_without_variants_the_section_is_absent(app_module, app_model_folder, app_server, monkeypatch):
    zoo_without_the_family(monkeypatch)
    demo_app = app_module.DemoApp(str(app_model_folder), "cpu")
    assert demo_app.variants == []
    blocks = app_module.build_demo(demo_app)
    assert all(fn.api_name != "compare" for fn in blocks.fns.values())
    assert "Compare the variants" not in str(blocks.get_config_file())
    assert app_module.compare_list(None) is None and app_module.compare_list("") == []
    assert app_module.compare_list(" a, b ,") == ["a", "b"]
    # The running server (started without --compare) has no such endpoint either.
    from gradio_client import Client

    endpoints = Client(app_server.url, verbose=False).view_api(print_info=False, return_format="dict")
    assert "/compare" not in endpoints["named_endpoints"]


def test_variants_with_other_classes_stop_the_app(app_module, app_model_folder, variant_folders, tmp_path):
    import refinenet

    other = refinenet.save_pretrained(refinenet.refinenet_mobilenetv2(num_classes=5, widths=[8] * 4), tmp_path / "o")
    with pytest.raises(SystemExit) as stopped:
        app_module.DemoApp(str(app_model_folder), "cpu", compare_models=[str(variant_folders[0]), str(other)])
    said = str(stopped.value)
    assert said.startswith("--compare ") and "o predicts 5 classes" in said and "four-cascade 11" in said
    with pytest.raises(SystemExit, match="at least two models"):
        app_module.DemoApp(str(app_model_folder), "cpu", compare_models=[str(variant_folders[0])])
    with pytest.raises(SystemExit, match="four-cascade' named twice"):
        app_module.DemoApp(str(app_model_folder), "cpu", compare_models=[str(variant_folders[0])] * 2)
    with pytest.raises(SystemExit, match="could not be loaded"):
        app_module.DemoApp(str(app_model_folder), "cpu", compare_models=[str(variant_folders[0]), str(tmp_path / "x")])


def test_in_hosting_mode_the_operators_folders_load_and_run_on_the_compute_thread(
    app_module, app_model_folder, variant_folders
):
    names = [str(f) for f in variant_folders]
    demo_app = app_module.DemoApp(str(app_model_folder), "cpu", HostingPolicy.for_public(), compare_models=names)
    app_module.build_demo(demo_app)
    assert [v.name for v in demo_app.variants] == names
    assert not demo_app.policy.admits(names[0])  # a visitor could not ask for these folders
    ran_on = []
    for name in names:  # pinned: still loaded after startup, whatever visitors load
        segmenter = demo_app.models.get(name)
        forward = segmenter.model.forward

        def recording(*args, _forward=forward, **kwargs):
            ran_on.append(threading.get_ident())
            return _forward(*args, **kwargs)

        segmenter.model.forward = recording
    variants_html, disagreement_path, key = demo_app.compare_variants(str(EXAMPLE))
    assert len(grid_items(variants_html)) == 3 and Image.open(disagreement_path).size == COMPARE_SIZE
    compute_thread = demo_app.compute.run(threading.get_ident)
    assert ran_on == [compute_thread] * 3 and compute_thread != threading.get_ident()


def test_the_default_family_is_compared_when_the_zoo_has_one(app_module, app_model_folder, monkeypatch, tmp_path):
    """With two family members in the zoo and no --compare, the section shows them; a family
    that cannot be loaded leaves the section out instead of stopping the demo."""
    zoo_without_the_family(monkeypatch)
    first = make_app_model_folder(tmp_path / "a", "2-cascade", seed=3)
    second = make_app_model_folder(tmp_path / "b", "1-cascade", seed=4)
    entries = {
        str(folder): zoo.ZooEntry(
            str(folder), "t", "refinenet", "mobilenetv2", "CamVid", ("x",), {"test_mean_iou": miou}, family=family
        )
        for folder, miou, family in ((first, 55.5, zoo.ABLATION_FAMILY), (second, 44.25, zoo.ABLATION_FAMILY))
    }
    monkeypatch.setattr(zoo, "MODELS", {**zoo.MODELS, **entries})
    demo_app = app_module.DemoApp(str(app_model_folder), "cpu")
    assert [v.test_miou for v in demo_app.variants] == [55.5, 44.25]  # the zoo's figures
    blocks = app_module.build_demo(demo_app)
    assert any(fn.api_name == "compare" for fn in blocks.fns.values())
    broken = {k: v for k, v in entries.items()}
    broken["no-such-variant"] = zoo.ZooEntry(
        "no-such-variant", "t", "refinenet", "mobilenetv2", "CamVid", ("x",), family=zoo.ABLATION_FAMILY
    )
    monkeypatch.setattr(zoo, "MODELS", {**zoo.MODELS, **broken})
    assert app_module.DemoApp(str(app_model_folder), "cpu").variants == []


def test_the_bundled_family_loads_and_every_variant_answers(app_module, app_model_folder, torchvision_cache):
    """The released ablation decoders themselves, on a random stand-in for torchvision's frozen
    backbone (the ``torchvision_cache`` fixture: real loading code, no download): each loads
    against its zoo sha256, is captioned with its measured test mIoU, and predicts the photo."""
    family = zoo.family_members(zoo.ABLATION_FAMILY)
    assert len(family) >= 4, "the 4-, 2- and 1-cascade and the 4-cascade without CRP are bundled"
    demo_app = app_module.DemoApp(str(app_model_folder), "cpu")  # no --compare: the zoo's family
    assert [v.name for v in demo_app.variants] == [entry.model_id for entry in family]
    assert [v.test_miou for v in demo_app.variants] == [entry.metrics["test_mean_iou"] for entry in family]
    app_module.build_demo(demo_app)  # registers the app for the compute thread's network functions
    variants_html, disagreement_path, key = demo_app.compare_variants(str(EXAMPLE))
    pictures = grid_items(variants_html)
    assert len(pictures) == len(family)
    for (picture, caption), entry in zip(pictures, family, strict=True):
        parts = caption.split(" · ")
        assert parts[0] == entry.model_id and parts[-1] == f"test mIoU {entry.metrics['test_mean_iou']:.2f}"
        # The caption is read from the loaded config: it must say what the id says.
        what = entry.model_id.removeprefix("camvid-ablation-").removesuffix("-seed1")
        assert parts[1].startswith("4-cascade: " if what == "nocrp" else what.replace("cascade", "-cascade: "))
        assert ("no CRP (0 stages)" in parts) == (what == "nocrp")
        assert picture.size == pictures[0][0].size
    assert Image.open(disagreement_path).size == pictures[0][0].size
    assert f"All {len(family)} variants agree on" in key
