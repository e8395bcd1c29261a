"""The training configs in configs/ are what the model cards cite: each must load, describe a
consistent model, and (for VOC) carry the PASCAL VOC classes and colours in their standard order."""

from __future__ import annotations

from pathlib import Path

import pytest

from refinenet.data import VOC_CLASSES as PACKAGE_VOC_CLASSES
from refinenet.train import TrainConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))

VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def pascal_colour_map(n: int) -> list[list[int]]:
    """The PASCAL VOC development kit's colour map: the bits of the class index spread over the
    high bits of red, green and blue (written from the devkit's description, not from our config)."""
    colours = []
    for index in range(n):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
            if c == 0:
                break
        colours.append([r, g, b])
    return colours


def test_there_are_configs():
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_describes_a_consistent_model(path):
    cfg = TrainConfig.load(path)
    model = cfg.model_config()
    assert cfg.name == path.stem
    assert len(model.class_names) == model.num_classes == len(model.palette)
    assert cfg.optimizer in ("adamw", "sgd") and 0 <= cfg.lr_backbone <= cfg.lr_decoder
    # The data folder is named once, in refinenet.data: configs name the dataset, not its path.
    assert cfg.data["kind"] in ("camvid", "voc2007-pseudo") and "root" not in cfg.data
    assert model.ignore_index == cfg.data["ignore_index"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_inputs_are_normalised_the_way_the_encoder_was_trained(path):
    """torchvision's ImageNet weights expect ImageNet's mean and std; the teacher's encoder
    expects [-1, 1] (mean and std 0.5). A mismatch trains, but from a wrecked encoder."""
    cfg = TrainConfig.load(path)
    model = cfg.model_config()
    if cfg.backbone_weights == "IMAGENET1K_V1":
        assert model.mean == [0.485, 0.456, 0.406] and model.std == [0.229, 0.224, 0.225]
        assert "ImageNet" in model.backbone_init or not model.backbone_init
    else:
        assert cfg.backbone_weights.endswith(".safetensors")
        assert model.mean == model.std == [0.5, 0.5, 0.5]
        assert "DeepLab" in model.backbone_init


def test_voc_config_uses_the_standard_classes_and_colours():
    model = TrainConfig.load(next(p for p in CONFIGS if p.stem.startswith("voc-"))).model_config()
    assert list(model.class_names) == VOC_CLASSES == list(PACKAGE_VOC_CLASSES)
    assert [list(c) for c in model.palette] == pascal_colour_map(21)
    assert model.ignore_index == 255


ABLATION = sorted(p for p in CONFIGS if p.stem.startswith("camvid-ablation-"))
_ABLATION_VARIANTS = {"4cascade", "4cascade-seed1", "2cascade", "1cascade", "1cascade-seed1", "nocrp"}


def test_the_ablation_variants_share_one_recipe_and_differ_only_where_named():
    """Issue 20's table compares architectures, so everything else must be the same: schedule,
    data, width, the frozen ImageNet backbone and (but for the repeated seeds) seed; each variant's
    difference is its cascade or its CRP stages, and the repeated seeds differ in the seed alone.
    All six are bundled, so their folders (the decoders alone, in fp16) must fit in 20 MB together."""
    import dataclasses

    import torch

    from refinenet.folder import stored_tensor_shapes
    from refinenet.models import build_model

    # Exactly the six bundled variants: the size budget below adds up all of them.
    assert {p.stem.removeprefix("camvid-ablation-") for p in ABLATION} == _ABLATION_VARIANTS
    reference = TrainConfig.load(next(p for p in ABLATION if p.stem == "camvid-ablation-4cascade"))
    released = TrainConfig.load(next(p for p in CONFIGS if p.stem == "camvid-refinenet-mobilenetv2"))
    stored_fp16_bytes = 0
    for path in ABLATION:
        cfg = TrainConfig.load(path)
        assert cfg.freeze_backbone and cfg.backbone_weights == "IMAGENET1K_V1", path.stem
        recipe = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
        for name in ("epochs", "data", "crop_size", "batch_size", "lr_decoder", "lr_backbone", "backbone_weights"):
            assert recipe[name] == getattr(released, name), (path.stem, name)
        for name, value in recipe.items():
            if name not in ("name", "seed", "model"):
                assert value == getattr(reference, name), (path.stem, name)
        assert cfg.seed == (1 if path.stem.endswith("-seed1") else 0)
        model = cfg.model_config()
        assert model.frozen_backbone == "IMAGENET1K_V1", path.stem
        assert set(model.widths) == {48} and len(model.widths) == len(model.cascade)
        changed = {
            k for k, v in dataclasses.asdict(model).items() if v != dataclasses.asdict(reference.model_config())[k]
        }
        assert changed <= {"widths", "cascade", "crp_stages", "description"}, (path.stem, changed)
        expected_blocks = {"2cascade": 2, "1cascade": 1}.get(path.stem.split("-")[2], 4)
        assert len(model.cascade) == expected_blocks
        assert model.crp_stages == (0 if path.stem.endswith("nocrp") else 4)
        # Each variant builds and segments: a 64x64 input gives logits at 1/4 for the 11 classes.
        net = build_model(model).eval()
        with torch.no_grad():
            assert net(torch.rand(1, 3, 64, 64)).shape == (1, 11, 16, 16)
        # What its folder stores: the decoder, every tensor but the backbone's, in fp16
        # (scripts/release_model.py --fp16).
        decoder = {k: v for k, v in net.state_dict().items() if not k.startswith("backbone.")}
        assert stored_tensor_shapes(model) == {k: v.shape for k, v in decoder.items()}
        stored_fp16_bytes += sum(
            v.numel() * (2 if v.is_floating_point() else v.element_size()) for v in decoder.values()
        )
    assert stored_fp16_bytes <= 20_000_000, f"the six decoders take {stored_fp16_bytes / 1e6:.2f} MB in fp16"
