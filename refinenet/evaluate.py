"""Evaluation: confusion matrices, per-class IoU, mean IoU and pixel accuracy.

Conventions (the usual ones for CamVid and PASCAL VOC): pixels labelled ``ignore_index`` are
left out entirely; IoU of class c is ``TP / (TP + FP + FN)``; a class that appears neither in
the ground truth nor in the predictions has no IoU (NaN) and is left out of the mean, while a
class that is predicted but never present scores 0.

Where the data has human bounding boxes (the teacher-labelled VOC photos), two more figures are
measured against them rather than against labels a teacher predicted: *found*, the share of
boxes in which the model gives at least 10% of the box's pixels the box's class, and
*outside*, the share of the pixels given an object class that lie outside every box of that
class. IoU against teacher labels rewards copying the teacher, mistakes included; these two
say whether the objects people outlined are there, and nothing is painted where none was. The
outside pixels are also split by what the labels say there (background, unlabelled, an object
class), which tells a gap in the labels (unlabelled pixels teach nothing) from a model that
overrides them.

A held-out split is a sample of photos, and a figure on it would move with another sample:
:func:`bootstrap_intervals` draws the photos again with replacement and reports the range the
figures span, and :func:`bootstrap_difference` compares two models on the same draws, which says
how far a difference of a few tenths on 300 photos can be trusted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence, Sized
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int | None = None) -> Tensor:
    """``num_classes x num_classes`` int64 counts, rows = ground truth, columns = prediction."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    index = target[keep] * num_classes + pred[keep].clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def metrics_from_confusion(confusion: Tensor | np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Per-class IoU, mean IoU, pixel accuracy and mean class accuracy, as plain floats (IoU and
    accuracies in percent; ``None`` for classes without any pixel in prediction or truth)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    union = gt + predicted - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        class_acc = np.where(gt > 0, tp / gt, np.nan)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    total = cm.sum()
    return {
        "mIoU": float(np.nanmean(iou) * 100) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total * 100) if total else float("nan"),
        "mean_class_accuracy": float(np.nanmean(class_acc) * 100) if np.isfinite(class_acc).any() else float("nan"),
        "per_class_iou": {n: (None if np.isnan(v) else float(v * 100)) for n, v in zip(names, iou, strict=True)},
    }


FOUND_SHARE = 0.10  # a box counts as found when the model gives its class to 10% of its pixels
SMALL_BOX = 0.02  # boxes under 2% of the photo are "small" (they are what stride 16 loses)
# What the labels say at the outside pixels, in BoxCounts.metrics()["outside_by_label"].
OUTSIDE_LABEL_KINDS = ("background", "unlabelled", "object")


class BoxCounts:
    """Per-class counts behind *found* and *outside*, accumulated image by image.

    Class 0 (background) has no boxes and is never "outside"; boxes are ``[class, x0, y0, x1,
    y1]`` in the prediction's pixels, with x1 and y1 exclusive.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.boxes = np.zeros(num_classes, np.int64)
        self.found = np.zeros(num_classes, np.int64)
        self.small_boxes = np.zeros(num_classes, np.int64)
        self.small_found = np.zeros(num_classes, np.int64)
        self.predicted = np.zeros(num_classes, np.int64)  # pixels given each class
        self.outside = np.zeros(num_classes, np.int64)  # of those, outside every box of the class
        self.outside_by_label = np.zeros(len(OUTSIDE_LABEL_KINDS), np.int64)
        self.with_labels = False

    def add(
        self,
        prediction: Tensor,
        boxes: Tensor | Sequence[Sequence[int]],
        labels: Tensor | None = None,
        ignore_index: int | None = None,
    ) -> None:
        """One image: ``prediction`` is ``H x W`` class indices, ``boxes`` ``K x 5``; with the
        image's ``labels`` (``H x W``) the outside pixels are also counted by their label."""
        pred = torch.as_tensor(prediction).long()
        h, w = pred.shape
        inside = torch.zeros(self.num_classes, h, w, dtype=torch.bool)
        for c, x0, y0, x1, y1 in torch.as_tensor(boxes).reshape(-1, 5).round().long().tolist():
            if not 0 < c < self.num_classes:
                continue
            x0, y0, x1, y1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
            if x1 <= x0 or y1 <= y0:
                continue
            inside[c, y0:y1, x0:x1] = True
            found = (pred[y0:y1, x0:x1] == c).float().mean().item() >= FOUND_SHARE
            small = (x1 - x0) * (y1 - y0) < SMALL_BOX * h * w
            self.boxes[c] += 1
            self.found[c] += found
            self.small_boxes[c] += small
            self.small_found[c] += found and small
        counts = torch.bincount(pred.reshape(-1), minlength=self.num_classes)[: self.num_classes]
        gathered = inside.gather(0, pred.clamp(0, self.num_classes - 1)[None])[0]
        inside_counts = torch.bincount(pred[gathered], minlength=self.num_classes)[: self.num_classes]
        self.predicted += counts.numpy()
        self.outside += (counts - inside_counts).numpy()
        self.predicted[0] = self.outside[0] = 0
        if labels is not None:
            self.with_labels = True
            label = torch.as_tensor(labels).long()
            outside = (pred > 0) & ~gathered
            unlabelled = label == ignore_index if ignore_index is not None else torch.zeros_like(outside)
            background = (label == 0) & ~unlabelled
            kinds = (background, unlabelled, ~background & ~unlabelled)
            self.outside_by_label += np.array([int((outside & kind).sum()) for kind in kinds])

    def totals(self) -> np.ndarray:
        """Boxes found, boxes, pixels outside and pixels given an object class, over all classes:
        what *found* and *outside* are the ratios of, so that per-image differences of these add up."""
        return np.array([self.found.sum(), self.boxes.sum(), self.outside.sum(), self.predicted.sum()])

    def metrics(self, class_names: Sequence[str] | None = None) -> dict:
        """Percentages overall and per class (``None`` where a class has no box or no pixel), and
        with labels the share of the outside pixels labelled background, unlabelled or an object."""

        def share(part: np.ndarray, whole: np.ndarray) -> list[float | None]:
            return [float(p / q * 100) if q else None for p, q in zip(part, whole, strict=True)]

        def total(part: np.ndarray, whole: np.ndarray) -> float:
            return float(part.sum() / whole.sum() * 100) if whole.sum() else float("nan")

        names = list(class_names) if class_names is not None else [str(i) for i in range(self.num_classes)]
        result = {
            "found": total(self.found, self.boxes),
            "found_small": total(self.small_found, self.small_boxes),
            "outside": total(self.outside, self.predicted),
            "boxes": int(self.boxes.sum()),
            "small_boxes": int(self.small_boxes.sum()),
            "per_class_found": dict(zip(names, share(self.found, self.boxes), strict=True)),
            "per_class_outside": dict(zip(names, share(self.outside, self.predicted), strict=True)),
        }
        if self.with_labels:
            outside = self.outside.sum()
            result["outside_by_label"] = {
                kind: float(n / outside * 100) if outside else None
                for kind, n in zip(OUTSIDE_LABEL_KINDS, self.outside_by_label, strict=True)
            }
        return result


