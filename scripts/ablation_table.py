"""The README's ablation table (issue 20): one row per released variant of the CamVid ablation.

    python scripts/ablation_table.py --bench benchmarks/results/ablation.json > ablation.md

Each column comes from a measurement that can be rerun, and the table says which:

- test mIoU and the thin classes (Pole, SignSymbol, Fence, Pedestrian, Bicyclist), where the
  paper expects refinement at 1/4 to matter most: the ``eval-test.json`` that
  ``scripts/release_model.py`` wrote beside the weights (``refinenet eval --model <id>
  --dataset camvid --split test``, single scale);
- parameters and multiply-adds at 480x360: counted here on the loaded model
  (``refinenet.models.count_parameters``, ``refinenet.flops.count_macs``);
- CPU latency at 480x360: read from a benchmark result written by ``python benchmarks/bench.py
  --models zoo:<id>,... --sizes 480x360 --name ablation`` (the fast path, batch 1, median);
  a dash when the benchmark has no such row, never a number from elsewhere;
- seed: from the variant's training config, ``configs/<id>.yaml``.

Variants are the zoo's ``camvid-ablation`` family in table order, or the folders given.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinenet import zoo  # noqa: E402
from refinenet.compare import EVAL_FILE, describe  # noqa: E402
from refinenet.flops import count_macs  # noqa: E402
from refinenet.hub import from_pretrained  # noqa: E402
from refinenet.models import count_parameters  # noqa: E402
from refinenet.train import TrainConfig  # noqa: E402

THIN_CLASSES = ("Pole", "SignSymbol", "Fence", "Pedestrian", "Bicyclist")
SIZE = (360, 480)  # height, width: CamVid's frames


@dataclass
class Row:
    """One variant's measured figures; ``None`` where a figure was not measured."""

    name: str
    description: str
    seed: int | None
    test_miou: float
    thin_iou: dict[str, float | None]
    parameters: int
    decoder_parameters: int  # what differs between the variants: the frozen backbone is shared
    gmacs: float
    latency_ms: float | None


def bench_latencies(bench: dict, size: str = "480x360") -> dict[str, float]:
    """Milliseconds per image of each ``zoo:<id>`` model in a ``bench.py`` result (fast path,
    batch 1, median at ``size``), keyed by zoo id."""
    latencies = {}
    for model in bench.get("models", []):
        name = model.get("model", "")
        if not name.startswith("zoo:"):
            continue
        for entry in model.get("sizes", []):
            fast = entry.get("batch1", {}).get("fast")
            if entry.get("size") == size and fast:
                latencies[name.removeprefix("zoo:")] = 1000 * fast["median_s"]
    return latencies


def measure(name: str, folder: Path, latencies: dict[str, float], config_dir: Path) -> Row:
    """Load the variant ``name`` (weights in ``folder``) and gather its row."""
    evaluation = json.loads((folder / EVAL_FILE).read_text(encoding="utf-8"))
    if evaluation.get("scales", [1.0]) != [1.0] or evaluation.get("flip"):
        raise ValueError(f"{folder / EVAL_FILE} is not a single-scale evaluation")
    model = from_pretrained(folder)
    per_class = evaluation["per_class_iou"]
    training_config = config_dir / f"{name}.yaml"
    seed = TrainConfig.load(training_config).seed if training_config.is_file() else None
    return Row(
        name=name,
        description=describe(model.config),
        seed=seed,
        test_miou=float(evaluation["mIoU"]),
        thin_iou={c: per_class.get(c) for c in THIN_CLASSES},
        parameters=count_parameters(model),
        decoder_parameters=count_parameters(model) - count_parameters(model.backbone),
        gmacs=count_macs(model, SIZE).total / 1e9,
        latency_ms=latencies.get(name),
    )


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(rows: list[Row], bench_command: str | None) -> str:
    """The table, then the commands that produced each column."""
    head = ["variant", "seed", "test mIoU", *THIN_CLASSES, "params (decoder)", "GMACs 480x360", "CPU ms 480x360"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            f"`{row.name}`<br>{row.description}",
            "-" if row.seed is None else str(row.seed),
            f"{row.test_miou:.2f}",
            *(_number(row.thin_iou[c], 1) for c in THIN_CLASSES),
            f"{row.parameters / 1e6:.2f} M ({row.decoder_parameters / 1e6:.2f} M)",
            f"{row.gmacs:.2f}",
            _number(row.latency_ms, 0),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "test mIoU and per-class IoU: `refinenet eval --model <variant> --dataset camvid --split test` "
        "(single scale; the `eval-test.json` beside the weights). Parameters and multiply-adds: "
        "`python scripts/ablation_table.py` (counted on the loaded model). CPU latency: "
        + (f"`{bench_command}`" if bench_command else "not measured")
        + " (fast path, batch 1, median).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="variant folders (default: the zoo's ablation family)")
    parser.add_argument("--bench", type=Path, help="a bench.py JSON result holding zoo:<id> rows at 480x360")
    parser.add_argument("--configs", type=Path, default=ROOT / "configs", help="where <id>.yaml training configs are")
    args = parser.parse_args()
    if args.folders:
        variants = [(folder.resolve().name, folder) for folder in args.folders]
    else:
        variants = [(e.model_id, zoo.bundled_folder(e.model_id)) for e in zoo.family_members(zoo.ABLATION_FAMILY)]
    if not variants:
        print("error: no variants: the zoo's ablation family has no published weights yet", file=sys.stderr)
        return 1
    bench = json.loads(args.bench.read_text(encoding="utf-8")) if args.bench else {}
    latencies = bench_latencies(bench)
    rows = [measure(name, folder, latencies, args.configs) for name, folder in variants]
    sys.stdout.write(markdown(rows, bench.get("stamp", {}).get("command")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
