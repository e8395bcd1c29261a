"""Model folders whose backbone is torchvision's published weights, kept frozen: the folder
stores the decoder alone, loading fetches the backbone through torchvision's own weights API.

torch's cache is a temporary folder holding a random MobileNetV2 under torchvision's file name
(the ``torchvision_cache`` fixture), so the real loading code runs without a download; the
``no_network`` fixture makes any download attempt fail at once on a closed local port.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hub_server import LocalHub
from safetensors.torch import load_file, save_file

import refinenet
from refinenet import hub
from refinenet.config import ConfigError, RefineNetConfig
from refinenet.folder import (
    SEED_TORCH_CACHE,
    StrictLoadError,
    TooLargeError,
    WeightsError,
    load_folder,
    save_pretrained,
    weight_bytes,
)
from refinenet.models import RefineNet, build_model

pytestmark = pytest.mark.usefixtures("single_thread", "no_network")

SMALL = dict(backbone="mobilenetv2", num_classes=3, widths=[16, 16, 16, 16], dropout=0.0)


def frozen_model(seed: int = 0) -> RefineNet:
    """A small RefineNet on the cached "IMAGENET1K_V1" weights, its decoder random."""
    torch.manual_seed(seed)
    config = RefineNetConfig(**SMALL, frozen_backbone="IMAGENET1K_V1")
    model = build_model(config, "IMAGENET1K_V1").eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.classifier.weight, std=0.5)
    return model


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.randn(1, 3, 64, 80, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x)


def backbone_of(published: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The part of a torchvision MobileNetV2 state dict the backbone keeps (features 0..17)."""
    keep = tuple(f"features.{i}." for i in range(18))
    return {k: v for k, v in published.items() if k.startswith(keep)}


@pytest.fixture
def frozen_folder(tmp_path, torchvision_cache) -> tuple[RefineNet, Path]:
    model = frozen_model()
    return model, save_pretrained(model, tmp_path / "frozen")


def test_the_folder_stores_the_decoder_alone_and_loads_torchvisions_backbone(tmp_path, torchvision_cache):
    model = frozen_model()
    folder = save_pretrained(model, tmp_path / "frozen")
    stored = load_file(str(folder / "model.safetensors"))
    decoder = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert stored.keys() == decoder.keys() and not any(k.startswith("backbone.") for k in stored)
    assert json.loads((folder / "config.json").read_text())["frozen_backbone"] == "IMAGENET1K_V1"
    whole = RefineNetConfig(**SMALL)  # the same model saved the usual way
    save_pretrained(model.state_dict(), tmp_path / "whole", whole)
    assert (folder / "model.safetensors").stat().st_size < (tmp_path / "whole" / "model.safetensors").stat().st_size

    loaded = load_folder(folder)
    assert not loaded.training and loaded.config == model.config
    assert backbone_of(torchvision_cache).keys() == loaded.backbone.state_dict().keys()
    for key, value in backbone_of(torchvision_cache).items():
        assert torch.equal(loaded.backbone.state_dict()[key], value), key
    for key, value in stored.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(logits(loaded), logits(model))
    card = (folder / "README.md").read_text()
    assert "torchvision's `IMAGENET1K_V1` mobilenetv2 weights, frozen" in card
    decoder_parameters = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("backbone."))
    assert f"| parameters stored here (the decoder) | {decoder_parameters:,} |" in card


