"""``refinenet convert SRC --out FOLDER [--format auto|...]``: a legacy RefineNet checkpoint to a
Hub-layout folder (config.json, model.safetensors, README.md) ready for ``refinenet push``.

The layout is detected from the checkpoint's keys; every tensor must find its place, or the
command fails listing the leftovers (exit status 1) and writes nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from refinenet.convert import FORMATS

    parser.add_argument("source", metavar="SRC", type=Path, help="legacy checkpoint (.pth, .pth.tar)")
    parser.add_argument("--out", "-o", type=Path, required=True, help="output model folder")
    parser.add_argument(
        "--format",
        "-f",
        default="auto",
        choices=["auto", *FORMATS],
        help="source layout (default: detect from the keys)",
    )
    parser.add_argument(
        "--class-names",
        default=None,
        help="comma-separated class names, or a text file with one name per line "
        "(default: the PASCAL VOC names for 21-class models)",
    )
    parser.add_argument("--dataset", default=None, help="training dataset to record in the model card")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an existing folder")


def _class_names(spec: str | None) -> list[str] | None:
    if spec is None:
        return None
    path = Path(spec)
    if path.is_file():
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [name.strip() for name in spec.split(",") if name.strip()]


def run(args: argparse.Namespace) -> int:
    from refinenet.convert import ConversionError, convert_checkpoint

    try:
        conversion = convert_checkpoint(
            args.source,
            args.out,
            args.format,
            class_names=_class_names(args.class_names),
            dataset=args.dataset,
            overwrite=args.overwrite,
        )
    except (ConversionError, FileExistsError, ValueError) as error:
        print(f"error: cannot convert {args.source}: {error}", file=sys.stderr)
        return 1
    config = conversion.config
    print(
        f"converted {args.source} ({conversion.format.name}: {config.architecture}, {config.backbone}, "
        f"{config.num_classes} classes, {len(conversion.state_dict)} tensors) -> {args.out}"
    )
    for note in conversion.notes:
        print(f"  {note}")
    print(
        "The authors' weights are for non-commercial use; the model card says so. "
        f"Publish with: refinenet push {args.out} --repo-id ORG/NAME"
    )
    return 0
