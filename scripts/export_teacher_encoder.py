"""Write the VOC teacher's MobileNetV2 encoder as a backbone state dict for training.

    python scripts/export_teacher_encoder.py            # -> runs/encoders/deeplabv3-mobilenetv2-coco-voc.safetensors

The teacher (``../shared/tools/teacher``: TensorFlow DeepLab's DeepLabV3 on MobileNetV2, trained on
COCO then PASCAL VOC 2012, Apache-2.0) gives its encoder in the layout of torchvision's
``mobilenet_v2().features[:18]``, which is the project's MobileNetV2 backbone, key for key. A
training config names the file in ``backbone_weights``; the model then expects inputs scaled to
[-1, 1] (mean and std 0.5), as the teacher did. The file is a training input, not a release: it
stays out of the repository.

The teacher's batch norms were folded by TensorFlow and rebuilt from statistics, so its feature
maps come out 4-10 times larger than torchvision's ImageNet encoder's (standard deviation 8.4 at
stride 4 against 0.85), which the decoder, without normalisation of its own, cannot start from.
Each tapped stage is therefore rescaled to unit standard deviation on the same photos
(:func:`refinenet.backbones.rescale_mobilenetv2_taps`, exact: every later feature is unchanged);
the file's metadata records the scales.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinenet.backbones import MobileNetV2Backbone, build_backbone, rescale_mobilenetv2_taps  # noqa: E402
from refinenet.data import normalize, to_tensor  # noqa: E402
from refinenet.train import import_teacher  # noqa: E402


@torch.no_grad()
def tap_std(backbone: MobileNetV2Backbone, photos: list[Path]) -> list[float]:
    """Standard deviation of each tapped feature map over ``photos`` (whole, inputs in [-1, 1])."""
    sums = [[0.0, 0.0, 0] for _ in backbone.taps]
    for path in photos:
        with Image.open(path) as image:
            x = normalize(to_tensor(image), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))[None]
        for total, feature in zip(sums, backbone(x), strict=True):
            total[0] += feature.double().sum().item()
            total[1] += feature.double().square().sum().item()
            total[2] += feature.numel()
    return [((q / n) - (s / n) ** 2) ** 0.5 for s, q, n in sums]


DEFAULT_OUT = Path("runs/encoders/deeplabv3-mobilenetv2-coco-voc.safetensors")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher",
        type=Path,
        default=ROOT.parent / "shared" / "tools" / "teacher",
        help="folder holding teacher.py (default: ../shared/tools/teacher)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    try:
        module = import_teacher(args.teacher)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    photos = sorted((args.teacher.parent.parent / "data/voc2007-pseudo/train/images").glob("*.jpg"))[::50][:64]
    backbone = build_backbone("mobilenetv2").eval()
    backbone.load_state_dict(module.Teacher().mobilenet_v2_state_dict(photos))
    scales = [1.0 / s for s in tap_std(backbone, photos)]
    rescale_mobilenetv2_taps(backbone, scales)
    state = backbone.state_dict()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "source": "TensorFlow DeepLab DeepLabV3-MobileNetV2 (COCO, VOC 2012), Apache-2.0",
        "tap_scales": ",".join(f"{s:.6g}" for s in scales),
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(args.out), metadata=metadata)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {len(state)} tensors, taps rescaled by {metadata['tap_scales']}, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