@pytest.mark.parametrize("change", ["backbone key", "missing decoder key", "decoder shape"])
def test_a_frozen_backbone_folder_holds_exactly_the_decoder(frozen_folder, tmp_path, monkeypatch, change):
    """Checked before the backbone is fetched: with an empty torch cache (and no network) the
    error is still the strict one, naming the key."""
    _, folder = frozen_folder
    tensors = load_file(str(folder / "model.safetensors"))
    if change == "backbone key":
        tensors["backbone.features.0.0.weight"] = torch.zeros(32, 3, 3, 3)
        expected = "unexpected keys (1): backbone.features.0.0.weight"
    elif change == "missing decoder key":
        del tensors["classifier.bias"]
        expected = "missing keys (1): classifier.bias"
    else:
        tensors["refine4.crp.stages.0.weight"] = torch.zeros(16, 16, 1, 1)
        expected = "refine4.crp.stages.0.weight: (16, 16, 1, 1) vs (16, 16, 3, 3)"
    save_file(tensors, str(folder / "model.safetensors"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    with pytest.raises(StrictLoadError) as info:
        load_folder(folder)
    assert expected in str(info.value)


def test_a_whole_frozen_backbone_folder_is_refused_too(frozen_folder):
    """A folder that stores its backbone beside a config saying it is torchvision's: which would
    win is ambiguous, so it does not load."""
    model, folder = frozen_folder
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    with pytest.raises(StrictLoadError) as info:
        load_folder(folder)
    backbone_keys = [k for k in model.state_dict() if k.startswith("backbone.")]
    assert sorted(info.value.unexpected) == sorted(backbone_keys) and not info.value.missing
    assert f"unexpected keys ({len(backbone_keys)}): " in str(info.value)


@pytest.mark.parametrize(
    ("backbone", "name"),
    [
        ("mobilenetv2", "IMAGENET1K_V3"),
        ("mobilenetv2", "DEFAULT"),  # an alias that moves between torchvision releases
        ("mobilenetv2", "imagenet1k_v1"),
        ("mobilenetv2-lw-authors", "IMAGENET1K_V1"),
        ("mobilenetv2", 1),
    ],
)
def test_an_unknown_frozen_backbone_name_is_refused(backbone, name):
    with pytest.raises(ConfigError) as info:
        RefineNetConfig.from_dict({**SMALL, "backbone": backbone, "frozen_backbone": name})
    assert str(info.value).startswith("frozen_backbone:") and len(str(info.value)) < 200
    if backbone == "mobilenetv2" and isinstance(name, str):
        assert "IMAGENET1K_V1, IMAGENET1K_V2" in str(info.value)


def test_the_names_torchvision_publishes_are_accepted():
    assert RefineNetConfig(**SMALL, frozen_backbone="IMAGENET1K_V2").frozen_backbone == "IMAGENET1K_V2"
    assert RefineNetConfig(backbone="resnet50", frozen_backbone="IMAGENET1K_V2").frozen_backbone == "IMAGENET1K_V2"
    assert RefineNetConfig(**SMALL).frozen_backbone == ""


def test_without_the_weights_cached_or_a_network_the_error_says_how_to_get_them(frozen_folder, tmp_path, monkeypatch):
    _, folder = frozen_folder
    empty = tmp_path / "empty-torch-home"
    monkeypatch.setenv("TORCH_HOME", str(empty))
    with pytest.raises(WeightsError) as info:
        load_folder(folder)
    message = str(info.value)
    cache = empty / "hub" / "checkpoints"
    assert "IMAGENET1K_V1" in message and "mobilenet_v2-b0353104.pth" in message
    assert f"put mobilenet_v2-b0353104.pth into {cache}" in message and SEED_TORCH_CACHE in message
    assert isinstance(info.value.__cause__, OSError)  # torch.hub really tried, and the connection was refused
    assert list(cache.iterdir()) == []  # nothing half-downloaded left behind


def test_saving_a_model_whose_backbone_moved_is_refused(tmp_path, torchvision_cache):
    """The folder would load torchvision's backbone, not this one: never write it."""
    model = frozen_model()
    with torch.no_grad():
        model.backbone.features[3].conv[1][1].running_mean.add_(0.01)
    with pytest.raises(
        WeightsError, match=r"not torchvision's IMAGENET1K_V1.*backbone\.features\.3\.conv\.1\.1\.running_mean"
    ):
        save_pretrained(model, tmp_path / "moved")
    assert not (tmp_path / "moved" / "model.safetensors").exists()
    # The decoder's tensors alone, or the whole model in fp16 (release_model.py --fp16), are fine.
    decoder = {k: v for k, v in frozen_model().state_dict().items() if not k.startswith("backbone.")}
    save_pretrained(decoder, tmp_path / "decoder", model.config)
    half = {k: v.half() if v.is_floating_point() else v for k, v in frozen_model().state_dict().items()}
    save_pretrained(half, tmp_path / "half", model.config)
    assert load_file(str(tmp_path / "half" / "model.safetensors"))["classifier.weight"].dtype == torch.float16
    assert torch.equal(logits(load_folder(tmp_path / "decoder")), logits(frozen_model()))


def test_a_frozen_backbone_folder_downloads_from_the_hub_within_the_whole_models_budget(
    frozen_folder, tmp_path, monkeypatch
):
    """The Hub path: the budget is checked on the config before the weights are downloaded and
    counts the whole model (loading allocates the backbone too), not the smaller file."""
    model, folder = frozen_folder
    monkeypatch.setattr(hub.constants, "HF_HUB_OFFLINE", False)
    with LocalHub() as server:
        server.add_repo("lab/frozen", folder)
        loaded = refinenet.from_pretrained("lab/frozen", endpoint=server.url, cache_dir=tmp_path / "hf")
        assert loaded.weights_source.source == "Hub download"
        assert torch.equal(logits(loaded), logits(model))
        file_bytes = (folder / "model.safetensors").stat().st_size
        assert file_bytes < weight_bytes(model.config) - 1_000_000
        with pytest.raises(TooLargeError):
            refinenet.from_pretrained(
                "lab/frozen",
                endpoint=server.url,
                cache_dir=tmp_path / "hf-2",
                max_weight_bytes=weight_bytes(model.config) - 1,
            )


def test_the_zoo_listing_says_a_bundled_folder_stores_its_decoder_alone(frozen_folder, monkeypatch, capsys):
    from refinenet import zoo
    from refinenet.cli import main as cli_main

    _, folder = frozen_folder
    monkeypatch.setenv(zoo.WEIGHTS_DIR_ENV, str(folder.parent))
    entry = zoo.ZooEntry(folder.name, "t", "refinenet", "mobilenetv2", "d", ("a", "b", "c"), bundled=True)
    monkeypatch.setitem(zoo.MODELS, folder.name, entry)
    assert cli_main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{folder.name}:"))
    assert "bundled (decoder only; backbone: torchvision's IMAGENET1K_V1 weights, frozen)" in line
