"""Is a model's output drawn where its labels are? Score it with its logits read at offsets.

    python scripts/scan_output_offset.py --model refinenet/weights/voc-refinenet-mobilenetv2 --offsets 0,-3,-6

A model computes its logits once per photo (single scale, as ``refinenet eval`` does); each
offset ``d`` then reads the output pixel (x, y) from the logits at input position (x + d, y + d),
bilinearly, at 1/4 of that position on the logits' grid (the edge repeated beyond the photo). With
``d = 0`` a logit at grid index i stands for input pixel 4i, where a stride-4 feature of
symmetric-padded convolutions is centred; the model's own upsampling (``align_corners=False``,
what ``refinenet eval`` and the app use) is ``d = -1.5`` up to rounding. A model trained on
targets that were themselves shifted scores best away from its own upsampling: the students
distilled from the VOC teacher on even-sized crops did (``distill.teacher_grid`` in the training
config explains why).
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

from refinenet.data import VOC_PSEUDO_ROOT, EvalTransform, build_dataset  # noqa: E402
from refinenet.evaluate import BoxCounts, confusion_matrix, metrics_from_confusion, write_results  # noqa: E402
from refinenet.hub import from_pretrained  # noqa: E402


def read_at_offset(logits: torch.Tensor, size: tuple[int, int], offset: float, stride: int = 4) -> torch.Tensor:
    """``logits`` (N x C x h x w, stride ``stride``) at ``size``, output pixel (x, y) read at input
    position (x + offset, y + offset), i.e. grid position (x + offset) / stride."""
    h, w = logits.shape[-2:]
    height, width = size
    ys = (torch.arange(height) + offset) / stride / max(h - 1, 1) * 2 - 1
    xs = (torch.arange(width) + offset) / stride / max(w - 1, 1) * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1)[None].expand(len(logits), -1, -1, -1)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", type=Path, default=VOC_PSEUDO_ROOT)
    parser.add_argument("--split", default="val")
    parser.add_argument("--offsets", default="0,-1.5,-3,-4.5,-6", help="input pixels, comma-separated")
    parser.add_argument("--boxes", action="store_true", help="also score found and outside (slower)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    offsets = [float(d) for d in args.offsets.split(",")]
    model = from_pretrained(args.model).eval().to(memory_format=torch.channels_last)
    config = model.config
    n = config.num_classes
    dataset = build_dataset("folders", args.data, args.split, EvalTransform(config.mean, config.std), with_boxes=True)
    confusions = {d: torch.zeros(n, n, dtype=torch.int64) for d in offsets}
    boxes = {d: BoxCounts(n) for d in offsets}
    with torch.inference_mode():
        for x, y, image_boxes, _ in tqdm(dataset, desc="offsets"):
            logits = model(x[None].contiguous(memory_format=torch.channels_last)).float()
            for d in offsets:
                prediction = read_at_offset(logits, tuple(y.shape), d).max(1).indices[0]
                confusions[d] += confusion_matrix(prediction, y, n, config.ignore_index)
                if args.boxes:
                    boxes[d].add(prediction, image_boxes)
    rows = []
    for d in offsets:
        row = {"offset": d, "mIoU": metrics_from_confusion(confusions[d])["mIoU"]}
        if args.boxes:
            row.update({k: v for k, v in boxes[d].metrics().items() if k in ("found", "found_small", "outside")})
        rows.append(row)
        print(f"offset {d:+5.1f} px: " + "  ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "offset"))
    if args.out:
        command = shlex.join(["python", "scripts/scan_output_offset.py", *sys.argv[1:]])
        write_results({"model": args.model, "split": args.split, "rows": rows, "command": command}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
