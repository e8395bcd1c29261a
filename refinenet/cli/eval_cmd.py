"""``refinenet eval``: per-class IoU, mIoU and pixel accuracy of a model on a labelled dataset.

Example (CamVid test split, single scale, then with multi-scale and flip)::

    refinenet eval --model camvid-refinenet-mobilenetv2 --data ../shared/data/camvid --split test \
        --out results.json --confusion confusion.png
    refinenet eval --model camvid-refinenet-mobilenetv2 --data ../shared/data/camvid --split test \
        --scales 0.75,1,1.25 --flip --out results-ms-flip.json
    refinenet eval --model voc-refinenet-mobilenetv2 --dataset voc2007-pseudo --split val
    refinenet eval --model voc-refinenet-mobilenetv2 --dataset voc2007-pseudo --split val \
        --bootstrap 1000   # and how much those figures depend on which 300 photos val/ holds
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
from torch.utils.data import Dataset, Subset


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
        "--bootstrap",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="also report the 90%% interval of mIoU, found and outside over ROUNDS draws of the images "
        "with replacement (e.g. 1000): how much the figures depend on which photos the split holds",
    )
    parser.add_argument(
        "--against",
        default=None,
        metavar="MODEL",
        help="with --bootstrap: also evaluate MODEL and report the interval of each figure's difference "
        "over the same draws (a paired comparison), and in how many draws this model's figure is higher",
    )
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
    from ..evaluate import (
        bootstrap_difference,
        bootstrap_intervals,
        count_images,
        plot_confusion,
        split_result,
        write_results,
    )
    from ..hub import from_pretrained
    from ..models import RefineNet
    from ..runtime import select_device

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        print(f"error: --scales must be numbers separated by commas, not {args.scales!r}", file=sys.stderr)
        return 2
    if args.bootstrap < 0:
        print(f"error: --bootstrap must be a number of rounds, 0 or more, not {args.bootstrap}", file=sys.stderr)
        return 2
    if args.against and not args.bootstrap:
        print("error: --against compares on bootstrap draws: give --bootstrap ROUNDS too", file=sys.stderr)
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
    kind = args.dataset or ("camvid" if (args.data / f"{args.split.split('+')[0]}annot").is_dir() else "folders")
    boxed = kind != "camvid" and has_boxes(args.data, args.split)

    def load(model_id: str) -> tuple[RefineNet, Dataset]:
        """A model on ``device`` and the split as that model's normalisation prepares it."""
        # Module.to accepts device and memory_format together; torch's overloads leave that out.
        model = from_pretrained(model_id).to(device, memory_format=torch.channels_last).eval()  # type: ignore[call-overload]
        dataset = build_dataset(
            kind, args.data, args.split, EvalTransform(model.config.mean, model.config.std), with_boxes=boxed
        )
        assert isinstance(dataset, Sized), "a map-style dataset, with a length"
        return model, Subset(dataset, range(0, len(dataset), args.every)) if args.every > 1 else dataset

    model, dataset = load(str(args.model))
    config = model.config
    ignore = args.ignore_index if args.ignore_index is not None else config.ignore_index
    names = config.class_names or [str(i) for i in range(config.num_classes)]
    counts, box_counts = count_images(model, dataset, config.num_classes, ignore, scales, args.flip, device)
    result = split_result(counts, box_counts, names, scales, args.flip)
    if args.bootstrap:
        result["bootstrap"] = bootstrap_intervals(counts, args.bootstrap)
    if args.against:
        other, other_dataset = load(str(args.against))
        if other.config.num_classes != config.num_classes:
            print(
                f"error: {args.against} has {other.config.num_classes} classes, {args.model} {config.num_classes}",
                file=sys.stderr,
            )
            return 2
        other_counts, _ = count_images(other, other_dataset, config.num_classes, ignore, scales, args.flip, device)
        paired = bootstrap_difference(counts, other_counts, args.bootstrap)
        result["bootstrap"]["against"] = {"model": str(args.against)} | paired
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
    if "bootstrap" in result:
        spread = result["bootstrap"]
        spans = ", ".join(
            f"{k} {spread[k][0]:.2f}-{spread[k][1]:.2f}" for k in ("mIoU", "found", "outside") if spread.get(k)
        )
        rounds = spread["rounds"]
        print(f"{spread['level']:.0%} interval over the images drawn with replacement ({rounds} rounds): {spans}")
        if "against" in spread:
            paired = spread["against"]
            spans = ", ".join(
                f"{k} {paired[k][0]:+.2f} to {paired[k][1]:+.2f} (higher in {paired['higher_in'][k]:.1f}% of draws)"
                for k in ("mIoU", "found", "outside")
                if paired.get(k)
            )
            print(f"minus {paired['model']}, on the same draws: {spans}")
    if args.out:
        write_results(result, args.out)
    if args.confusion:
        plot_confusion(result["confusion_matrix"], names, args.confusion)
    if not args.out:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion_matrix"}, indent=2))
    return 0
