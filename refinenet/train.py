"""Training: one loop for the 2-core CPU, a GPU, or several processes under ``torchrun``.

Recipe (configs/*.yaml): random scale, crop, flip and mild photometric jitter, optionally
ClassMix or CutMix between the images of a batch; AdamW or SGD with momentum, with a higher learning rate
for the randomly initialised decoder than for the pretrained backbone; poly learning-rate decay
per step; cross-entropy that ignores the void label, optionally plus distillation from a teacher's
class probabilities on the same crop. The backbone starts from torchvision's ImageNet weights or
from an encoder state dict in a file (e.g. a segmentation teacher's encoder), or stays frozen at
torchvision's weights (``freeze_backbone``: the decoder alone trains and is exported). Every epoch ends
with a checkpoint (model, optimiser, step, random states), and every ``checkpoint_every`` steps
within an epoch too, so an interrupted run continues exactly where it stopped (a 3-hour session
on 2 cores ends mid-epoch); a finished run is exported as a Hub-layout model folder.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import time
from collections.abc import Sized
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from .config import RefineNetConfig
from .data import (
    DEFAULT_ROOTS,
    EvalTransform,
    TrainTransform,
    allowed_classes,
    build_dataset,
    class_mix,
    collate_with_boxes,
    cut_mix,
    has_boxes,
    set_epoch,
    small_box_weights,
)
from .evaluate import evaluate_model
from .folder import load_folder, load_state_dict_strict, stored_tensors
from .models import RefineNet, build_model

DISTILL_KEYS = {"teacher", "weight", "only_where_labels_agree", "teacher_grid"}


@dataclass
class TrainConfig:
    """A training run, as read from a YAML file (see ``configs/``)."""

    name: str
    model: dict[str, Any]
    data: dict[str, Any]
    # A torchvision weights name ("IMAGENET1K_V1") or a .safetensors file holding the backbone's
    # state dict (strictly loaded); the model config's mean/std must be the encoder's.
    backbone_weights: str | None = "IMAGENET1K_V1"
    # "train": backbone batch norms use and update batch statistics; "frozen": they keep the
    # pretrained statistics (eval mode) while their scale and shift still learn.
    backbone_bn: str = "train"
    # Keep the backbone exactly as backbone_weights gives it: no gradient, batch norms in eval mode
    # (whatever backbone_bn says), only the decoder in the optimiser (lr_backbone is then unused).
    # With torchvision's weights by name, the exported model folders record them as the config's
    # frozen_backbone and store the decoder alone; loading fetches the backbone from torchvision
    # (models that share one frozen encoder, an ablation family, bundle their decoders only). With
    # an encoder from a file (a teacher's), the folders store every tensor: nothing could fetch it
    # again. Why one might freeze such an encoder: trained for segmentation, it is the teacher's
    # knowledge, which a random decoder's gradients can wear away (on VOC it learnt more slowly
    # frozen than at a tenth of the decoder's learning rate: README).
    # A random backbone is refused: freezing it would keep noise.
    freeze_backbone: bool = False
    # Keep the backbone up to and including the tap of RefineNet level N (1..3: MobileNetV2's blocks
    # 0-3, 0-6, 0-13; ResNet's stem to layer1..3) exactly as backbone_weights gives it, also over
    # init_from's weights: no gradient, batch norms in eval mode; the deeper blocks and the decoder
    # learn. Why: on VOC, the encoder a fine-tune moved generalised worse than the teacher's own
    # below level 4 (README); the folders store every tensor.
    freeze_backbone_levels: int = 0
    # Knowledge distillation: {"teacher": folder of teacher.py, "weight": w}. Adds w x KL(teacher
    # || student) on every photo pixel of the crop, the teacher's probabilities restricted to the
    # classes the crop's human boxes allow (needs boxes.json in the training split). With
    # "only_where_labels_agree": true, only on the pixels whose label the teacher's restricted
    # argmax reproduces: where the labels were made better than the teacher's single look (zoomed
    # small boxes, boxes it missed, whose background is left unlabelled), the KL term would
    # otherwise teach the student the teacher's miss. With "teacher_grid": g (16 for the VOC teacher)
    # the teacher sees each crop padded at its bottom and right to g*k + 1 pixels a side, and its
    # probabilities are cut back to the crop: the VOC teacher pads like TensorFlow ("SAME", one
    # pixel more at the bottom and right of every even-sized stride-2 convolution) and upsamples its
    # stride-16 logits with aligned corners, which together put its answer for a pixel up to 15
    # pixels up and left of it on a 320-pixel crop, 7.5 on average; on 16k+1 pixels both are exact.
    # Without it (the runs before 2026-12-03), the students learned that shift (README).
    distill: dict[str, Any] | None = None
    # Partial labels from the human boxes (needs boxes.json in the training split): a pixel the
    # labels leave unlabelled (ignore_index) is trained towards the set of classes the boxes allow
    # there, -log of the probability on that set, instead of being skipped. The box-constrained VOC
    # labels leave unlabelled exactly the pixels where their teacher saw a class the boxes rule out;
    # skipped, they are where the student keeps the teacher's mistake: 55% of the pixels the
    # released model gives an object class outside the boxes of that class lie on them (README).
    partial_labels_from_boxes: bool = False
    # Small objects weigh more (needs boxes.json in the training split): the label pixels of a box
    # covering fewer than small_box_pixels of the crop, labelled with the box's class, count
    # small_box_weight times in the label loss (data.small_box_weights). The default 4096 (64 x 64)
    # is about the metric's "small": under 2% of a 500 x 375 VOC photo at scale 1 is 3,750 pixels.
    # 1.0 leaves the loss as it is.
    small_box_weight: float = 1.0
    small_box_pixels: int = 4096
    # The unlabelled pixels that partial labels train (above) count unlabelled_weight times in the
    # label loss. Their target, "a class the human boxes allow here", is never wrong, and they are
    # where most of a student's pixels outside the boxes lie; a weight above 1 pulls those down
    # harder, so a larger small_box_weight (which pushes object classes out) keeps outside in check.
    unlabelled_weight: float = 1.0
    # A model folder (an earlier run's model-e<N>) whose weights start this run, every tensor
    # strictly; its config must describe the same network. The run is then a fine-tune on a
    # schedule of its own (a fresh optimiser; the learning rates and warm-up say where it starts).
    init_from: str | None = None
    # The same for the decoder alone (every tensor outside the backbone, strictly); the encoder
    # stays as backbone_weights gives it. With freeze_backbone, a trained decoder re-adapts to its
    # encoder's original weights: a teacher's encoder stays exactly the teacher's.
    init_decoder_from: str | None = None
    # {"weight": w, "through_level": n}: after init_from's weights load, move the backbone up to the
    # tap of RefineNet-n the share w of the way back to the encoder backbone_weights gives
    # (interpolate_encoder), as scripts/release_model.py --mix-encoder does to a released model. A
    # run can then start from exactly such a release while naming the run and epoch it came from,
    # so its reproduce commands stay a chain of runs.
    init_encoder_mix: dict[str, Any] | None = None
    epochs: int = 30
    batch_size: int = 8
    crop_size: int = 320
    scale_range: tuple[float, float] = (0.5, 2.0)
    photometric: float = 0.2
    class_mix: float = 0.0  # share of images that get half the classes of another (data.class_mix)
    # Share of images that get a rectangle of another, with its labels, boxes and loss weights
    # (data.cut_mix); with distillation the teacher labels the mixed image, so it combines with all
    # the box-based options that class_mix does not.
    cut_mix: float = 0.0
    optimizer: str = "adamw"  # or "sgd" (momentum 0.9), the Light-Weight RefineNet authors' choice
    # 0 (with backbone_bn: frozen) keeps the backbone exactly as the run starts it, init_from's
    # and init_encoder_mix's moves included, where freeze_backbone keeps backbone_weights' own.
    lr_backbone: float = 5e-4
    lr_decoder: float = 5e-3
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    warmup_steps: int = 100
    grad_clip: float | None = 10.0
    seed: int = 0
    num_workers: int = 2
    eval_every: int = 0  # epochs between validation passes; 0 = only at the end
    # Steps between checkpoints inside an epoch (0: at epoch ends only). An epoch of VOC takes
    # about 15 minutes on 2 cores; a run cut off by the end of a session loses at most this many.
    checkpoint_every: int = 50
    amp: bool = True  # mixed precision where the hardware has it natively (see autocast_dtype_for)
    output_dir: str = "runs"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.freeze_backbone_levels <= 3:
            raise ValueError(
                f"freeze_backbone_levels must be 0..3 (4 is freeze_backbone), not {self.freeze_backbone_levels}"
            )
        if self.freeze_backbone_levels and self.freeze_backbone:
            raise ValueError("freeze_backbone freezes every level; set freeze_backbone_levels or freeze_backbone")
        if self.init_from and self.init_decoder_from:
            raise ValueError("init_from and init_decoder_from do not combine: the first sets the encoder too")
        if self.init_encoder_mix is not None:
            mix = self.init_encoder_mix
            if not self.init_from:
                raise ValueError("init_encoder_mix moves init_from's encoder: set init_from")
            if set(mix) != {"weight", "through_level"}:
                raise ValueError(f"init_encoder_mix needs exactly 'weight' and 'through_level', not {sorted(mix)}")
            if not 0 < mix["weight"] <= 1 or mix["through_level"] not in (1, 2, 3, 4):
                raise ValueError(f"init_encoder_mix: weight in (0, 1] and through_level 1..4, not {mix}")
        if self.backbone_bn not in ("train", "frozen"):
            raise ValueError(f"backbone_bn must be 'train' or 'frozen', not {self.backbone_bn!r}")
        if self.lr_decoder < 0 or self.lr_backbone < 0:
            raise ValueError(f"learning rates must be at least 0, not {self.lr_backbone} and {self.lr_decoder}")
        if self.lr_backbone == 0 and self.backbone_bn != "frozen" and not self.freeze_backbone:
            raise ValueError(
                "lr_backbone 0 keeps the backbone's weights as the run starts them, but its batch norms would still "
                "move their statistics: set backbone_bn: frozen as well"
            )
        if self.partial_labels_from_boxes and self.class_mix:
            raise ValueError("class_mix and partial_labels_from_boxes do not combine: a pasted region has no boxes")
        for name in ("class_mix", "cut_mix"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} is a share of the images, 0 to 1, not {getattr(self, name)}")
        if self.class_mix and self.cut_mix:
            raise ValueError("class_mix and cut_mix: choose one (each pastes from the previous image)")
        if self.small_box_weight <= 0 or self.small_box_pixels <= 0:
            raise ValueError("small_box_weight and small_box_pixels must be positive")
        if self.unlabelled_weight <= 0:
            raise ValueError("unlabelled_weight must be positive")
        if self.unlabelled_weight != 1.0 and not self.partial_labels_from_boxes:
            raise ValueError(
                "unlabelled_weight needs partial_labels_from_boxes (without, unlabelled pixels are skipped)"
            )
        if self.small_box_weight != 1.0 and self.class_mix:
            raise ValueError("class_mix and small_box_weight do not combine: a pasted region has no boxes")
        if self.distill is not None:
            if "teacher" not in self.distill:
                raise ValueError("distill needs a 'teacher' folder (holding teacher.py)")
            unknown = sorted(set(self.distill) - DISTILL_KEYS)
            if unknown:
                raise ValueError(
                    f"distill: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(DISTILL_KEYS))})"
                )
            if self.class_mix:
                raise ValueError("class_mix and distill do not combine: a pasted region has no teacher view")
        if self.freeze_backbone:
            weights = self.backbone_weights
            if not isinstance(weights, str) or not weights:
                raise ValueError(
                    f"freeze_backbone needs backbone_weights (a torchvision weights name such as IMAGENET1K_V1, or "
                    f"a .safetensors encoder), not {weights!r}: a frozen random backbone would keep noise"
                )
            if "frozen_backbone" in self.model:
                raise ValueError("set freeze_backbone: true (with backbone_weights), not model.frozen_backbone")
            self.model_config()  # the weights name must be one the backbone has (a ConfigError otherwise)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a YAML config. ``base: other.yaml`` (relative to this file) starts from another
        config and changes only what this one sets (``model`` and ``data`` key by key), so a
        comparison's variants state just their difference."""
        raw = _read_yaml_with_base(Path(path))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown keys {', '.join(unknown)}")
        if "scale_range" in raw:
            raw["scale_range"] = tuple(raw["scale_range"])
        return cls(**raw)

    def model_config(self) -> RefineNetConfig:
        """The model's config; with ``freeze_backbone`` on torchvision's weights it records
        ``frozen_backbone`` (their name), so every folder the run exports stores the decoder alone."""
        if self.freeze_backbone and not self.encoder_from_file:
            return RefineNetConfig(**{**self.model, "frozen_backbone": self.backbone_weights})
        return RefineNetConfig(**self.model)

    @property
    def encoder_from_file(self) -> bool:
        """Whether ``backbone_weights`` names a .safetensors file rather than torchvision weights."""
        return (self.backbone_weights or "").endswith(".safetensors")

    @property
    def uses_boxes(self) -> bool:
        """Whether training reads the human boxes (distillation, partial labels, small-box weights)."""
        return self.distill is not None or self.partial_labels_from_boxes or self.small_box_weight != 1.0

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def _read_yaml_with_base(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a training config must be a YAML mapping")
    if "base" not in raw:
        return raw
    base_path = (path.parent / raw.pop("base")).resolve()
    if base_path in seen:
        raise ValueError(f"{path}: 'base' configs form a loop through {base_path}")
    merged = _read_yaml_with_base(base_path, (*seen, base_path))
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def poly_lr(base: float, step: int, total: int, power: float, warmup: int = 0) -> float:
    """Poly decay ``base * (1 - step/total)^power`` (DeepLab's schedule, used by RefineNet ports),
    after a linear warm-up over the first ``warmup`` steps."""
    factor = (1 - min(step, total) / total) ** power
    if warmup and step < warmup:
        factor *= (step + 1) / warmup
    return base * factor


def zero_init_residual_branches(model: RefineNet) -> None:
    """Zero the last convolution of every RCU, so that each RCU starts as the identity.

    The RefineNet decoder has no batch norm: with default initialisation a stack of a dozen
    residual units amplifies activations, and the first optimiser steps diverge. Starting every
    residual branch at zero (as for ResNets in Goyal et al., 2017) lets the network begin as its
    shortcut paths and grow the branches gradually.
    """
    from .blocks import ResidualConvUnit

    for module in model.modules():
        if isinstance(module, ResidualConvUnit):
            nn.init.zeros_(module.conv2.weight)


def load_encoder(model: RefineNet, weights: str | None) -> None:
    """Initialise the backbone: a torchvision weights name was applied when it was built; a
    ``.safetensors`` file is loaded here, strictly (every key present, every shape equal)."""
    if not weights or not weights.endswith(".safetensors"):
        return
    from safetensors.torch import load_file

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights {path} not found (scripts/export_teacher_encoder.py writes them)")
    state = load_file(str(path))
    own = model.backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit the {model.config.backbone} backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.backbone.load_state_dict(state)


# What a model folder's config may say differently from the run it starts: words, and the output
# stride, which runs the same weights dilated instead of strided (a fine-tune may change it).
_FREE_FIELDS = {"description", "datasets", "license", "backbone_init", "output_stride"}


def load_initial_weights(model: RefineNet, folder: str | Path, decoder_only: bool = False) -> None:
    """Start ``model`` from a model folder's weights (``init_from``), every tensor strictly, or
    with ``decoder_only`` (``init_decoder_from``) every tensor outside ``model.backbone``, which
    keeps its own. The folder's config must describe the same network (architecture, classes,
    normalisation): a fine-tune from a model that saw differently normalised inputs would start
    from noise. The output stride may differ: the same weights, run dilated (as DeepLab's encoders
    were trained)."""
    start = load_folder(folder)
    ours, theirs = model.config.to_dict(), start.config.to_dict()
    differ = sorted(k for k in set(ours) | set(theirs) if k not in _FREE_FIELDS and ours.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"init_from {folder}: its config differs from this run's in {', '.join(differ)}")
    state = start.state_dict()
    if decoder_only:
        state = {k: v for k, v in state.items() if not k.startswith("backbone.")}
        state.update({f"backbone.{k}": v for k, v in model.backbone.state_dict().items()})
    load_state_dict_strict(model, state, str(folder))


def freeze_batch_norm_statistics(module: nn.Module) -> None:
    """Put every batch norm of ``module`` in eval mode: it normalises with its stored statistics
    and stops updating them (its scale and shift still learn). Call after each ``train()``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def import_teacher(folder: str | Path) -> ModuleType:
    """The ``teacher.py`` module in ``folder`` (e.g. ``../shared/tools/teacher``), imported by
    path: a teacher is a training-time tool that lives outside the package."""
    spec = importlib.util.spec_from_file_location("refinenet_teacher", Path(folder) / "teacher.py")
    if spec is None or spec.loader is None or not (Path(folder) / "teacher.py").is_file():
        raise FileNotFoundError(f"no teacher.py in {folder}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Distiller:
    """A teacher's class probabilities on the student's own augmented crops, and the KL term
    that pulls the student towards them.

    The teacher (``teacher.py`` in ``folder``, e.g. ``../shared/tools/teacher``) is loaded from
    outside the package: it is a training-time tool. Its probabilities are restricted to the
    classes the crop's human boxes allow at each pixel and renormalised, so the student learns
    the teacher's uncertainty between plausible classes, never a class no box supports.
    """

    def __init__(
        self,
        folder: str | Path,
        weight: float,
        mean,
        std,
        device: torch.device,
        only_where_labels_agree: bool = False,
        ignore_index: int = 255,
        grid: int = 1,
    ) -> None:
        if grid < 1:
            raise ValueError(f"distill teacher_grid must be a positive whole number, not {grid}")
        self.teacher = import_teacher(folder).Teacher(device)
        self.grid = int(grid)
        self.weight = float(weight)
        self.only_where_labels_agree = bool(only_where_labels_agree)
        self.ignore_index = ignore_index
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)

    @torch.no_grad()
    def targets(
        self, x: torch.Tensor, allowed: torch.Tensor, size: tuple[int, int], labels: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher probabilities on the normalised crops ``x``, restricted to ``allowed`` and
        renormalised, averaged down to ``size`` (the student's 1/4 output), with the mask of the
        output pixels to distil on: those on the photo rather than on padding, and with
        ``only_where_labels_agree`` those where the teacher's argmax equals ``labels`` (N x H x W,
        at the crops' size) on most of the pixels the output pixel covers."""
        images = x * self.std + self.mean
        h, w = images.shape[-2:]
        if self.grid > 1:
            # Sizes g*k + 1, padded by repeating the last row and column (see TrainConfig.distill).
            pad_h, pad_w = (-(h - 1)) % self.grid, (-(w - 1)) % self.grid
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cpu"):
            probs = self.teacher.probs(images)[..., :h, :w]
        probs = probs.float() * allowed
        probs = probs / probs.sum(1, keepdim=True).clamp_min(1e-8)
        trusted = allowed[:, :1].float()
        if self.only_where_labels_agree:
            if labels is None:
                raise ValueError("only_where_labels_agree needs the crops' labels")
            agree = (probs.argmax(1) == labels) & (labels != self.ignore_index)
            trusted = trusted * agree[:, None].float()
        probs = F.adaptive_avg_pool2d(probs, size)
        mask = F.adaptive_avg_pool2d(trusted, size)[:, 0] > 0.5
        return probs / probs.sum(1, keepdim=True).clamp_min(1e-8), mask

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Weighted mean KL(targets || softmax(logits)) over the output pixels in ``mask`` (those
        :meth:`targets` says to distil on)."""
        log_q = F.log_softmax(logits.float(), 1)
        kl = (targets * (targets.clamp_min(1e-8).log() - log_q)).sum(1)
        return self.weight * kl[mask].mean() if mask.any() else kl.sum() * 0


def parameter_groups(model: RefineNet, lr_backbone: float, lr_decoder: float) -> list[dict]:
    """The optimiser's parameter groups, backbone then decoder (always the last group). A frozen
    backbone (no parameter requiring a gradient, see :func:`freeze_backbone`) gets no group: the
    optimiser then never touches it, not even through weight decay, and ``lr_backbone`` is unused."""
    backbone = list(model.backbone.parameters())
    ids = {id(p) for p in backbone}
    decoder = [p for p in model.parameters() if id(p) not in ids]
    trainable = [p for p in backbone if p.requires_grad]
    groups = [{"params": trainable, "lr": lr_backbone, "base_lr": lr_backbone}] if trainable else []
    return [*groups, {"params": decoder, "lr": lr_decoder, "base_lr": lr_decoder}]


def freeze_backbone(model: RefineNet) -> None:
    """Stop the backbone's parameters from learning (no gradient is computed for them). Its batch
    norms must also keep their statistics: call :func:`freeze_batch_norm_statistics` after each
    ``train()``."""
    model.backbone.requires_grad_(False)


def backbone_keys_through_level(model: RefineNet, level: int) -> list[str]:
    """The backbone's state-dict keys that compute RefineNet ``level``'s taps (and the levels
    below): every key up to the last of the level's deepest tap module. Backbones register their
    modules in the order they run, as MobileNetV2's ``features`` and ResNet's stem and layers do."""
    keys = list(model.backbone.state_dict())
    tap = [f.module for f in model.backbone.feature_info if f.level == level][-1]
    last = max(i for i, k in enumerate(keys) if k.startswith(f"{tap}."))
    return keys[: last + 1]


def interpolate_weights(
    module: nn.Module, state: dict[str, torch.Tensor], weight: float, keys: list[str] | None = None
) -> None:
    """Move ``module``'s floating tensors at ``keys`` (all of them by default) the share
    ``weight`` of the way to ``state``'s: each becomes ``(1 - weight) * own + weight * state``,
    batch-norm statistics included; integer counters stay as they are.

    A weight-space ensemble (WiSE-FT, Wortsman et al., CVPR 2022): two models on one line of
    fine-tuning (a model and the one it started from, or a re-fit of its decoder) often do better
    part of the way between them than at either end. Keys or shapes that do not fit are refused,
    named, before anything moves."""
    if not 0 < weight <= 1:
        raise ValueError(f"the interpolation weight must be in (0, 1], not {weight}")
    own = module.state_dict()
    keys = list(own) if keys is None else keys
    missing = [k for k in keys if k not in state or state[k].shape != own[k].shape]
    if missing:
        raise ValueError(f"the weights do not fit at {', '.join(missing[:5])}")
    with torch.no_grad():
        for k in keys:
            if own[k].is_floating_point():
                own[k].copy_(torch.lerp(own[k], state[k].to(own[k].dtype), weight))


def interpolate_encoder(model: RefineNet, state: dict[str, torch.Tensor], weight: float, through_level: int) -> None:
    """Move the backbone through RefineNet ``through_level`` (:func:`backbone_keys_through_level`)
    the share ``weight`` of the way to ``state``, an encoder it started from
    (:func:`interpolate_weights`).

    Only below RefineNet-4 in the release: a fine-tune on few photos moves an encoder trained on
    many towards those photos, and part of the way back generalises better (README)."""
    interpolate_weights(model.backbone, state, weight, backbone_keys_through_level(model, through_level))


def freeze_backbone_levels(model: RefineNet, level: int, state: dict[str, torch.Tensor]) -> list[str]:
    """Set the backbone through ``level`` (:func:`backbone_keys_through_level`) to ``state``'s
    tensors (the encoder as ``backbone_weights`` gave it) and stop it learning; returns the batch
    norms' module names, whose statistics must stay as loaded: call
    :func:`freeze_batch_norm_statistics` on them after each ``train()``."""
    keys = backbone_keys_through_level(model, level)
    interpolate_weights(model.backbone, state, 1.0, keys)  # all the way: exactly state's floating tensors
    frozen = set(keys)
    for name, p in model.backbone.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    return [
        name
        for name, m in model.backbone.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and f"{name}.running_mean" in frozen
    ]


def check_backbone_unchanged(model: RefineNet, reference: dict[str, torch.Tensor]) -> None:
    """Raise unless the backbone's tensors equal ``reference`` (its state when the run started):
    a folder with a frozen backbone stores the decoder alone, so a backbone that moved would be
    silently replaced by torchvision's at load time."""
    changed = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v.cpu(), reference[k])]
    if changed:
        raise RuntimeError(f"the frozen backbone changed during training: {', '.join(changed[:5])}")


