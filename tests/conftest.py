"""Shared fixtures: one tiny random RefineNet and its Hub-layout folder.

The tiny model (MobileNetV2 backbone, widths 32/16/16/16, 5 classes, ~2.3 M parameters) keeps
tests fast on a 2-core CPU. A randomly initialised backbone in eval mode (BN statistics 0 and 1)
shrinks its features at every block, down to ~1e-8 at stride 32, so every level but the finest
would be invisible in the output. :func:`calibrate_batch_norm` gives the BN layers the statistics
of random images, and the classifier is re-drawn without bias, so that every level matters and
label maps show several classes: tests comparing label maps then compare something.
"""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision
from safetensors.torch import save_file

import refinenet
from refinenet.models import RefineNet


@pytest.fixture
def single_thread():
    """Run a test's torch ops on one thread (opt in with ``pytestmark = pytest.mark.usefixtures(...)``).

    The default suite runs on 2 shared cores, often beside a training job: two intra-op threads
    then wait on each other and a small forward pass takes ten times longer than on one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def calibrate_batch_norm(model: RefineNet, seed: int = 0) -> RefineNet:
    """Set every backbone BN's running statistics to those of one batch of random images."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average: after one batch, exactly its statistics
    model.backbone.train()
    with torch.no_grad():
        model.backbone(torch.rand(2, 3, 128, 128, generator=generator))
    for bn in norms:
        bn.momentum = 0.1
    return model.eval()


@pytest.fixture
def calibrate():
    """:func:`calibrate_batch_norm`, for tests that build their own random models."""
    return calibrate_batch_norm


def make_tiny_model(seed: int = 0, num_classes: int = 5) -> RefineNet:
    torch.manual_seed(seed)
    model = calibrate_batch_norm(refinenet.refinenet_mobilenetv2(num_classes=num_classes, widths=[32, 16, 16, 16]))
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
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors")
    )
    return folder


@pytest.fixture(scope="session")
def tiny_model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_folder(make_tiny_model(), tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture
def torchvision_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """torch's hub cache moved to a temporary ``TORCH_HOME``, holding a *random* MobileNetV2 under
    the exact file name of torchvision's ``IMAGENET1K_V1`` weights (``mobilenet_v2-b0353104.pth``,
    a whole torchvision ``mobilenet_v2`` state dict, classifier included). torchvision's weights
    API loads a file already in the cache without checking its hash, so the real loading code
    runs, offline and in milliseconds. Returns the state dict the file holds (batch-norm
    statistics drawn at random too, so that comparing them compares something).
    """
    from refinenet.backbones import torchvision_weights_file

    home = tmp_path / "torch-home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch.hub.set_dir would win over TORCH_HOME
    generator = torch.Generator().manual_seed(20)
    net = torchvision.models.mobilenet_v2()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
    state = net.state_dict()
    torch.save(state, checkpoints / torchvision_weights_file("mobilenetv2", "IMAGENET1K_V1"))
    return state


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch):
    """Send every urllib request (torch.hub's downloads) to a proxy on a local port that refuses
    connections, so a test can reach no server outside the machine. 127.0.0.1 and localhost are
    left direct (the local Hub of tests/hub_server.py)."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: every connection is refused
        proxy = f"http://127.0.0.1:{closed.getsockname()[1]}"
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, proxy)
        for name in ("no_proxy", "NO_PROXY"):
            monkeypatch.setenv(name, "127.0.0.1,localhost")
        monkeypatch.setattr(urllib.request, "_opener", None)  # urlopen builds its opener afresh, from these
        yield proxy
