"""The model zoo: every set of weights this project publishes, in one table.

An entry says where a model lives (Hub repo and pinned revision, and/or a copy bundled in the
package under ``refinenet/weights/<model_id>/``), what it was trained on, how well it does, and
the sha256 of its ``model.safetensors`` so that every copy is checked before use.

A model that is not published yet has ``repo_id=None``: never invent a repo id. Publish with
``refinenet push FOLDER --repo-id ORG/NAME``, then fill in ``repo_id`` and ``revision`` (the
commit hash the push prints). Compute ``sha256`` with ``refinenet models --hash FOLDER``.

This module is the table and nothing else: ``refinenet.hub.from_pretrained`` resolves an id
through it (an explicit local folder, the Hugging Face cache, a Hub download, the bundled copy,
then an error that lists everything tried), and ``refinenet models`` prints and checks it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .data import CAMVID_CLASSES, VOC_CLASSES
from .folder import WEIGHTS_NAME, sha256_file

# Environment variable that moves the bundled-weights directory (tests, system packages).
WEIGHTS_DIR_ENV = "REFINENET_WEIGHTS_DIR"


@dataclass(frozen=True)
class ZooEntry:
    """One published model.

    ``metrics`` maps a metric name (e.g. ``"test_mean_iou"``) to its value in percent.
    ``sha256`` is that of ``model.safetensors``; ``None`` only while the weights do not exist
    yet, and such an entry refuses to load. ``family`` groups models trained to be compared with
    one another (e.g. ``"camvid-ablation"``: one recipe, one data set, one thing changed per
    model): the app's "Compare the variants" section shows a family side by side
    (:func:`family_members`).
    """

    model_id: str
    title: str
    architecture: str
    backbone: str
    dataset: str
    classes: tuple[str, ...]
    metrics: Mapping[str, float] = field(default_factory=dict)
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None
    bundled: bool = False
    license: str = "mit"
    family: str | None = None

    @property
    def published(self) -> bool:
        return self.repo_id is not None


# The family the app compares by default: RefineNet's cascade and CRP ablation on CamVid
# (4-, 2- and 1-cascade, and the 4-cascade without chained residual pooling), all trained with
# one recipe so that their test mIoUs differ by the architecture alone.
ABLATION_FAMILY = "camvid-ablation"


def _ablation_variant(model_id: str, what: str, metrics: Mapping[str, float], sha256: str) -> ZooEntry:
    """A model of the CamVid ablation family (issue 20, README "The paper's ablation"): one recipe,
    width 48 in every block, torchvision's ImageNet MobileNetV2 frozen and not stored, fp16
    decoders bundled; the variants differ in ``what`` alone (the cascade, or CRP)."""
    return ZooEntry(
        model_id=model_id,
        title=f"RefineNet ablation on CamVid: {what}",
        architecture="refinenet",
        backbone="mobilenetv2",
        dataset="CamVid (11 classes)",
        classes=CAMVID_CLASSES,
        metrics=metrics,
        sha256=sha256,
        bundled=True,
        license="other",
        family=ABLATION_FAMILY,
    )


MODELS: dict[str, ZooEntry] = {
    entry.model_id: entry
    for entry in (
        # First, so the app opens with it: people who try the demo upload everyday photos (README).
        ZooEntry(
            model_id="voc-refinenet-mobilenetv2",
            title="RefineNet (4-cascade, RCUs, chained residual pooling) on MobileNetV2, trained on "
            "PASCAL VOC 2007 photos with box-constrained teacher labels",
            architecture="refinenet",
            backbone="mobilenetv2",
            dataset="PASCAL VOC 2007, box-constrained teacher labels (21 classes)",
            classes=VOC_CLASSES,
            # Measured by scripts/release_model.py (refinenet eval on the 300 val/ photos): val mIoU
            # is agreement with the box-constrained teacher labels, not accuracy against human masks;
            # found and outside come from the photos' human boxes (see the card).
            metrics={
                "val_teacher_mean_iou": 75.3,
                "val_teacher_pixel_accuracy": 94.18,
                "val_teacher_mean_iou_multiscale_flip": 77.86,
                "val_boxes_found": 75.25,
                "val_outside_boxes": 11.79,
            },
            sha256="6b2e37a1225b3ea56ef85b4689bdfa272b69a7e28f9c4f753897e5e4b974d0dd",
            bundled=True,
            license="other",
        ),
        ZooEntry(
            model_id="camvid-refinenet-mobilenetv2",
            title="RefineNet (4-cascade, RCUs, chained residual pooling) on MobileNetV2, trained on CamVid",
            architecture="refinenet",
            backbone="mobilenetv2",
            dataset="CamVid (11 classes)",
            classes=CAMVID_CLASSES,
            # Measured by scripts/release_model.py (refinenet eval on the 233 CamVid test frames).
            metrics={"test_mean_iou": 62.48, "test_pixel_accuracy": 90.22, "test_mean_iou_multiscale_flip": 63.64},
            sha256="e07529db5b17e6b72c4b5ce113e1f108891ab4bebdc911f9550854bea9174c1e",
            bundled=True,
            license="other",
        ),
        ZooEntry(
            model_id="camvid-lw-refinenet-mobilenetv2",
            title="Light-Weight RefineNet on MobileNetV2, trained on CamVid",
            architecture="lw-refinenet",
            backbone="mobilenetv2",
            dataset="CamVid (11 classes)",
            classes=CAMVID_CLASSES,
            # Measured by scripts/release_model.py (refinenet eval on the 233 CamVid test frames).
            metrics={"test_mean_iou": 63.52, "test_pixel_accuracy": 90.63, "test_mean_iou_multiscale_flip": 64.55},
            sha256="9534fbabc2bcac2bbe74e4b2b3b2408c8f0092327dcb96bccf2d8ad3800838a0",
            bundled=True,
            license="other",
        ),
        # The ablation family: the 4-cascade, 2-cascade, 1-cascade and the 4-cascade without CRP,
        # each repeated seed beside its variant (the app shows them in this order). Metrics:
        # scripts/release_model.py --fp16 --skip-multiscale (refinenet eval on the 233 CamVid test
        # frames, single scale).
        _ablation_variant(
            "camvid-ablation-4cascade",
            "4-cascade, 4 CRP stages (seed 0)",
            {"test_mean_iou": 59.75, "test_pixel_accuracy": 89.25},
            "000fce2d26198f282f8634d2a94cc2009ed7a9a8ffa1a8ea29ecd40999f377bf",
        ),
        _ablation_variant(
            "camvid-ablation-4cascade-seed1",
            "4-cascade, 4 CRP stages (seed 1)",
            {"test_mean_iou": 59.64, "test_pixel_accuracy": 89.45},
            "b870922f0cca86add12935fdbad62aa5250a06e11784556c757c34df5c09d5a7",
        ),
        _ablation_variant(
            "camvid-ablation-2cascade",
            "2-cascade, 4 CRP stages",
            {"test_mean_iou": 59.82, "test_pixel_accuracy": 89.11},
            "0c331452c9bc2de40ec8fa84a2e31caf370ef3481b7693031365584434013654",
        ),
        _ablation_variant(
            "camvid-ablation-1cascade",
            "1-cascade, 4 CRP stages (seed 0)",
            {"test_mean_iou": 59.12, "test_pixel_accuracy": 88.45},
            "73d1910a0e76a2c48f7d8aeaf9275354a97e88e897be0fc309bb78d29c049004",
        ),
        _ablation_variant(
            "camvid-ablation-1cascade-seed1",
            "1-cascade, 4 CRP stages (seed 1)",
            {"test_mean_iou": 59.54, "test_pixel_accuracy": 88.32},
            "ecaccd057c1cb5aa6c30aaec39ecf4a1028bccbc87c6acce6129a18cd67eaeeb",
        ),
        _ablation_variant(
            "camvid-ablation-nocrp",
            "4-cascade without chained residual pooling",
            {"test_mean_iou": 60.04, "test_pixel_accuracy": 89.39},
            "27f190a716b80f7c93373b838021676c37e069f525aa245afe01d872aa584c8f",
        ),
    )
}


def list_pretrained() -> list[ZooEntry]:
    """All registered weights, in table order: the order the app offers them in, and the first
    that loads is its default (so the table starts with the model most uploads suit)."""
    return list(MODELS.values())


def family_members(family: str) -> list[ZooEntry]:
    """The entries of ``family``, in table order (the order the app shows them in); an empty
    list for a family with no published weights yet."""
    return [entry for entry in MODELS.values() if entry.family == family]


def get_entry(model_id: str) -> ZooEntry:
    """The entry of a model id; a KeyError naming the known ids otherwise."""
    try:
        return MODELS[model_id]
    except KeyError:
        raise KeyError(f"no model {model_id!r} in the zoo; known ids: {', '.join(MODELS) or 'none'}") from None


def weights_dir(override: str | Path | None = None) -> Path:
    """Directory of the bundled model folders: ``override``, else ``$REFINENET_WEIGHTS_DIR``,
    else ``refinenet/weights`` inside the installed package."""
    if override is not None:
        return Path(override)
    env = os.environ.get(WEIGHTS_DIR_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parent / "weights"


def bundled_folder(model_id: str, override: str | Path | None = None) -> Path:
    return weights_dir(override) / model_id


def hash_folder(folder: str | Path) -> str:
    """The sha256 a zoo entry records for a model folder (that of its model.safetensors)."""
    weights = Path(folder) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}")
    return sha256_file(weights)