def build_optimizer(cfg: TrainConfig, model: RefineNet) -> torch.optim.Optimizer:
    """AdamW, or SGD with momentum 0.9: two learning rates, one for the ImageNet backbone and a
    higher one for the randomly initialised decoder."""
    groups = parameter_groups(model, cfg.lr_backbone, cfg.lr_decoder)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected 'adamw' or 'sgd'")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU multiplies bf16 in hardware (oneDNN uses it for convolutions)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype_for(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast precision of a training step, or None for fp32.

    bf16 where the hardware computes it natively: a CUDA GPU that supports it (fp16 with loss
    scaling on older GPUs), or a CPU with AVX512-BF16/AMX, where a MobileNetV2 RefineNet step at
    batch 8, 320x320 runs about 1.45x faster than in fp32 on two cores. Weights, gradients and
    the optimiser stay fp32, and the loss is computed in fp32. Without native bf16 the CPU would
    emulate it, slower than fp32, so it trains in fp32 there.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def pixel_weights(
    cfg: TrainConfig, boxes: torch.Tensor, labels: torch.Tensor, ignore_index: int
) -> torch.Tensor | None:
    """``B x H x W`` weights of the label loss's pixels: ``cfg.small_box_weight`` on the pixels of small
    boxes (:func:`refinenet.data.small_box_weights`), ``cfg.unlabelled_weight`` on unlabelled pixels,
    1 elsewhere; ``None`` when both are 1, so the loss stays the plain mean."""
    if cfg.small_box_weight == 1.0 and cfg.unlabelled_weight == 1.0:
        return None
    weights = small_box_weights(boxes, labels, cfg.small_box_pixels, cfg.small_box_weight)
    weights[labels == ignore_index] = cfg.unlabelled_weight
    return weights


