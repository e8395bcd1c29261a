"""Per-class figures of several models side by side, from their ``refinenet eval`` JSON files.

    python scripts/class_table.py \\
        "this model=refinenet/weights/voc-refinenet-mobilenetv2/eval-val.json" \\
        "previous release=refinenet/weights/voc-refinenet-mobilenetv2/references/<its row>.json"

One Markdown row per class, one column per model: IoU, then *found* and *outside* (in %) where
the evaluation had human boxes (``refinenet eval`` on a folder with ``boxes.json``; see
``refinenet.evaluate``). A dash marks a figure the file does not hold: background has no boxes,
so neither found nor outside. The last row is each file's overall figures, with two decimals, so
the table can be checked against the results table it accompanies. The README's per-class VOC
table is its output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cell(result: dict, name: str | None) -> str:
    """``IoU / found / outside`` of class ``name`` in one eval result, one decimal each, or
    overall (``None``) with two, as the results tables print them; figures the result lacks are
    dashes, and without boxes only the IoU shows."""

    def figure(key: str, overall: str) -> str:
        value = result.get(overall) if name is None else result.get(key, {}).get(name)
        return "-" if value is None else f"{value:.{1 if name else 2}f}"

    iou = figure("per_class_iou", "mIoU")
    if "per_class_found" not in result:
        return iou
    return f"{iou} / {figure('per_class_found', 'found')} / {figure('per_class_outside', 'outside')}"


def class_table(columns: list[tuple[str, dict]]) -> str:
    """The Markdown table: classes in the first result's order, one column per ``(name, result)``."""
    if not columns:
        raise ValueError("give at least one NAME=eval.json")
    classes = list(columns[0][1]["per_class_iou"])
    for name, result in columns[1:]:
        if list(result["per_class_iou"]) != classes:
            raise ValueError(f"{name!r} was evaluated on other classes than {columns[0][0]!r}")
    boxed = any("per_class_found" in result for _, result in columns)
    what = "IoU / found / outside" if boxed else "IoU"
    lines = [
        "| class | " + " | ".join(f"{name} ({what})" for name, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    lines += [f"| {c} | " + " | ".join(cell(result, c) for _, result in columns) + " |" for c in classes]
    lines.append("| **all** | " + " | ".join(cell(result, None) for _, result in columns) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("columns", nargs="+", metavar="NAME=JSON", help="a column's name and its eval JSON")
    args = parser.parse_args()
    columns = []
    for column in args.columns:
        name, sep, path = column.partition("=")
        if not sep or not name or not path:
            parser.error(f"expected NAME=JSON, not {column!r}")
        try:
            columns.append((name, json.loads(Path(path).read_text())))
        except (OSError, json.JSONDecodeError) as error:
            parser.error(f"cannot read {path}: {error}")
    try:
        sys.stdout.write(class_table(columns))
    except (KeyError, ValueError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