@dataclass
class ImageCounts:
    """What the figures of a split are computed from, kept image by image: ``confusions`` is
    ``N x C x C``, ``box_totals`` ``N x 4`` (each image's :meth:`BoxCounts.totals`; ``None``
    without boxes). Summed over any sample of the images they give that sample's figures."""

    confusions: np.ndarray
    box_totals: np.ndarray | None = None

    def figures_of_draws(self, draws: np.ndarray) -> dict[str, np.ndarray]:
        """mIoU, and *found* and *outside* with boxes, in percent, of each row of ``draws``
        (``R x N``: how many times each image is drawn), computed from the summed counts
        exactly as a whole split's figures are (:func:`metrics_from_confusion`)."""
        n, c, _ = self.confusions.shape
        cm = (draws @ self.confusions.reshape(n, c * c).astype(np.float64)).reshape(len(draws), c, c)
        tp = np.diagonal(cm, axis1=1, axis2=2)
        union = cm.sum(axis=2) + cm.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            figures = {"mIoU": np.nanmean(iou, axis=1) * 100}
            if self.box_totals is not None:
                sums = draws @ self.box_totals.astype(np.float64)
                figures["found"] = sums[:, 0] / sums[:, 1] * 100
                figures["outside"] = sums[:, 2] / sums[:, 3] * 100
        return figures


def _draws(images: int, rounds: int, seed: int) -> np.ndarray:
    """``rounds x images``: how many times each image is drawn in each of ``rounds`` samples of
    ``images`` images with replacement. The same seed gives the same samples, so two models
    evaluated on the same split are compared on the same draws."""
    return np.random.default_rng(seed).multinomial(images, np.full(images, 1 / images), size=rounds).astype(np.float64)


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    """The central ``level`` percentile interval of the defined values (a draw without a box, or
    without an object pixel, defines no *found* or *outside*); ``None`` when none is."""
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, not {level}")
    defined = values[np.isfinite(values)]
    tail = (1 - level) / 2
    return [float(np.quantile(defined, q)) for q in (tail, 1 - tail)] if defined.size else None


def bootstrap_intervals(counts: ImageCounts, rounds: int = 1000, level: float = 0.9, seed: int = 0) -> dict:
    """Percentile intervals of mIoU, and of *found* and *outside* with boxes, over ``rounds``
    samples of the images drawn with replacement (the bootstrap): how much each figure depends
    on which photos the split holds. ``{"level", "rounds", "seed", "mIoU": [low, high], "found":
    [...], "outside": [...]}`` in percent."""
    figures = counts.figures_of_draws(_draws(len(counts.confusions), rounds, seed))
    return {"level": level, "rounds": rounds, "seed": seed} | {k: _interval(v, level) for k, v in figures.items()}


