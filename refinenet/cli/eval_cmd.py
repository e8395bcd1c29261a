"""``refinenet eval``: per-class IoU, mIoU and pixel accuracy of a model on a labelled dataset.

Example (CamVid test split, single scale, then with multi-scale and flip)::

    refinenet eval --model camvid-refinenet-mobilenetv2 --data ../shared/data/camvid --split test \
        --out results.json --confusion confusion.png
    refinenet eval --model camvid-refinenet-mobilenetv2 --data ../shared/data/camvid --split test \
        --scales 0.75,1,1.25 --flip --out results-ms-flip.json
    refinenet eval --model voc-refinenet-mobilenetv2 --dataset voc2007-pseudo --split val
    refinenet eval --model voc-refinenet-mobilenetv2 --dataset voc2007-pseudo --split train \
        --every 37      # 100 of the 3,700 training photos: how closely the model fits what it saw

A split with human boxes (``boxes.json`` beside ``images/``) also gets *found* and *outside*
(see :mod:`refinenet.evaluate`), overall, for small boxes and per class.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sized
from pathlib import Path

import torch
from torch.utils.data import Subset


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="zoo id, Hub repo id or local model folder")
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset root folder (default: the dataset's folder in ../shared/data)"
    )
    parser.add_argument(
        "--dataset",
        choices=["camvid", "folders", "voc2007-pseudo"],
        default=None,
        help="dataset layout (default: camvid if DATA has a testannot/ folder, else folders)",
    )
    parser.add_argument("--split", default="test", help="split name, e.g. test, val, or train+val")
    parser.add_argument("--scales", default="1", help="comma-separated input scales, e.g. 0.75,1,1.25")
    parser.add_argument("--flip", action="store_true", help="also average over horizontal flips")
    parser.add_argument("--ignore-index", type=int, default=None, help="label to ignore (default: the model's)")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    parser.add_argument("--confusion", type=Path, default=None, help="write a confusion-matrix PNG here")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--every",
        type=int,
        default=1,
        metavar="N",
        help="evaluate every N-th image of the split, in file order (default 1: all); a quick "
        "sample, e.g. of the training photos to see how closely a model fits them",
    )


def run(args: argparse.Namespace) -> int:
    from ..data import DEFAULT_ROOTS, EvalTransform, build_dataset, has_boxes
    from ..evaluate import evaluate_model, plot_confusion, write_results
    from ..hub import from_pretrained
    from ..runtime import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        print(f"error: --scales must be numbers separated by commas, not {args.scales!r}", file=sys.stderr)
        return 2
    if args.every < 1:
        print(f"error: --every must be a whole number of at least 1, not {args.every}", file=sys.stderr)
        return 2
    if args.data is None:
        if args.dataset not in DEFAULT_ROOTS:
            print("error: give --data, or a --dataset with a default folder (camvid, voc2007-pseudo)", file=sys.stderr)
            return 2
        args.data = DEFAULT_ROOTS[args.dataset]
    device = select_device(args.device)
    # Module.to accepts device and memory_format together; torch's overloads leave that out.
    model = from_pretrained(str(args.model)).to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
    config = model.config
    kind = args.dataset or ("camvid" if (args.data / f"{args.split.split('+')[0]}annot").is_dir() else "folders")
    boxed = kind != "camvid" and has_boxes(args.data, args.split)
    dataset = build_dataset(kind, args.data, args.split, EvalTransform(config.mean, config.std), with_boxes=boxed)
    assert isinstance(dataset, Sized), "a map-style dataset, with a length"
    if args.every > 1:
        dataset = Subset(dataset, range(0, len(dataset), args.every))
    ignore = args.ignore_index if args.ignore_index is not None else config.ignore_index
    names = config.class_names or [str(i) for i in range(config.num_classes)]
    result = evaluate_model(model, dataset, config.num_classes, ignore, names, scales, args.flip, device)
    result.update(
        {
            "model": str(args.model),
            "dataset": kind,
            "data": str(args.data),
            "split": args.split,
            "every": args.every,
            "ignore_index": ignore,
            "command": getattr(args, "command_line", None),
        }
    )
    width = max(len(n) for n in names)
    for name, iou in result["per_class_iou"].items():
        print(f"  {name:<{width}}  {'-' if iou is None else f'{iou:5.1f}'}")
    print(
        f"mIoU {result['mIoU']:.2f}  pixel accuracy {result['pixel_accuracy']:.2f}  "
        f"({result['images']} images, scales {scales}, flip {args.flip})"
    )
    if "found" in result:
        print(
            f"found {result['found']:.1f}% of {result['boxes']} human boxes ({result['found_small']:.1f}% of the "
            f"{result['small_boxes']} small ones); outside {result['outside']:.1f}% of object pixels"
        )
        if "outside_by_label" in result:
            where = ", ".join(f"{v:.0f}% {k}" for k, v in result["outside_by_label"].items() if v is not None)
            print(f"  the outside pixels are labelled: {where}")
    if args.out:
        write_results(result, args.out)
    if args.confusion:
        plot_confusion(result["confusion_matrix"], names, args.confusion)
    if not args.out:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion_matrix"}, indent=2))
    return 0