def label_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    allowed: torch.Tensor | None,
    ignore_index: int,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy on the labels, with a set of classes as the target where a pixel has no label.

    ``logits`` are ``B x C x H x W`` at the labels' size, ``allowed`` the ``B x C x H x W``
    booleans of :func:`refinenet.data.allowed_classes`. A labelled pixel's target is its label
    (the usual cross-entropy); an unlabelled one's is every class the human boxes allow there, and
    its loss ``-log sum_{c allowed} p_c`` is low as soon as the mass sits anywhere in that set: it
    says only "not a class the boxes rule out". Pixels with neither (padding) are left out; the
    mean is over the rest. Without ``allowed`` the unlabelled pixels are left out too (the usual
    cross-entropy). ``weights`` (``B x H x W``, :func:`refinenet.data.small_box_weights`) make it a
    weighted mean.
    """
    if allowed is None and weights is None:
        return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)
    labelled = labels != ignore_index
    if allowed is None:
        allowed = torch.zeros_like(logits, dtype=torch.bool)
    targets = allowed & ~labelled[:, None]
    targets |= torch.zeros_like(targets).scatter_(1, labels.where(labelled, 0)[:, None], labelled[:, None])
    counted = targets.any(1)
    # An empty set would give log(0): mark every class there, so the masked pixels stay finite (and
    # their gradient zero) before they are dropped from the mean.
    targets |= ~counted[:, None]
    log_probs = F.log_softmax(logits.float(), 1)
    nll = -log_probs.masked_fill(~targets, float("-inf")).logsumexp(1)
    if not counted.any():
        return nll.sum() * 0
    if weights is None:
        return nll[counted].mean()
    return (nll * weights)[counted].sum() / weights[counted].sum()


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    ignore_index: int,
    grad_clip: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    autocast_dtype: torch.dtype | None = None,
    distill: tuple[Distiller, torch.Tensor, torch.Tensor] | None = None,
    allowed: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> float:
    """One optimisation step; the loss is computed on logits upsampled to the label size.

    With ``allowed`` (the classes the human boxes allow at each label pixel) the unlabelled pixels
    count too, through :func:`label_loss`; ``weights`` weigh the pixels of its mean.

    ``distill`` is ``(distiller, teacher targets, mask of the pixels to distil on)`` for the batch, both at the
    model's output resolution (1/4): the KL term is added to the cross-entropy there, where the
    student's predictions live, at a sixteenth of the cost of the label size.
    """
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        raw = model(x)
        logits = F.interpolate(raw, size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = label_loss(logits, y, allowed, ignore_index, weights)
        if distill is not None:
            distiller, targets, mask = distill
            loss = loss + distiller.loss(raw, targets, mask)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if grad_clip:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return float(loss.detach())


@torch.no_grad()
def block_health(model: RefineNet, x: torch.Tensor) -> dict[str, float]:
    """Fraction of positive CRP inputs per RefineNet block on the batch ``x``.

    The decoder has no normalisation, so a block whose fused input goes negative everywhere is
    silenced by the ReLU that opens its CRP: it then passes on a constant, and no gradient reaches
    the blocks above it, for good ("dying ReLU"). Logging this every epoch makes such a failure
    visible the epoch it happens instead of after training.
    """
    was_training = model.training
    model.eval()
    output = model(x, return_features=True)
    model.train(was_training)
    return {b.name: round(b.crp.positive_share(), 4) for b in output.blocks}


@dataclass
class PartialEpoch:
    """Where a checkpoint written inside an epoch stands: the batches of that epoch already
    trained on (the epoch's order is seeded, so resuming skips exactly these), their losses, the
    time spent, and the ClassMix generator's state."""

    batches: int
    losses: list[float]
    seconds: float
    mix_generator: torch.Tensor


def capture_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    step: int,
    history: list[dict],
    partial: PartialEpoch | None = None,
) -> dict:
    """``epoch`` counts finished epochs; ``partial`` says how far into the next one the run is."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "step": step,
        "history": history,
        "partial_epoch": None if partial is None else vars(partial),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()},
    }


def restore_state(
    state: dict, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, int, list[dict], PartialEpoch | None]:
    """Model, optimiser and progress of a checkpoint; its random states are set apart, by
    :func:`restore_random_state`, right before training goes on."""
    model.load_state_dict(state["model"])  # strict by default: a resumed run must match exactly
    optimizer.load_state_dict(state["optimizer"])
    partial = state.get("partial_epoch")  # absent in checkpoints written at epoch ends only
    return state["epoch"], state["step"], state["history"], None if partial is None else PartialEpoch(**partial)


def restore_random_state(state: dict) -> None:
    """The random states saved with a checkpoint. Set after everything that draws from them while
    a run starts (building the teacher, say), so that dropout repeats the uninterrupted run's."""
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary file then rename, so a run killed mid-write keeps its last checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict:
    # weights_only=False is needed for the RNG states; the file is one this project wrote itself.
    return torch.load(path, map_location="cpu", weights_only=False)


