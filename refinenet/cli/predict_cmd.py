"""``refinenet predict IMAGE... [--model M] --out DIR``: segment images, write label maps and overlays.

Without ``--model`` the zoo's first model is used: the one the app opens with.

For every input ``photo.jpg`` two files are written to ``DIR``:

- ``photo_labels.png``: a palette PNG whose pixel values *are* the class indices (lossless, so
  it can be read back as the label map) and whose palette shows them in the model's colours;
- ``photo_overlay.png``: the coloured label map blended over the photo (``--alpha``).

A file that cannot be read as an image is reported and skipped; the others are still written,
and the exit status is 1 if any input failed. Two inputs with the same stem (``a/x.jpg``,
``b/x.png``) get ``x`` and ``x-2`` so that no output overwrites another.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image


def _scales(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"scales must be comma-separated numbers, e.g. 0.75,1,1.25 ({error})"
        ) from error
    if not values or any(not (v > 0) for v in values):
        raise argparse.ArgumentTypeError(f"scales must be positive numbers, got {text!r}")
    return values


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"alpha must be a number between 0 and 1, got {text!r}") from error
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"alpha must lie between 0 and 1, got {value}")
    return value


def _max_side(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"max-side must be a whole number of pixels, got {text!r}") from error
    if value < 0:
        raise argparse.ArgumentTypeError("max-side must be positive (0 disables the cap)")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", type=Path, help="image files to segment")
    parser.add_argument(
        "--model",
        "-m",
        default=None,
        help="a model folder (config.json + model.safetensors), a zoo id or a Hub repo id "
        "(default: the zoo's first model, the one the app opens with; "
        "`refinenet models` lists them)",
    )
    parser.add_argument(
        "--out",
        "-o",
        type=Path,
        default=Path("predictions"),
        help="output folder (created if needed; default: ./predictions)",
    )
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (CUDA, then MPS, then CPU)")
    parser.add_argument(
        "--scales",
        type=_scales,
        default=(1.0,),
        help="test-time scales, comma-separated, e.g. 0.75,1,1.25 (default: 1)",
    )
    parser.add_argument("--flip", action="store_true", help="also segment the mirrored image and average")
    parser.add_argument(
        "--max-side",
        type=_max_side,
        default=None,
        help="downscale images whose long side exceeds this before the network "
        "(default: 1024 or the model's input size; 0: never)",
    )
    parser.add_argument("--alpha", type=_alpha, default=0.5, help="opacity of the labels in the overlay (0..1)")


def output_stems(paths: list[Path]) -> list[str]:
    """One output stem per input, made unique by suffixing ``-2``, ``-3``, ... in input order."""
    seen: set[str] = set()
    stems = []
    for path in paths:
        stem, k = path.stem, 1
        while stem in seen:
            k += 1
            stem = f"{path.stem}-{k}"
        seen.add(stem)
        stems.append(stem)
    return stems


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from refinenet.images import ImageLoadError
    from refinenet.inference import Segmenter
    from refinenet.visualize import label_map_to_png, overlay

    if args.model is None:
        from refinenet.zoo import list_pretrained

        args.model = list_pretrained()[0].model_id
    try:
        model = _load_model(args.model)
        segmenter = Segmenter(model, device=args.device, max_side=args.max_side, scales=args.scales, flip=args.flip)
    except (OSError, ValueError, RuntimeError, TypeError) as error:
        print(f"error: cannot load the model {args.model!r}: {error}", file=sys.stderr)
        return 1
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: cannot create the output folder {str(args.out)!r}: {error}", file=sys.stderr)
        return 1

    palette = segmenter.palette
    failed = 0
    stems = output_stems(args.images)
    for path, stem in tqdm(
        list(zip(args.images, stems, strict=True)), desc="segmenting", unit="image", file=sys.stderr
    ):
        try:
            result = segmenter.predict(path)
            label_map_to_png(result.label_map, palette).save(args.out / f"{stem}_labels.png")
            blended = overlay(result.image, result.label_map, palette, args.alpha)
            Image.fromarray(blended).save(args.out / f"{stem}_overlay.png")
        except ImageLoadError as error:
            tqdm.write(f"error: {error}", file=sys.stderr)
            failed += 1
        except OSError as error:
            tqdm.write(f"error: cannot write the results for '{path}': {error}", file=sys.stderr)
            failed += 1
    done = len(args.images) - failed
    print(f"wrote {done} of {len(args.images)} segmentations to {args.out}", file=sys.stderr)
    return 1 if failed else 0


def _load_model(spec: str):
    """A model from a local folder, a zoo id or a Hub repo id, through :mod:`refinenet.hub`."""
    from refinenet.hub import from_pretrained

    return from_pretrained(spec)
