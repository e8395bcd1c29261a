"""The model-folder format: its file names, its error types, and the strict tensor check.

A model folder (the Hugging Face Hub layout) holds ``config.json`` (a
:class:`~refinenet.config.RefineNetConfig`), ``model.safetensors`` and a ``README.md`` model
card. This module writes and reads such folders on disk; everything else that touches one (the
Hub resolution and publishing in :mod:`refinenet.hub`, the converters in :mod:`refinenet.convert`,
the zoo's hashing) shares its names, checks and errors, so that "strict" means the same thing
everywhere: tensors that do not match the config's model fail with every missing, unexpected and
mis-shaped key, never with a half-random network.

A folder whose config names a ``frozen_backbone`` (torchvision weights kept exactly as published
while the decoder trained) stores the decoder's tensors alone: the strict check then expects
exactly those, and loading builds the backbone through torchvision's weights API (downloaded on
first use, from torch's cache after). Models that share one frozen encoder thus ship without it.

It knows nothing of the zoo or the Hub; those build on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.hub
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .backbones import Backbone, build_backbone, torchvision_weights_file
from .config import RefineNetConfig
from .modelcard import render_model_card
from .models import RefineNet, build_model, count_parameters

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
# Loading refuses weights above this many bytes unless told otherwise: far above every RefineNet
# (ResNet-152 RefineNet in fp32 is about 0.55 GB), far below what would take a machine down.
DEFAULT_MAX_WEIGHT_BYTES = 4 * 1024**3
# A safetensors header lists names, dtypes, shapes and offsets: kilobytes for any RefineNet.
MAX_HEADER_BYTES = 16 * 1024 * 1024
# The state-dict prefix of the backbone's tensors (RefineNet.backbone): what a folder with a
# frozen_backbone leaves out.
BACKBONE_PREFIX = "backbone."
# The offline way to fill torch's cache with torchvision's ImageNet MobileNetV2 (from the repository root).
SEED_TORCH_CACHE = "sh ../shared/tools/seed-torch-cache.sh"


class WeightsError(RuntimeError):
    """A model folder or download that cannot be used as it is."""


class StrictLoadError(WeightsError):
    """Tensors that do not match the model: ``missing``, ``unexpected`` and ``mismatched``
    (``"key: file shape vs model shape"``) list every offending key."""

    def __init__(self, missing: list[str], unexpected: list[str], mismatched: list[str], where: str = "") -> None:
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
        parts = [
            f"{title} ({len(keys)}): {', '.join(keys)}"
            for title, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if keys
        ]
        super().__init__(f"the weights{' in ' + where if where else ''} do not match the model; " + "; ".join(parts))


class IntegrityError(WeightsError):
    """Weights whose sha256 differs from the expected one (the file was not kept)."""


class ModelNotFoundError(WeightsError, LookupError):
    """No source could provide the model; ``attempts`` says what was tried and why it failed."""

    def __init__(self, name: str, attempts: list[str]) -> None:
        self.attempts = attempts
        tried = "\n".join(f"  - {a}" for a in attempts)
        super().__init__(f"could not load {name!r}; tried:\n{tried}")


class TooLargeError(WeightsError):
    """Weights larger than the loader accepts, refused before they are allocated or read."""


class BundledFallbackWarning(UserWarning):
    """The Hub copy of a zoo model was wanted but unavailable; the bundled copy is used."""


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- strict checks


def skeleton(config: RefineNetConfig) -> RefineNet:
    """The model ``config`` describes, built on the meta device: every module and tensor name
    and shape, but no memory and no random initialisation. The one place the expected tensors
    of a config are worked out."""
    with torch.device("meta"):
        return build_model(config)


def tensor_shapes(model_or_config: nn.Module | RefineNetConfig) -> dict[str, torch.Size]:
    """Name -> shape of every tensor of a model's state dict (of the config's model, for a config)."""
    model = skeleton(model_or_config) if isinstance(model_or_config, RefineNetConfig) else model_or_config
    return {k: v.shape for k, v in model.state_dict().items()}


def weight_bytes(model_or_config: nn.Module | RefineNetConfig) -> int:
    """The bytes of the weights in fp32, for a config worked out on the meta device (no
    allocation): what loading the model will cost at least, known before any tensor is read or
    downloaded."""
    model = skeleton(model_or_config) if isinstance(model_or_config, RefineNetConfig) else model_or_config
    return sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())


def check_weight_budget(model_or_config: nn.Module | RefineNetConfig, max_bytes: int) -> None:
    """Refuse a model (a config, or its :func:`skeleton`) whose weights would take more than
    ``max_bytes`` (fp32)."""
    needed = weight_bytes(model_or_config)
    if needed > max_bytes:
        raise TooLargeError(
            f"the model's weights take {needed / 1e6:,.0f} MB; this loader accepts at most {max_bytes / 1e6:,.0f} MB"
        )


def safetensors_data_bytes(path: str | Path, max_bytes: int) -> int:
    """Read a safetensors file's header (not its data) and return the bytes of tensor data it
    declares, refusing a header or a declared size above the limits and a file whose length
    does not match its header: what the file claims is checked before it is memory-mapped."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise WeightsError(f"{path.name} is not a readable safetensors file (shorter than its header)")
        (header_length,) = struct.unpack("<Q", prefix)
        if header_length > min(MAX_HEADER_BYTES, size - 8):
            raise WeightsError(
                f"{path.name} is not a readable safetensors file (its header length is {header_length:,})"
            )
        try:
            header = json.loads(stream.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise WeightsError(f"{path.name} is not a readable safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path.name} is not a readable safetensors file (unreadable header)")
    declared = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise WeightsError(f"{path.name} is not a readable safetensors file (tensor {str(name)[:40]!r})")
        declared = max(declared, offsets[1])
    if declared > max_bytes:
        raise TooLargeError(
            f"{path.name} declares {declared / 1e6:,.0f} MB of tensors; this loader accepts at most "
            f"{max_bytes / 1e6:,.0f} MB"
        )
    if 8 + header_length + declared != size:
        raise WeightsError(f"{path.name} is truncated or padded: its header does not match its length")
    return declared


def stored_tensor_shapes(model_or_config: nn.Module | RefineNetConfig) -> dict[str, torch.Size]:
    """Name -> shape of the tensors a model folder stores for a config (or for a model's config):
    :func:`stored_tensors` of its :func:`skeleton`."""
    model = skeleton(model_or_config) if isinstance(model_or_config, RefineNetConfig) else model_or_config
    config = model.config
    assert isinstance(config, RefineNetConfig), "a RefineNet (or its config)"
    return {k: v.shape for k, v in stored_tensors(config, model.state_dict()).items()}


def stored_tensors(config: RefineNetConfig, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The part of a model's state dict its folder stores: all of it, or without the backbone's
    tensors when ``config`` names a ``frozen_backbone`` (they are torchvision's, fetched at load)."""
    if not config.frozen_backbone:
        return dict(state_dict)
    return {k: v for k, v in state_dict.items() if not k.startswith(BACKBONE_PREFIX)}


def published_backbone(config: RefineNetConfig) -> Backbone:
    """The backbone of a config with a ``frozen_backbone``, with torchvision's weights of that
    name, through torchvision's weights API: from torch's hub cache when the file is there,
    downloaded into it otherwise. Failing that (offline and not cached, or an unreadable cached
    file), a :class:`WeightsError` names the weights, the cache folder and how to seed it."""
    if not config.frozen_backbone:
        raise ValueError("the config names no frozen_backbone")
    file_name = torchvision_weights_file(config.backbone, config.frozen_backbone)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    what = f"torchvision's {config.frozen_backbone} weights of the {config.backbone} backbone ({file_name})"
    try:
        return build_backbone(config.backbone, config.frozen_backbone, config.output_stride)
    except (OSError, RuntimeError, pickle.UnpicklingError) as error:
        if (cache / file_name).exists():
            raise WeightsError(
                f"{what} in torch's cache folder {cache} could not be loaded ({error}); delete {file_name} "
                "there to download it again"
            ) from error
        raise WeightsError(
            f"{what} are needed (a folder with frozen_backbone stores the decoder alone and takes the backbone "
            f"from torchvision) but are not in torch's cache folder {cache} and could not be downloaded ({error}). "
            f"Connect to the network once, or put {file_name} into {cache} (for MobileNetV2 IMAGENET1K_V1, "
            f"`{SEED_TORCH_CACHE}` seeds it offline); TORCH_HOME moves the cache"
        ) from error


def check_published_backbone(config: RefineNetConfig, tensors: Mapping[str, Tensor]) -> None:
    """Refuse backbone tensors (keys under ``backbone.``) that are not torchvision's
    ``config.frozen_backbone`` weights exactly (in the tensors' own dtype, so an fp16 copy of
    them passes): a folder with a frozen backbone does not store it, so saving a model whose
    backbone was changed would silently publish a different model."""
    published = {BACKBONE_PREFIX + k: v for k, v in published_backbone(config).state_dict().items()}
    check_state_dict({k: v.shape for k, v in published.items()}, tensors, "the backbone to save")
    changed = sorted(k for k, v in tensors.items() if not torch.equal(v.detach().cpu(), published[k].to(v.dtype)))
    if changed:
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise WeightsError(
            f"the model's backbone is not torchvision's {config.frozen_backbone} weights as published "
            f"({', '.join(changed[:5])}{more} differ); a folder with frozen_backbone stores the decoder alone and "
            "loads the published backbone, so it would not hold this model"
        )


def check_state_dict(expected: Mapping[str, torch.Size], state_dict: Mapping[str, Tensor], where: str = "") -> None:
    """Raise :class:`StrictLoadError` unless ``state_dict`` has exactly the expected keys and shapes."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: {tuple(v.shape)} vs {tuple(expected[k])}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    ]
    if missing or unexpected or mismatched:
        raise StrictLoadError(missing, unexpected, mismatched, where)


def load_state_dict_strict(model: nn.Module, state_dict: Mapping[str, Tensor], where: str = "") -> nn.Module:
    """Load every tensor of ``state_dict`` into ``model`` or fail naming the offending keys."""
    check_state_dict(tensor_shapes(model), state_dict, where)
    model.load_state_dict(state_dict, strict=True)
    return model


def model_from_state_dict(
    config: RefineNetConfig | RefineNet, state_dict: Mapping[str, Tensor], where: str = ""
) -> RefineNet:
    """Build the model of ``config`` (or fill its :func:`skeleton`, if given one) directly around
    ``state_dict``'s tensors.

    The checked tensors are assigned to the skeleton, so loading costs one copy of the weights,
    not two (a model built normally would allocate and initialise its own first).
    """
    model = skeleton(config) if isinstance(config, RefineNetConfig) else config
    check_state_dict(tensor_shapes(model), state_dict, where)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:  # a tensor outside the state dict would stay unallocated; never hand that out
        raise WeightsError(f"tensors not covered by the state dict: {', '.join(leftovers)}")
    return model


# ----------------------------------------------------------------------------- folders


def save_pretrained(
    model: nn.Module | Mapping[str, Tensor],
    folder: str | Path,
    config: RefineNetConfig | None = None,
    *,
    overwrite: bool = True,
    title: str | None = None,
    repo_id: str | None = None,
    metrics: Mapping[str, float] | None = None,
    provenance: Mapping[str, object] | None = None,
    license_name: str | None = None,
    license_text: str | None = None,
    card_sections: Mapping[str, str] | None = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``README.md`` into ``folder``.

    ``model`` is a RefineNet (its own config is used) or a state dict with ``config``. The
    tensors are checked against the config's model first, so a saved folder always loads.
    ``metrics`` (name -> percent) and ``provenance`` go into the model card.

    With a ``frozen_backbone`` in the config only the decoder's tensors are written; the state
    dict may hold the backbone's too (a whole model's), and they must then be torchvision's
    published weights exactly (:func:`check_published_backbone`), or nothing is written.
    """
    if isinstance(model, nn.Module):
        config = config or getattr(model, "config", None)
        state_dict = model.state_dict()
    else:
        state_dict = dict(model)
    if config is None:
        raise ValueError("save_pretrained needs the model's RefineNetConfig")
    expected = skeleton(config)
    stored = stored_tensors(config, state_dict)
    check_state_dict(stored_tensor_shapes(expected), stored, "the model to save")
    if len(stored) < len(state_dict):  # a whole model's state dict, its frozen backbone included
        check_published_backbone(config, {k: v for k, v in state_dict.items() if k not in stored})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    targets = [folder / CONFIG_NAME, folder / WEIGHTS_NAME, folder / CARD_NAME]
    existing = [p.name for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{folder} already holds {', '.join(existing)}; pass overwrite=True to replace them")
    card = render_model_card(
        config,
        title=title,
        repo_id=repo_id,
        parameters=count_parameters(expected),
        stored_parameters=sum(p.numel() for n, p in expected.named_parameters() if n in stored)
        if config.frozen_backbone
        else None,
        metrics=metrics,
        provenance=provenance,
        license_name=license_name,
        license_text=license_text,
        sections=card_sections,
    )
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in stored.items()}
    # Write next to the target, then rename: an interrupted save never leaves a half-written file.
    _atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt"}))
    _atomic_write(folder / CONFIG_NAME, lambda tmp: config.save(tmp))
    _atomic_write(folder / CARD_NAME, lambda tmp: tmp.write_text(card, encoding="utf-8"))
    return folder


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_folder(
    folder: str | Path,
    *,
    sha256: str | None = None,
    device: str | torch.device | None = None,
    max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
) -> RefineNet:
    """Load a model folder strictly, in eval mode. ``sha256`` (of model.safetensors) is checked
    first when given. The config is validated and the weights' size worked out from it, and the
    safetensors header read, before a tensor is allocated or the file mapped; either above
    ``max_weight_bytes`` is refused (:class:`TooLargeError`). The budget counts the whole model,
    a frozen backbone included: loading allocates it too.

    A folder whose config names a ``frozen_backbone`` holds exactly the decoder's tensors (a
    backbone key in it is unexpected); they are checked before the backbone is fetched from
    torchvision (:func:`published_backbone`), so a broken folder fails without a download."""
    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            legacy = sorted(p.name for p in folder.glob("*.pth*")) if folder.is_dir() else []
            hint = f" (found {', '.join(legacy)}: convert it with `refinenet convert`)" if legacy else ""
            raise WeightsError(f"{folder} is not a model folder: {path.name} is missing{hint}")
    if sha256 is not None:
        actual = sha256_file(weights_path)
        if actual != sha256:
            raise IntegrityError(f"{weights_path} has sha256 {actual}, expected {sha256}")
    try:
        config = RefineNetConfig.load(config_path)
    except (ValueError, TypeError) as error:
        raise WeightsError(f"{config_path} is not a valid RefineNet config: {error}") from error
    model = skeleton(config)  # built once: sized here, filled below
    check_weight_budget(model, max_weight_bytes)
    safetensors_data_bytes(weights_path, max_weight_bytes)
    try:
        state_dict = load_file(str(weights_path))
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{weights_path} is not a readable safetensors file: {error}") from error
    if config.frozen_backbone:
        check_state_dict(stored_tensor_shapes(model), state_dict, str(weights_path))
        backbone = published_backbone(config)
        state_dict = {**{BACKBONE_PREFIX + k: v for k, v in backbone.state_dict().items()}, **state_dict}
    model = model_from_state_dict(model, state_dict, str(weights_path))
    if device is not None:
        model = model.to(device)
    return model.eval()


__all__ = [
    "BACKBONE_PREFIX",
    "CARD_NAME",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "BundledFallbackWarning",
    "IntegrityError",
    "ModelNotFoundError",
    "StrictLoadError",
    "TooLargeError",
    "WeightsError",
    "check_published_backbone",
    "check_state_dict",
    "check_weight_budget",
    "load_folder",
    "load_state_dict_strict",
    "model_from_state_dict",
    "published_backbone",
    "save_pretrained",
    "safetensors_data_bytes",
    "sha256_file",
    "skeleton",
    "stored_tensor_shapes",
    "stored_tensors",
    "tensor_shapes",
    "weight_bytes",
]