def export_model_folder(model: RefineNet, folder: Path, max_fp32_bytes: int = 20_000_000) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (fp16 when fp32 would exceed 20 MB); the
    decoder's tensors alone when the config names a ``frozen_backbone`` (as
    :func:`refinenet.folder.save_pretrained` writes such folders)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    model.config.save(folder / "config.json")
    stored = stored_tensors(model.config, model.state_dict())
    state = {k: v.detach().cpu().contiguous() for k, v in stored.items()}
    size = sum(v.numel() * v.element_size() for v in state.values())
    if size > max_fp32_bytes:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"))
    return folder


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = max(0, (x.shape[-2] - size) // 2), max(0, (x.shape[-1] - size) // 2)
    return x[..., top : top + size, left : left + size]


def build_datasets(
    cfg: TrainConfig, model_config: RefineNetConfig, eval_transform: bool = False
) -> tuple[Dataset, Dataset | None]:
    """The training set (augmented, or plain with ``eval_transform``) and the optional validation set."""
    data = cfg.data
    ignore = data.get("ignore_index", 255)
    train_tf = (
        EvalTransform(model_config.mean, model_config.std)
        if eval_transform
        else TrainTransform(
            cfg.crop_size, cfg.scale_range, True, cfg.photometric, model_config.mean, model_config.std, ignore
        )
    )
    if eval_transform:
        return build_dataset(data.get("kind", "camvid"), data.get("root"), data["train_split"], train_tf), None
    kind, root = data.get("kind", "camvid"), data.get("root")
    train = build_dataset(kind, root, data["train_split"], train_tf, cfg.seed, with_boxes=cfg.uses_boxes)
    val = None
    if data.get("val_split"):
        # Validation reports found/outside too where the split has human boxes.
        boxed = kind != "camvid" and has_boxes(root or DEFAULT_ROOTS.get(kind, Path(".")), data["val_split"])
        val = build_dataset(
            kind, root, data["val_split"], EvalTransform(model_config.mean, model_config.std), with_boxes=boxed
        )
    return train, val


def train(
    cfg: TrainConfig,
    resume: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
    until_epoch: int | None = None,
) -> Path:
    """Run (or continue) a training run; returns the run directory.

    ``until_epoch`` stops once that many epochs of the schedule are done, whatever was done
    before (so rerunning the same command does nothing more): the first epochs of one schedule,
    as comparisons use them. ``max_steps`` stops early after that many optimisation steps in this call (tests and smoke
    runs); the checkpoint written then resumes exactly.
    """
    rank, world = _distributed()
    seed_everything(cfg.seed + rank)
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    model_config = cfg.model_config()
    torchvision_weights = None if cfg.encoder_from_file else cfg.backbone_weights
    model = build_model(model_config, torchvision_weights)
    load_encoder(model, cfg.backbone_weights)
    zero_init_residual_branches(model)
    keep_encoder = cfg.freeze_backbone_levels or cfg.init_encoder_mix
    encoder = {k: v.clone() for k, v in model.backbone.state_dict().items()} if keep_encoder else {}
    if cfg.init_from:
        load_initial_weights(model, cfg.init_from)
        if cfg.init_encoder_mix:
            interpolate_encoder(model, encoder, cfg.init_encoder_mix["weight"], cfg.init_encoder_mix["through_level"])
    elif cfg.init_decoder_from:
        load_initial_weights(model, cfg.init_decoder_from, decoder_only=True)
    frozen_norms: list[str] = []
    if cfg.freeze_backbone_levels:
        frozen_norms = freeze_backbone_levels(model, cfg.freeze_backbone_levels, encoder)
    published: dict[str, torch.Tensor] | None = None
    if cfg.freeze_backbone:
        freeze_backbone(model)
        published = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    # Module.to accepts device and memory_format together; torch's overloads leave that out.
    model = model.to(device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimizer = build_optimizer(cfg, model)
    run_dir = cfg.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = run_dir / "last.pt"
    epoch, step = 0, 0
    history: list[dict] = []
    partial: PartialEpoch | None = None
    saved = load_checkpoint(checkpoint) if resume and checkpoint.exists() else None
    if saved is not None:
        epoch, step, history, partial = restore_state(saved, model, optimizer)
        if rank == 0:
            within = f" (batch {partial.batches} of epoch {epoch + 1})" if partial else ""
            print(f"resumed {run_dir} at epoch {epoch}, step {step}{within}", flush=True)

    train_set, val_set = build_datasets(cfg, model_config)
    assert isinstance(train_set, Sized), "a map-style dataset, with a length"
    ignore_index = cfg.data.get("ignore_index", 255)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    distiller = None
    if cfg.distill:
        distiller = Distiller(
            cfg.distill["teacher"],
            cfg.distill.get("weight", 1.0),
            model_config.mean,
            model_config.std,
            device,
            only_where_labels_agree=cfg.distill.get("only_where_labels_agree", False),
            ignore_index=ignore_index,
            grid=cfg.distill.get("teacher_grid", 1),
        )
    autocast_dtype = autocast_dtype_for(device, cfg.amp)
    scaler = torch.amp.GradScaler("cuda") if autocast_dtype == torch.float16 else None
    # drop_last: every process sees ceil(len/world) samples, in full batches only.
    steps_per_epoch = max(1, math.ceil(len(train_set) / world) // cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    done_this_call = 0
    # A fixed probe image (the first of the training set, unaugmented) for per-epoch health checks.
    probe_set, _ = build_datasets(cfg, model_config, eval_transform=True)
    probe = _center_crop(probe_set[0][0], cfg.crop_size)[None].to(device).contiguous(memory_format=torch.channels_last)
    if saved is not None:
        restore_random_state(saved)
        del saved

    while epoch < (cfg.epochs if until_epoch is None else min(cfg.epochs, until_epoch)):
        set_epoch(train_set, epoch)
        # Every random draw of an epoch is seeded by (seed, epoch), so a resumed run repeats it exactly.
        epoch_seed = cfg.seed * 1000 + epoch
        generator = torch.Generator().manual_seed(epoch_seed)
        sampler = (
            DistributedSampler(train_set, shuffle=True, seed=cfg.seed)
            if world > 1
            else RandomSampler(train_set, generator=generator)
        )
        if isinstance(sampler, DistributedSampler):  # world > 1
            sampler.set_epoch(epoch)
        order = list(sampler)
        batches = len(order) // cfg.batch_size  # drop_last
        mix_generator = torch.Generator().manual_seed(epoch_seed * 1000 + rank + 1)
        losses: list[float] = []
        start = time.time()
        if partial is not None:  # resume inside this epoch: skip the batches already trained on
            order = order[partial.batches * cfg.batch_size :]
            losses = list(partial.losses)
            start -= partial.seconds
            mix_generator.set_state(partial.mix_generator)
            partial = None
        loader = DataLoader(
            train_set,
            batch_size=cfg.batch_size,
            sampler=order,
            num_workers=cfg.num_workers,
            drop_last=True,
            pin_memory=device.type == "cuda",
            collate_fn=collate_with_boxes if cfg.uses_boxes else None,
            # Its own generator: worker seeds must not draw from the global RNG, which dropout
            # uses and a checkpoint restores, or a resumed run would not repeat the same masks.
            generator=torch.Generator().manual_seed(epoch_seed),
        )
        net.train()
        if cfg.backbone_bn == "frozen" or cfg.freeze_backbone:
            freeze_batch_norm_statistics(model.backbone)
        for name in frozen_norms:
            freeze_batch_norm_statistics(model.backbone.get_submodule(name))
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            initial=len(losses),
            total=batches,
            disable=not progress or rank != 0,
            dynamic_ncols=True,
        )
        for batch in bar:
            x, y = batch[0], batch[1]
            allowed, weights = None, None
            if cfg.uses_boxes:
                allowed = allowed_classes(batch[2], batch[3], model_config.num_classes, tuple(y.shape[-2:]))
                weights = pixel_weights(cfg, batch[2], y, ignore_index)
            else:
                x, y = class_mix(x, y, cfg.class_mix, ignore_index, mix_generator)
            # After the boxes are read: what the boxes say about a pixel moves with it.
            x, y, allowed, weights = cut_mix([x, y, allowed, weights], cfg.cut_mix, mix_generator)
            assert x is not None and y is not None
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, total_steps, cfg.poly_power, cfg.warmup_steps)
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            distill, label_sets = None, None
            if allowed is not None:
                allowed = allowed.to(device)
                if distiller is not None:
                    out_size = (y.shape[-2] // 4, y.shape[-1] // 4)
                    distill = (distiller, *distiller.targets(x, allowed, out_size, y))
                if cfg.partial_labels_from_boxes:
                    label_sets = allowed
            if weights is not None:
                weights = weights.to(device)
            loss = train_step(
                net, optimizer, x, y, ignore_index, cfg.grad_clip, scaler, autocast_dtype, distill, label_sets, weights
            )
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}; lower the learning rate")
            losses.append(loss)
            step += 1
            done_this_call += 1
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}")
            stopping = max_steps is not None and done_this_call >= max_steps
            due = stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
            if rank == 0 and due and len(losses) < batches:
                now = PartialEpoch(len(losses), losses, time.time() - start, mix_generator.get_state())
                save_checkpoint(capture_state(model, optimizer, epoch, step, history, now), checkpoint)
            if stopping:
                break
        if len(losses) < batches:
            break  # stopped by max_steps inside the epoch; its checkpoint resumes there
        epoch += 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": step,
            "loss": float(np.mean(losses)) if losses else None,
            "seconds": round(time.time() - start, 1),
            "precision": str(autocast_dtype).removeprefix("torch.") if autocast_dtype else "fp32",
            # The schedule this epoch ran on: a run extended with --epochs changes it mid-run (the
            # poly rate restarts from where the longer schedule stands), and a release must say so.
            "schedule_epochs": cfg.epochs,
        }
        if (
            rank == 0
            and val_set is not None
            and cfg.eval_every
            and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
        ):
            result = evaluate_model(
                model,
                val_set,
                model_config.num_classes,
                ignore_index,
                model_config.class_names,
                device=device,
                progress=progress,
            )
            record["val_mIoU"] = round(result["mIoU"], 2)
            for key in ("found", "found_small", "outside"):
                if key in result:
                    record[f"val_{key}"] = round(result[key], 2)
            if "outside_by_label" in result:  # is a gap in the labels behind the outside pixels?
                shares = result["outside_by_label"].items()
                record["val_outside_by_label"] = {k: None if v is None else round(v, 1) for k, v in shares}
            # Every validated epoch keeps its weights, so the best one can be released, not just the last.
            if published is not None:
                check_backbone_unchanged(model, published)
            export_model_folder(model, run_dir / f"model-e{epoch}")
        if rank == 0:
            record["crp_input_positive"] = block_health(model, probe)
            dead = [name for name, share in record["crp_input_positive"].items() if share == 0.0]
            if dead:
                print(
                    f"warning: {', '.join(dead)} silenced (no positive CRP input on the probe batch); "
                    "the blocks above it no longer learn",
                    flush=True,
                )
        history.append(record)
        if rank == 0:
            print(json.dumps(record), flush=True)
            with open(run_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            save_checkpoint(capture_state(model, optimizer, epoch, step, history), checkpoint)
        if max_steps is not None and done_this_call >= max_steps:
            break

    if rank == 0 and epoch >= cfg.epochs:
        if published is not None:
            check_backbone_unchanged(model, published)
        export_model_folder(model, run_dir / "model")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


def main(argv: list[str] | None = None) -> int:
    """``python -m refinenet.train CONFIG [--no-resume] [--max-steps N]`` (torchrun-friendly)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m refinenet.train")
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_from_args(args)


def add_arguments(parser) -> None:
    parser.add_argument("config", type=Path, help="training config (YAML) from configs/")
    parser.add_argument("--no-resume", action="store_true", help="start afresh even if a checkpoint exists")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (smoke runs)")
    parser.add_argument(
        "--until-epoch",
        type=int,
        default=None,
        help="stop once this many epochs of the schedule are done (comparisons: the first epochs of one schedule)",
    )
    parser.add_argument("--output-dir", default=None, help="override the config's output_dir")
    parser.add_argument("--epochs", type=int, default=None, help="override the config's number of epochs")


def run_from_args(args) -> int:
    cfg = TrainConfig.load(args.config)
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.epochs:
        cfg.epochs = args.epochs
    run_dir = train(cfg, resume=not args.no_resume, max_steps=args.max_steps, until_epoch=args.until_epoch)
    print(f"run directory: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
