"""Score the VOC teacher on a split with the student's metrics, so model cards can put them side by side.

    python scripts/eval_teacher.py --split val --out teacher-val.json

The teacher (``../shared/tools/teacher``, TensorFlow DeepLab's DeepLabV3 on MobileNetV2) runs once
per photo, single scale, resized so that its long side is 513 pixels (its training size), and its
probabilities are resized back to the photo. The labels of voc2007-pseudo were made from this
teacher (at three scales, with flips, zoomed-in small boxes and the human boxes' constraint), so
its agreement with them is high by construction; *found* and *outside* come from the human boxes
and compare it with a student fairly.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinenet.data import VOC_CLASSES, VOC_PSEUDO_ROOT, EvalTransform, build_dataset  # noqa: E402
from refinenet.evaluate import BoxCounts, confusion_matrix, metrics_from_confusion, write_results  # noqa: E402
from refinenet.train import import_teacher  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path, default=ROOT.parent / "shared" / "tools" / "teacher")
    parser.add_argument("--data", type=Path, default=VOC_PSEUDO_ROOT)
    parser.add_argument("--split", default="val")
    parser.add_argument("--long-side", type=int, default=513)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    try:
        module = import_teacher(args.teacher)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    teacher = module.Teacher()
    # Mean 0 and std 1: the samples stay in [0, 1], which is what Teacher.probs takes.
    dataset = build_dataset("folders", args.data, args.split, EvalTransform((0, 0, 0), (1, 1, 1)), with_boxes=True)
    confusion = torch.zeros(21, 21, dtype=torch.int64)
    boxes = BoxCounts(21)
    for x, y, image_boxes, _ in tqdm(dataset, desc="teacher"):
        h, w = y.shape
        scale = args.long_side / max(h, w)
        small = F.interpolate(x[None], (round(h * scale), round(w * scale)), mode="bilinear", align_corners=False)
        probs = F.interpolate(teacher.probs(small), (h, w), mode="bilinear", align_corners=False)
        prediction = probs.max(1).indices[0]
        confusion += confusion_matrix(prediction, y, 21, 255)
        boxes.add(prediction, image_boxes)
    result = metrics_from_confusion(confusion, VOC_CLASSES)
    result.update(boxes.metrics(VOC_CLASSES))
    result.update(
        {
            "model": "teacher: DeepLabV3-MobileNetV2 (TensorFlow DeepLab, COCO + VOC 2012)",
            "long_side": args.long_side,
            "split": args.split,
            "images": len(dataset),
            "confusion_matrix": confusion.tolist(),
            "command": shlex.join(["python", "scripts/eval_teacher.py", *sys.argv[1:]]),
        }
    )
    print(
        f"mIoU {result['mIoU']:.2f}  found {result['found']:.1f}% (small {result['found_small']:.1f}%)  "
        f"outside {result['outside']:.1f}%"
    )
    if args.out:
        write_results(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