def bootstrap_difference(
    counts: ImageCounts, other: ImageCounts, rounds: int = 1000, level: float = 0.9, seed: int = 0
) -> dict:
    """Two models on the same images, compared on the same draws (a paired bootstrap): the
    percentile interval of each figure's difference (``counts`` minus ``other``) and the share of
    draws in which ``counts`` has the higher figure. Pairing removes what both models share, the
    photos' difficulty, which is most of either figure's spread; so a difference can be clear even
    where the two models' own intervals overlap."""
    if counts.confusions.shape != other.confusions.shape:
        raise ValueError(
            f"the two models were counted on different images or classes: {counts.confusions.shape} "
            f"against {other.confusions.shape}"
        )
    draws = _draws(len(counts.confusions), rounds, seed)
    mine, theirs = counts.figures_of_draws(draws), other.figures_of_draws(draws)
    result: dict = {"level": level, "rounds": rounds, "seed": seed, "higher_in": {}}
    for name in (name for name in mine if name in theirs):  # mIoU, found, outside, in that order
        difference = mine[name] - theirs[name]
        result[name] = _interval(difference, level)
        defined = difference[np.isfinite(difference)]
        result["higher_in"][name] = float((defined > 0).mean() * 100) if defined.size else None
    return result


def segment_logits(
    model: nn.Module, x: Tensor, out_size: tuple[int, int], scales: Sequence[float] = (1.0,), flip: bool = False
) -> Tensor:
    """Class probabilities at ``out_size``, averaged over input scales and horizontal flips.

    Softmax before averaging keeps every scale's vote on the same footing; logits at 1/4 are
    upsampled bilinearly to the target size (paper section 3).
    """
    total = None
    for scale in scales:
        size = (max(8, round(x.shape[-2] * scale)), max(8, round(x.shape[-1] * scale)))
        xs = x if scale == 1.0 else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        views = [xs, xs.flip(-1)] if flip else [xs]
        for i, view in enumerate(views):
            logits = model(view)
            if i == 1:
                logits = logits.flip(-1)
            probs = F.interpolate(logits.float(), size=out_size, mode="bilinear", align_corners=False).softmax(1)
            total = probs if total is None else total + probs
    assert total is not None, "no scales given"
    return total


@torch.inference_mode()
def count_images(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    ignore_index: int | None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[ImageCounts, BoxCounts | None]:
    """Predict every image of ``dataset`` at its full resolution (batch 1, so frames of
    different sizes are fine) and count: each image's confusion matrix and box totals, and the
    per-class box counts of the whole split when the samples carry human boxes (``with_boxes``)."""
    assert isinstance(dataset, Sized), "a map-style dataset, with a length"
    was_training = model.training
    model.eval()
    box_counts = None
    confusions: list[np.ndarray] = []
    box_totals: list[np.ndarray] = []
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=1)
    for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
        x, y = batch[0], batch[1]
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        probs = segment_logits(model, x, tuple(y.shape[-2:]), scales, flip)
        # max(1).indices: argmax (first index on ties) at a third of the CPU cost of .argmax(1).
        prediction = probs.max(1).indices.cpu()
        confusions.append(confusion_matrix(prediction, y, num_classes, ignore_index).numpy())
        if len(batch) == 4:
            box_counts = box_counts or BoxCounts(num_classes)
            before = box_counts.totals()
            box_counts.add(prediction[0], batch[2][0], y[0], ignore_index)
            box_totals.append(box_counts.totals() - before)
    model.train(was_training)
    empty = np.zeros((0, num_classes, num_classes), np.int64)
    counts = ImageCounts(np.stack(confusions) if confusions else empty, np.stack(box_totals) if box_totals else None)
    return counts, box_counts


def evaluate_model(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    ignore_index: int | None,
    class_names: Sequence[str] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """The figures of :func:`count_images`: :func:`metrics_from_confusion` plus the confusion
    matrix, and :meth:`BoxCounts.metrics` when the samples carry human boxes."""
    counts, box_counts = count_images(model, dataset, num_classes, ignore_index, scales, flip, device, progress)
    return split_result(counts, box_counts, class_names, scales, flip)


def split_result(
    counts: ImageCounts,
    box_counts: BoxCounts | None,
    class_names: Sequence[str] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> dict:
    """The whole split's figures from its counts (what :func:`evaluate_model` returns)."""
    confusion = counts.confusions.sum(axis=0)
    result = metrics_from_confusion(confusion, class_names)
    if box_counts is not None:
        result.update(box_counts.metrics(class_names))
    result["confusion_matrix"] = confusion.tolist()
    result["scales"] = list(scales)
    result["flip"] = flip
    result["images"] = len(counts.confusions)
    return result


def plot_confusion(confusion: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path) -> None:
    """Row-normalised confusion matrix as a PNG (rows: ground truth, columns: prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    size = max(5.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=60, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if norm[i, j] >= 0.01:
                ax.text(
                    j,
                    i,
                    f"{norm[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if norm[i, j] > 0.5 else "white",
                )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(result: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
