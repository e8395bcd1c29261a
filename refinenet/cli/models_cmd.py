"""``refinenet models``: list the zoo's weights; ``--hash FOLDER`` prints the sha256 a zoo entry
records; ``--check`` verifies every bundled copy present against the table (exit status 1 on a
mismatch)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hash", metavar="FOLDER", help="print the sha256 of FOLDER/model.safetensors")
    parser.add_argument(
        "--check", action="store_true", help="verify the sha256 of every bundled copy present against the zoo"
    )


def describe(entry, override: str | Path | None = None) -> str:
    """One line per zoo entry: where it lives, whether its bundled copy is installed (and, for a
    folder that stores its decoder alone, the torchvision weights loading takes its backbone
    from), its metrics."""
    from refinenet.config import RefineNetConfig
    from refinenet.folder import CONFIG_NAME, WEIGHTS_NAME
    from refinenet.zoo import bundled_folder

    where = entry.repo_id + (f"@{entry.revision}" if entry.revision else "") if entry.repo_id else "not on the Hub yet"
    bundled = ""
    if entry.bundled:
        folder = bundled_folder(entry.model_id, override)
        present = (folder / WEIGHTS_NAME).is_file()
        bundled = ", bundled" + ("" if present else " (folder missing)")
        try:
            frozen = RefineNetConfig.load(folder / CONFIG_NAME).frozen_backbone if present else ""
        except (OSError, ValueError, TypeError):
            frozen = ""  # `refinenet models --check` and loading report a broken folder
        if frozen:
            bundled += f" (decoder only; backbone: torchvision's {frozen} weights, frozen)"
    metrics = ", ".join(f"{k} {v:.1f}" for k, v in entry.metrics.items()) or "no metrics yet"
    return f"{entry.model_id}: {entry.title} [{where}{bundled}; {entry.dataset}; {metrics}]"


def run(args: argparse.Namespace) -> int:
    from refinenet.folder import WEIGHTS_NAME
    from refinenet.zoo import bundled_folder, hash_folder, list_pretrained

    if args.hash:
        print(hash_folder(args.hash))
        return 0
    if args.check:
        failures = 0
        for entry in list_pretrained():
            folder = bundled_folder(entry.model_id)
            if not entry.bundled or not (folder / WEIGHTS_NAME).is_file():
                continue
            actual = hash_folder(folder)
            ok = entry.sha256 == actual
            failures += not ok
            print(f"{'ok ' if ok else 'BAD'} {entry.model_id}: registry {entry.sha256}, file {actual}")
        return 1 if failures else 0
    for entry in list_pretrained():
        print(describe(entry))
    return 0
