"""Shared fixtures: one tiny random RefineNet and its Hub-layout folder.

The tiny model (MobileNetV2 backbone, widths 32/16/16/16, 5 classes, ~2.3 M parameters) keeps
tests fast on a 2-core CPU. Its classifier is re-drawn with larger weights and no bias so that
random label maps show several classes instead of one: tests comparing label maps then compare
something.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import refinenet
from refinenet.models import RefineNet


def make_tiny_model(seed: int = 0, num_classes: int = 5) -> RefineNet:
    torch.manual_seed(seed)
    model = refinenet.refinenet_mobilenetv2(num_classes=num_classes, widths=[32, 16, 16, 16])
    with torch.no_grad():
        torch.nn.init.normal_(model.classifier.weight, std=0.5)
        model.classifier.bias.zero_()
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model() -> RefineNet:
    """Shared, read-only: do not change its weights in a test (build your own with make_tiny_model)."""
    return make_tiny_model()


def save_model_folder(model: RefineNet, folder: Path) -> Path:
    """A Hub-layout folder written by hand (config.json + model.safetensors), independent of hub.py."""
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / "config.json")
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(folder / "model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_folder(make_tiny_model(), tmp_path_factory.mktemp("tiny-model"))
