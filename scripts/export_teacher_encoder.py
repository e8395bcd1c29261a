"""Write the VOC teacher's MobileNetV2 encoder as a backbone state dict for training.

    python scripts/export_teacher_encoder.py            # -> runs/encoders/deeplabv3-mobilenetv2-coco-voc.safetensors

The teacher (``../shared/tools/teacher``: TensorFlow DeepLab's DeepLabV3 on MobileNetV2, trained on
COCO then PASCAL VOC 2012, Apache-2.0) gives its encoder in the layout of torchvision's
``mobilenet_v2().features[:18]``, which is the project's MobileNetV2 backbone, key for key. A
training config names the file in ``backbone_weights``; the model then expects inputs scaled to
[-1, 1] (mean and std 0.5), as the teacher did. The file is a training input, not a release: it
stays out of the repository.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from refinenet.train import import_teacher  # noqa: E402

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
    state = module.Teacher().mobilenet_v2_state_dict()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(args.out))
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {len(state)} tensors, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
